"""Conformance of kv-emulator with the official Azure SDK for Python (unmodified).

Run inside the emulator's network namespace (root):

    scripts/netns-run emulator/scenarios/example.json -- python3 -m pytest -q tests/conformance

The SDKs talk to the real host names (login.microsoftonline.com, kvdemo.vault.azure.net,
169.254.169.254) which the namespace resolves to the emulator; TLS is trusted through
REQUESTS_CA_BUNDLE (set by netns-run). Challenge-resource verification stays on.
"""

import base64
import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.identity import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    pkcs12,
)

REPO = Path(__file__).resolve().parents[2]
SCENARIO = json.loads((REPO / "emulator/scenarios/example.json").read_text())
TENANT = "11111111-2222-3333-4444-555555555555"
SYSTEM_MI = "00000000-0000-0000-0000-00000000a001"
USER_MI = "00000000-0000-0000-0000-00000000a002"
SP_SECRET = "00000000-0000-0000-0000-00000000a004"
SP_CERT = "00000000-0000-0000-0000-00000000a005"
NO_ACCESS_MI = "00000000-0000-0000-0000-00000000a006"
VAULT = "https://kvdemo.vault.azure.net"
OTHER_VAULT = "https://kvother.vault.azure.net"
SCOPE = "https://vault.azure.net/.default"
# The newest Key Vault api-version the emulator serves (the SDKs' default may be newer).
API = "2025-07-01"

def _in_emulator_namespace() -> bool:
    """netns-run sets KV_EMULATOR_REQUEST_LOG, and its namespace has only a loopback device."""
    if not os.environ.get("KV_EMULATOR_REQUEST_LOG"):
        return False
    devices = [l.split(":")[0].strip() for l in Path("/proc/self/net/dev").read_text().splitlines()[2:]]
    return devices == ["lo"]


if not _in_emulator_namespace():
    # Azure's real host names must never be contacted from the root namespace. Fail, never
    # skip: a skipped suite must not count as passing.
    pytest.exit(
        "run inside the emulator namespace: scripts/netns-run emulator/scenarios/example.json "
        "-- python3 -m pytest -q tests/conformance",
        returncode=2,
    )

for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(var, None)
for var in ("MSI_ENDPOINT", "IDENTITY_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_POD_IDENTITY_AUTHORITY_HOST"):
    os.environ.pop(var, None)


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def spki(key) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def system_mi():
    return ManagedIdentityCredential()


@pytest.fixture(scope="module")
def secrets(system_mi):
    return SecretClient(VAULT, system_mi, api_version=API)


@pytest.fixture(scope="module")
def keys(system_mi):
    return KeyClient(VAULT, system_mi, api_version=API)


@pytest.fixture(scope="module")
def certs(system_mi):
    return CertificateClient(VAULT, system_mi, api_version=API)


# --- credentials -------------------------------------------------------------------------


def test_managed_identity_system(system_mi):
    tok = system_mi.get_token(SCOPE)
    c = claims(tok.token)
    assert c["appid"] == SYSTEM_MI
    assert c["aud"].rstrip("/") == "https://vault.azure.net"
    assert tok.expires_on > c["iat"] + 3600


def test_managed_identity_user_assigned():
    tok = ManagedIdentityCredential(client_id=USER_MI).get_token(SCOPE)
    assert claims(tok.token)["appid"] == USER_MI


def test_managed_identity_unknown_identity_fails():
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id="99999999-0000-0000-0000-000000000000").get_token(SCOPE)


def test_client_secret_credential():
    tok = ClientSecretCredential(TENANT, SP_SECRET, "emulator-sp-secret").get_token(SCOPE)
    assert claims(tok.token)["appid"] == SP_SECRET


def test_client_secret_wrong_secret():
    with pytest.raises(ClientAuthenticationError) as e:
        ClientSecretCredential(TENANT, SP_SECRET, "wrong").get_token(SCOPE)
    assert "AADSTS7000215" in str(e.value)


def test_client_secret_unknown_app():
    with pytest.raises(ClientAuthenticationError) as e:
        ClientSecretCredential(TENANT, "99999999-0000-0000-0000-000000000000", "x").get_token(SCOPE)
    assert "AADSTS700016" in str(e.value)


def test_certificate_credential():
    cred = CertificateCredential(TENANT, SP_CERT, certificate_path=str(REPO / "emulator/scenarios/material/sp-cert.pem"))
    tok = cred.get_token(SCOPE)
    assert claims(tok.token)["appid"] == SP_CERT
    client = SecretClient(VAULT, cred, api_version=API)
    assert client.get_secret("db-password").value == "s3cr3t-P@ssw0rd"


# --- secrets -----------------------------------------------------------------------------


def test_plain_secrets(secrets):
    s = secrets.get_secret("db-password")
    assert s.value == "s3cr3t-P@ssw0rd"
    assert s.properties.content_type == "text/plain"
    assert s.properties.vault_url == VAULT
    assert len(s.properties.version) == 32
    assert secrets.get_secret("multiline").value == "line one\nline two\r\nline three\n"
    assert secrets.get_secret("unicode").value == "pässwörd ✓ 密码 🔑"
    big = secrets.get_secret("big").value
    assert len(big.encode()) == 25600


def test_secret_versions(secrets):
    assert secrets.get_secret("old-and-new").value == "new value"
    assert secrets.get_secret("old-and-new", "0123456789abcdef0123456789abcdef").value == "old value"
    versions = list(secrets.list_properties_of_secret_versions("old-and-new", max_page_size=1))
    assert sorted(v.version for v in versions) == [
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    ]


def test_secret_not_found(secrets):
    with pytest.raises(ResourceNotFoundError) as e:
        secrets.get_secret("does-not-exist")
    assert e.value.status_code == 404
    assert "SecretNotFound" in str(e.value)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret("db-password", "00000000000000000000000000000000")


def test_disabled_secret(secrets):
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret("disabled-secret")
    assert e.value.status_code == 403
    assert "disabled" in str(e.value)


def test_no_access_policy_is_403():
    client = SecretClient(VAULT, ManagedIdentityCredential(client_id=NO_ACCESS_MI), api_version=API)
    with pytest.raises(HttpResponseError) as e:
        client.get_secret("db-password")
    assert e.value.status_code == 403
    assert "does not have secrets get permission" in str(e.value)


def test_second_vault(system_mi):
    client = SecretClient(OTHER_VAULT, system_mi, api_version=API)
    assert client.get_secret("other-secret").value == "from the other vault"


def test_sdk_default_api_version(system_mi):
    # No api_version: whatever the installed SDK sends by default (2026-04-01 today).
    assert SecretClient(VAULT, system_mi).get_secret("db-password").value == "s3cr3t-P@ssw0rd"
    assert KeyClient(VAULT, system_mi).get_key("rsa-key").key.kty == "RSA"


def test_service_principal_reads_secret():
    cred = ClientSecretCredential(TENANT, SP_SECRET, "emulator-sp-secret")
    assert SecretClient(VAULT, cred, api_version=API).get_secret("unicode").value == "pässwörd ✓ 密码 🔑"


def test_list_properties_of_secrets(secrets):
    # Key Vault's list shape: every secret once (certificate-backed ones too), no value, an id
    # without a version, tags, disabled ones marked; pages chained through nextLink.
    vault = SCENARIO["vaults"][0]
    want = {s["name"] for s in vault["secrets"]} | {c["name"] for c in vault["certificates"]}
    listed = {p.name: p for p in secrets.list_properties_of_secrets()}
    assert set(listed) == want
    db = listed["db-password"]
    assert db.tags == {"app": "demo"}
    assert db.content_type == "text/plain"
    assert db.enabled is True
    assert db.version is None
    assert db.vault_url == VAULT
    assert listed["disabled-secret"].enabled is False
    assert listed["web-cert"].managed is True
    pages = [list(page) for page in secrets.list_properties_of_secrets(max_page_size=3).by_page()]
    assert len(pages) == -(-len(want) // 3)
    assert all(1 <= len(p) <= 3 for p in pages)
    assert sorted(p.name for page in pages for p in page) == sorted(want)


def test_list_needs_the_list_permission(system_mi):
    # The system identity may only get secrets of the second vault.
    client = SecretClient(OTHER_VAULT, system_mi, api_version=API)
    with pytest.raises(HttpResponseError) as e:
        list(client.list_properties_of_secrets())
    assert e.value.status_code == 403
    assert "does not have secrets list permission" in str(e.value)


def test_list_properties_of_keys_and_certificates(keys, certs):
    vault = SCENARIO["vaults"][0]
    # A certificate's key is listed too, as managed.
    listed_keys = {k.name: k for k in keys.list_properties_of_keys(max_page_size=1)}
    certificates = {c["name"] for c in vault["certificates"]}
    assert set(listed_keys) == {k["name"] for k in vault["keys"]} | certificates
    assert all(listed_keys[c].managed for c in certificates)
    listed = {c.name: c for c in certs.list_properties_of_certificates()}
    assert set(listed) == {c["name"] for c in vault["certificates"]}
    for name, props in listed.items():
        assert props.x509_thumbprint == certs.get_certificate(name).properties.x509_thumbprint


# --- keys --------------------------------------------------------------------------------


def test_rsa_key(keys):
    k = keys.get_key("rsa-key")
    assert k.key_type == "RSA"
    assert len(k.key.n) == 256 and k.key.e == b"\x01\x00\x01"
    assert keys.get_key("rsa-key", k.properties.version).key.n == k.key.n
    assert [v.version for v in keys.list_properties_of_key_versions("rsa-key")] == [k.properties.version]


def test_ec_keys(keys):
    k = keys.get_key("ec-key")
    assert k.key_type == "EC" and k.key.crv == "P-256"
    assert len(k.key.x) == 32 and len(k.key.y) == 32
    k521 = keys.get_key("ec-p521")
    assert k521.key.crv == "P-521" and len(k521.key.x) == 66


def test_key_not_found(keys):
    with pytest.raises(ResourceNotFoundError):
        keys.get_key("nope")


# --- certificates ------------------------------------------------------------------------


def test_certificate_pfx_consistency(certs, secrets, keys):
    cert = certs.get_certificate("web-cert")
    assert cert.policy.content_type == "application/x-pkcs12"
    leaf = x509.load_der_x509_certificate(cert.cer)
    assert "web.kvdemo.example" in leaf.subject.rfc4514_string()
    by_version = certs.get_certificate_version("web-cert", cert.properties.version)
    assert by_version.cer == cert.cer

    secret = secrets.get_secret("web-cert")
    assert secret.properties.content_type == "application/x-pkcs12"
    assert secret.properties.managed is True
    assert secret.properties.key_id == cert.key_id
    key, pfx_cert, chain = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    assert pfx_cert.public_bytes(Encoding.DER) == cert.cer
    assert spki(key) == spki(pfx_cert)
    assert len(chain) == 2  # intermediate, root
    assert leaf.issuer == chain[0].subject and chain[0].issuer == chain[1].subject

    kv_key = keys.get_key("web-cert")
    assert kv_key.properties.managed is True
    assert int.from_bytes(kv_key.key.n, "big") == leaf.public_key().public_numbers().n


def test_certificate_pem_secret(certs, secrets):
    cert = certs.get_certificate("web-cert-pem")
    assert cert.policy.content_type == "application/x-pem-file"
    secret = secrets.get_secret("web-cert-pem")
    assert secret.properties.content_type == "application/x-pem-file"
    assert secret.value.startswith("-----BEGIN PRIVATE KEY-----")
    key = load_pem_private_key(secret.value.encode(), None)
    chain = x509.load_pem_x509_certificates(secret.value.encode())
    assert chain[0].public_bytes(Encoding.DER) == cert.cer
    assert spki(key) == spki(chain[0])
    assert len(chain) == 3


def test_pfx_to_pem_conversion(secrets):
    s = secrets.get_secret("web-cert", out_content_type="application/x-pem-file")
    assert s.properties.content_type == "application/x-pem-file"
    key = load_pem_private_key(s.value.encode(), None)
    chain = x509.load_pem_x509_certificates(s.value.encode())
    assert spki(key) == spki(chain[0])


def test_certificate_not_found(certs):
    with pytest.raises(ResourceNotFoundError) as e:
        certs.get_certificate("nope")
    assert "CertificateNotFound" in str(e.value)


# --- workload identity (federated credentials) and certificate credentials ----------------

ISSUER = "https://oidc.kv-emulator.test/cluster"
WI_APP = "00000000-0000-0000-0000-00000000a007"
WI_MI = "00000000-0000-0000-0000-00000000a008"
ISSUER_KEY = REPO / "emulator/scenarios/material/issuer-key.pem"
SP_CERT_PEM = REPO / "emulator/scenarios/material/sp-cert.pem"


def mint(*args: str) -> str:
    """A service-account token from the emulator's test issuer (`kv-emulator mint-token`)."""
    binary = os.environ.get("KV_EMULATOR_BIN") or str(REPO / "target/debug/kv-emulator")
    out = subprocess.run(
        [binary, "mint-token", "--key", str(ISSUER_KEY), "--issuer", ISSUER, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def token_file(tmp_path, *args: str) -> str:
    f = tmp_path / "azure-identity-token"
    f.write_text(mint(*args))
    return str(f)


def test_workload_identity_credential(tmp_path):
    path = token_file(tmp_path, "--namespace", "demo", "--service-account", "workload", "--pod-name", "demo-pod", "--pod-uid", "11111111-aaaa-bbbb-cccc-000000000001")
    cred = WorkloadIdentityCredential(tenant_id=TENANT, client_id=WI_APP, token_file_path=path)
    tok = cred.get_token(SCOPE)
    assert claims(tok.token)["appid"] == WI_APP
    assert SecretClient(VAULT, cred, api_version=API).get_secret("db-password").value == "s3cr3t-P@ssw0rd"


def test_workload_identity_user_assigned_identity(tmp_path):
    path = token_file(tmp_path, "--namespace", "demo", "--service-account", "workload-mi")
    cred = WorkloadIdentityCredential(tenant_id=TENANT, client_id=WI_MI, token_file_path=path)
    assert SecretClient(VAULT, cred, api_version=API).get_secret("unicode").value == "pässwörd ✓ 密码 🔑"


def test_workload_identity_wrong_subject(tmp_path):
    path = token_file(tmp_path, "--namespace", "other-ns", "--service-account", "workload")
    cred = WorkloadIdentityCredential(tenant_id=TENANT, client_id=WI_APP, token_file_path=path)
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token(SCOPE)
    assert "AADSTS700213" in str(e.value)
    assert "system:serviceaccount:other-ns:workload" in str(e.value)


def test_workload_identity_expired_token(tmp_path):
    path = token_file(tmp_path, "--namespace", "demo", "--service-account", "workload", "--issued-offset", "-7200", "--ttl", "3600")
    cred = WorkloadIdentityCredential(tenant_id=TENANT, client_id=WI_APP, token_file_path=path)
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token(SCOPE)
    assert "AADSTS700024" in str(e.value)


def test_client_assertion_credential():
    cred = ClientAssertionCredential(TENANT, WI_APP, lambda: mint("--namespace", "demo", "--service-account", "workload"))
    assert claims(cred.get_token(SCOPE).token)["appid"] == WI_APP
    assert SecretClient(VAULT, cred, api_version=API).get_secret("multiline").value == "line one\nline two\r\nline three\n"


def test_client_assertion_wrong_audience():
    cred = ClientAssertionCredential(
        TENANT, WI_APP, lambda: mint("--namespace", "demo", "--service-account", "workload", "--aud", "api://not-azure")
    )
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token(SCOPE)
    assert "AADSTS700212" in str(e.value)


def test_certificate_credential_pfx(tmp_path):
    pem = SP_CERT_PEM.read_bytes()
    key = load_pem_private_key(pem, None)
    cert = x509.load_pem_x509_certificate(pem)
    pfx = tmp_path / "sp-cert.pfx"
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(b"sp", key, cert, None, BestAvailableEncryption(b"pfx-pass")))
    cred = CertificateCredential(TENANT, SP_CERT, certificate_path=str(pfx), password="pfx-pass")
    assert claims(cred.get_token(SCOPE).token)["appid"] == SP_CERT
    assert SecretClient(VAULT, cred, api_version=API).get_secret("db-password").value == "s3cr3t-P@ssw0rd"


def test_certificate_credential_unregistered_certificate(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "not-registered")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "other.pem"
    path.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + cert.public_bytes(Encoding.PEM)
    )
    with pytest.raises(ClientAuthenticationError) as e:
        CertificateCredential(TENANT, SP_CERT, certificate_path=str(path)).get_token(SCOPE)
    assert "AADSTS700027" in str(e.value)
