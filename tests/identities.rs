//! Today's identities against the emulator, through the shipped binary as kubelet runs it:
//! workload identity (the pod's projected service-account token, laid out the way kubelet lays
//! it out, signed by the emulator's test issuer), certificate service principals, and managed
//! identity by resource id.

mod common;

use common::*;
use kv_emulator::issuer::ServiceAccountToken;
use serde_json::{json, Value};
use std::path::Path;

const WORKLOAD_APP: &str = "00000000-0000-0000-0000-00000000a007";
const WORKLOAD_MI: &str = "00000000-0000-0000-0000-00000000a008";
const SP_CERT_ID: &str = "00000000-0000-0000-0000-00000000a005";
const USER_MI_RESOURCE: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-user";

fn wi_options(sa: &str, client_id: &str) -> Value {
    json!({"useworkloadidentity": "true", "clientid": client_id, "tenantid": TENANT,
           "keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
           "kubernetes.io/serviceAccount.name": sa})
}

fn token_for(dir: &Path, ns: &str, sa: &str) -> ServiceAccountToken {
    ServiceAccountToken::new(ns, sa)
        .pod("demo-pod", &pod_uid(dir))
        .audiences(&["api://AzureADTokenExchange"])
}

fn aad_requests(node: &Node) -> usize {
    node.ns
        .request_log()
        .iter()
        .filter(|l| l["endpoint"] == "aad")
        .count()
}

#[test]
fn workload_identity_mounts_with_the_pods_own_token() {
    let node = Node::new();
    let iss = issuer();
    for (sa, client_id) in [("workload", WORKLOAD_APP), ("workload-mi", WORKLOAD_MI)] {
        let dir = node.volume_dir("wi");
        let jwt = iss.mint(&token_for(&dir, "demo", sa));
        project(&dir, "azure-identity-token", "azure-identity-token", &jwt);
        node.ns.clear_request_log();
        let c = node.mount(&dir, wi_options(sa, client_id));
        c.assert_success();
        assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
        // One token exchange at AAD, for that client id.
        let log = node.ns.request_log();
        let aad: Vec<&Value> = log.iter().filter(|l| l["endpoint"] == "aad").collect();
        assert_eq!(aad.len(), 1, "{log:?}");
        assert_eq!(aad[0]["status"], 200);
        assert_eq!(aad[0]["client_id"], client_id);
        node.unmount(&dir).assert_success();
        // The token never reaches the log.
        assert!(!node.log_text().contains(&jwt[jwt.len() - 20..]));
    }
}

#[test]
fn a_pod_declared_projected_volume_works_too() {
    let node = Node::new();
    let dir = node.volume_dir("wi");
    let jwt = issuer().mint(&token_for(&dir, "demo", "workload"));
    project(&dir, "my-token", "token", &jwt);
    let mut o = wi_options("workload", WORKLOAD_APP);
    o["workloadidentitytokenpath"] = json!("my-token/token");
    node.mount(&dir, o).assert_success();
    node.unmount(&dir).assert_success();
}

#[test]
fn kv_waits_for_a_token_kubelet_writes_late() {
    let node = Node::new();
    let dir = node.volume_dir("wi");
    let jwt = issuer().mint(&token_for(&dir, "demo", "workload"));
    let writer = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(800));
            project(&dir, "azure-identity-token", "azure-identity-token", &jwt);
        })
    };
    node.mount(&dir, wi_options("workload", WORKLOAD_APP))
        .assert_success();
    writer.join().unwrap();
    node.unmount(&dir).assert_success();
}

#[test]
fn a_missing_token_fails_at_the_deadline_naming_the_volume() {
    let node = Node::with(scenario(), json!({"deadlineSeconds": 2}));
    let dir = node.volume_dir("wi");
    let started = std::time::Instant::now();
    let c = node.mount(&dir, wi_options("workload", WORKLOAD_APP));
    c.assert_failure("KV_SA_TOKEN");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert!(
        c.message()
            .contains("projected volume `azure-identity-token` file `azure-identity-token`"),
        "{}",
        c.message()
    );
    assert_eq!(aad_requests(&node), 0);
    node.assert_nothing_left(&dir);
}

#[test]
fn tokens_that_do_not_fit_the_pod_are_never_sent() {
    let node = Node::new();
    let iss = issuer();
    type Token = Box<dyn Fn(&Path) -> ServiceAccountToken>;
    let cases: Vec<(&str, Token, &str)> = vec![
        (
            "wrong audience",
            Box::new(|d| {
                token_for(d, "demo", "workload").audiences(&["https://kubernetes.default.svc"])
            }),
            "audience",
        ),
        (
            "another namespace's service account",
            Box::new(|d| token_for(d, "other", "workload")),
            "not this pod's system:serviceaccount:demo:workload",
        ),
        (
            "expired",
            Box::new(|d| {
                token_for(d, "demo", "workload")
                    .ttl(600)
                    .issued_offset(-7200)
            }),
            "expired",
        ),
    ];
    for (what, token, want) in cases {
        let dir = node.volume_dir("wi");
        let jwt = iss.mint(&token(&dir));
        project(&dir, "azure-identity-token", "azure-identity-token", &jwt);
        node.ns.clear_request_log();
        let c = node.mount(&dir, wi_options("workload", WORKLOAD_APP));
        c.assert_failure("KV_SA_TOKEN");
        assert!(c.message().contains(want), "{what}: {}", c.message());
        assert!(
            !c.stdout.contains(&jwt[..40]),
            "{what}: the token was echoed"
        );
        assert_eq!(aad_requests(&node), 0, "{what}: the token was sent");
        node.assert_nothing_left(&dir);
    }
}

#[test]
fn links_that_leave_the_volume_and_other_pods_tokens_are_refused() {
    let node = Node::new();
    let iss = issuer();
    // Another pod's token, valid for this pod's service account.
    let other = node.volume_dir("other");
    let other_vol = project(
        &other,
        "azure-identity-token",
        "azure-identity-token",
        &iss.mint(&token_for(&other, "demo", "workload")),
    );
    // A link planted in this pod's volume pointing at it.
    let dir = node.volume_dir("wi");
    let vol = dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("kubernetes.io~projected/azure-identity-token");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::symlink(
        other_vol.join("azure-identity-token"),
        vol.join("azure-identity-token"),
    )
    .unwrap();
    node.ns.clear_request_log();
    let c = node.mount(&dir, wi_options("workload", WORKLOAD_APP));
    c.assert_failure("KV_SA_TOKEN");
    assert!(
        c.message().contains("links outside its volume"),
        "{}",
        c.message()
    );
    assert_eq!(aad_requests(&node), 0);
    node.assert_nothing_left(&dir);

    // The projected volume dir itself a link (to the other pod's volume).
    let dir = node.volume_dir("wi");
    let projected = dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("kubernetes.io~projected");
    std::fs::create_dir_all(&projected).unwrap();
    std::os::unix::fs::symlink(&other_vol, projected.join("azure-identity-token")).unwrap();
    let c = node.mount(&dir, wi_options("workload", WORKLOAD_APP));
    c.assert_failure("KV_SA_TOKEN");
    assert!(
        c.message().contains("without following a link"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);

    // kubernetes.io/pod.uid naming another pod than the mount dir's.
    let dir = node.volume_dir("wi");
    project(
        &dir,
        "azure-identity-token",
        "azure-identity-token",
        &iss.mint(&token_for(&dir, "demo", "workload")),
    );
    let mut o = wi_options("workload", WORKLOAD_APP);
    o["kubernetes.io/pod.uid"] = json!(pod_uid(&other));
    let c = node.mount(&dir, o);
    c.assert_failure("KV_DIR");
    assert!(
        c.message().contains("only from the pod being mounted"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);
}

#[test]
fn aad_without_a_matching_federated_credential_names_issuer_and_subject() {
    let node = Node::new();
    let dir = node.volume_dir("wi");
    // A service account AAD has no federated credential for.
    project(
        &dir,
        "azure-identity-token",
        "azure-identity-token",
        &issuer().mint(&token_for(&dir, "demo", "nobody")),
    );
    let c = node.mount(&dir, wi_options("nobody", WORKLOAD_APP));
    c.assert_failure("KV_AAD_FEDERATION");
    for want in [ISSUER, "system:serviceaccount:demo:nobody", WORKLOAD_APP] {
        assert!(c.message().contains(want), "{want}: {}", c.message());
    }
    node.assert_nothing_left(&dir);
}

#[test]
fn certificate_service_principal_from_pem_and_pfx() {
    let node = Node::new();
    let pem = std::fs::read_to_string(material("sp-cert.pem")).unwrap();
    let sp = |cred: (&str, String)| {
        let mut o = json!({"tenantid": TENANT, "keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                           "keyvaultobjecttypes": "secret", "kubernetes.io/secret/clientid": b64(SP_CERT_ID)});
        o[format!("kubernetes.io/secret/{}", cred.0)] = json!(cred.1);
        o
    };
    let dir = node.volume_dir("sp");
    node.mount(&dir, sp(("clientcertificate", b64(&pem))))
        .assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    node.unmount(&dir).assert_success();

    // The same key and certificate as a password-protected PKCS#12 file.
    let pfx = openssl_pkcs12(&pem, "pfx-pass");
    let mut o = sp((
        "clientcertificatepfx",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pfx),
    ));
    o["kubernetes.io/secret/clientcertificatepassword"] = json!(b64("pfx-pass"));
    let dir = node.volume_dir("sp");
    node.mount(&dir, o).assert_success();
    node.unmount(&dir).assert_success();

    // A certificate AAD does not know (another key).
    let rsa = std::fs::read_to_string(material("rsa-key.pem")).unwrap();
    let other = other_certificate(&node.root, &rsa);
    let dir = node.volume_dir("sp");
    let c = node.mount(&dir, sp(("clientcertificate", b64(&other))));
    c.assert_failure("KV_AAD_CLIENT");
    assert!(c.message().contains("AADSTS700027"), "{}", c.message());
    node.assert_nothing_left(&dir);
}

/// `openssl pkcs12 -export` of a PEM key + certificate with a password (AES, PBES2).
fn openssl_pkcs12(pem: &str, password: &str) -> Vec<u8> {
    openssl(
        &["pkcs12", "-export", "-passout", &format!("pass:{password}")],
        pem.as_bytes(),
    )
}

/// A self-signed certificate for `key_pem`, with the key, as PEM.
fn other_certificate(dir: &Path, key_pem: &str) -> String {
    let key = dir.join("other.key");
    std::fs::write(&key, key_pem).unwrap();
    let cert = openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-subj",
            "/CN=unknown",
            "-days",
            "2",
            "-key",
            key.to_str().unwrap(),
        ],
        b"",
    );
    format!("{key_pem}{}", String::from_utf8_lossy(&cert))
}

#[test]
fn managed_identity_by_resource_id() {
    let node = Node::new();
    let dir = node.volume_dir("mi");
    node.mount(
        &dir,
        json!({"usevmmanagedidentity": "true", "vmmanagedidentityresourceid": USER_MI_RESOURCE,
               "keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret"}),
    )
    .assert_success();
    let imds: Vec<Value> = node
        .ns
        .request_log()
        .into_iter()
        .filter(|l| l["endpoint"] == "imds")
        .collect();
    // IMDS resolved the resource id to the user-assigned identity that has it.
    assert_eq!(imds.len(), 1, "{imds:?}");
    assert_eq!(imds[0]["client_id"], USER_MI, "{imds:?}");
    node.unmount(&dir).assert_success();
    let dir = node.volume_dir("mi");
    let c = node.mount(
        &dir,
        json!({"usevmmanagedidentity": "true",
               "vmmanagedidentityresourceid": USER_MI_RESOURCE.replace("kv-user", "nobody"),
               "keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret"}),
    );
    c.assert_failure("KV_IMDS_NO_IDENTITY");
    node.assert_nothing_left(&dir);
}

#[test]
fn kv_fetch_with_workload_identity_and_a_token_file() {
    let node = Node::new();
    let token = node.root.join("sa-token");
    std::fs::write(
        &token,
        issuer().mint(
            &ServiceAccountToken::new("demo", "workload")
                .audiences(&["api://AzureADTokenExchange"]),
        ),
    )
    .unwrap();
    let out = node
        .ns
        .command(&node.kv)
        .args([
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--workload-identity",
            "--client-id",
            WORKLOAD_APP,
            "--tenant",
            TENANT,
            "--token-file",
        ])
        .arg(&token)
        .arg("--stdout")
        .env("KV_LOG_FILE", &node.log)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s3cr3t-P@ssw0rd",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
