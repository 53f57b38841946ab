"""2. One pod per identity mode; each prints its files' bytes, modes and owners, compared with
what the emulator holds. The emulator's request log shows which identity read the vault."""
import subprocess

import pytest

from conftest import NS, POD_IDENTITY_CLIENT, SP_CLIENT, SP_SECRET, USER_MI_CLIENT, kv_pod, parse_files, secret_value

OBJECTS = {
    "keyvaultname": "kvdemo",
    "keyvaultobjectnames": "db-password;multiline;unicode;web-cert",
    "keyvaultobjecttypes": "secret;secret;secret;cert",
}
SYSTEM_CLIENT = "00000000-0000-0000-0000-00000000a001"
MODES = {
    "pod-identity": ({"usepodidentity": "true"}, None, POD_IDENTITY_CLIENT),
    "node-system": ({"usevmmanagedidentity": "true"}, None, SYSTEM_CLIENT),
    "node-user": ({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI_CLIENT}, None, USER_MI_CLIENT),
    "service-principal": ({"tenantid": "11111111-2222-3333-4444-555555555555"}, "kv-e2e-sp", SP_CLIENT),
}


@pytest.fixture(scope="module")
def identity_pods(cluster):
    cluster.apply([{
        "apiVersion": "v1", "kind": "Secret", "type": "azure/kv",
        "metadata": {"name": "kv-e2e-sp", "namespace": NS},
        "stringData": {"clientid": SP_CLIENT, "clientsecret": SP_SECRET},
    }])
    cluster.apply([kv_pod(name, dict(OBJECTS, **opts), secret_ref=ref) for name, (opts, ref, _) in MODES.items()])
    yield
    for name in MODES:
        cluster.delete_pod(name, wait=False)


@pytest.mark.parametrize("name", list(MODES))
def test_identity_mode_mounts_the_vault(cluster, identity_pods, name):
    cluster.wait_running(name)
    files, extra = parse_files(cluster.wait_log(name, "DONE"))
    assert sorted(files) == ["db-password", "multiline", "unicode", "web-cert"], files
    for secret in ("db-password", "multiline", "unicode"):
        # No fsGroup: 0444 root:root in a 0555 tmpfs (README, "Modes and ownership").
        assert files[secret] == ("444", 0, 0, secret_value(cluster.scenario, secret)), secret
    mode, uid, gid, pem = files["web-cert"]
    assert (mode, uid, gid) == ("444", 0, 0)
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True).stdout
    assert b"CN = web.kvdemo.example" in subject or b"CN=web.kvdemo.example" in subject, pem[:200]
    assert extra["DIR"] == "555 0 0"
    assert extra["WRITE"] == "refused"

    client = MODES[name][2]
    reads = [r for r in cluster.emulator_requests()
             if r.get("endpoint") == "keyvault" and r.get("client_id") == client and "/secrets/db-password" in r.get("path", "")]
    assert reads and all(r["status"] == 200 for r in reads[-1:]), reads[-3:]


def test_service_principal_secret_is_nowhere_in_kubelet_log(cluster, identity_pods):
    cluster.wait_running("service-principal")
    assert SP_SECRET not in cluster.kubelet_log()
