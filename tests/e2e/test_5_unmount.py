"""5. Deleting pods unmounts: no kv tmpfs left, the volume dir gone; also for a pod deleted
while its mount was still failing, and for several pods mounting at once."""
import time

from conftest import kv_pod

OPTS = {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;big", "keyvaultobjecttypes": "secret;secret"}


def gone(cluster, uid, timeout=60):
    vol = cluster.volume_dir(uid, "kv")
    end = time.time() + timeout
    while time.time() < end:
        if not any(uid in line for line in cluster.kv_mounts()) and not vol.exists():
            return
        time.sleep(1)
    raise AssertionError(f"after deletion: mounts {[m for m in cluster.kv_mounts() if uid in m]}, dir exists {vol.exists()}")


def test_deleting_a_running_pod_unmounts(cluster):
    cluster.apply([kv_pod("unmount-me", OPTS)])
    cluster.wait_running("unmount-me")
    uid = cluster.pod_uid("unmount-me")
    assert [line for line in cluster.kv_mounts() if uid in line], "mounted while running"
    cluster.delete_pod("unmount-me")
    gone(cluster, uid)


def test_deleting_a_pod_whose_mount_is_failing_leaves_nothing(cluster):
    cluster.apply([kv_pod("still-failing", dict(OPTS, keyvaultobjectnames="never-there", keyvaultobjecttypes="secret"))])
    uid = cluster.pod_uid("still-failing")
    cluster.wait_event("still-failing", "KV404_NOT_FOUND")
    cluster.delete_pod("still-failing")
    gone(cluster, uid)


def test_several_pods_mounting_at_once_all_unmount(cluster):
    names = [f"many-{i}" for i in range(6)]
    cluster.apply([kv_pod(n, OPTS) for n in names])
    uids = [cluster.pod_uid(n) for n in names]
    for n in names:
        cluster.wait_running(n)
    for uid in uids:
        assert [line for line in cluster.kv_mounts() if uid in line], uid
    cluster.kubectl("-n", "kv-e2e", "delete", "pod", *names, "--wait=true", "--timeout=120s")
    for uid in uids:
        gone(cluster, uid)


def test_no_kv_tmpfs_outlives_its_pod(cluster):
    """Every kv tmpfs on the node belongs to a pod that still exists."""
    import json
    pods = json.loads(cluster.kubectl("get", "pods", "-A", "-o", "json"))["items"]
    live = {p["metadata"]["uid"] for p in pods}
    for line in cluster.kv_mounts():
        uid = line.split()[4].split("/pods/")[1].split("/")[0]
        assert uid in live, line
