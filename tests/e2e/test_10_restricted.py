"""10. A namespace enforcing Pod Security "restricted": an inline azure/kv flexVolume is refused
at admission (the message users see is printed); examples/restricted-namespace.yaml as it is
(a PersistentVolume with the flexVolume and its secretRef, a claim bound to it, two restricted
pods on the claim) mounts one tmpfs per pod with the fsGroup's ownership, rotates, and leaves
no mount once the pods are gone."""
import copy
import json
import time

from conftest import LC, ROOT, SP_CLIENT, SP_SECRET, kv_pod, run

EXAMPLE = ROOT / "examples" / "restricted-namespace.yaml"
NS = "kv-demo-restricted"
PV = "kv-demo-restricted-app-secrets"
LABEL = "app=kv-demo-restricted"


def pods(cluster):
    return json.loads(cluster.kubectl("-n", NS, "get", "pods", "-l", LABEL, "-o", "json"))["items"]


def test_inline_flexvolume_is_refused_and_a_pv_works(cluster):
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    try:
        # As the example's header says: the Secret comes from the command line.
        cluster.kubectl("-n", NS, "delete", "secret", "kv-demo-sp")
        cluster.kubectl("-n", NS, "create", "secret", "generic", "kv-demo-sp", "--type=azure/kv",
                        f"--from-literal=clientid={SP_CLIENT}", f"--from-literal=clientsecret={SP_SECRET}")

        # The inline volume, from a pod that is otherwise restricted: refused by admission.
        inline = kv_pod("inline", {"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                                   "keyvaultobjecttypes": "secret", "tenantid": "11111111-2222-3333-4444-555555555555"},
                        ns=NS, secret_ref="kv-demo-sp")
        inline["spec"]["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
        inline["spec"]["containers"][0]["securityContext"] = {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        r = run([LC, "kubectl", "apply", "-f", "-"], input=json.dumps(inline), check=False)
        print(f"\ne2e: an inline azure/kv volume in a restricted namespace: {r.stderr.strip()}")
        assert r.returncode != 0, r.stdout
        assert 'violates PodSecurity "restricted:latest"' in r.stderr, r.stderr
        assert 'restricted volume types (volume "kv" uses restricted volume type "flexVolume")' in r.stderr, r.stderr

        # The example's pods: each its own tmpfs, named by the PV, with the fsGroup's ownership.
        cluster.kubectl("-n", NS, "rollout", "status", "deployment/kv-demo-restricted", "--timeout=180s")
        items = pods(cluster)
        assert len(items) == 2, [p["metadata"]["name"] for p in items]
        uids = [p["metadata"]["uid"] for p in items]
        assert items[0]["spec"]["nodeName"] == items[1]["spec"]["nodeName"]
        want = b"s3cr3t-P@ssw0rd"
        for p in items:
            log = cluster.wait_log(p["metadata"]["name"], "VALUE " + want.decode(), ns=NS)
            # ls -lnL (the files behind the ..data links): 0440 root:2000
            assert any(line.startswith("-r--r-----") and " 0 " in line and " 2000 " in line and "db-password" in line
                       for line in log.splitlines()), log
        mounts = {uid: [m for m in cluster.kv_mounts() if f"/pods/{uid}/volumes/azure~kv/{PV} " in m] for uid in uids}
        assert all(len(m) == 1 for m in mounts.values()), mounts
        # Two mounts, two tmpfs instances (different device numbers), read-only (the mount or
        # the tmpfs itself): kubelet passes the claim's readOnly to kv for a PersistentVolume.
        assert len({m[0].split(" ")[2] for m in mounts.values()}) == 2, mounts

        def read_only(line):
            per_mount, superblock = line.split(" ")[5], line.split(" - ")[1].split(" ")[2]
            return "ro" in (per_mount.split(",")[0], superblock.split(",")[0])
        assert all(read_only(m[0]) for m in mounts.values()), mounts
        for uid in uids:
            f = cluster.volume_dir(uid, PV) / "db-password"
            st = cluster.holder_path(f).stat()
            assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o440", 0, 2000)

        # Rotation of a PV volume: "Azure" gets a new value; every pod reads it, no restart.
        original = copy.deepcopy(cluster.scenario)
        doc = copy.deepcopy(cluster.scenario)
        vault = next(v for v in doc["vaults"] if v["name"] == "kvdemo")
        next(s for s in vault["secrets"] if s["name"] == "db-password")["value"] = "rotated in a PV"
        changed = time.time()
        cluster.set_scenario(doc)
        try:
            for p in items:
                cluster.wait_log(p["metadata"]["name"], "VALUE rotated in a PV", ns=NS, timeout=120)
            print(f"e2e: the PV volume's pods read the new value {time.time() - changed:.1f} s after the change "
                  "(rotationpollinterval 30s)")
        finally:
            cluster.set_scenario(original)
        assert [p["status"]["containerStatuses"][0]["restartCount"] for p in pods(cluster)] == [0, 0]
    finally:
        # The example's shell loop ignores SIGTERM: stop its pods at once rather than after 30 s.
        cluster.kubectl("-n", NS, "delete", "deployment", "kv-demo-restricted", "--ignore-not-found", "--wait=false",
                        check=False)
        cluster.kubectl("-n", NS, "delete", "pods", "-l", LABEL, "--grace-period=1", "--wait=true", check=False,
                        timeout=120)
        cluster.kubectl("delete", "-f", str(EXAMPLE), "--ignore-not-found", "--wait=true", "--timeout=180s",
                        check=False, timeout=240)

    # Gone with the pods: no mount, no rotation record.
    end = time.time() + 90
    while time.time() < end and (any(uid in m for m in cluster.kv_mounts() for uid in uids)
                                 or any(cluster.records_naming(uid) for uid in uids)):
        time.sleep(1)
    assert not [m for m in cluster.kv_mounts() if any(uid in m for uid in uids)]
    assert not any(cluster.records_naming(uid) for uid in uids)
