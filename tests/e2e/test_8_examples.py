"""8. Every manifest in examples/ applied as it is works, with the emulator's identities:
the pod-identity binding is in the scenario (conftest.py), the service principal's Secret is
re-created with the emulator's client secret as the example says to, and the Deployment's pods
get their NMI bindings once their names exist (what MIC would do)."""
import copy
import json
import subprocess
import time

import pytest

from conftest import POD_IDENTITY_CLIENT, ROOT, SP_CLIENT, SP_SECRET

# restricted-namespace.yaml has its own namespace, claims and Deployment: test_10_restricted.py.
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml") if p.name != "restricted-namespace.yaml")
NS = "kv-demo"
# Needs the workload-identity mutating webhook, which the local cluster does not run: without
# it the pod gets no azure-identity-token volume, and what a user then sees is pinned here.
NEEDS_WEBHOOK = {"workload-identity.yaml"}


def pods_of(cluster, path):
    import yaml
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / path).read_text()) if d]
    return [d["metadata"]["name"] for d in docs if d["kind"] == "Pod"], \
        [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_applies_as_is_and_mounts(cluster, example):
    cluster.kubectl("apply", "-f", str(ROOT / "examples" / example))
    pods, deployments = pods_of(cluster, example)
    if example == "service-principal.yaml":
        # As the example's header says: the Secret comes from the command line.
        cluster.kubectl("-n", NS, "delete", "secret", "kv-demo-sp")
        cluster.kubectl("-n", NS, "create", "secret", "generic", "kv-demo-sp", "--type=azure/kv",
                        f"--from-literal=clientid={SP_CLIENT}", f"--from-literal=clientsecret={SP_SECRET}")
    if example in NEEDS_WEBHOOK:
        try:
            for p in pods:
                msgs = cluster.wait_event(p, "KV_SA_TOKEN", NS, timeout=120)
                assert any("azure-identity-token" in m and "webhook" in m for m in msgs), msgs
        finally:
            for p in pods:
                cluster.delete_pod(p, NS)
        return
    for d in deployments:
        sel = cluster.get("deployment", d, NS)["spec"]["selector"]["matchLabels"]
        label = ",".join(f"{k}={v}" for k, v in sel.items())
        end = time.time() + 60
        names = []
        while len(names) < cluster.get("deployment", d, NS)["spec"]["replicas"]:
            assert time.time() < end
            time.sleep(1)
            names = [p["metadata"]["name"] for p in json.loads(
                cluster.kubectl("-n", NS, "get", "pods", "-l", label, "-o", "json"))["items"]]
        doc = copy.deepcopy(cluster.scenario)
        doc["nmi"]["bindings"] += [{"namespace": NS, "pod": n, "client_id": POD_IDENTITY_CLIENT} for n in names]
        cluster.set_scenario(doc)
        pods += names
    try:
        for p in pods:
            cluster.wait_running(p, NS, timeout=300)
            uid = cluster.pod_uid(p, NS)
            assert [m for m in cluster.kv_mounts() if uid in m], p
        for d in deployments:
            cluster.kubectl("-n", NS, "rollout", "status", f"deployment/{d}", "--timeout=120s")
        if example == "nginx-tls.yaml":
            # nginx serves TLS with the certificate and key kv wrote: ask it, from the node.
            for p in pods:
                ip = cluster.get("pod", p, NS)["status"]["podIP"]
                out = subprocess.run(["nsenter", "-t", cluster.holder(), "-n", "curl", "-sk", "--max-time", "10",
                                      "-w", "\n%{ssl_verify_result}", f"https://{ip}/"],
                                     capture_output=True, text=True)
                assert out.stdout.startswith("hello over TLS"), (p, out.stdout, out.stderr)
                cert = subprocess.run(["nsenter", "-t", cluster.holder(), "-n", "sh", "-c",
                                       f"openssl s_client -connect {ip}:443 </dev/null 2>/dev/null | openssl x509 -noout -subject"],
                                      capture_output=True, text=True).stdout
                assert "web.kvdemo.example" in cert, cert
    finally:
        # Not the Namespace: the next example applies into it.
        for d in deployments:
            cluster.kubectl("-n", NS, "delete", "deployment", d, "--ignore-not-found", "--wait=true")
        for p in pods:
            cluster.delete_pod(p, NS)
