//! Options parsing: what kubelet sends → VolumeSpec, and every error a pod author can make.

use super::*;
use crate::error::Code;
use crate::options::{ClientCredential, ManagedIdentity, TokenPath};
use crate::render::{Encoding, Format, ObjectKind};
use base64::Engine;
use serde_json::Value;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn base() -> serde_json::Map<String, Value> {
    serde_json::from_value(serde_json::json!({
        "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "a;b;c",
        "keyvaultobjecttypes": "secret;key;cert",
        "usepodidentity": "true",
        "kubernetes.io/pod.name": "web-0",
        "kubernetes.io/pod.namespace": "demo",
        "kubernetes.io/fsType": "",
        "kubernetes.io/readwrite": "rw",
    }))
    .unwrap()
}

fn parse_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<VolumeSpec> {
    let mut m = base();
    edit(&mut m);
    VolumeSpec::parse(&Value::Object(m).to_string())
}

fn err_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Error {
    let e = parse_with(edit).unwrap_err();
    assert_eq!(e.code(), Code::Options, "{e}");
    e
}

#[test]
fn v0017_pod_spec_parses() {
    let spec = parse_with(|m| {
        m.insert("keyvaultobjectnames".into(), " a ; b;c ".into());
        m.insert("keyvaultobjectaliases".into(), "A;;c.pem".into());
        m.insert(
            "keyvaultobjectversions".into(),
            ";0123456789abcdef0123456789abcdef;".into(),
        );
        m.insert("resourcegroup".into(), "rg".into());
        m.insert("kubernetes.io/mounterArgs.FsGroup".into(), "2000".into());
    })
    .unwrap();
    let files: Vec<_> = spec.objects.iter().map(|o| o.file.as_str()).collect();
    assert_eq!(files, ["A", "b", "c.pem"]);
    assert_eq!(
        spec.objects[1].version.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(spec.objects[0].version, None);
    assert_eq!(spec.objects[2].kind, ObjectKind::Cert);
    assert_eq!(spec.identity, Identity::PodIdentity { nmi_port: None });
    assert_eq!(spec.fs_group, Some(2000));
    assert_eq!(spec.unknown_keys, vec!["resourcegroup".to_string()]);
}

#[test]
fn legacy_singular_names_and_only_kubelets_fsgroup_key() {
    let spec = parse_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert("keyvaultobjectname".into(), "only".into());
        m.insert("keyvaultobjecttype".into(), "secret".into());
        m.insert("kubernetes.io/fsGroup".into(), "7".into());
    })
    .unwrap();
    assert_eq!(spec.objects.len(), 1);
    // kubelet sends only kubernetes.io/mounterArgs.FsGroup; another spelling is a pod's own
    // key, not honoured, and logged as unknown.
    assert_eq!(spec.fs_group, None);
    assert_eq!(spec.unknown_keys, vec!["kubernetes.io/fsGroup".to_string()]);
}

#[test]
fn keys_match_case_insensitively_but_not_twice() {
    let spec = parse_with(|m| {
        let v = m.remove("keyvaultname").unwrap();
        m.insert("KeyVaultName".into(), v);
    })
    .unwrap();
    assert_eq!(spec.objects[0].vault, "kvdemo");
    let e = err_with(|m| {
        m.insert("KEYVAULTNAME".into(), "other".into());
    });
    assert!(e.message().contains("given twice"), "{e}");
}

#[test]
fn service_principal_from_secret_ref() {
    let spec = parse_with(|m| {
        m.remove("usepodidentity");
        m.insert(
            "tenantid".into(),
            "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        );
        m.insert(
            "kubernetes.io/secret/clientid".into(),
            b64("app-id\n").into(),
        );
        m.insert(
            "kubernetes.io/secret/clientsecret".into(),
            b64("s3cr3t \n").into(),
        );
    })
    .unwrap();
    match spec.identity {
        Identity::ServicePrincipal {
            client_id,
            credential: ClientCredential::Secret(secret),
        } => {
            assert_eq!(client_id, "app-id");
            assert_eq!(secret.expose(), "s3cr3t");
        }
        other => panic!("{other:?}"),
    }
}

type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

#[test]
fn validation_failures_name_the_option() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "`keyvaultobjecttypes` has 2",
            Box::new(|m| {
                m.insert("keyvaultobjecttypes".into(), "secret;key".into());
            }),
        ),
        (
            "`keyvaultobjectversions` has 2",
            Box::new(|m| {
                m.insert("keyvaultobjectversions".into(), ";".into());
            }),
        ),
        (
            "keyvaultobjectaliases",
            Box::new(|m| {
                m.insert("keyvaultobjectaliases".into(), "x".into());
            }),
        ),
        (
            "not one of secret, key, cert",
            Box::new(|m| {
                m.insert("keyvaultobjecttypes".into(), "secret;key;blob".into());
            }),
        ),
        (
            "more than one identity",
            Box::new(|m| {
                m.insert("usevmmanagedidentity".into(), "true".into());
            }),
        ),
        (
            "not a valid vault name",
            Box::new(|m| {
                m.insert("keyvaultname".into(), "a--b".into());
            }),
        ),
        (
            "not a valid vault name",
            Box::new(|m| {
                m.insert("keyvaultname".into(), "1abc".into());
            }),
        ),
        (
            "not a valid vault name",
            Box::new(|m| {
                m.insert("keyvaultname".into(), "https://x.vault.azure.net".into());
            }),
        ),
        (
            "not a valid Key Vault object name",
            Box::new(|m| {
                m.insert("keyvaultobjectnames".into(), "a;b_c;d".into());
            }),
        ),
        (
            "not a single safe file name",
            Box::new(|m| {
                m.insert(
                    "keyvaultobjectaliases".into(),
                    "../../etc/passwd;b;c".into(),
                );
            }),
        ),
        (
            "not a single safe file name",
            Box::new(|m| {
                m.insert("keyvaultobjectaliases".into(), "/etc/x;b;c".into());
            }),
        ),
        (
            "not a single safe file name",
            Box::new(|m| {
                m.insert("keyvaultobjectaliases".into(), "a/b;b;c".into());
            }),
        ),
        (
            "would both write",
            Box::new(|m| {
                m.insert("keyvaultobjectaliases".into(), "x;x;c".into());
            }),
        ),
        (
            "must be \"true\" or \"false\"",
            Box::new(|m| {
                m.insert("usepodidentity".into(), "yes please".into());
            }),
        ),
        (
            "must be a string",
            Box::new(|m| {
                m.insert("nmiport".into(), serde_json::json!(2579));
            }),
        ),
        (
            "is not a TCP port",
            Box::new(|m| {
                m.insert("nmiport".into(), "99999".into());
            }),
        ),
        (
            "no identity selected",
            Box::new(|m| {
                m.remove("usepodidentity");
            }),
        ),
        (
            "`tenantid` is required",
            Box::new(|m| {
                m.remove("usepodidentity");
                m.insert("kubernetes.io/secret/clientid".into(), b64("id").into());
                m.insert("kubernetes.io/secret/clientsecret".into(), b64("s").into());
            }),
        ),
        (
            "not valid base64",
            Box::new(|m| {
                m.remove("usepodidentity");
                m.insert("tenantid".into(), "t".into());
                m.insert("kubernetes.io/secret/clientid".into(), b64("id").into());
                m.insert("kubernetes.io/secret/clientsecret".into(), "%%%".into());
            }),
        ),
        (
            "vmmanagedidentityclientid is set",
            Box::new(|m| {
                m.insert("vmmanagedidentityclientid".into(), "abc".into());
            }),
        ),
        (
            "`keyvaultname` is required",
            Box::new(|m| {
                m.remove("keyvaultname");
            }),
        ),
        (
            "not a Key Vault version",
            Box::new(|m| {
                m.insert("keyvaultobjectversions".into(), "x/y;;".into());
            }),
        ),
    ];
    for (want, edit) in cases {
        let e = err_with(edit);
        assert!(e.message().contains(want), "want {want:?} in {e}");
    }
}

#[test]
fn hostile_json_is_a_clear_failure() {
    for bad in ["", "[]", "\"x\"", "{", "{\"a\":1}x", &"[".repeat(10_000)] {
        assert_eq!(VolumeSpec::parse(bad).unwrap_err().code(), Code::Options);
    }
    let e = VolumeSpec::parse(r#"{"keyvaultname":{"nested":{"deep":1}}}"#).unwrap_err();
    assert!(e.message().contains("must be a string"));
    let long = format!(r#"{{"keyvaultname":"{}"}}"#, "a".repeat(128 * 1024));
    assert!(VolumeSpec::parse(&long).unwrap_err().message().len() < 400);
}

#[test]
fn objects_array_ports_a_secret_provider_class() {
    let spec = parse_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert(
            "objects".into(),
            r#"[{"objectName":"web-cert","objectType":"secret","objectAlias":"tls.pem","filePermission":"0440","splitCertAndKey":true},
                {"objectName":"k","objectType":"key","objectFormat":"JWK","keyvaultName":"kvother","optional":"true"},
                {"objectName":"h","objectType":"secret","objectVersionHistory":"3","objectEncoding":"base64"}]"#
                .into(),
        );
    })
    .unwrap();
    assert_eq!(spec.objects[0].file, "tls.pem");
    assert_eq!(spec.objects[0].permission, Some(0o440));
    assert!(spec.objects[0].render.split_cert_and_key);
    assert_eq!(spec.objects[1].vault, "kvother");
    assert!(spec.objects[1].optional);
    assert_eq!(spec.objects[2].version_history, 3);
    assert_eq!(spec.vaults(), vec!["kvdemo", "kvother"]);
}

#[test]
fn objects_array_and_lists_do_not_mix() {
    let e = err_with(|m| {
        m.insert(
            "objects".into(),
            r#"[{"objectName":"a","objectType":"secret"}]"#.into(),
        );
    });
    assert!(e.message().contains("both given"), "{e}");
    let e = err_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert(
            "objects".into(),
            r#"[{"objectName":"a","objectType":"secret","objectAlais":"x"}]"#.into(),
        );
    });
    assert!(e.message().contains("unknown field `objectAlais`"), "{e}");
}

#[test]
fn modes_and_sizes() {
    assert_eq!(parse_mode("m", "0440").unwrap(), 0o440);
    assert_eq!(parse_mode("m", "644").unwrap(), 0o644);
    assert!(parse_mode("m", "4755").is_err());
    assert!(parse_mode("m", "0999").is_err());
    assert_eq!(parse_size("s", "4Mi").unwrap(), 4 << 20);
    assert_eq!(parse_size("s", "512Ki").unwrap(), 512 << 10);
    assert_eq!(parse_size("s", "1000").unwrap(), 1000);
    assert!(parse_size("s", "-1").is_err());
    assert!(parse_size("s", "99999999999999999999Gi").is_err());
}

#[test]
fn both_syntaxes_build_the_same_object() {
    let from_lists = parse_with(|m| {
        m.insert("keyvaultobjectnames".into(), "web".into());
        m.insert("keyvaultobjecttypes".into(), "secret".into());
        m.insert("keyvaultobjectaliases".into(), "tls.pem".into());
        m.insert("keyvaultobjectformats".into(), "pem".into());
        m.insert("keyvaultobjectencodings".into(), "utf-8".into());
        m.insert("keyvaultobjectpermissions".into(), "0400".into());
        m.insert(
            "keyvaultobjectversions".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        m.insert("keyvaultsplitcertfiles".into(), "true".into());
    })
    .unwrap();
    let from_array = parse_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert(
            "objects".into(),
            serde_json::json!([{"objectName": "web", "objectType": "secret", "objectAlias": "tls.pem",
                "objectFormat": "PEM", "objectEncoding": "utf-8", "filePermission": "0400",
                "objectVersion": "0123456789abcdef0123456789abcdef", "splitCertAndKey": true}])
            .to_string()
            .into(),
        );
    })
    .unwrap();
    assert_eq!(from_lists.objects, from_array.objects);
}

#[test]
fn format_and_encoding_values_are_case_insensitive() {
    for (format, want) in [
        ("pem", Some(Format::Pem)),
        ("PFX", Some(Format::Pfx)),
        (" der ", Some(Format::Der)),
        ("Jwk", Some(Format::Jwk)),
    ] {
        let spec = parse_with(|m| {
            m.insert("keyvaultobjectnames".into(), "k".into());
            m.insert("keyvaultobjecttypes".into(), "key".into());
            m.insert("keyvaultobjectformats".into(), format.into());
        });
        match spec {
            Ok(spec) => assert_eq!(spec.objects[0].render.format, want, "{format}"),
            // pfx is for certificate-backed secrets only: a key refuses it.
            Err(e) => assert!(
                format == "PFX" && e.message().contains("pfx"),
                "{format}: {e}"
            ),
        }
    }
    for (encoding, want) in [
        ("UTF8", Encoding::Utf8),
        ("utf-8", Encoding::Utf8),
        ("Base64", Encoding::Base64),
        ("HEX", Encoding::Hex),
    ] {
        let spec = parse_with(|m| {
            m.insert("keyvaultobjectnames".into(), "s".into());
            m.insert("keyvaultobjecttypes".into(), "secret".into());
            m.insert("keyvaultobjectencodings".into(), encoding.into());
        })
        .unwrap();
        assert_eq!(spec.objects[0].render.encoding, Some(want), "{encoding}");
    }
    for bad in ["pkcs12", "p e m", "xml"] {
        let e = err_with(|m| {
            m.insert("keyvaultobjectnames".into(), "s".into());
            m.insert("keyvaultobjecttypes".into(), "secret".into());
            m.insert("keyvaultobjectformats".into(), bad.into());
        });
        assert!(
            e.message().contains("is not one of pem, pfx, der, jwk"),
            "{e}"
        );
    }
}

#[test]
fn file_paths_cover_history_and_split() {
    let spec = parse_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert(
            "objects".into(),
            serde_json::json!([{"objectName": "web", "objectType": "secret", "objectVersionHistory": 2,
                "splitCertAndKey": true}])
            .to_string()
            .into(),
        );
    })
    .unwrap();
    let o = &spec.objects[0];
    assert_eq!(
        o.file_paths(),
        [
            "web/0",
            "web/0.crt",
            "web/0.key",
            "web/1",
            "web/1.crt",
            "web/1.key"
        ]
    );
    assert_eq!(o.file_path(1, Some(".key")), "web/1.key");
}

#[test]
fn a_history_directory_cannot_also_be_a_file() {
    let e = err_with(|m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert(
            "objects".into(),
            serde_json::json!([{"objectName": "a", "objectType": "secret", "objectAlias": "x", "objectVersionHistory": 2},
                {"objectName": "b", "objectType": "secret", "objectAlias": "x"}])
            .to_string()
            .into(),
        );
    });
    assert!(
        e.message().contains("would both write the file \"x\""),
        "{e}"
    );
}

fn wi_base(m: &mut serde_json::Map<String, Value>) {
    m.remove("usepodidentity");
    m.insert("useworkloadidentity".into(), "true".into());
    m.insert(
        "clientID".into(),
        "00000000-0000-0000-0000-0000000000c1".into(),
    );
    m.insert("tenantid".into(), "t1".into());
    m.insert("kubernetes.io/pod.uid".into(), "u1".into());
    m.insert("kubernetes.io/serviceAccount.name".into(), "web".into());
}

#[test]
fn workload_identity_options() {
    let spec = parse_with(wi_base).unwrap();
    assert_eq!(
        spec.identity,
        Identity::WorkloadIdentity {
            client_id: "00000000-0000-0000-0000-0000000000c1".into(),
            token: TokenPath {
                volume: "azure-identity-token".into(),
                file: "azure-identity-token".into()
            }
        }
    );
    let spec = parse_with(|m| {
        wi_base(m);
        m.insert("workloadidentitytokenpath".into(), "my-token/token".into());
    })
    .unwrap();
    assert!(
        matches!(&spec.identity, Identity::WorkloadIdentity { token, .. } if token.volume == "my-token" && token.file == "token")
    );
    for (edit, want) in [
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                wi_base(m);
                m.remove("tenantid");
            }) as Box<dyn Fn(&mut serde_json::Map<String, Value>)>,
            "tenantid",
        ),
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                wi_base(m);
                m.remove("clientID");
            }),
            "needs `clientid`",
        ),
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                m.insert("clientid".into(), "abc".into());
            }),
            "clientid is set but useworkloadidentity",
        ),
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                wi_base(m);
                m.insert("usevmmanagedidentity".into(), "true".into());
            }),
            "more than one identity",
        ),
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                wi_base(m);
                m.insert("workloadidentitytokenpath".into(), "../x/token".into());
            }),
            "workloadidentitytokenpath",
        ),
        (
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                wi_base(m);
                m.remove("kubernetes.io/serviceAccount.name");
            }),
            "serviceAccount.name",
        ),
    ] {
        let e = err_with(|m| edit(m));
        assert!(e.message().contains(want), "{want}: {e}");
    }
}

#[test]
fn managed_identity_by_resource_id() {
    let rid = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-user";
    let spec = parse_with(|m| {
        m.remove("usepodidentity");
        m.insert("usevmmanagedidentity".into(), "true".into());
        m.insert("vmmanagedidentityresourceid".into(), rid.into());
    })
    .unwrap();
    assert_eq!(
        spec.identity,
        Identity::NodeManagedIdentity {
            id: ManagedIdentity::ResourceId(rid.into())
        }
    );
    let e = err_with(|m| {
        m.remove("usepodidentity");
        m.insert("usevmmanagedidentity".into(), "true".into());
        m.insert("vmmanagedidentityresourceid".into(), rid.into());
        m.insert(
            "vmmanagedidentityclientid".into(),
            "00000000-0000-0000-0000-00000000a002".into(),
        );
    });
    assert!(e.message().contains("keep one"), "{e}");
    let e = err_with(|m| {
        m.remove("usepodidentity");
        m.insert("usevmmanagedidentity".into(), "true".into());
        m.insert(
            "vmmanagedidentityresourceid".into(),
            "/not/a/resource".into(),
        );
    });
    assert!(e.message().contains("resource id"), "{e}");
}

#[test]
fn certificate_service_principal_from_pem_and_pfx() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/scenarios/material/");
    let pem = std::fs::read_to_string(format!("{dir}sp-cert.pem")).unwrap();
    let sp = |m: &mut serde_json::Map<String, Value>| {
        m.remove("usepodidentity");
        m.insert("tenantid".into(), "t1".into());
        m.insert("kubernetes.io/secret/clientid".into(), b64("app").into());
    };
    let spec = parse_with(|m| {
        sp(m);
        m.insert(
            "kubernetes.io/secret/clientcertificate".into(),
            b64(&pem).into(),
        );
    })
    .unwrap();
    let Identity::ServicePrincipal {
        credential: ClientCredential::Certificate(cert),
        ..
    } = &spec.identity
    else {
        panic!("{:?}", spec.identity)
    };
    assert!(!cert.cert_der.is_empty());
    assert_eq!(
        format!("{:?}", spec.identity).matches("REDACTED").count(),
        1
    );
    let e = err_with(|m| {
        sp(m);
        m.insert(
            "kubernetes.io/secret/clientcertificate".into(),
            b64(&pem).into(),
        );
        m.insert("kubernetes.io/secret/clientsecret".into(), b64("x").into());
    });
    assert!(e.message().contains("more than one credential"), "{e}");
    let e = err_with(|m| {
        sp(m);
        m.insert(
            "kubernetes.io/secret/clientcertificate".into(),
            b64("not pem").into(),
        );
    });
    assert!(!e.message().contains("not pem"), "{e}");
}

fn with_objects(objects: Value) -> impl FnOnce(&mut serde_json::Map<String, Value>) {
    move |m| {
        m.remove("keyvaultobjectnames");
        m.remove("keyvaultobjecttypes");
        m.insert("objects".into(), objects.to_string().into());
    }
}

#[test]
fn selection_entries_parse_with_the_fields_of_a_named_entry() {
    let spec = parse_with(with_objects(serde_json::json!([
        {"objectName": "db", "objectType": "secret"},
        {"objectNamePattern": "app-.*", "objectType": "secret", "filePermission": "0400"},
        {"objectTags": {"team": "a", "env": "prod"}, "objectType": "cert", "objectFormat": "der",
         "keyvaultName": "kvother", "optional": true},
        {"objectNamePattern": "web-[0-9]+", "objectTags": {"team": "a"}, "objectType": "secret",
         "splitCertAndKey": true}
    ])))
    .unwrap();
    assert_eq!(spec.objects.len(), 1);
    assert_eq!(spec.selections.len(), 3);
    let [by_name, by_tags, both] = &spec.selections[..] else {
        unreachable!()
    };
    assert_eq!(by_name.entry, 1);
    assert!(by_name.selects("app-db", |_| None));
    assert!(!by_name.selects("my-app-db", |_| None), "whole names only");
    assert_eq!(by_name.template.permission, Some(0o400));
    assert!(by_tags.selects("anything", |k| match k {
        "team" => Some("a"),
        "env" => Some("prod"),
        _ => None,
    }));
    assert!(
        !by_tags.selects("anything", |k| (k == "team").then_some("a")),
        "every tag must be present"
    );
    assert!(
        !by_tags.selects("x", |_| Some("A")),
        "values compare exactly"
    );
    assert_eq!(by_tags.template.kind, ObjectKind::Cert);
    assert_eq!(by_tags.template.render.format, Some(Format::Der));
    assert!(by_tags.template.optional);
    assert!(both.selects("web-1", |_| Some("a")));
    assert!(!both.selects("web-x", |_| Some("a")));
    // A match is an entry by name: its file is its name, its fields the entry's.
    let o = both.object("web-1");
    assert_eq!((o.name.as_str(), o.file.as_str()), ("web-1", "web-1"));
    assert!(o.render.split_cert_and_key);
    assert_eq!(o.selected_by, Some(3));
    assert_eq!(
        o.file_paths(),
        ["web-1", "web-1.crt", "web-1.key"],
        "same paths as by name"
    );
    // The node policy sees every vault a selection lists.
    assert_eq!(spec.vaults(), ["kvdemo", "kvother"]);
    assert!(
        both.describe()
            .starts_with("objects[3] (objectNamePattern \"web-[0-9]+\", objectTags"),
        "{}",
        both.describe()
    );
}

#[test]
fn selection_entries_refuse_what_cannot_apply_to_every_match() {
    for (entry, want) in [
        (
            serde_json::json!({"objectNamePattern": "a.*", "objectType": "secret", "objectAlias": "x"}),
            "objects[0].objectAlias cannot be used with objectNamePattern/objectTags",
        ),
        (
            serde_json::json!({"objectTags": {"t": "v"}, "objectType": "secret", "objectVersion": "0123456789abcdef0123456789abcdef"}),
            "objects[0].objectVersion cannot be used",
        ),
        (
            serde_json::json!({"objectNamePattern": "a.*", "objectType": "secret", "jsonFields": [{"pointer": "/a", "objectAlias": "a"}]}),
            "objects[0].jsonFields cannot be used",
        ),
        (
            serde_json::json!({"objectName": "a", "objectNamePattern": "a.*", "objectType": "secret"}),
            "either names one object or selects several",
        ),
        (
            serde_json::json!({"objectNamePattern": "a)|(b", "objectType": "secret"}),
            "objects[0].objectNamePattern \"a)|(b\" is not a valid regular expression",
        ),
        (
            serde_json::json!({"objectNamePattern": "\\w{1000}{1000}", "objectType": "secret"}),
            "compiles to more than",
        ),
        (
            serde_json::json!({"objectNamePattern": 5, "objectType": "secret"}),
            "objects[0].objectNamePattern must be a string",
        ),
        (
            serde_json::json!({"objectTags": {}, "objectType": "secret"}),
            "objects[0].objectTags is empty: list at least one tag",
        ),
        (
            serde_json::json!({"objectTags": ["t"], "objectType": "secret"}),
            "objects[0].objectTags must be a JSON object",
        ),
        (
            serde_json::json!({"objectTags": {"t": 1}, "objectType": "secret"}),
            "objects[0].objectTags \"t\" must be a string",
        ),
        (
            serde_json::json!({"objectNamePattern": "a.*"}),
            "objects[0].objectType is required",
        ),
        (
            serde_json::json!({"objectType": "secret"}),
            "objects[0].objectName is required (or objectNamePattern/objectTags",
        ),
    ] {
        let e = err_with(with_objects(serde_json::json!([entry])));
        assert!(e.message().contains(want), "{entry}: {e}");
        assert!(!e.message().contains('\n'), "{e}");
    }
}

#[test]
fn json_fields_name_their_own_files() {
    let spec = parse_with(with_objects(serde_json::json!([
        {"objectName": "db", "objectType": "secret", "filePermission": "0400",
         "jsonFields": [{"pointer": "/username", "objectAlias": "db-user"},
                        {"Pointer": "/a~1b/0", "ObjectAlias": "first"}]},
        {"objectName": "db", "objectType": "secret"}
    ])))
    .unwrap();
    let o = &spec.objects[0];
    assert_eq!(o.file_paths(), ["db-user", "first"]);
    assert_eq!(o.json_fields[1].pointer, "/a~1b/0");
    assert_eq!(
        spec.objects[1].file_paths(),
        ["db"],
        "the whole value, again"
    );
    // Split files never apply to a JSON secret, even volume-wide.
    let spec = parse_with(|m| {
        with_objects(
            serde_json::json!([{"objectName": "db", "objectType": "secret",
            "jsonFields": [{"pointer": "/u", "objectAlias": "u"}]}]),
        )(m);
        m.insert("keyvaultsplitcertfiles".into(), "true".into());
    })
    .unwrap();
    assert_eq!(spec.objects[0].file_paths(), ["u"]);
}

#[test]
fn json_fields_refuse_bad_pointers_aliases_and_combinations() {
    let field = |f: Value| serde_json::json!({"objectName": "db", "objectType": "secret", "jsonFields": [f]});
    for (entry, want) in [
        (field(serde_json::json!({"pointer": "username", "objectAlias": "u"})), "objects[0].jsonFields[0].pointer \"username\" is not a JSON Pointer (RFC 6901): it must start with '/'"),
        (field(serde_json::json!({"pointer": "/a~2", "objectAlias": "u"})), "'~' not followed by 0 or 1"),
        (field(serde_json::json!({"pointer": "/a"})), "objects[0].jsonFields[0].objectAlias is required"),
        (field(serde_json::json!({"objectAlias": "u"})), "objects[0].jsonFields[0].pointer is required"),
        (field(serde_json::json!({"pointer": "/a", "objectAlias": "../etc/passwd"})), "is not a single safe file name"),
        (field(serde_json::json!({"pointer": "/a", "objectAlias": "u", "mode": "0400"})), "unknown field `mode`; known: pointer, objectAlias"),
        (field(serde_json::json!({"pointer": 1, "objectAlias": "u"})), "objects[0].jsonFields[0].pointer must be a string"),
        (field(serde_json::json!("/a")), "objects[0].jsonFields[0] must be a JSON object"),
        (serde_json::json!({"objectName": "db", "objectType": "secret", "jsonFields": []}), "must be a non-empty JSON array"),
        (serde_json::json!({"objectName": "db", "objectType": "secret", "jsonFields": [
            {"pointer": "/a", "objectAlias": "u"}, {"pointer": "/b", "objectAlias": "u"}]}), "jsonFields[1].objectAlias \"u\" is already the file of another field"),
        (serde_json::json!({"objectName": "db", "objectType": "key", "jsonFields": [{"pointer": "/a", "objectAlias": "u"}]}), "objectType must be secret"),
        (serde_json::json!({"objectName": "db", "objectType": "secret", "objectAlias": "x", "jsonFields": [{"pointer": "/a", "objectAlias": "u"}]}), "remove the entry's objectAlias"),
        (serde_json::json!({"objectName": "db", "objectType": "secret", "objectFormat": "pfx", "jsonFields": [{"pointer": "/a", "objectAlias": "u"}]}), "objectFormat and splitCertAndKey do not apply"),
        (serde_json::json!({"objectName": "db", "objectType": "secret", "objectVersionHistory": 2, "jsonFields": [{"pointer": "/a", "objectAlias": "u"}]}), "objectVersionHistory does not apply"),
    ] {
        let e = err_with(with_objects(serde_json::json!([entry])));
        assert!(e.message().contains(want), "{entry}: {e}");
    }
    let many: Vec<Value> = (0..=crate::options::MAX_JSON_FIELDS)
        .map(|i| serde_json::json!({"pointer": format!("/{i}"), "objectAlias": format!("f{i}")}))
        .collect();
    let e = err_with(with_objects(serde_json::json!([
        {"objectName": "db", "objectType": "secret", "jsonFields": many}
    ])));
    assert!(e.message().contains("at most 256"), "{e}");
    // A field's file collides with another entry's file: both are named.
    let e = err_with(with_objects(serde_json::json!([
        {"objectName": "db", "objectType": "secret", "jsonFields": [{"pointer": "/u", "objectAlias": "user"}]},
        {"objectName": "user", "objectType": "secret"}
    ])));
    assert!(
        e.message()
            .contains("objects `db` and `user` would both write the file \"user\""),
        "{e}"
    );
}
