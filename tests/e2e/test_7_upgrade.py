"""7. DaemonSet upgrade (a new image digest, the real path: build, load, apply -k the local
overlay pinned to it) while pods are being created: no mount fails, and the new kv is what the
node runs."""
import shutil
import time

from conftest import LC, ROOT, STATE, kv_pod, parse_files, run, secret_value

OPTS = {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret"}


def test_upgrade_while_pods_mount(cluster, tmp_path):
    # A different build of kv: the same binary with bytes appended (still a valid ELF), so a
    # new layer and a new image digest.
    built = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "kv"
    new_kv = tmp_path / "kv"
    shutil.copy(built, new_kv)
    with open(new_kv, "ab") as f:
        f.write(b"\0kv-e2e-upgrade\0")
    out = tmp_path / "images"
    old_digest = (STATE / "images" / "kv.digest").read_text().strip()
    try:
        run([str(ROOT / "scripts" / "build-images"), "--out", str(out), "--kv", str(new_kv)])
        new_digest = (out / "kv.digest").read_text().strip()
        assert new_digest != old_digest
        run([LC, "load-image", str(out / "kv.tar")])

        names = [f"upgrade-{i}" for i in range(6)]
        cluster.apply([kv_pod(n, OPTS) for n in names[:3]])
        run([LC, "pin-kv", new_digest])
        cluster.kubectl("apply", "-k", str(STATE / "kv-overlay"))
        cluster.apply([kv_pod(n, OPTS) for n in names[3:]])
        for ds in ("kv-installer", "kv-agent"):
            cluster.kubectl("-n", "kv-system", "rollout", "status", f"daemonset/{ds}", "--timeout=180s")

        for n in names:
            cluster.wait_running(n)
            files, _ = parse_files(cluster.wait_log(n, "DONE"))
            assert files["db-password"][3] == secret_value(cluster.scenario, "db-password")
            failed = [m for m in cluster.events(n) if "MountVolume" in m and "failed" in m]
            assert failed == [], (n, failed)

        end = time.time() + 60
        installed = STATE / "volume-plugins" / "azure~kv" / "kv"
        while installed.read_bytes() != new_kv.read_bytes():
            assert time.time() < end, "the new kv never reached the plugin dir"
            time.sleep(1)
        cluster.kubectl("-n", "kv-e2e", "delete", "pod", *names, "--wait=false")
    finally:
        # The generated overlay names the image the cluster's up built again.
        run([LC, "pin-kv", old_digest])
