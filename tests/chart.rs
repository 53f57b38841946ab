//! charts/kv's `config:` values are the node config kv reads: the chart's schema names exactly
//! the keys `kv.json` accepts, at every level, and what it renders parses. A key added to the
//! node config (or removed) fails here until the schema follows, so `helm install` can neither
//! refuse a key kv reads nor accept one kv would refuse on every node.

use keyvault_flexvolume::config::NodeConfig;
use serde_json::Value;
use std::collections::BTreeSet;

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kv/values.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the schema")).expect("JSON")
}

/// The field names kv accepts in the object at `path` (a JSON object path, e.g. ["log"]): serde
/// lists them when it refuses an unknown one.
fn kv_fields(path: &[&str]) -> BTreeSet<String> {
    let mut doc = serde_json::json!({"zz-unknown": 1});
    for key in path.iter().rev() {
        doc = serde_json::json!({ *key: doc });
    }
    let err = NodeConfig::parse(&doc.to_string()).expect_err("an unknown key is refused");
    let msg = err.message().to_string();
    // "unknown field `zz-unknown`, expected one of `a`, `b`" (or "expected `a` or `b`").
    let list = msg
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{path:?}: {msg}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn schema_fields(schema: &Value, path: &[&str]) -> BTreeSet<String> {
    let mut node = &schema["properties"]["config"];
    for key in path {
        node = &node["properties"][*key];
    }
    assert_eq!(node["additionalProperties"], false, "config {path:?}");
    node["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("config {path:?} has no properties"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_schema_names_exactly_the_keys_kv_json_accepts() {
    let schema = schema();
    for path in [
        &[][..],
        &["log"][..],
        &["policy"][..],
        &["rotation"][..],
        &["customCloud"][..],
    ] {
        assert_eq!(
            schema_fields(&schema, path),
            kv_fields(path),
            "charts/kv/values.schema.json config {path:?} vs src/config.rs"
        );
    }
}

#[test]
fn the_default_and_documented_configs_parse() {
    // values.yaml's config, and every key at once as docs/install.md's reference shows them.
    let values = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kv/values.yaml");
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(values).expect("read"))
        .expect("values.yaml is YAML");
    NodeConfig::parse(&values["config"].to_string()).expect("values.yaml's config");
    let full = r#"{"cloud": "AzurePublicCloud", "nmiPort": 2579, "deadlineSeconds": 45,
        "tmpfsMaxBytes": 16777216, "maxFilesPerVolume": 100, "tokenCache": true,
        "stateDir": "/run/kv", "vaultRequestsPerNode": 16,
        "customCloud": {"authorityHost": "https://login.contoso.local", "keyVaultDnsSuffix": "vault.contoso.local",
                        "keyVaultResource": "https://vault.contoso.local"},
        "log": {"path": "/var/log/kv/kv-driver.log", "maxBytes": 10485760},
        "policy": {"nodeIdentities": {"ingress": ["system"], "*": ["00000000-0000-0000-0000-000000000001"]},
                   "nodeIdentityNamespaces": ["ci"], "workloadIdentities": {"apps": ["*"]},
                   "nmiPorts": [2580], "vaultsByNamespace": {"ingress": ["contoso-tls"]}},
        "rotation": {"enabled": true, "defaultInterval": "5m", "minInterval": "30s"}}"#;
    NodeConfig::parse(full).expect("every key");
}
