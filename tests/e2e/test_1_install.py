"""1. Install: the DaemonSets roll out from the locally built image (by digest), kv lands in
kubelet's plugin dir with the right mode and kv.json, and kubelet probed azure/kv and ran init.
The installer runs without the node's network; only the agent has it."""
import os

from conftest import ROOT, STATE

PLUGIN = STATE / "volume-plugins" / "azure~kv"


def test_daemonset_installs_kv_and_kubelet_loads_it(cluster):
    ds = cluster.get("daemonset", "kv-installer", "kv-system")
    assert ds["status"].get("numberReady") == 1, ds["status"]
    assert ds["status"].get("updatedNumberScheduled") == 1, ds["status"]
    digest = (STATE / "images" / "kv.digest").read_text().strip()
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"kv-local/kv@{digest}", image

    pods = cluster.daemonset_pods("kv-installer")
    assert len(pods) == 1
    assert not pods[0]["spec"].get("hostNetwork"), "the installer must not share the node's network"
    agents = cluster.daemonset_pods("kv-agent")
    assert [a["spec"].get("hostNetwork") for a in agents] == [True]
    assert agents[0]["spec"]["containers"][0]["image"] == f"kv-local/kv@{digest}"
    status = pods[0]["status"]["containerStatuses"][0]
    assert status["ready"] and status["imageID"].endswith(digest), status
    log = cluster.logs(pods[0]["metadata"]["name"], "kv-system")
    assert f"to /flexvolume/azure~kv/kv" in log, log

    # The driver dir: root-owned 0755, kv 0755 with the image's bytes, kv.json from the ConfigMap.
    st = os.stat(PLUGIN)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
    kv = PLUGIN / "kv"
    st = os.stat(kv)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
    built = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "kv"
    assert kv.read_bytes() == built.read_bytes()
    cm = cluster.get("configmap", "kv-config", "kv-system")
    conf = PLUGIN / "kv.json"
    assert conf.read_text() == cm["data"]["kv.json"]
    assert os.stat(conf).st_mode & 0o7777 == 0o644
    # Only kv's driver dir is in the container, not the rest of the plugin dir.
    assert sorted(p.name for p in (STATE / "volume-plugins").iterdir()) == ["azure~kv"]

    # kubelet's prober found the driver and its `init` succeeded (a failed init is logged as
    # an error and the plugin is not loaded).
    klog = cluster.kubelet_log()
    assert '"Loaded volume plugin" pluginName="azure/kv"' in klog
    assert "Error initializing dynamically probed plugin" not in klog
