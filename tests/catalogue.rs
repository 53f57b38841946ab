//! The error catalogue: every code (but KV_INTERNAL, which only a bug produces) comes out of
//! at least one real scenario through the shipped binary, with an actionable message.

mod common;

use common::*;
use keyvault_flexvolume::error::Code;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn secret(name: &str, identity: Value) -> Value {
    let mut o =
        json!({"keyvaultname":"kvdemo","keyvaultobjectnames":name,"keyvaultobjecttypes":"secret"});
    for (k, v) in identity.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn pod() -> Value {
    json!({"usepodidentity":"true"})
}

fn node_mi() -> Value {
    json!({"usevmmanagedidentity":"true"})
}

fn sp(id: &str, secret: &str) -> Value {
    json!({"tenantid":TENANT,"kubernetes.io/secret/clientid":b64(id),"kubernetes.io/secret/clientsecret":b64(secret)})
}

/// Mounts on a fresh node with this scenario edit and config; returns the code and message.
fn failure(edit: impl FnOnce(&mut Value), config: Value, options: Value) -> (String, String) {
    failure_in_pod(edit, config, options, |_| {})
}

/// [`failure`], after `prepare` set up the pod's directory (e.g. its projected token).
fn failure_in_pod(
    edit: impl FnOnce(&mut Value),
    config: Value,
    options: Value,
    prepare: impl FnOnce(&std::path::Path),
) -> (String, String) {
    let mut s = scenario();
    edit(&mut s);
    let node = Node::with(s, config);
    let dir = node.volume_dir("v");
    prepare(&dir);
    let c = node.mount(&dir, options);
    assert_eq!(c.status(), "Failure", "{}", c.stdout);
    node.assert_nothing_left(&dir);
    let (code, message) = c.message().split_once(": ").unwrap();
    (code.to_string(), message.to_string())
}

#[test]
fn every_code_is_produced_by_a_scenario() {
    let short = json!({"deadlineSeconds": 3});
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut record = |want: &str, (code, message): (String, String), needle: &str| {
        assert_eq!(code, want, "{message}");
        assert!(
            message.contains(needle),
            "{want}: {message:?} lacks {needle:?}"
        );
        seen.insert(code, message);
    };

    // Input and node.
    let node = Node::new();
    let usage = node.kv(&["mount"]);
    record(
        "KV_USAGE",
        usage
            .message()
            .split_once(": ")
            .map(|(c, m)| (c.into(), m.into()))
            .unwrap(),
        "usage: kv mount",
    );
    record(
        "KV_OPTIONS",
        failure(|_| {}, json!({}), secret("a;b", pod())),
        "keyvaultobjecttypes",
    );
    let bad_dir = node.root.join("elsewhere/v");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let c = node.kv(&[
        "mount",
        bad_dir.to_str().unwrap(),
        &kubelet_options(&node.volume_dir("x"), secret("db-password", pod())).to_string(),
    ]);
    record(
        "KV_DIR",
        c.message()
            .split_once(": ")
            .map(|(c, m)| (c.into(), m.into()))
            .unwrap(),
        "kubelet's shape",
    );
    std::fs::write(
        node.kv.parent().unwrap().join("kv.json"),
        "{\"deadline\": 5}",
    )
    .unwrap();
    let c = node.mount(&node.volume_dir("v"), secret("db-password", pod()));
    record(
        "KV_CONFIG",
        c.message()
            .split_once(": ")
            .map(|(c, m)| (c.into(), m.into()))
            .unwrap(),
        "kv.json",
    );
    record(
        "KV_POLICY",
        failure(
            |_| {},
            json!({"policy":{"nodeIdentityNamespaces":["kube-system"]}}),
            secret("db-password", node_mi()),
        ),
        "nodeIdentityNamespaces",
    );

    // Identities.
    let mut unbound = secret("db-password", pod());
    unbound["kubernetes.io/pod.name"] = json!("nobody");
    record(
        "KV_NMI_NO_IDENTITY",
        failure(|_| {}, short.clone(), unbound),
        "AzureIdentityBinding",
    );
    record(
        "KV_NMI",
        failure(
            |s| s["nmi"]["bindings"][0]["forbidden"] = json!(true),
            short.clone(),
            secret("db-password", pod()),
        ),
        "HTTP 403",
    );
    let mut unknown_mi = secret("db-password", node_mi());
    unknown_mi["vmmanagedidentityclientid"] = json!("12345678-0000-0000-0000-000000000000");
    record(
        "KV_IMDS_NO_IDENTITY",
        failure(|_| {}, json!({}), unknown_mi),
        "assign the identity",
    );
    record(
        "KV_IMDS",
        failure(
            |s| {
                s["faults"] =
                    json!([{"endpoint":"imds","action":"status","status":500,"count":1000}])
            },
            short.clone(),
            secret("db-password", node_mi()),
        ),
        "HTTP 500",
    );
    record(
        "KV_AAD_CLIENT",
        failure(|_| {}, json!({}), secret("db-password", sp(SP_ID, "wrong"))),
        "AADSTS7000215",
    );
    record(
        "KV_AAD",
        failure(
            |_| {},
            json!({}),
            secret(
                "db-password",
                sp("99999999-0000-0000-0000-000000000000", "x"),
            ),
        ),
        "AADSTS700016",
    );

    // Key Vault.
    record(
        "KV401_UNAUTHORIZED",
        failure(
            |s| s["token_lifetime_secs"] = json!(0),
            json!({}),
            secret("db-password", node_mi()),
        ),
        "rejected the token",
    );
    let mut no_access = secret("db-password", node_mi());
    no_access["vmmanagedidentityclientid"] = json!(NO_ACCESS_MI);
    record(
        "KV403_FORBIDDEN",
        failure(|_| {}, json!({}), no_access),
        "grant it `get` on secrets",
    );
    record(
        "KV403_DISABLED",
        failure(|_| {}, json!({}), secret("disabled-secret", node_mi())),
        "is disabled",
    );
    record(
        "KV404_NOT_FOUND",
        failure(|_| {}, json!({}), secret("nope", node_mi())),
        "secret `nope` in vault kvdemo was not found",
    );
    record(
        "KV429_THROTTLED",
        failure(
            |s| s["faults"] = json!([{"endpoint":"keyvault","action":"status","status":429,"retry_after":1,"count":1000}]),
            short.clone(),
            secret("db-password", node_mi()),
        ),
        "throttling",
    );
    record(
        "KV_VAULT",
        failure(
            |s| {
                s["faults"] =
                    json!([{"endpoint":"keyvault","action":"status","status":501,"count":1000}])
            },
            short.clone(),
            secret("db-password", node_mi()),
        ),
        "HTTP 501",
    );
    record(
        "KV_NETWORK",
        failure(
            |s| s["faults"] = json!([{"endpoint":"keyvault","action":"close","count":1000}]),
            short.clone(),
            secret("db-password", node_mi()),
        ),
        "cannot reach vault kvdemo",
    );
    record(
        "KV_TIMEOUT",
        failure(
            |s| {
                s["faults"] = json!([{"endpoint":"keyvault","action":"stall_forever","count":1000}])
            },
            short.clone(),
            secret("db-password", node_mi()),
        ),
        "timed out after 3s",
    );
    record(
        "KV_RENDER",
        failure(
            |s| {
                s["vaults"][0]["keys"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name":"sym","kty":"oct"}))
            },
            json!({}),
            json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"sym","keyvaultobjecttypes":"key","usevmmanagedidentity":"true"}),
        ),
        "sym",
    );
    let workload = |sa: &str| {
        let mut o = secret(
            "db-password",
            json!({"useworkloadidentity":"true","clientid":"00000000-0000-0000-0000-00000000a007","tenantid":TENANT}),
        );
        o["kubernetes.io/serviceAccount.name"] = json!(sa);
        o
    };
    record(
        "KV_SA_TOKEN",
        failure(|_| {}, short.clone(), workload("workload")),
        "azure-identity-token",
    );
    record(
        "KV_AAD_FEDERATION",
        failure_in_pod(
            |_| {},
            json!({}),
            workload("nobody"),
            |dir| {
                let token = kv_emulator::issuer::ServiceAccountToken::new("demo", "nobody")
                    .pod("demo-pod", &pod_uid(dir))
                    .audiences(&["api://AzureADTokenExchange"]);
                project(
                    dir,
                    "azure-identity-token",
                    "azure-identity-token",
                    &issuer().mint(&token),
                );
            },
        ),
        "system:serviceaccount:demo:nobody",
    );
    record(
        "KV_MOUNT",
        failure(
            |_| {},
            json!({"tmpfsMaxBytes": 4096}),
            secret("big", node_mi()),
        ),
        "tmpfsMaxBytes",
    );

    let all: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| **c != Code::Internal)
        .map(|c| c.as_str())
        .collect();
    let got: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(got, all_sorted, "codes not produced by any scenario");
    for message in seen.values() {
        assert!(
            !message.contains("s3cr3t") && !message.contains(SP_SECRET) && !message.contains("eyJ"),
            "{message}"
        );
    }
}
