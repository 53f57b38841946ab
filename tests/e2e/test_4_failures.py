"""4. Failures as a user sees them: the pod stays ContainerCreating and its events carry kv's
code and message; fixing the cause (in the emulator, i.e. in "Azure") lets kubelet's retry
succeed."""
import copy

import pytest

from conftest import NS, POD_IDENTITY_CLIENT, kv_pod, parse_files

POD_ID = {"usepodidentity": "true", "keyvaultname": "kvdemo"}


@pytest.fixture(scope="module")
def failing_pods(cluster):
    cluster.apply([
        kv_pod("wrong-vault", {"usevmmanagedidentity": "true", "keyvaultname": "nosuchvault",
                               "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret"}),
        kv_pod("missing-object", {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
                                  "keyvaultobjectnames": "added-later", "keyvaultobjecttypes": "secret"}),
        kv_pod("unbound", dict(POD_ID, keyvaultobjectnames="db-password", keyvaultobjecttypes="secret")),
    ])
    yield
    for name in ("wrong-vault", "missing-object", "unbound"):
        cluster.delete_pod(name, wait=False)


def pending(cluster, name):
    pod = cluster.get("pod", name)
    assert pod["status"]["phase"] == "Pending", pod["status"]
    waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting", {})
    assert waiting.get("reason") == "ContainerCreating", pod["status"]


@pytest.mark.parametrize("name,code,names", [
    ("wrong-vault", "KV_", "nosuchvault"),
    ("missing-object", "KV404_NOT_FOUND", "added-later"),
    ("unbound", "KV_NMI_NO_IDENTITY", f"{NS}/unbound"),
])
def test_failure_shows_the_kv_code_in_the_pods_events(cluster, failing_pods, name, code, names):
    msgs = cluster.wait_event(name, code, timeout=180)
    assert any(names in m for m in msgs), msgs
    assert all("mount command failed, status: Failure, reason: KV" in m for m in msgs), msgs
    pending(cluster, name)
    assert code in cluster.describe(name)


def test_fixing_the_cause_lets_the_retry_succeed(cluster, failing_pods):
    # Wait until both have failed at least once, then change "Azure": the secret appears and
    # NMI gets a binding for the unbound pod (what MIC does when an AzureIdentityBinding
    # selects it).
    cluster.wait_event("missing-object", "KV404_NOT_FOUND", timeout=180)
    cluster.wait_event("unbound", "KV_NMI_NO_IDENTITY", timeout=180)
    doc = copy.deepcopy(cluster.scenario)
    vault = next(v for v in doc["vaults"] if v["name"] == "kvdemo")
    vault["secrets"].append({"name": "added-later", "value": "there now"})
    doc["nmi"]["bindings"].append({"namespace": NS, "pod": "unbound", "client_id": POD_IDENTITY_CLIENT})
    cluster.set_scenario(doc)
    # kubelet retries with a backoff of up to ~2 minutes.
    cluster.wait_running("missing-object", timeout=300)
    cluster.wait_running("unbound", timeout=300)
    files, _ = parse_files(cluster.wait_log("missing-object", "DONE"))
    assert files["added-later"][3] == b"there now"
    files, _ = parse_files(cluster.wait_log("unbound", "DONE"))
    assert files["db-password"][3] == b"s3cr3t-P@ssw0rd"
    pending(cluster, "wrong-vault")
