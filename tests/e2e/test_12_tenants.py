"""One tenant cannot stop rotation for another, under a real kubelet: a hostile pod plants a
FIFO in its own rotating volume (as root in its container), and a pod of another namespace
still sees its secret rotate; the hostile pod's volume still unmounts when it is deleted."""
import copy
import time

from conftest import NS, kv_pod

VICTIM_NS = "kv-demo"
READ_LOOP = "while true; do echo \"VALUE $(cat /kvmnt/db-password)\"; sleep 0.5; done"
PLANT = ("mkfifo /kvmnt/..data/fifo && echo PLANTED || echo PLANT-FAILED; "
         "while true; do sleep 1; done")


def test_a_fifo_in_one_tenants_volume_does_not_stop_anothers_rotation(cluster):
    original = copy.deepcopy(cluster.scenario)
    cluster.kubectl("create", "namespace", VICTIM_NS, check=False)
    options = {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
               "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
               "rotationpollinterval": "2s"}
    hostile = kv_pod("hostile-fifo", options, run_as=0, command=PLANT)
    victim = kv_pod("victim", options, ns=VICTIM_NS, command=READ_LOOP)
    cluster.apply([hostile, victim])
    try:
        cluster.wait_running("hostile-fifo")
        cluster.wait_log("hostile-fifo", "PLANTED")
        cluster.wait_running("victim", ns=VICTIM_NS)
        cluster.wait_log("victim", "VALUE s3cr3t-P@ssw0rd", ns=VICTIM_NS)
        # Let the agent meet the FIFO (2 s interval) before the secret changes.
        time.sleep(6)
        doc = copy.deepcopy(cluster.scenario)
        vault = next(v for v in doc["vaults"] if v["name"] == "kvdemo")
        secret = next(s for s in vault["secrets"] if s["name"] == "db-password")
        secret["value"] = "rotated past the fifo"
        changed = time.time()
        cluster.set_scenario(doc)
        cluster.wait_log("victim", "VALUE rotated past the fifo", ns=VICTIM_NS, timeout=90)
        print(f"\ne2e: the victim read the new value {time.time() - changed:.1f} s after the change")
        # The hostile pod's volume unmounts (kubelet calls kv unmount once the pod is gone):
        # the pod does not hang in Terminating, and its tmpfs and the agent's mount go.
        uid = cluster.pod_uid("hostile-fifo")
        started = time.time()
        cluster.delete_pod("hostile-fifo", timeout=90)
        while any(uid in line for line in cluster.kv_mounts()) and time.time() - started < 90:
            time.sleep(0.5)
        assert not any(uid in line for line in cluster.kv_mounts()), "the hostile volume is still mounted"
        print(f"e2e: the hostile pod's volume was unmounted {time.time() - started:.1f} s after its deletion")
    finally:
        cluster.set_scenario(original)
        cluster.delete_pod("hostile-fifo", wait=False)
        cluster.delete_pod("victim", ns=VICTIM_NS)
