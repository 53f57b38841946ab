//! Objects as applications need them, end to end: certificate chains stored out of order in a
//! PFX and a PEM secret, PFX output, DER, JWK, encodings, modes, two vaults, optional objects,
//! version history. Checked with openssl, as an application's TLS stack would see the files.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

fn scenario_with_chains() -> serde_json::Value {
    let mut s = scenario();
    let vault = &mut s["vaults"][0];
    for (name, ct) in [
        ("chain-pfx", "application/x-pkcs12"),
        ("chain-pem", "application/x-pem-file"),
    ] {
        vault["certificates"].as_array_mut().unwrap().push(json!({
            "name": name, "content_type": ct, "subject": format!("CN={name}.example"), "dns_names": [format!("{name}.example")],
            "issuer": "chain", "chain_order": "mixed", "key": {"kty": "EC", "crv": "P-256"}
        }));
    }
    vault["secrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "b64", "value": "aGVsbG8AAQI="}));
    vault["secrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "hex", "value": "68656c6c6f"}));
    s
}

/// Splits PEM text into (label, block text) in order.
fn blocks(pem: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8(pem.to_vec()).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), format!("{line}\n")));
        } else if let Some((label, mut body)) = current.take() {
            body.push_str(line);
            body.push('\n');
            if line.starts_with("-----END ") {
                out.push((label, body));
            } else {
                current = Some((label, body));
            }
        }
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Key first, then leaf → intermediate → root: openssl verifies the chain and the key matches.
fn assert_key_and_ordered_chain(node: &Node, pem: &[u8], dns: &str) {
    let b = blocks(pem);
    let labels: Vec<&str> = b.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        labels,
        ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE", "CERTIFICATE"]
    );
    let tmp = node.root.join(format!("chk-{dns}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let leaf = write(&tmp, "leaf.pem", &b[1].1);
    let inter = write(&tmp, "inter.pem", &b[2].1);
    let root = write(&tmp, "root.pem", &b[3].1);
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let subject =
        String::from_utf8(openssl(&["x509", "-noout", "-subject"], b[1].1.as_bytes())).unwrap();
    assert!(subject.contains(dns), "leaf first: {subject}");
    assert_eq!(
        openssl(&["pkey", "-pubout"], b[0].1.as_bytes()),
        openssl(&["x509", "-noout", "-pubkey"], b[1].1.as_bytes())
    );
}

#[test]
fn certificates_keys_and_secrets_in_every_format() {
    let node = Node::with(scenario_with_chains(), json!({}));
    let dir = node.volume_dir("objects");
    let objects = json!([
        {"objectName": "chain-pfx", "objectType": "secret", "objectAlias": "pfx.pem", "splitCertAndKey": true},
        {"objectName": "chain-pem", "objectType": "secret", "objectAlias": "pem.pem"},
        {"objectName": "chain-pfx", "objectType": "secret", "objectAlias": "bundle.pfx", "objectFormat": "pfx", "objectEncoding": "base64"},
        {"objectName": "chain-pfx", "objectType": "cert", "objectAlias": "leaf.der", "objectFormat": "der"},
        {"objectName": "rsa-key", "objectType": "key", "objectAlias": "key.jwk", "objectFormat": "jwk"},
        {"objectName": "b64", "objectType": "secret", "objectEncoding": "base64", "filePermission": "0400"},
        {"objectName": "hex", "objectType": "secret", "objectEncoding": "hex"},
        {"objectName": "other-secret", "objectType": "secret", "keyvaultName": "kvother"},
        {"objectName": "gone", "objectType": "secret", "optional": "true"},
        {"objectName": "old-and-new", "objectType": "secret", "objectAlias": "hist", "objectVersionHistory": 2}
    ]);
    let c = node.mount(
        &dir,
        json!({"keyvaultname": "kvdemo", "objects": objects.to_string(), "usevmmanagedidentity": "true",
               "kubernetes.io/mounterArgs.FsGroup": "1234"}),
    );
    c.assert_success();
    let files = node.files(&dir);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "b64",
            "bundle.pfx",
            "hex",
            "hist/0",
            "hist/1",
            "key.jwk",
            "leaf.der",
            "other-secret",
            "pem.pem",
            "pfx.pem",
            "pfx.pem.crt",
            "pfx.pem.key"
        ]
    );
    for (name, _, mode, gid) in &files {
        let want = if name == "b64" { 0o400 } else { 0o440 };
        assert_eq!((*mode, *gid), (want, 1234), "{name}");
    }

    // Chains stored root, leaf, intermediate come out key, leaf, intermediate, root.
    let pfx_pem = node.file(&dir, "pfx.pem");
    assert_key_and_ordered_chain(&node, &pfx_pem, "chain-pfx.example");
    assert_key_and_ordered_chain(&node, &node.file(&dir, "pem.pem"), "chain-pem.example");
    let b = blocks(&pfx_pem);
    assert_eq!(
        String::from_utf8(node.file(&dir, "pfx.pem.key")).unwrap(),
        b[0].1
    );
    assert_eq!(
        String::from_utf8(node.file(&dir, "pfx.pem.crt")).unwrap(),
        format!("{}{}{}", b[1].1, b[2].1, b[3].1)
    );

    // The binary PFX reads with openssl and an empty password; the DER is the leaf.
    let certs = String::from_utf8(openssl(
        &["pkcs12", "-nokeys", "-passin", "pass:"],
        &node.file(&dir, "bundle.pfx"),
    ))
    .unwrap();
    assert_eq!(
        certs.matches("-----BEGIN CERTIFICATE-----").count(),
        3,
        "{certs}"
    );
    assert_eq!(
        node.file(&dir, "leaf.der"),
        openssl(&["x509", "-outform", "der"], b[1].1.as_bytes())
    );

    let jwk: serde_json::Value = serde_json::from_slice(&node.file(&dir, "key.jwk")).unwrap();
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["e"], "AQAB");
    assert!(jwk.get("d").is_none());

    assert_eq!(node.file(&dir, "b64"), b"hello\x00\x01\x02");
    assert_eq!(node.file(&dir, "hex"), b"hello");
    assert_eq!(node.file(&dir, "other-secret"), b"from the other vault");
    assert_eq!(node.file(&dir, "hist/0"), b"new value");
    assert_eq!(node.file(&dir, "hist/1"), b"old value");
    assert!(
        node.log_text().contains("optional_missing"),
        "the skipped optional object is logged"
    );

    node.unmount(&dir).assert_success();
    assert_eq!(node.mount_type(&dir), None);
}

#[test]
fn a_required_missing_object_still_fails_and_a_forbidden_optional_one_too() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let objects = json!([{"objectName": "db-password", "objectType": "secret"}, {"objectName": "nope", "objectType": "secret"}]);
    node.mount(&dir, json!({"keyvaultname": "kvdemo", "objects": objects.to_string(), "usevmmanagedidentity": "true"}))
        .assert_failure("KV404_NOT_FOUND");
    node.assert_nothing_left(&dir);
    // optional only forgives a 404: a 403 (here: disabled) still fails.
    let objects =
        json!([{"objectName": "disabled-secret", "objectType": "secret", "optional": true}]);
    node.mount(&dir, json!({"keyvaultname": "kvdemo", "objects": objects.to_string(), "usevmmanagedidentity": "true"}))
        .assert_failure("KV403_DISABLED");
    node.assert_nothing_left(&dir);
}

#[test]
fn big_secrets_and_size_limits() {
    let node = Node::with(scenario(), json!({"tmpfsMaxBytes": 1048576}));
    let dir = node.volume_dir("v");
    node.mount(&dir, json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "big", "keyvaultobjecttypes": "secret", "usevmmanagedidentity": "true"}))
        .assert_success();
    assert_eq!(node.file(&dir, "big").len(), 25600);
    node.unmount(&dir).assert_success();
    let c = node.mount(
        &dir,
        json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "big", "keyvaultobjecttypes": "secret", "usevmmanagedidentity": "true", "tmpfssize": "2Mi"}),
    );
    c.assert_failure("KV_OPTIONS");
    assert!(c.message().contains("tmpfsMaxBytes"), "{}", c.message());
    node.assert_nothing_left(&dir);
}
