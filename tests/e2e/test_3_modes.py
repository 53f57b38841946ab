"""3. fsGroup: group and modes as the README promises, and kubelet does not chown (its log).
A readOnly flexVolume and a readOnly volumeMount: nothing in the pod can write the files."""
import pytest

from conftest import NS, kv_pod, parse_files, secret_value

OPTS = {"usevmmanagedidentity": "true", "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;unicode", "keyvaultobjecttypes": "secret;secret"}


@pytest.fixture(scope="module")
def mode_pods(cluster):
    cluster.apply([
        kv_pod("fsgroup", OPTS, fs_group=2000),
        # root in the container (DAC_OVERRIDE): only a read-only mount stops its writes.
        kv_pod("rw-root", OPTS, run_as=0),
        kv_pod("ro-volume", OPTS, run_as=0, volume_read_only=True),
        kv_pod("ro-mount", OPTS, run_as=0, mount_read_only=True),
    ])
    yield
    for name in ("fsgroup", "rw-root", "ro-volume", "ro-mount"):
        cluster.delete_pod(name, wait=False)


def test_fsgroup_files_are_0440_root_fsgroup_and_kubelet_does_not_chown(cluster, mode_pods):
    cluster.wait_running("fsgroup")
    files, extra = parse_files(cluster.wait_log("fsgroup", "DONE"))
    for name in ("db-password", "unicode"):
        assert files[name] == ("440", 0, 2000, secret_value(cluster.scenario, name)), name
    assert extra["DIR"] == "550 0 2000"
    # kv declares fsGroup: false, so kubelet's volume ownership code never runs for it: with
    # -v=4 it would log "Perform recursive ownership change" or "Skipping permission and
    # ownership change" for the volume dir.
    uid = cluster.pod_uid("fsgroup")
    vol = str(cluster.volume_dir(uid, "kv"))
    ownership = [line for line in cluster.kubelet_log().splitlines()
                 if vol in line and ("ownership" in line.lower() or "chmod" in line or "Lchown" in line)]
    assert ownership == [], ownership


def test_without_read_only_root_in_the_pod_can_write(cluster, mode_pods):
    cluster.wait_running("rw-root")
    _, extra = parse_files(cluster.wait_log("rw-root", "DONE"))
    assert extra["WRITE"] == "ok"


@pytest.mark.parametrize("name", ["ro-volume", "ro-mount"])
def test_read_only_volume_or_mount_refuses_writes_in_the_pod(cluster, mode_pods, name):
    cluster.wait_running(name)
    files, extra = parse_files(cluster.wait_log(name, "DONE"))
    assert extra["WRITE"] == "refused"
    assert files["db-password"][3] == secret_value(cluster.scenario, "db-password")


def test_read_only_flexvolume_is_a_read_only_tmpfs_on_the_node(cluster, mode_pods):
    """flexVolume.readOnly (kubernetes.io/readwrite: ro): kv attaches the tmpfs read-only, so
    no container of the pod can alter or fill it (README); a readOnly volumeMount alone only
    protects that one container, the node's tmpfs stays writable."""
    for name, want in (("ro-volume", "ro"), ("ro-mount", "rw")):
        cluster.wait_running(name)
        uid = cluster.pod_uid(name)
        vol = str(cluster.volume_dir(uid, "kv"))
        lines = [line for line in cluster.mountinfo().splitlines() if line.split()[4] == vol]
        assert len(lines) == 1, lines
        # Read-only either per mount (field 6) or for the whole tmpfs (super options after " - ").
        mount_opts = lines[0].split()[5].split(",")
        super_opts = lines[0].split(" - ")[1].split()[2].split(",")
        read_only = "ro" in mount_opts or "ro" in super_opts
        assert read_only == (want == "ro"), (name, lines[0])
