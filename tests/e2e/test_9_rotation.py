"""Rotation under a real kubelet: the kv-agent DaemonSet's `kv agent` refreshes a mounted
volume when its secret changes in "Azure", and the pod reads the new value without a restart;
deleting the pod removes the volume's record. The agent sees kubelet's pods dir read-only and
the volume's tmpfs writable (it writes the new version through it)."""
import copy
import time

from conftest import NS, STATE, kv_pod

READ_LOOP = "while true; do echo \"VALUE $(cat /kvmnt/db-password)\"; sleep 0.5; done"


def test_the_agent_runs_beside_the_installer(cluster):
    out = cluster.kubectl("-n", "kv-system", "get", "pods", "-l", "app.kubernetes.io/name=kv-agent",
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
        assert cluster.records_naming(uid), "the mount saved no rotation record"
        # Least privilege: kubelet's pods dir is read-only in the agent's container; the kv tmpfs
        # kubelet mounted under it after the agent started arrived with its own (rw) flags.
        mounts = dict(cluster.agent_mountinfo())
        pods_dir = str(STATE / "kubelet" / "pods")
        volume = str(cluster.volume_dir(uid, "kv"))
        assert mounts[pods_dir].split(",")[0] == "ro", mounts[pods_dir]
        assert mounts[volume].split(",")[0] == "rw", mounts.get(volume)
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
    # kubelet unmounts after the pod object is gone, asynchronously.
    end = time.time() + 90
    while cluster.records_naming(uid) and time.time() < end:
        time.sleep(1)
    assert not cluster.records_naming(uid), "unmount left the volume's rotation record"
