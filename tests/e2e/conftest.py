"""kv under a real kubelet: the local cluster of scripts/local-cluster (see README.md here).

The session brings the cluster up with this directory's scenario (emulator/scenarios/example.json
plus NMI bindings for the pods below) and takes it down at the end. KV_E2E_KEEP=1 leaves it up
afterwards (inspect with scripts/local-cluster kubectl ...); KV_E2E_REUSE=1 uses a cluster that
is already up instead of starting one (its scenario is replaced by this one).

Nothing is skipped: a cluster that cannot come up fails every test with the component's log.
"""
import base64
import json
import os
import pathlib
import re
import subprocess
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
LC = str(ROOT / "scripts" / "local-cluster")
STATE = pathlib.Path("/var/lib/kv-local")
# kv's node state on the cluster's node: /run/kv, a tmpfs of the cluster's mount namespace (not
# the machine's /run/kv): read it through Cluster.holder_path.
KV_STATE = pathlib.Path("/run/kv")
NS = "kv-e2e"
EXAMPLE = ROOT / "emulator" / "scenarios" / "example.json"
IMAGE = "kv-local/busybox:latest"
POD_IDENTITY_CLIENT = "00000000-0000-0000-0000-00000000a003"
USER_MI_CLIENT = "00000000-0000-0000-0000-00000000a002"
SP_CLIENT = "00000000-0000-0000-0000-00000000a004"
SP_SECRET = "emulator-sp-secret"
WORKLOAD_CLIENT = "00000000-0000-0000-0000-00000000a007"
WORKLOAD_MI_CLIENT = "00000000-0000-0000-0000-00000000a008"
SA_ISSUER = "https://oidc.kv-emulator.test/cluster"


def base_scenario():
    """example.json with absolute PEM paths and the NMI bindings the e2e pods use."""
    doc = json.loads(EXAMPLE.read_text())

    def walk(v):
        if isinstance(v, dict):
            for k, x in list(v.items()):
                if k.endswith("_file") and isinstance(x, str) and not x.startswith("/"):
                    v[k] = str(EXAMPLE.parent / x)
                elif k.endswith("_files") and isinstance(x, list):
                    v[k] = [y if y.startswith("/") else str(EXAMPLE.parent / y) for y in x]
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc)
    doc["nmi"]["bindings"] = [
        {"namespace": NS, "pod": p, "client_id": POD_IDENTITY_CLIENT}
        for p in ("pod-identity", "fsgroup", "ro-volume", "ro-mount", "restart-a", "restart-b",
                  "upgrade-0", "upgrade-1", "upgrade-2", "upgrade-3", "upgrade-4", "upgrade-5",
                  "many-0", "many-1", "many-2", "many-3", "many-4", "many-5")
    ] + [{"namespace": "kv-demo", "pod": p, "client_id": POD_IDENTITY_CLIENT}
         # The examples whose pods use pod identity (kv-demo-identity, as MIC would assign it).
         for p in ("kv-demo-pod-identity", "kv-demo-json-fields", "kv-demo-select-by-tags")]
    # The cluster's service accounts (the local cluster signs their tokens as the emulator's
    # test issuer) federated with the workload identity, as workload-identity*.yaml say.
    doc["federated_credentials"] += [
        {"client_id": client, "name": f"local-{sa}", "issuer": SA_ISSUER,
         "subject": f"system:serviceaccount:kv-demo:{sa}", "audiences": ["api://AzureADTokenExchange"]}
        for sa, client in (("kv-demo-workload", WORKLOAD_CLIENT), ("kv-demo-projected", WORKLOAD_MI_CLIENT))
    ]
    return doc


def pytest_collection_modifyitems(items):
    """Files run in the order of their number (test_10 after test_9), tests in file order."""
    def number(item):
        m = re.match(r"test_(\d+)_", item.path.name)
        return int(m.group(1)) if m else 0
    items.sort(key=number)


def run(args, *, input=None, check=True, timeout=300):
    r = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


class Cluster:
    def __init__(self):
        self.scenario = base_scenario()

    # --- kubectl -------------------------------------------------------------------------
    def kubectl(self, *args, input=None, check=True, timeout=300):
        return run([LC, "kubectl", *args], input=input, check=check, timeout=timeout).stdout

    def helm(self, *args, check=True, timeout=300):
        return run([LC, "helm", *args], check=check, timeout=timeout)

    def apply(self, docs):
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", input=text)

    def get(self, kind, name, ns=NS):
        return json.loads(self.kubectl("-n", ns, "get", kind, name, "-o", "json"))

    def pod_uid(self, name, ns=NS):
        return self.get("pod", name, ns)["metadata"]["uid"]

    def wait_running(self, name, ns=NS, timeout=180):
        end = time.time() + timeout
        while True:
            pod = self.get("pod", name, ns)
            statuses = pod.get("status", {}).get("containerStatuses") or []
            if pod["status"].get("phase") == "Running" and statuses and all(s.get("ready") for s in statuses):
                return pod
            if time.time() > end:
                raise AssertionError(f"pod {ns}/{name} not running after {timeout}s:\n{self.describe(name, ns)}")
            time.sleep(1)

    def describe(self, name, ns=NS):
        return self.kubectl("-n", ns, "describe", "pod", name, check=False)

    def events(self, name, ns=NS):
        out = self.kubectl("-n", ns, "get", "events", "--field-selector",
                           f"involvedObject.name={name}", "-o", "json")
        return [e.get("message", "") for e in json.loads(out)["items"]]

    def wait_event(self, name, needle, ns=NS, timeout=150):
        end = time.time() + timeout
        while time.time() < end:
            msgs = [m for m in self.events(name, ns) if needle in m]
            if msgs:
                return msgs
            time.sleep(2)
        raise AssertionError(f"no event with {needle!r} for {ns}/{name} in {timeout}s:\n{self.describe(name, ns)}")

    def logs(self, name, ns=NS):
        return self.kubectl("-n", ns, "logs", name)

    def wait_log(self, name, needle, ns=NS, timeout=60):
        end = time.time() + timeout
        while True:
            out = self.logs(name, ns)
            if needle in out:
                return out
            if time.time() > end:
                raise AssertionError(f"{ns}/{name} never logged {needle!r}; log:\n{out}")
            time.sleep(1)

    def delete_pod(self, name, ns=NS, wait=True, timeout=120):
        self.kubectl("-n", ns, "delete", "pod", name, "--ignore-not-found",
                     f"--wait={'true' if wait else 'false'}", f"--timeout={timeout}s", timeout=timeout + 30)

    # --- the node --------------------------------------------------------------------------
    def holder(self):
        return (STATE / "run" / "holder.pid").read_text().strip()

    def holder_path(self, path):
        """`path` as the node sees it (kv's tmpfs mounts exist only in the cluster's mount
        namespace)."""
        return pathlib.Path(f"/proc/{self.holder()}/root") / pathlib.Path(path).relative_to("/")

    def mountinfo(self):
        """The mount table kubelet, containerd and kv share (the cluster's mount namespace)."""
        return pathlib.Path(f"/proc/{self.holder()}/mountinfo").read_text()

    def daemonset_pods(self, name, ns="kv-system"):
        return json.loads(self.kubectl("-n", ns, "get", "pods", "-l", f"app.kubernetes.io/name={name}",
                                       "-o", "json"))["items"]

    def records_naming(self, uid):
        """The agent's rotation records (kv.json stateDir, the cluster's own /run/kv) that name
        a pod uid."""
        d = self.holder_path(KV_STATE / "volumes")
        return [p for p in d.iterdir() if p.is_file() and uid.encode() in p.read_bytes()] if d.is_dir() else []

    def agent_mountinfo(self):
        """The mount table of the kv-agent container's process: [(mount point, options)]."""
        want = b"/kv\0agent\0--config\0/flexvolume/azure~kv/kv.json\0"
        pids = [p.name for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()
                and _read(p / "cmdline") == want]
        assert len(pids) == 1, f"expected one kv agent process, found {pids}"
        out = []
        for line in _read(pathlib.Path("/proc") / pids[0] / "mountinfo").decode().splitlines():
            f = line.split(" ")
            out.append((f[4], f[5]))
        return out

    def kv_mounts(self):
        return [line for line in self.mountinfo().splitlines() if "azure~kv" in line and " tmpfs " in line]

    def volume_dir(self, uid, volume):
        return STATE / "kubelet" / "pods" / uid / "volumes" / "azure~kv" / volume

    def kubelet_log(self):
        return (STATE / "logs" / "kubelet.log").read_text(errors="replace")

    def emulator_requests(self):
        p = STATE / "emulator" / "requests.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    def set_scenario(self, doc):
        """Restarts the emulator with `doc` (same CA): the way to change what Azure says."""
        self.scenario = doc
        path = STATE / "e2e-scenario.json"
        path.write_text(json.dumps(doc))
        run([LC, "emulator", "--scenario", str(path)])


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    path = pathlib.Path("/tmp") / f"kv-e2e-scenario-{os.getpid()}.json"
    path.write_text(json.dumps(c.scenario))
    started = False
    try:
        if os.environ.get("KV_E2E_REUSE") == "1" and run([LC, "status"], check=False).returncode == 0:
            run([LC, "emulator", "--scenario", str(path)])
        else:
            run([LC, "down"], check=False)
            t = time.time()
            r = subprocess.run([LC, "up", "--scenario", str(path)], text=True, capture_output=True, timeout=3600)
            print(f"\ne2e: scripts/local-cluster up took {time.time() - t:.0f} s")
            if r.returncode != 0:
                raise AssertionError(f"scripts/local-cluster up failed:\n{r.stdout}\n{r.stderr}")
            started = True
            # A shell error during `up` (a comment's backticks in an unquoted heredoc ran
            # `down`) would not fail it: the output must be clean.
            assert "command not found" not in r.stderr, r.stderr
        c.kubectl("create", "namespace", NS, check=False)
        yield c
    finally:
        path.unlink(missing_ok=True)
        if started and os.environ.get("KV_E2E_KEEP") != "1":
            run([LC, "down"], check=False)


# --- pods ---------------------------------------------------------------------------------------
# The container prints one line per file under /kvmnt: FILE <path> <mode> <uid> <gid> <base64>,
# then whether it could write there, then sleeps.
PRINT_FILES = (
    "cd /kvmnt && for f in $(find . -type f -o -type l | sort); do "
    "echo \"FILE ${f#./} $(stat -L -c '%a %u %g' $f) $(base64 -w0 < $f)\"; done; "
    "echo \"DIR $(stat -c '%a %u %g' /kvmnt)\"; "
    "if touch /kvmnt/.probe 2>/dev/null; then echo WRITE ok; else echo WRITE refused; fi; "
    "echo DONE; exec sleep 3600"
)


def kv_pod(name, options, *, ns=NS, fs_group=None, run_as=1000, volume_read_only=False,
           mount_read_only=False, secret_ref=None, labels=None, command=None):
    flex = {"driver": "azure/kv", "options": options}
    if volume_read_only:
        flex["readOnly"] = True
    if secret_ref:
        flex["secretRef"] = {"name": secret_ref}
    sc = {"runAsUser": run_as, "runAsNonRoot": run_as != 0}
    if fs_group is not None:
        sc["fsGroup"] = fs_group
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "kv-e2e"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": sc,
            "containers": [{
                "name": "app",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", command or PRINT_FILES],
                "volumeMounts": [{"name": "kv", "mountPath": "/kvmnt", "readOnly": mount_read_only}],
            }],
            "volumes": [{"name": "kv", "flexVolume": flex}],
        },
    }


def parse_files(log):
    """FILE lines -> {path: (mode, uid, gid, bytes)}; also the DIR and WRITE lines."""
    files, extra = {}, {}
    for line in log.splitlines():
        parts = line.split(" ")
        if parts[0] == "FILE":
            data = base64.b64decode(parts[5]) if len(parts) > 5 and parts[5] else b""
            files[parts[1]] = (parts[2], int(parts[3]), int(parts[4]), data)
        elif parts[0] in ("DIR", "WRITE"):
            extra[parts[0]] = " ".join(parts[1:])
    return files, extra


def secret_value(scenario, name, vault="kvdemo"):
    for v in scenario["vaults"]:
        if v["name"] == vault:
            for s in v.get("secrets", []):
                if s["name"] == name:
                    return s["value"].encode() if "value" in s else s["versions"][-1]["value"].encode()
    raise KeyError(name)
