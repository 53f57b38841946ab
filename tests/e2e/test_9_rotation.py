"""Rotation under a real kubelet: the installer DaemonSet's `kv agent` refreshes a mounted
volume when its secret changes in "Azure", and the pod reads the new value without a restart;
deleting the pod removes the volume's record."""
import copy
import pathlib
import time

from conftest import NS, kv_pod

STATE_DIR = pathlib.Path("/run/kv/volumes")
READ_LOOP = "while true; do echo \"VALUE $(cat /kvmnt/db-password)\"; sleep 0.5; done"


def records_naming(uid):
    if not STATE_DIR.is_dir():
        return []
    return [p for p in STATE_DIR.iterdir() if p.is_file() and uid.encode() in p.read_bytes()]


def test_the_agent_runs_beside_the_installer(cluster):
    out = cluster.kubectl("-n", "kv-system", "get", "pods", "-l", "app.kubernetes.io/name=kv-installer",
                          "-o", "jsonpath={.items[*].status.containerStatuses[?(@.name=='agent')].ready}")
    assert out.split() == ["true"], out


def test_a_pod_sees_the_new_value_without_a_restart(cluster):
    original = copy.deepcopy(cluster.scenario)
    name = "rotating"
    cluster.apply([kv_pod(name, {
        "usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
        "rotationpollinterval": "2s",
    }, command=READ_LOOP)])
    try:
        cluster.wait_running(name)
        uid = cluster.pod_uid(name)
        cluster.wait_log(name, "VALUE s3cr3t-P@ssw0rd")
        assert records_naming(uid), "the mount saved no rotation record"
        # "Azure" gets a new version of the secret.
        doc = copy.deepcopy(cluster.scenario)
        vault = next(v for v in doc["vaults"] if v["name"] == "kvdemo")
        secret = next(s for s in vault["secrets"] if s["name"] == "db-password")
        secret["value"] = "rotated on the cluster"
        changed = time.time()
        cluster.set_scenario(doc)
        log = cluster.wait_log(name, "VALUE rotated on the cluster", timeout=120)
        print(f"\ne2e: the pod read the new value {time.time() - changed:.1f} s after the change")
        # Every read saw one whole value, old or new; the same pod, never restarted.
        values = {line for line in log.splitlines() if line.startswith("VALUE ")}
        assert values <= {"VALUE s3cr3t-P@ssw0rd", "VALUE rotated on the cluster"}, values
        assert cluster.pod_uid(name) == uid
        restarts = cluster.kubectl("-n", NS, "get", "pod", name, "-o",
                                   "jsonpath={.status.containerStatuses[0].restartCount}")
        assert restarts.strip() == "0", restarts
    finally:
        cluster.set_scenario(original)
        cluster.delete_pod(name)
    assert not records_naming(uid), "unmount left the volume's rotation record"
