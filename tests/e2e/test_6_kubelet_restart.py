"""6. kubelet restarted while pods with kv volumes run: the pods keep their files; deleting
them afterwards still unmounts cleanly."""
import base64
import time

from conftest import LC, kv_pod, parse_files, run, secret_value

OPTS = {"usepodidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;multiline", "keyvaultobjecttypes": "secret;secret"}


def test_pods_keep_their_files_across_a_kubelet_restart(cluster):
    names = ["restart-a", "restart-b"]
    cluster.apply([kv_pod(n, OPTS) for n in names])
    before = {}
    for n in names:
        cluster.wait_running(n)
        before[n] = (cluster.pod_uid(n), parse_files(cluster.wait_log(n, "DONE"))[0])
    mounts_before = sorted(m.split()[4] for m in cluster.kv_mounts())

    run([LC, "restart-kubelet"])
    time.sleep(15)  # kubelet resyncs its pods and volumes

    assert sorted(m.split()[4] for m in cluster.kv_mounts()) == mounts_before
    for n in names:
        pod = cluster.wait_running(n)
        assert pod["metadata"]["uid"] == before[n][0]
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        # base64: the bytes exactly (multiline has \r\n), through kubectl's text output.
        now = cluster.kubectl("-n", "kv-e2e", "exec", n, "--", "sh", "-c",
                              "cat /kvmnt/db-password /kvmnt/multiline | base64 -w0")
        assert base64.b64decode(now) == \
            secret_value(cluster.scenario, "db-password") + secret_value(cluster.scenario, "multiline")

    cluster.kubectl("-n", "kv-e2e", "delete", "pod", *names, "--wait=true", "--timeout=120s")
    for n in names:
        uid = before[n][0]
        end = time.time() + 60
        while any(uid in m for m in cluster.kv_mounts()) or cluster.volume_dir(uid, "kv").exists():
            assert time.time() < end, [m for m in cluster.kv_mounts() if uid in m]
            time.sleep(1)
