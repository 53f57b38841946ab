//! Tests of the emulator over real HTTP/TLS: in-process servers on loopback ephemeral ports,
//! plus a few network-namespace tests (root and a built emulator binary required; they fail otherwise).

use kv_emulator::scenario::Scenario;
use kv_emulator::{Emulator, Options};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const SYSTEM: &str = "00000000-0000-0000-0000-00000000a001";
const USER: &str = "00000000-0000-0000-0000-00000000a002";
const POD: &str = "00000000-0000-0000-0000-00000000a003";
const SP: &str = "00000000-0000-0000-0000-00000000a004";
const SP_CERT: &str = "00000000-0000-0000-0000-00000000a005";
const NO_ACCESS: &str = "00000000-0000-0000-0000-00000000a006";
const SP_SECRET: &str = "emulator-sp-secret";

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn example_value() -> Value {
    let text = std::fs::read_to_string(scenarios_dir().join("example.json")).expect("example.json");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["material_dir"] = json!(scenarios_dir().to_string_lossy());
    v
}

struct T {
    emu: Emulator,
    http: reqwest::Client,
    log: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("kv-emulator-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

async fn start(v: Value) -> T {
    let dir = temp_dir();
    let log = dir.0.join("requests.jsonl");
    let scenario = Scenario::from_value(v, &scenarios_dir()).expect("scenario");
    let mut opts = Options::local(scenario);
    opts.request_log = Some(log.clone());
    let emu = Emulator::start(opts).await.expect("start");
    let mut roots = rustls::RootCertStore::empty();
    for (_, der) in kv_emulator::util::pem_blocks(&emu.ca_pem) {
        roots.add(der.into()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .no_proxy()
        .timeout(Duration::from_secs(5));
    for h in [
        "login.microsoftonline.com",
        "login.chinacloudapi.cn",
        "kvdemo.vault.azure.net",
        "kvother.vault.azure.net",
        "kvchina.vault.azure.cn",
    ] {
        b = b.resolve(h, emu.endpoints.https);
    }
    T {
        http: b.build().expect("client"),
        emu,
        log,
        _dir: dir,
    }
}

impl T {
    fn kv(&self, path: &str) -> String {
        format!(
            "https://kvdemo.vault.azure.net:{}{path}",
            self.emu.endpoints.https.port()
        )
    }
    fn aad(&self, path: &str) -> String {
        format!(
            "https://login.microsoftonline.com:{}{path}",
            self.emu.endpoints.https.port()
        )
    }
    fn imds(&self, query: &str) -> String {
        format!(
            "http://{}/metadata/identity/oauth2/token?{query}",
            self.emu.endpoints.imds
        )
    }
    fn nmi(&self, path: &str) -> String {
        format!("http://{}{path}", self.emu.endpoints.nmi)
    }
    async fn mi_token(&self, client_id: Option<&str>) -> String {
        let mut q = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net".to_string();
        if let Some(c) = client_id {
            q.push_str(&format!("&client_id={c}"));
        }
        let r = self
            .http
            .get(self.imds(&q))
            .header("Metadata", "true")
            .send()
            .await
            .expect("imds");
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
        v["access_token"].as_str().expect("token").to_string()
    }
    async fn get(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.expect("body"))
    }
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }
}

fn j(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

// ---------------------------------------------------------------------------------------
// scenario

#[test]
fn example_scenario_parses_and_builds_fast() {
    let s = Scenario::from_file(&scenarios_dir().join("example.json")).expect("parse");
    assert_eq!(s.vaults.len(), 2);
    let t0 = Instant::now();
    let store = kv_emulator::material::Builder::new(&s, None)
        .build()
        .expect("build");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "build took {:?}",
        t0.elapsed()
    );
    let v = &store.vaults["kvdemo"];
    assert_eq!(v.secrets["big"][0].value.len(), 25600);
    assert_eq!(v.secrets["old-and-new"].len(), 2);
    assert!(v.secrets["web-cert"][0].kid.is_some());
    assert!(s
        .host_names()
        .contains(&"kvdemo.vault.azure.net".to_string()));
}

#[test]
fn scenario_errors_are_reported() {
    let base = Path::new("/");
    assert!(Scenario::from_value(json!({"vaults": [], "bogus": 1}), base).is_err());
    let e = Scenario::from_value(
        json!({"vaults": [{"name": "v1", "tenant": "t", "cloud": "Mars"}]}),
        base,
    )
    .expect_err("cloud");
    assert!(e.contains("unknown cloud"), "{e}");
    let e = Scenario::from_value(
        json!({"access_policies": [{"identity": "nobody", "vault": "v"}]}),
        base,
    )
    .expect_err("policy");
    assert!(e.contains("unknown identity"), "{e}");
    let e = Scenario::from_value(
        json!({"faults": [{"endpoint": "keyvault", "action": "status"}]}),
        base,
    )
    .expect_err("fault");
    assert!(e.contains("status"), "{e}");
}

// ---------------------------------------------------------------------------------------
// IMDS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_tokens_and_errors() {
    let t = start(example_value()).await;
    // no Metadata header
    let r = t
        .http
        .get(t.imds("api-version=2018-02-01&resource=https://vault.azure.net"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        j(&r.text().await.expect("body")),
        json!({"error":"invalid_request","error_description":"Required metadata header not specified"})
    );
    // system identity: all values are strings
    let r = t
        .http
        .get(t.imds("api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v = j(&r.text().await.expect("body"));
    for k in [
        "access_token",
        "refresh_token",
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
        "client_id",
    ] {
        assert!(v[k].is_string(), "{k} is not a string: {v}");
    }
    assert_eq!(v["client_id"], SYSTEM);
    assert_eq!(v["refresh_token"], "");
    assert_eq!(v["resource"], "https://vault.azure.net");
    // user-assigned by client_id, object_id, msi_res_id, mi_res_id; an empty selector is an
    // absent one (azidentity, the CSI driver's Azure provider, sends `client_id=` for the
    // system-assigned identity, which IMDS serves)
    for (q, want) in [
        (format!("client_id={USER}"), USER),
        ("object_id=00000000-0000-0000-0000-00000000b002".to_string(), USER),
        ("msi_res_id=%2Fsubscriptions%2F00000000-0000-0000-0000-000000000000%2FresourceGroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fkv-user".to_string(), USER),
        ("mi_res_id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-user".to_string(), USER),
        ("client_id=".to_string(), SYSTEM),
        ("object_id=".to_string(), SYSTEM),
        ("msi_res_id=".to_string(), SYSTEM),
        ("mi_res_id=".to_string(), SYSTEM),
        ("client_id=&object_id=&msi_res_id=".to_string(), SYSTEM),
        ("client_id=&object_id=00000000-0000-0000-0000-00000000b002".to_string(), USER),
    ] {
        let r = t
            .http
            .get(t.imds(&format!("api-version=2018-02-01&resource=https://vault.azure.net&{q}")))
            .header("Metadata", "true")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{q}");
        assert_eq!(j(&r.text().await.expect("body"))["client_id"], want, "{q}");
    }
    // unknown identity / service principal / identity not attached to the VM (by resource id)
    for q in [
        "client_id=99999999-0000-0000-0000-000000000000".to_string(),
        format!("client_id={SP}"),
        "msi_res_id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nope".to_string(),
        "msi_res_id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-workload".to_string(),
    ] {
        let r = t
            .http
            .get(t.imds(&format!(
                "api-version=2018-02-01&resource=https://vault.azure.net&{q}"
            )))
            .header("Metadata", "true")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
        assert_eq!(
            j(&r.text().await.expect("body")),
            json!({"error":"invalid_request","error_description":"Identity not found"})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_without_system_identity() {
    let mut v = example_value();
    v["imds"]["system"] = Value::Null;
    let t = start(v).await;
    let r = t
        .http
        .get(t.imds("api-version=2018-02-01&resource=https://vault.azure.net"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("Identity not found"));
}

/// The claims of a JWT the emulator issued.
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&kv_emulator::util::b64url_decode(payload).expect("b64")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_tokens_name_the_managed_identity_resource() {
    let t = start(example_value()).await;
    let system = jwt_claims(&t.mi_token(None).await);
    assert_eq!(
        system["xms_mirid"],
        kv_emulator::scenario::DEFAULT_VM_RESOURCE_ID
    );
    let user = jwt_claims(&t.mi_token(Some(USER)).await);
    assert_eq!(
        user["xms_mirid"],
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-user"
    );
}

/// Azure: a VM without a system-assigned identity answers a request naming no identity with
/// its only user-assigned identity (an AKS node pool's kubelet identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_without_system_identity_and_one_user_identity() {
    let mut v = example_value();
    v["imds"]["system"] = Value::Null;
    v["imds"]["user"] = json!([USER]);
    let t = start(v).await;
    let claims = jwt_claims(&t.mi_token(None).await);
    assert_eq!(claims["appid"], USER);
    assert!(claims["xms_mirid"]
        .as_str()
        .expect("xms_mirid")
        .contains("/userAssignedIdentities/kv-user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_can_match_the_request_body() {
    let mut v = example_value();
    v["faults"] = json!([{"endpoint": "aad", "body_contains": "client_id=00000000-0000-0000-0000-0000000000e1",
                          "count": 10, "action": "status", "status": 429, "retry_after": 30}]);
    let t = start(v).await;
    let post = |client: &str, secret: &str| {
        t.http
            .post(t.aad(&format!("/{TENANT}/oauth2/v2.0/token")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("client_id={client}&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_secret={secret}&grant_type=client_credentials"))
            .send()
    };
    let r = post("00000000-0000-0000-0000-0000000000e1", "x")
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(post(SP, SP_SECRET).await.expect("send").status(), 200);
}

// ---------------------------------------------------------------------------------------
// NMI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_success_and_errors() {
    let t = start(example_value()).await;
    let get = |path: &str, hdr: bool, pod: &str| {
        let mut r = t.http.get(t.nmi(path));
        if hdr {
            r = r.header("podns", "demo").header("podname", pod);
        }
        r.send()
    };
    let r = get(
        "/host/token/?resource=https://vault.azure.net",
        false,
        "demo-pod",
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        r.text().await.expect("body"),
        "missing 'podname' and 'podns' from request header\n"
    );

    let r = get("/host/token/?resource=", true, "demo-pod")
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.expect("body"),
        "parameter resource cannot be empty\n"
    );

    let r = get(
        "/host/token/?resource=https://vault.azure.net",
        true,
        "nobody",
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.expect("body"),
        "getting assigned identities for pod demo/nobody in CREATED state failed after 16 attempts, retry duration [5]s, error: <nil>. Check MIC pod logs for identity assignment errors\n"
    );

    for path in [
        "/host/token/?resource=https://vault.azure.net",
        "/host/token?resource=https%3A%2F%2Fvault.azure.net",
    ] {
        let r = get(path, true, "demo-pod").await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.text().await.expect("body");
        let v = j(&body);
        assert_eq!(v["clientid"], POD);
        let tok = &v["token"];
        assert_eq!(tok["expires_in"], "86399");
        assert!(tok["expires_on"].is_string() && tok["not_before"].is_string());
        assert_eq!(tok["resource"], "https://vault.azure.net");
        // exact key order of the Go struct
        let order = [
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ];
        let mut last = 0;
        for k in order {
            let pos = body.find(&format!("\"{k}\"")).expect("key");
            assert!(pos > last, "{k} out of order in {body}");
            last = pos;
        }
        assert!(
            body.ends_with(&format!(",\"clientid\":\"{POD}\"}}")),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_pending_numeric_and_forbidden() {
    let mut v = example_value();
    v["nmi"] = json!({
        "numeric_token_fields": true,
        "bindings": [
            {"namespace": "demo", "pod": "demo-pod", "client_id": POD, "pending_calls": 2},
            {"namespace": "demo", "pod": "late", "client_id": POD, "pending_ms": 60000},
            {"namespace": "demo", "pod": "sp-pod", "client_id": SP},
            {"namespace": "demo", "pod": "bad", "client_id": "99999999-0000-0000-0000-000000000000"},
            {"namespace": "demo", "pod": "denied", "client_id": POD, "forbidden": true}
        ]
    });
    let t = start(v).await;
    let call = |pod: &'static str| {
        t.http
            .get(t.nmi("/host/token/?resource=https://vault.azure.net"))
            .header("podns", "demo")
            .header("podname", pod)
            .send()
    };
    assert_eq!(call("demo-pod").await.expect("send").status(), 404);
    assert_eq!(call("demo-pod").await.expect("send").status(), 404);
    let r = call("demo-pod").await.expect("send");
    assert_eq!(r.status(), 200);
    let v = j(&r.text().await.expect("body"));
    assert_eq!(v["token"]["expires_in"], 86399);
    assert!(v["token"]["expires_on"].is_number() && v["token"]["not_before"].is_number());
    assert_eq!(call("late").await.expect("send").status(), 404);
    let r = call("sp-pod").await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(j(&r.text().await.expect("body"))["clientid"], SP);
    for pod in ["bad", "denied"] {
        let r = call(pod).await.expect("send");
        assert_eq!(r.status(), 403, "{pod}");
        let body = r.text().await.expect("body");
        assert!(
            body.starts_with("adal: Refresh request failed. Status Code = '400'."),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// AAD

fn sign_assertion(
    alg: &str,
    aud: &str,
    client_id: &str,
    exp_offset: i64,
    x5t_kind: &str,
) -> String {
    use kv_emulator::util::{b64url, b64url_padded, now};
    use rsa::pkcs8::DecodePrivateKey;
    use sha2::Digest;
    let pem =
        std::fs::read_to_string(scenarios_dir().join("material/sp-cert.pem")).expect("sp cert");
    let blocks = kv_emulator::util::pem_blocks(&pem);
    let key_der = &blocks
        .iter()
        .find(|(l, _)| l == "PRIVATE KEY")
        .expect("key")
        .1;
    let cert_der = &blocks
        .iter()
        .find(|(l, _)| l == "CERTIFICATE")
        .expect("cert")
        .1;
    let key = rsa::RsaPrivateKey::from_pkcs8_der(key_der).expect("rsa");
    let mut header = json!({"alg": alg, "typ": "JWT"});
    match x5t_kind {
        "x5t" => header["x5t"] = json!(b64url(&sha1::Sha1::digest(cert_der))),
        "x5t-padded" => header["x5t"] = json!(b64url_padded(&sha1::Sha1::digest(cert_der))),
        _ => header["x5t#S256"] = json!(b64url(&sha2::Sha256::digest(cert_der))),
    }
    let n = now();
    let claims = json!({"aud": aud, "iss": client_id, "sub": client_id, "jti": "abc", "nbf": n, "iat": n, "exp": n + exp_offset});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let digest = sha2::Sha256::digest(input.as_bytes());
    let sig = if alg == "PS256" {
        key.sign_with_rng(
            &mut rand::thread_rng(),
            rsa::Pss::new::<sha2::Sha256>(),
            &digest,
        )
    } else {
        key.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
    }
    .expect("sign");
    format!("{input}.{}", b64url(&sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aad_client_credentials() {
    let t = start(example_value()).await;
    let post = |path: String, body: String| {
        t.http
            .post(t.aad(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // v1: strings
    let r = post(
        format!("/{TENANT}/oauth2/token?api-version=1.0"),
        format!("client_id={SP}&client_secret={SP_SECRET}&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.net"),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 200);
    let v = j(&r.text().await.expect("body"));
    for k in [
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "ext_expires_in",
    ] {
        assert!(v[k].is_string(), "{k}: {v}");
    }
    // v2: numbers, no expires_on/resource
    let r = post(
        format!("/{TENANT}/oauth2/v2.0/token"),
        format!("client_id={SP}&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_secret={SP_SECRET}&grant_type=client_credentials"),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 200);
    let v = j(&r.text().await.expect("body"));
    assert!(v["expires_in"].is_number());
    assert!(v.get("expires_on").is_none() && v.get("resource").is_none());
    // v2 with HTTP Basic
    let r = t
        .http
        .post(t.aad(&format!("/{TENANT}/oauth2/v2.0/token")))
        .basic_auth(SP, Some(SP_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=https%3A%2F%2Fvault.azure.net%2F.default&grant_type=client_credentials")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    let cases: Vec<(String, String, u16, &str, u64)> = vec![
        (
            format!("/{TENANT}/oauth2/token"),
            format!("client_id={SP}&client_secret=wrong&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.net"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            format!("/{TENANT}/oauth2/token"),
            "client_id=99999999-0000-0000-0000-000000000000&client_secret=x&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.net".into(),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            "/00000000-dead-beef-0000-000000000000/oauth2/token".into(),
            format!("client_id={SP}&client_secret={SP_SECRET}&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.net"),
            400,
            "invalid_request",
            90002,
        ),
        (
            format!("/{TENANT}/oauth2/v2.0/token"),
            format!("client_id={SP}&client_secret={SP_SECRET}&grant_type=client_credentials&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"),
            400,
            "invalid_scope",
            1002012,
        ),
        (
            format!("/{TENANT}/oauth2/token"),
            format!("client_id={SP}&client_secret={SP_SECRET}&grant_type=client_credentials&resource=https%3A%2F%2Fmanagement.azure.com%2F"),
            400,
            "invalid_resource",
            500011,
        ),
    ];
    for (path, body, status, error, code) in cases {
        let r = post(path.clone(), body).await.expect("send");
        assert_eq!(r.status(), status, "{path}");
        let v = j(&r.text().await.expect("body"));
        assert_eq!(v["error"], error);
        assert_eq!(v["error_codes"], json!([code]));
        for k in [
            "error_description",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
        ] {
            assert!(v[k].is_string(), "{k}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aad_client_assertions() {
    let t = start(example_value()).await;
    let assertion_type = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
    let v2 = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    let v1 = format!("https://login.microsoftonline.com/{TENANT}/oauth2/token?api-version=1.0");
    let ok_cases = [
        ("RS256", v2.as_str(), "x5t"),
        ("PS256", v2.as_str(), "x5t#S256"),
        ("RS256", v1.as_str(), "x5t-padded"),
    ];
    for (alg, aud, kind) in ok_cases {
        let a = sign_assertion(alg, aud, SP_CERT, 600, kind);
        let (path, form) = if aud.contains("v2.0") {
            (
                format!("/{TENANT}/oauth2/v2.0/token"),
                "scope=https%3A%2F%2Fvault.azure.net%2F.default",
            )
        } else {
            (
                format!("/{TENANT}/oauth2/token?api-version=1.0"),
                "resource=https%3A%2F%2Fvault.azure.net",
            )
        };
        let r = t
            .http
            .post(t.aad(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "client_id={SP_CERT}&grant_type=client_credentials&{form}&client_assertion_type={assertion_type}&client_assertion={a}"
            ))
            .send()
            .await
            .expect("send");
        let status = r.status();
        assert_eq!(
            status,
            200,
            "{alg} {kind}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let good = sign_assertion("RS256", &v2, SP_CERT, 600, "x5t");
    let (input, _) = good.rsplit_once('.').expect("jws");
    let unregistered = {
        // Same key and claims, a thumbprint no registered certificate has.
        let mut parts = good.splitn(2, '.');
        let _ = parts.next();
        let h = kv_emulator::util::b64url(
            br#"{"alg":"RS256","typ":"JWT","x5t":"AAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        );
        format!("{h}.{}", parts.next().expect("rest"))
    };
    let bad = [
        (
            sign_assertion("RS256", "https://example.com/token", SP_CERT, 600, "x5t"),
            700023,
            "audience claim does not match",
        ),
        (
            sign_assertion("RS256", &v2, SP_CERT, -10, "x5t"),
            700024,
            "not within its valid time range",
        ),
        (
            sign_assertion("RS256", &v2, SP, 600, "x5t"),
            700021,
            "doesn't match 'client_id'",
        ),
        (format!("{input}.AAAA"), 700027, "invalid signature"),
        (unregistered, 700027, "is not registered on application"),
    ];
    for (a, code, text) in bad {
        let (status, v) = t.exchange(SP_CERT, &a).await;
        assert_eq!(status, 401);
        assert_eq!(v["error"], "invalid_client");
        assert_eq!(v["error_codes"], json!([code]), "{v}");
        assert!(
            v["error_description"].as_str().expect("d").contains(text),
            "{v}"
        );
    }
    // MSAL discovery documents
    let (s, _, b) = t
        .get(
            &t.aad(&format!("/{TENANT}/v2.0/.well-known/openid-configuration")),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(j(&b)["token_endpoint"]
        .as_str()
        .expect("te")
        .ends_with("/oauth2/v2.0/token"));
    let (s, _, _) = t
        .get(&t.aad("/common/discovery/instance?api-version=1.1&authorization_endpoint=https://login.microsoftonline.com/common/oauth2/authorize"), None)
        .await;
    assert_eq!(s, 200);
}

// ---------------------------------------------------------------------------------------
// Key Vault

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyvault_challenge_tokens_and_errors() {
    let t = start(example_value()).await;
    // api-version required
    let (s, _, b) = t.get(&t.kv("/secrets/db-password"), None).await;
    assert_eq!(s, 400);
    assert_eq!(j(&b)["error"]["code"], "BadParameter");
    let (s, _, _) = t
        .get(&t.kv("/secrets/db-password?api-version=2027-01-01"), None)
        .await;
    assert_eq!(s, 400);

    // challenge
    let (s, h, b) = t
        .get(&t.kv("/secrets/db-password/?api-version=7.4"), None)
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        h["www-authenticate"],
        format!("Bearer authorization=\"https://login.windows.net/{TENANT}\", resource=\"https://vault.azure.net\"")
    );
    assert_eq!(
        j(&b),
        json!({"error":{"code":"Unauthorized","message":"AKV10000: Request is missing a Bearer or PoP token."}})
    );
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    assert!(h.contains_key("x-ms-request-id") && h.contains_key("x-ms-keyvault-service-version"));

    // invalid, wrong-audience, expired tokens
    let (s, _, _) = t
        .get(
            &t.kv("/secrets/db-password?api-version=7.4"),
            Some("not.a.token"),
        )
        .await;
    assert_eq!(s, 401);
    let cn = kv_emulator::token::issue("https://vault.azure.cn", SYSTEM, "oid", TENANT, 3600).jwt;
    let (s, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&cn))
        .await;
    assert_eq!(s, 401);
    assert!(j(&b)["error"]["message"]
        .as_str()
        .expect("m")
        .starts_with("AKV10022: Invalid audience."));
    let expired =
        kv_emulator::token::issue("https://vault.azure.net", SYSTEM, "oid", TENANT, 0).jwt;
    let (s, _, b) = t
        .get(
            &t.kv("/secrets/db-password?api-version=7.4"),
            Some(&expired),
        )
        .await;
    assert_eq!(s, 401);
    assert!(b.contains("TokenExpired"));

    let tok = t.mi_token(None).await;
    // latest, trailing slash, by version
    for p in [
        "/secrets/db-password?api-version=7.4",
        "/secrets/db-password/?api-version=7.6",
        "/secrets/DB-PASSWORD?api-version=2016-10-01",
    ] {
        let (s, h, b) = t.get(&t.kv(p), Some(&tok)).await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(h["content-type"], "application/json; charset=utf-8");
        let v = j(&b);
        assert_eq!(v["value"], "s3cr3t-P@ssw0rd");
        let id = v["id"].as_str().expect("id");
        let ver = id.rsplit('/').next().expect("ver");
        assert!(id.starts_with("https://kvdemo.vault.azure.net/secrets/db-password/"));
        assert_eq!(ver.len(), 32);
        for k in [
            "enabled",
            "created",
            "updated",
            "recoveryLevel",
            "recoverableDays",
        ] {
            assert!(v["attributes"].get(k).is_some(), "{k}");
        }
    }
    let (_, _, b) = t
        .get(&t.kv("/secrets/old-and-new?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(j(&b)["value"], "new value");
    let (_, _, b) = t
        .get(
            &t.kv("/secrets/old-and-new/0123456789abcdef0123456789abcdef?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(j(&b)["value"], "old value");

    // 404 bodies
    let (s, _, b) = t
        .get(&t.kv("/secrets/missing/?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        j(&b),
        json!({"error":{"code":"SecretNotFound","message":"A secret with (name/id) missing was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"}})
    );
    let (s, _, b) = t
        .get(
            &t.kv("/secrets/db-password/00000000000000000000000000000000?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(s, 404);
    assert!(b.contains("(name/id) db-password/00000000000000000000000000000000 was not found"));
    let (s, _, b) = t
        .get(&t.kv("/keys/missing?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(
        (s, j(&b)["error"]["code"].clone()),
        (404, json!("KeyNotFound"))
    );
    let (s, _, b) = t
        .get(&t.kv("/certificates/missing?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(s, 404);
    assert!(j(&b)["error"]["message"]
        .as_str()
        .expect("m")
        .starts_with("A certificate with (name/id) missing was not found"));

    // disabled
    let (s, _, b) = t
        .get(
            &t.kv("/secrets/disabled-secret?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        j(&b),
        json!({"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}})
    );

    // 403 access policy
    let no_access = t.mi_token(Some(NO_ACCESS)).await;
    let (s, _, b) = t
        .get(
            &t.kv("/secrets/db-password?api-version=7.4"),
            Some(&no_access),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        j(&b),
        json!({"error":{"code":"Forbidden","message":format!("The user, group or application 'appid={NO_ACCESS};oid=00000000-0000-0000-0000-00000000b006;iss=https://sts.windows.net/{TENANT}/' does not have secrets get permission on key vault 'kvdemo;location=eastus'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"),"innererror":{"code":"AccessDenied"}}})
    );
    // kvother: system MI has secrets get only
    let url = format!(
        "https://kvother.vault.azure.net:{}/secrets/other-secret?api-version=7.4",
        t.emu.endpoints.https.port()
    );
    let (s, _, _) = t.get(&url, Some(&tok)).await;
    assert_eq!(s, 200);
    let url = format!(
        "https://kvother.vault.azure.net:{}/secrets/other-secret/versions?api-version=7.4",
        t.emu.endpoints.https.port()
    );
    let (s, _, b) = t.get(&url, Some(&tok)).await;
    assert_eq!(s, 403);
    assert!(b.contains("does not have secrets list permission"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyvault_keys_certificates_versions() {
    let t = start(example_value()).await;
    let tok = t.mi_token(Some(USER)).await;
    let (s, _, b) = t
        .get(&t.kv("/keys/rsa-key?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(s, 200);
    let k = j(&b);
    assert_eq!(k["key"]["kty"], "RSA");
    assert_eq!(k["key"]["e"], "AQAB");
    assert_eq!(
        kv_emulator::util::b64url_decode(k["key"]["n"].as_str().expect("n"))
            .expect("n")
            .len(),
        256
    );
    assert!(!k["key"]["n"].as_str().expect("n").contains('='));
    let (_, _, b) = t
        .get(&t.kv("/keys/ec-key/?api-version=7.4"), Some(&tok))
        .await;
    let k = j(&b);
    assert_eq!(
        (k["key"]["kty"].clone(), k["key"]["crv"].clone()),
        (json!("EC"), json!("P-256"))
    );

    // certificate consistency across /certificates, /keys, /secrets
    let (_, _, b) = t
        .get(&t.kv("/certificates/web-cert?api-version=7.4"), Some(&tok))
        .await;
    let c = j(&b);
    let cer = kv_emulator::util::b64_decode(c["cer"].as_str().expect("cer")).expect("der");
    assert_eq!(c["x5t"], kv_emulator::material::x5t(&cer));
    assert_eq!(
        c["policy"]["secret_props"]["contentType"],
        "application/x-pkcs12"
    );
    let version = c["id"]
        .as_str()
        .expect("id")
        .rsplit('/')
        .next()
        .expect("v")
        .to_string();
    assert!(c["kid"]
        .as_str()
        .expect("kid")
        .ends_with(&format!("/keys/web-cert/{version}")));
    assert!(c["sid"]
        .as_str()
        .expect("sid")
        .ends_with(&format!("/secrets/web-cert/{version}")));
    let (_, _, b) = t
        .get(
            &t.kv(&format!("/secrets/web-cert/{version}?api-version=7.4")),
            Some(&tok),
        )
        .await;
    let s = j(&b);
    assert_eq!(s["managed"], true);
    assert_eq!(s["kid"], c["kid"]);
    assert_eq!(s["contentType"], "application/x-pkcs12");
    let (_, _, b) = t
        .get(&t.kv("/keys/web-cert?api-version=7.4"), Some(&tok))
        .await;
    let k = j(&b);
    assert_eq!(k["managed"], true);
    let (_, cert) = x509_parser::parse_x509_certificate(&cer).expect("x509");
    let spki_key = cert.tbs_certificate.subject_pki.parsed().expect("spki");
    if let x509_parser::public_key::PublicKey::RSA(rsa) = spki_key {
        let n = kv_emulator::util::b64url_decode(k["key"]["n"].as_str().expect("n")).expect("n");
        let modulus: Vec<u8> = rsa
            .modulus
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        assert_eq!(n, modulus);
    } else {
        panic!("leaf key is not RSA");
    }
    // PEM conversion on 2025-07-01 only
    let (_, _, b) = t
        .get(
            &t.kv(
                "/secrets/web-cert?api-version=2025-07-01&outContentType=application%2Fx-pem-file",
            ),
            Some(&tok),
        )
        .await;
    let s = j(&b);
    assert_eq!(s["contentType"], "application/x-pem-file");
    let pem = s["value"].as_str().expect("pem");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 3);
    let (_, _, b) = t
        .get(
            &t.kv("/secrets/web-cert?api-version=7.4&outContentType=application%2Fx-pem-file"),
            Some(&tok),
        )
        .await;
    assert_eq!(j(&b)["contentType"], "application/x-pkcs12");
    let (_, _, b) = t
        .get(&t.kv("/secrets/web-cert-pem?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(j(&b)["contentType"], "application/x-pem-file");

    // version listing with paging
    let (s, _, b) = t
        .get(
            &t.kv("/secrets/old-and-new/versions?api-version=7.4&maxresults=1"),
            Some(&tok),
        )
        .await;
    assert_eq!(s, 200);
    let page = j(&b);
    assert_eq!(page["value"].as_array().expect("arr").len(), 1);
    let next = page["nextLink"].as_str().expect("nextLink").to_string();
    let next = next.replace(
        "kvdemo.vault.azure.net",
        &format!("kvdemo.vault.azure.net:{}", t.emu.endpoints.https.port()),
    );
    let (_, _, b) = t.get(&next, Some(&tok)).await;
    let page2 = j(&b);
    assert_eq!(page2["value"].as_array().expect("arr").len(), 1);
    assert!(page2["nextLink"].is_null());
    assert_ne!(page["value"][0]["id"], page2["value"][0]["id"]);
    for p in [
        "/keys/rsa-key/versions?api-version=7.4",
        "/certificates/web-cert/versions?api-version=7.4",
    ] {
        let (s, _, b) = t.get(&t.kv(p), Some(&tok)).await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(j(&b)["value"].as_array().expect("arr").len(), 1);
    }
}

// ---------------------------------------------------------------------------------------
// faults, latency, request log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_first_n_then_ok() {
    let mut v = example_value();
    v["faults"] = json!([
        {"endpoint": "keyvault", "path_contains": "/secrets/db-password", "count": 2, "action": "status", "status": 429, "retry_after": 3},
        {"endpoint": "keyvault", "path_contains": "/secrets/db-password", "count": 1, "action": "status", "status": 503},
        {"endpoint": "imds", "count": 1, "action": "status", "status": 410},
        {"endpoint": "nmi", "count": 1, "action": "status", "status": 500}
    ]);
    let t = start(v).await;
    let r = t
        .http
        .get(t.imds("api-version=2018-02-01&resource=https://vault.azure.net"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 410);
    let tok = t.mi_token(None).await;
    let url = t.kv("/secrets/db-password?api-version=7.4");
    let (s, h, b) = t.get(&url, Some(&tok)).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "3");
    assert_eq!(j(&b)["error"]["code"], "Throttled");
    assert_eq!(t.get(&url, Some(&tok)).await.0, 429);
    assert_eq!(t.get(&url, Some(&tok)).await.0, 503);
    assert_eq!(t.get(&url, Some(&tok)).await.0, 200);
    // other paths unaffected
    assert_eq!(
        t.get(&t.kv("/secrets/unicode?api-version=7.4"), Some(&tok))
            .await
            .0,
        200
    );
    let nmi = |t: &T| {
        t.http
            .get(t.nmi("/host/token/?resource=https://vault.azure.net"))
            .header("podns", "demo")
            .header("podname", "demo-pod")
            .send()
    };
    assert_eq!(nmi(&t).await.expect("send").status(), 500);
    assert_eq!(nmi(&t).await.expect("send").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_stall_close_and_latency() {
    let mut v = example_value();
    v["latency_ms"] = json!({"imds": 150});
    v["faults"] = json!([
        {"endpoint": "keyvault", "path_contains": "/secrets/unicode", "count": 1, "action": "stall", "ms": 400},
        {"endpoint": "keyvault", "path_contains": "/secrets/multiline", "count": 1, "action": "close"},
        {"endpoint": "keyvault", "path_contains": "/secrets/big", "count": 1, "action": "stall_forever"}
    ]);
    let t = start(v).await;
    let t0 = Instant::now();
    let tok = t.mi_token(None).await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    let t0 = Instant::now();
    assert_eq!(
        t.get(&t.kv("/secrets/unicode?api-version=7.4"), Some(&tok))
            .await
            .0,
        200
    );
    assert!(t0.elapsed() >= Duration::from_millis(400));
    // close: the client sees a transport error, then the next request works
    let r = t
        .http
        .get(t.kv("/secrets/multiline?api-version=7.4"))
        .bearer_auth(&tok)
        .send()
        .await;
    assert!(r.is_err(), "expected a transport error, got {r:?}");
    assert_eq!(
        t.get(&t.kv("/secrets/multiline?api-version=7.4"), Some(&tok))
            .await
            .0,
        200
    );
    // stall forever: the client times out
    let r = t
        .http
        .get(t.kv("/secrets/big?api-version=7.4"))
        .bearer_auth(&tok)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        t.get(&t.kv("/secrets/big?api-version=7.4"), Some(&tok))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_has_no_secrets() {
    let t = start(example_value()).await;
    let tok = t.mi_token(None).await;
    let (_, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(j(&b)["value"], "s3cr3t-P@ssw0rd");
    let r = t
        .http
        .post(t.aad(&format!("/{TENANT}/oauth2/v2.0/token")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_id={SP}&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_secret={SP_SECRET}&grant_type=client_credentials"))
        .send()
        .await
        .expect("send");
    let sp_tok = j(&r.text().await.expect("body"))["access_token"]
        .as_str()
        .expect("t")
        .to_string();
    let a = sign_assertion(
        "RS256",
        &format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"),
        SP_CERT,
        600,
        "x5t",
    );
    let _ = t
        .http
        .post(t.aad(&format!("/{TENANT}/oauth2/v2.0/token")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_id={SP_CERT}&grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"))
        .send()
        .await
        .expect("send");
    let _ = t
        .http
        .get(t.nmi("/host/token/?resource=https://vault.azure.net"))
        .header("podns", "demo")
        .header("podname", "demo-pod")
        .send()
        .await
        .expect("send");
    let text = std::fs::read_to_string(&t.log).expect("log");
    for needle in [
        tok.as_str(),
        sp_tok.as_str(),
        a.as_str(),
        SP_SECRET,
        "s3cr3t-P@ssw0rd",
        "api-version",
        "eyJ",
    ] {
        assert!(!text.contains(needle), "request log contains {needle}");
    }
    let lines = t.log_lines();
    assert!(lines.len() >= 5);
    let kv = lines
        .iter()
        .find(|l| l["endpoint"] == "keyvault")
        .expect("kv line");
    assert_eq!(kv["method"], "GET");
    assert_eq!(kv["host"], "kvdemo.vault.azure.net");
    assert_eq!(kv["path"], "/secrets/db-password");
    assert_eq!(kv["status"], 200);
    assert_eq!(kv["client_id"], SYSTEM);
    assert!(kv["request_id"].is_string() && kv["latency_ms"].is_number() && kv["ts"].is_string());
    for e in ["imds", "aad", "nmi"] {
        assert!(lines.iter().any(|l| l["endpoint"] == e), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clouds_and_http2() {
    let mut v = example_value();
    v["vaults"].as_array_mut().expect("vaults").push(json!({
        "name": "kvchina", "cloud": "AzureChinaCloud", "tenant": TENANT,
        "secrets": [{"name": "s", "value": "cn"}],
        "keys": [{"name": "oct", "kty": "oct"}, {"name": "k1", "kty": "EC", "crv": "P-256K"}, {"name": "p384", "kty": "EC", "crv": "P-384"}]
    }));
    v["access_policies"]
        .as_array_mut()
        .expect("ap")
        .push(json!({"identity": SP, "vault": "kvchina", "secrets": ["get"], "keys": ["get"]}));
    let t = start(v).await;
    let port = t.emu.endpoints.https.port();
    let r = t
        .http
        .post(format!("https://login.chinacloudapi.cn:{port}/{TENANT}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_id={SP}&client_secret={SP_SECRET}&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.cn"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let tok = j(&r.text().await.expect("body"))["access_token"]
        .as_str()
        .expect("t")
        .to_string();
    let (s, h, _) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/secrets/s?api-version=7.4"),
            None,
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        h["www-authenticate"],
        format!("Bearer authorization=\"https://login.windows.net/{TENANT}\", resource=\"https://vault.azure.cn\"")
    );
    let (s, _, b) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/secrets/s?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!((s, j(&b)["value"].clone()), (200, json!("cn")));
    let (_, _, b) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/keys/oct?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(j(&b)["key"]["kty"], "oct");
    let (_, _, b) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/keys/k1?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(j(&b)["key"]["crv"], "P-256K");
    let (_, _, b) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/keys/p384?api-version=7.4"),
            Some(&tok),
        )
        .await;
    assert_eq!(
        kv_emulator::util::b64url_decode(j(&b)["key"]["x"].as_str().expect("x"))
            .expect("x")
            .len(),
        48
    );
    // a public-cloud token is rejected by the China vault
    let public = t.mi_token(None).await;
    let (s, _, _) = t
        .get(
            &format!("https://kvchina.vault.azure.cn:{port}/secrets/s?api-version=7.4"),
            Some(&public),
        )
        .await;
    assert_eq!(s, 401);
}

// ---------------------------------------------------------------------------------------
// network namespace (root only)

fn netns_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && kv_emulator::netns::emulator_binary().is_ok()
}

#[test]
fn real_addresses_refused_outside_a_netns() {
    let Ok(bin) = kv_emulator::netns::emulator_binary() else {
        panic!("cannot run: kv-emulator binary not built (run as root after cargo build --workspace --bins)");
    };
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    if dev
        .lines()
        .skip(2)
        .all(|l| l.trim_start().starts_with("lo:"))
    {
        panic!("cannot run: already in a loopback-only netns (run as root after cargo build --workspace --bins)");
    }
    let out = std::process::Command::new(bin)
        .arg("--scenario")
        .arg(scenarios_dir().join("example.json"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to serve the real Azure addresses")
    );
}

#[test]
fn netns_end_to_end() {
    if !netns_available() {
        panic!("cannot run: needs root and a built kv-emulator binary (run as root after cargo build --workspace --bins)");
    }
    use kv_emulator::netns::{emulator_binary, example_scenario, Namespace};
    let bin = emulator_binary().expect("bin");
    let mut ns = Namespace::start(&bin, example_scenario()).expect("netns");
    let name = ns.name().to_string();
    let holder = ns.holder_pid();
    // IMDS on the link-local address, Key Vault by name over TLS with the emulator CA
    let out = ns
        .command("bash")
        .arg("-c")
        .arg("exec 3<>/dev/tcp/169.254.169.254/80 && printf 'GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net HTTP/1.0\\r\\nMetadata: true\\r\\n\\r\\n' >&3 && cat <&3")
        .output()
        .expect("imds");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 OK") && text.contains("access_token"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::path::Path::new("/usr/bin/curl").exists() {
        let out = ns
            .command("curl")
            .args([
                "-sS",
                "https://kvdemo.vault.azure.net/secrets/db-password?api-version=7.4",
            ])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("AKV10000"),
            "{body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // mounts made by children persist in the holder's mount namespace
    let dir = ns.dir().join("mnt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let st = ns
        .command("mount")
        .args(["-t", "tmpfs", "kvtest", dir.to_str().expect("utf8")])
        .status()
        .expect("mount");
    assert!(st.success());
    let st = ns
        .command("sh")
        .arg("-c")
        .arg(format!("echo hello > {}/f", dir.display()))
        .status()
        .expect("write");
    assert!(st.success());
    assert!(ns.mountinfo().contains(dir.to_str().expect("utf8")));
    assert_eq!(
        std::fs::read_to_string(ns.host_path(dir.join("f")))
            .expect("read")
            .trim(),
        "hello"
    );
    assert!(
        !dir.join("f").exists(),
        "the tmpfs must not be visible in the root mount namespace"
    );
    let log = ns.request_log();
    assert!(
        log.iter()
            .any(|l| l["endpoint"] == "imds" && l["status"] == 200),
        "{log:?}"
    );
    ns.clear_request_log();
    assert!(ns.request_log().is_empty());
    // restart with an inline scenario
    let mut v = example_value();
    v["vaults"][0]["secrets"] = json!([{"name": "only", "value": "x"}]);
    ns.restart_emulator(v).expect("restart");
    drop(ns);
    assert!(
        !Path::new(&format!("/proc/{holder}")).exists()
            || std::fs::read_to_string(format!("/proc/{holder}/comm"))
                .map(|c| c.trim() != "sh")
                .unwrap_or(true)
    );
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!Path::new("/etc/netns").join(&name).exists());
}

#[test]
fn netns_parallel_unique() {
    if !netns_available() {
        panic!("cannot run: needs root and a built kv-emulator binary (run as root after cargo build --workspace --bins)");
    }
    use kv_emulator::netns::{emulator_binary, example_scenario, Namespace};
    let bin = emulator_binary().expect("bin");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let bin = bin.clone();
            std::thread::spawn(move || {
                let ns = Namespace::start(&bin, example_scenario()).expect("netns");
                ns.name().to_string()
            })
        })
        .collect();
    let mut names: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3);
}

#[test]
fn netns_reports_emulator_failure() {
    if !netns_available() {
        panic!("cannot run: needs root and a built kv-emulator binary (run as root after cargo build --workspace --bins)");
    }
    use kv_emulator::netns::{emulator_binary, Namespace};
    let bad = json!({"vaults": [{"name": "v1", "tenant": "t", "keys": [{"name": "k", "kty": "RSA", "pem_file": "/nonexistent.pem"}]}]});
    let e = Namespace::start(emulator_binary().expect("bin"), bad)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("nonexistent.pem"), "{e}");
}

#[test]
fn binary_bind_local_prints_endpoints_and_exits_on_stdin_eof() {
    let Ok(bin) = kv_emulator::netns::emulator_binary() else {
        panic!("cannot run: kv-emulator binary not built (run as root after cargo build --workspace --bins)");
    };
    use std::io::BufRead;
    let dir = temp_dir();
    let ready = dir.0.join("ready");
    let mut child = std::process::Command::new(bin)
        .arg("--scenario")
        .arg(scenarios_dir().join("example.json"))
        .arg("--bind-local")
        .arg("--exit-on-stdin-eof")
        .arg("--ready-file")
        .arg(&ready)
        .arg("--ca-out")
        .arg(dir.0.join("ca.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let map = j(&line);
    for k in ["imds", "nmi", "https"] {
        assert!(
            map[k].as_str().expect("addr").contains("127.0.0.1:"),
            "{map}"
        );
    }
    assert!(ready.is_file() && dir.0.join("ca.pem").is_file());
    drop(child.stdin.take());
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "emulator did not exit on stdin EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Workload identity federation

const ISSUER: &str = "https://oidc.kv-emulator.test/cluster";
const WI_APP: &str = "00000000-0000-0000-0000-00000000a007";
const WI_MI: &str = "00000000-0000-0000-0000-00000000a008";

fn test_issuer() -> kv_emulator::issuer::TestIssuer {
    let pem = std::fs::read_to_string(scenarios_dir().join("material/issuer-key.pem"))
        .expect("issuer key");
    kv_emulator::issuer::TestIssuer::from_pem(ISSUER, &pem).expect("issuer")
}

impl T {
    /// POST a client assertion to the v2 token endpoint: (status, body).
    async fn exchange(&self, client_id: &str, assertion: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.aad(&format!("/{TENANT}/oauth2/v2.0/token")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "client_id={client_id}&grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
            ))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, j(&r.text().await.expect("body")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_federation() {
    use kv_emulator::issuer::ServiceAccountToken;
    let mut v = example_value();
    // A credential whose issuer has no keys in the scenario (AAD cannot reach its metadata).
    v["federated_credentials"]
        .as_array_mut()
        .expect("fics")
        .push(json!({"client_id": WI_APP, "issuer": "https://unreachable.example", "subject": "system:serviceaccount:demo:workload"}));
    let t = start(v).await;
    let iss = test_issuer();
    let sa = || {
        ServiceAccountToken::new("demo", "workload")
            .pod("demo-pod", "11111111-aaaa-bbbb-cccc-000000000001")
    };

    // The application and the user-assigned identity both exchange their pod's token.
    let (s, body) = t.exchange(WI_APP, &iss.mint(&sa())).await;
    assert_eq!(s, 200, "{body}");
    let tok = body["access_token"].as_str().expect("token").to_string();
    let c = kv_emulator::token::verify(&tok).expect("emulator token");
    assert_eq!(c["appid"], WI_APP);
    let (s, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!((s, j(&b)["value"].clone()), (200, json!("s3cr3t-P@ssw0rd")));
    let (s, body) = t
        .exchange(
            WI_MI,
            &iss.mint(&ServiceAccountToken::new("demo", "workload-mi")),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        kv_emulator::token::verify(body["access_token"].as_str().expect("t")).expect("t")["appid"],
        WI_MI
    );
    // A v1 request with the same assertion also works.
    let r = t
        .http
        .post(t.aad(&format!("/{TENANT}/oauth2/token?api-version=1.0")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "client_id={WI_APP}&grant_type=client_credentials&resource=https%3A%2F%2Fvault.azure.net&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}",
            iss.mint(&sa())
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    // Another key, claiming to be the issuer's.
    let other = kv_emulator::issuer::TestIssuer::from_pem(
        ISSUER,
        &std::fs::read_to_string(scenarios_dir().join("material/rsa-key.pem")).expect("key"),
    )
    .expect("other");
    let claims = sa().claims(ISSUER);
    let cases: Vec<(&str, String, u16, &str, u64, &str)> = vec![
        (WI_APP, iss.mint(&ServiceAccountToken::new("other-ns", "workload")), 401, "invalid_client", 700213,
         "presented assertion subject 'system:serviceaccount:other-ns:workload'"),
        (WI_APP, iss.mint(&ServiceAccountToken::new("demo", "Workload")), 401, "invalid_client", 7002138,
         "case-insensitive comparison"),
        (WI_APP, iss.mint(&sa().audiences(&["api://other"])), 401, "invalid_client", 700212,
         "presented assertion audience 'api://other'"),
        (WI_APP, iss.mint(&sa().issuer("https://other-issuer.example")), 401, "invalid_client", 700211,
         "presented assertion issuer 'https://other-issuer.example'"),
        (WI_APP, iss.mint(&sa().issued_offset(-7200)), 401, "invalid_client", 700024,
         "not within its valid time range"),
        (WI_APP, iss.mint(&sa().issuer("https://unreachable.example")), 400, "invalid_request", 50166,
         "Request to External OIDC endpoint failed"),
        (WI_APP, other.sign(&claims), 401, "invalid_client", 7000272,
         "could not be found in the metadata of identity provider https://oidc.kv-emulator.test/cluster"),
        (WI_APP, other.sign_with_kid(&claims, Some(&iss.kid)), 401, "invalid_client", 700027,
         "invalid signature"),
        (WI_APP, "not.a-jwt".to_string(), 400, "invalid_request", 50027, "invalid or malformed"),
        // An application without federated credentials.
        (SP, iss.mint(&sa()), 400, "invalid_request", 70021,
         "Assertion Issuer: 'https://oidc.kv-emulator.test/cluster'. Assertion Subject: 'system:serviceaccount:demo:workload'"),
        ("99999999-0000-0000-0000-000000000000", iss.mint(&sa()), 400, "unauthorized_client", 700016,
         "was not found in the directory"),
    ];
    for (cid, a, status, error, code, text) in cases {
        let (s, v) = t.exchange(cid, &a).await;
        assert_eq!(s, status, "{text}: {v}");
        assert_eq!(v["error"], error, "{v}");
        assert_eq!(v["error_codes"], json!([code]), "{v}");
        let d = v["error_description"].as_str().expect("description");
        assert!(
            d.starts_with(&format!("AADSTS{code}: ")) && d.contains(text),
            "{d}"
        );
        for k in ["timestamp", "trace_id", "correlation_id"] {
            assert!(v[k].is_string(), "{k}: {v}");
        }
    }
    // The assertion never reaches the request log.
    let log = std::fs::read_to_string(&t.log).expect("log");
    assert!(!log.contains(&iss.mint(&sa())[..40]));
    assert!(t
        .log_lines()
        .iter()
        .any(|l| l["endpoint"] == "aad" && l["client_id"] == WI_APP && l["status"] == 200));
}

#[test]
fn issuer_keys_from_files() {
    // JWKS file and PEM files resolve against the material dir, and bad ones are named.
    let dir = temp_dir();
    let iss = test_issuer();
    std::fs::write(dir.0.join("jwks.json"), iss.jwks().to_string()).expect("write");
    let mut v = example_value();
    v["material_dir"] = json!(dir.0.to_string_lossy());
    v["vaults"] = json!([]);
    v["identities"] = json!([{"kind": "service_principal", "client_id": WI_APP, "tenant": TENANT}]);
    v["access_policies"] = json!([]);
    v["federated_credentials"] = json!([]);
    v["issuers"] = json!([{"issuer": ISSUER, "jwks_file": "jwks.json"}]);
    let s = Scenario::from_value(v.clone(), &scenarios_dir()).expect("scenario");
    let store = kv_emulator::material::Builder::new(&s, None)
        .build()
        .expect("build");
    assert_eq!(
        store.issuers[0].keys[0].0.as_deref(),
        Some(iss.kid.as_str())
    );
    v["issuers"] = json!([{"issuer": ISSUER, "jwks_file": "missing.json"}]);
    let s = Scenario::from_value(v.clone(), &scenarios_dir()).expect("scenario");
    let e = kv_emulator::material::Builder::new(&s, None)
        .build()
        .err()
        .expect("error");
    assert!(e.contains(ISSUER) && e.contains("missing.json"), "{e}");
    v["issuers"] = json!([{"issuer": ISSUER}]);
    let e = Scenario::from_value(v.clone(), &scenarios_dir()).expect_err("error");
    assert!(e.contains("jwks"), "{e}");
    v["issuers"] = json!([]);
    v["federated_credentials"] = json!([{"client_id": "nobody", "issuer": ISSUER, "subject": "s"}]);
    let e = Scenario::from_value(v.clone(), &scenarios_dir()).expect_err("error");
    assert!(e.contains("unknown identity nobody"), "{e}");
    v["identities"] = json!([{"kind": "system", "client_id": SYSTEM, "tenant": TENANT}]);
    v["federated_credentials"] = json!([{"client_id": SYSTEM, "issuer": ISSUER, "subject": "s"}]);
    let e = Scenario::from_value(v, &scenarios_dir()).expect_err("error");
    assert!(e.contains("system-assigned identity cannot"), "{e}");
}

#[test]
fn mint_token_cli() {
    let Ok(bin) = kv_emulator::netns::emulator_binary() else {
        panic!("cannot run: kv-emulator binary not built (cargo build --workspace --bins)");
    };
    let out = std::process::Command::new(&bin)
        .args([
            "mint-token",
            "--issuer",
            ISSUER,
            "--namespace",
            "demo",
            "--service-account",
            "workload",
        ])
        .arg("--key")
        .arg(scenarios_dir().join("material/issuer-key.pem"))
        .args(["--ttl", "-60", "--aud", "api://a", "--aud", "api://b"])
        .args([
            "--pod-name",
            "p",
            "--pod-uid",
            "u",
            "--claim",
            "extra=\"x\"",
            "--claim",
            "jti=null",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).expect("utf8");
    let p = kv_emulator::federated::parse(jwt.trim()).expect("jwt");
    assert_eq!(p.header["kid"], test_issuer().kid);
    assert_eq!(p.claims["sub"], "system:serviceaccount:demo:workload");
    assert_eq!(p.claims["aud"], json!(["api://a", "api://b"]));
    assert_eq!(
        p.claims["kubernetes.io"]["pod"],
        json!({"name": "p", "uid": "u"})
    );
    assert_eq!(p.claims["extra"], "x");
    assert!(p.claims.get("jti").is_none());
    assert!(p.claims["exp"].as_i64().expect("exp") < kv_emulator::util::now());
    let out = std::process::Command::new(&bin)
        .args(["mint-token", "--issuer", ISSUER, "--claim", "bad"])
        .arg("--key")
        .arg(scenarios_dir().join("material/issuer-key.pem"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=JSON"));
}

// ---------------------------------------------------------------------------------------
// Limits: IMDS concurrency / rate, vault throttle

async fn imds_burst(t: &T, n: usize) -> Vec<(u16, String)> {
    let url = t.imds("api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net");
    let futs: Vec<_> = (0..n)
        .map(|_| {
            let req = t.http.get(&url).header("Metadata", "true");
            async move {
                let r = req.send().await.expect("send");
                let s = r.status().as_u16();
                (s, r.text().await.expect("body"))
            }
        })
        .collect();
    let mut out = Vec::new();
    for f in futs {
        out.push(tokio::spawn(f));
    }
    let mut res = Vec::new();
    for h in out {
        res.push(h.await.expect("join"));
    }
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_limits_concurrency_and_rate() {
    // Off unless the scenario asks: 8 concurrent requests all succeed.
    let mut v = example_value();
    v["latency_ms"]["imds"] = json!(1000);
    let t = start(v.clone()).await;
    assert!(imds_burst(&t, 8).await.iter().all(|(s, _)| *s == 200));
    drop(t);

    v["imds"]["limits"] = json!({"concurrency": 3});
    let t = start(v.clone()).await;
    let res = imds_burst(&t, 8).await;
    let ok = res.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 3, "{res:?}");
    for (s, b) in res.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*s, 429);
        assert_eq!(
            j(b),
            json!({"error": "invalid_request", "error_description": "Temporarily throttled, too many requests"})
        );
    }
    let throttled = t
        .log_lines()
        .iter()
        .filter(|l| l["status"] == 429 && l["throttled"] == "concurrency")
        .count();
    assert_eq!(throttled, 5);
    // Slots come back once answered.
    assert!(imds_burst(&t, 3).await.iter().all(|(s, _)| *s == 200));
    drop(t);

    v["latency_ms"]["imds"] = json!(0);
    v["imds"]["limits"] = json!({"ratePerSecond": 4, "retry_after": 1});
    let t = start(v).await;
    let url = t.imds("api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net");
    let mut statuses = Vec::new();
    let t0 = Instant::now();
    for _ in 0..6 {
        let r = t
            .http
            .get(&url)
            .header("Metadata", "true")
            .send()
            .await
            .expect("send");
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        statuses.push(r.status().as_u16());
    }
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "too slow to test the rate"
    );
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = t
        .http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        t.log_lines()
            .iter()
            .filter(|l| l["throttled"] == "rate")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_throttle_token_bucket() {
    let mut v = example_value();
    v["vaults"][0]["throttle"] = json!({"requests_per_second": 1, "burst": 3});
    let t = start(v).await;
    let tok = t.mi_token(None).await;
    let url = t.kv("/secrets/db-password?api-version=7.4");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(t.get(&url, Some(&tok)).await);
    }
    assert!(got[..3].iter().all(|(s, _, _)| *s == 200));
    let (s, h, b) = &got[3];
    assert_eq!(*s, 429);
    assert_eq!(h["retry-after"], "1");
    assert!(h.contains_key("x-ms-request-id"));
    assert_eq!(j(b)["error"]["code"], "Throttled");
    assert!(j(b)["error"]["message"]
        .as_str()
        .expect("m")
        .contains("too many requests"));
    // Other vaults are not throttled; the bucket refills.
    let other = format!(
        "https://kvother.vault.azure.net:{}/secrets/other-secret?api-version=7.4",
        t.emu.endpoints.https.port()
    );
    assert_eq!(t.get(&other, Some(&tok)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.get(&url, Some(&tok)).await.0, 200);
    let lines = t.log_lines();
    let throttled: Vec<&Value> = lines.iter().filter(|l| l["throttled"] == "vault").collect();
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0]["status"], 429);
    assert_eq!(throttled[0]["host"], "kvdemo.vault.azure.net");
}

// ---------------------------------------------------------------------------------------
// Reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_objects_and_keeps_keys() {
    let t = start(example_value()).await;
    let tok = t.mi_token(None).await;
    let ec = |b: &str| j(b)["key"]["x"].clone();
    let (_, _, b) = t
        .get(&t.kv("/keys/ec-key?api-version=7.4"), Some(&tok))
        .await;
    let ec_before = ec(&b);
    let (_, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&tok))
        .await;
    let old_version = j(&b)["id"]
        .as_str()
        .expect("id")
        .rsplit('/')
        .next()
        .expect("v")
        .to_string();
    assert_eq!(t.emu.state().generation, 0);

    // Rotate db-password (a second version) and bind another pod.
    let mut v = example_value();
    v["vaults"][0]["secrets"][0] = json!({"name": "db-password", "versions": [
        {"value": "s3cr3t-P@ssw0rd", "version": old_version, "created": 1700000000},
        {"value": "rotated", "created": 1800000000}
    ]});
    v["nmi"]["bindings"]
        .as_array_mut()
        .expect("bindings")
        .push(json!({"namespace": "demo", "pod": "new-pod", "client_id": POD}));
    let g = t
        .emu
        .reload(Scenario::from_value(v, &scenarios_dir()).expect("scenario"))
        .expect("reload");
    assert_eq!(g, 1);
    let (s, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!((s, j(&b)["value"].clone()), (200, json!("rotated")));
    let (_, _, b) = t
        .get(
            &t.kv(&format!(
                "/secrets/db-password/{old_version}?api-version=7.4"
            )),
            Some(&tok),
        )
        .await;
    assert_eq!(j(&b)["value"], "s3cr3t-P@ssw0rd");
    // Generated keys survive the reload.
    let (_, _, b) = t
        .get(&t.kv("/keys/ec-key?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(ec(&b), ec_before);
    let r = t
        .http
        .get(t.nmi("/host/token/?resource=https://vault.azure.net"))
        .header("podns", "demo")
        .header("podname", "new-pod")
        .send()
        .await
        .expect("nmi");
    assert_eq!(r.status(), 200);

    // A scenario that does not build leaves the current one in place.
    let mut bad = example_value();
    bad["vaults"][0]["keys"][0]["pem_file"] = json!("material/nonexistent.pem");
    let e = t
        .emu
        .reload(Scenario::from_value(bad, &scenarios_dir()).expect("parses"))
        .expect_err("error");
    assert!(e.contains("nonexistent.pem"), "{e}");
    assert_eq!(t.emu.state().generation, 1);
    let (_, _, b) = t
        .get(&t.kv("/secrets/db-password?api-version=7.4"), Some(&tok))
        .await;
    assert_eq!(j(&b)["value"], "rotated");
}

#[test]
fn binary_reloads_on_sighup() {
    let Ok(bin) = kv_emulator::netns::emulator_binary() else {
        panic!("cannot run: kv-emulator binary not built (cargo build --workspace --bins)");
    };
    let dir = temp_dir();
    let scenario = dir.0.join("scenario.json");
    let mut v = example_value();
    std::fs::write(&scenario, v.to_string()).expect("write");
    let ready = dir.0.join("ready");
    let mut child = std::process::Command::new(bin)
        .arg("--scenario")
        .arg(&scenario)
        .args(["--bind-local", "--exit-on-stdin-eof", "--ready-file"])
        .arg(&ready)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let read_ready = |generation: u64, error: bool| -> Value {
        let t0 = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let r = j(&text);
                if r["generation"] == generation && r.get("reload_error").is_some() == error {
                    return r;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no generation {generation} in {ready:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let r = read_ready(0, false);
    let pid = r["pid"].as_u64().expect("pid");
    assert_eq!(pid, u64::from(child.id()));
    let hup = || {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    v["vaults"][0]["secrets"][0]["value"] = json!("rotated");
    std::fs::write(&scenario, v.to_string()).expect("write");
    hup();
    read_ready(1, false);
    std::fs::write(&scenario, "{not json").expect("write");
    hup();
    let r = read_ready(1, true);
    assert!(
        r["reload_error"]
            .as_str()
            .expect("e")
            .contains("parsing scenario"),
        "{r}"
    );
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reloaded") && err.contains("(generation 1)"),
        "{err}"
    );
    assert!(err.contains("still serving generation 1"), "{err}");
}
