"""11. kv installed with Helm (charts/kv, Helm 4 built pinned): `helm install` with the image by
digest, a pod mounts; `helm upgrade` with a changed `config:` rolls both DaemonSets, the node gets
the new kv.json (a new mount obeys it) and the running pod keeps its files; `helm uninstall`
removes every object it made while kv stays in the plugin dir, and kubelet still unmounts the
running pod's volume with it. The kustomize install `up` made is handed over first and restored
after."""
import json
import time

from conftest import ROOT, STATE, kv_pod, parse_files, secret_value

HNS = "kv-helm"
PLUGIN = STATE / "volume-plugins" / "azure~kv"
VALUES = ["-f", str(ROOT / "tests" / "e2e" / "local-values.yaml"), "-f", str(STATE / "kv-values.yaml")]
OPTS = {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret"}
KINDS = "daemonsets,configmaps,serviceaccounts,roles,rolebindings,secrets"


def rolled_out(cluster, ns):
    for ds in ("kv-installer", "kv-agent"):
        cluster.kubectl("-n", ns, "rollout", "status", f"daemonset/{ds}", "--timeout=180s", timeout=240)


def kv_pods(cluster, ns):
    return {p["metadata"]["uid"] for name in ("kv-installer", "kv-agent") for p in cluster.daemonset_pods(name, ns)}


def wait_until(what, check, timeout=120):
    end = time.time() + timeout
    while not check():
        assert time.time() < end, what
        time.sleep(1)


def test_helm_install_upgrade_uninstall(cluster):
    digest = (STATE / "images" / "kv.digest").read_text().strip()
    # One installer per node: the kustomize install's DaemonSets go first (kv stays installed).
    cluster.kubectl("-n", "kv-system", "delete", "daemonset", "kv-installer", "kv-agent", "--wait=true")
    wait_until("the kustomize install's pods never went away", lambda: not kv_pods(cluster, "kv-system"))
    installed = True
    try:
        out = cluster.helm("install", "kv", str(ROOT / "charts" / "kv"), "-n", HNS, "--create-namespace",
                           *VALUES).stdout
        assert f"kubectl -n {HNS} rollout status daemonset/kv-installer" in out, out  # NOTES.txt
        rolled_out(cluster, HNS)
        for name in ("kv-installer", "kv-agent"):
            ds = cluster.get("daemonset", name, HNS)
            assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == f"kv-local/kv@{digest}"
            assert ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        config = json.loads(cluster.get("configmap", "kv-config", HNS)["data"]["kv.json"])
        wait_until("the chart's kv.json never reached the node",
                   lambda: json.loads((PLUGIN / "kv.json").read_text()) == config)

        before = "helm-before"
        cluster.apply([kv_pod(before, OPTS)])
        cluster.wait_running(before)
        files, _ = parse_files(cluster.wait_log(before, "DONE"))
        assert files["db-password"][3] == secret_value(cluster.scenario, "db-password")
        uid = cluster.pod_uid(before)

        # Upgrade: a changed config rolls both DaemonSets and reaches the node.
        old_pods = kv_pods(cluster, HNS)
        cluster.helm("upgrade", "kv", str(ROOT / "charts" / "kv"), "-n", HNS, *VALUES,
                     "--set-json", 'config.policy.vaultsByNamespace={"kv-e2e":["kv-other"]}')
        rolled_out(cluster, HNS)
        wait_until("the DaemonSets did not roll", lambda: not (kv_pods(cluster, HNS) & old_pods))
        wait_until("the new kv.json never reached the node", lambda: json.loads((PLUGIN / "kv.json").read_text())
                   .get("policy", {}).get("vaultsByNamespace") == {"kv-e2e": ["kv-other"]})
        # A new mount obeys it...
        after = "helm-after"
        cluster.apply([kv_pod(after, OPTS)])
        msgs = cluster.wait_event(after, "KV_POLICY")
        assert any("vaultsByNamespace" in m for m in msgs), msgs
        # ...and the running pod keeps its files.
        assert cluster.holder_path(cluster.volume_dir(uid, "kv") / "db-password").read_bytes() == files["db-password"][3]
        assert cluster.get("pod", before)["status"]["containerStatuses"][0]["restartCount"] == 0

        # Uninstall: every object the chart made is gone; kv stays on the node.
        kv_bytes = (PLUGIN / "kv").read_bytes()
        cluster.helm("uninstall", "kv", "-n", HNS)
        installed = False
        left = cluster.kubectl("-n", HNS, "get", KINDS, "-l", "app.kubernetes.io/part-of=kv", "-o", "name")
        assert left.strip() == "", left
        releases = cluster.kubectl("-n", HNS, "get", "secrets", "-l", "owner=helm", "-o", "name")
        assert releases.strip() == "", releases
        wait_until("the chart's pods never went away", lambda: not kv_pods(cluster, HNS))
        assert (PLUGIN / "kv").read_bytes() == kv_bytes and (PLUGIN / "kv.json").is_file()
        # kubelet still has the driver for the running pod's volume.
        cluster.delete_pod(before)
        wait_until("kubelet never unmounted the pod's volume after the uninstall",
                   lambda: not [m for m in cluster.kv_mounts() if uid in m], timeout=90)
    finally:
        if installed:
            cluster.helm("uninstall", "kv", "-n", HNS, check=False)
        cluster.kubectl("-n", "kv-e2e", "delete", "pod", "helm-before", "helm-after", "--ignore-not-found",
                        "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", HNS, "--ignore-not-found", "--wait=false", check=False)
        # The kustomize install again, as `up` left it.
        cluster.kubectl("apply", "-k", str(STATE / "kv-overlay"))
        rolled_out(cluster, "kv-system")
