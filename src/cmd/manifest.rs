//! `kv manifest pv`: a PersistentVolume with an `azure/kv` flexVolume and the claim bound to
//! it, for namespaces whose Pod Security level (`restricted`) refuses inline flexVolumes. kubelet
//! mounts such a volume exactly like an inline one, with the PV's options and `secretRef` and
//! the pod's own `kubernetes.io/pod.*` keys. The options are checked by the mount's own parser
//! before anything is printed; nothing touches the cluster.

use crate::error::{printable, Code, Error, Result};
use crate::options::VolumeSpec;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Arguments of `kv manifest`.
#[derive(clap::Args, Debug)]
pub struct ManifestArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Print a PersistentVolume + PersistentVolumeClaim pair (YAML) for one application.
    Pv(PvArgs),
}

/// Arguments of `kv manifest pv`.
#[derive(clap::Args, Debug)]
pub struct PvArgs {
    /// The claim's name (what the pod's `persistentVolumeClaim.claimName` says).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The application's namespace (the claim's).
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The volume's options as a JSON object of strings, as in a pod's `flexVolume.options`
    /// (no `kubernetes.io/*` keys: kubelet adds them).
    #[arg(long, value_name = "FILE")]
    options_file: PathBuf,
    /// A Secret of type azure/kv with the service principal's `clientid` and `clientsecret`
    /// (or certificate keys).
    #[arg(long, value_name = "NAME")]
    secret_ref: Option<String>,
    /// The Secret's namespace (default: --namespace). kubelet reads it with its own
    /// credentials, so it may be one the application's users cannot read.
    #[arg(long, value_name = "NS", requires = "secret_ref")]
    secret_namespace: Option<String>,
    /// The PersistentVolume's name (cluster-wide; default `kv-<namespace>-<name>`).
    #[arg(long, value_name = "NAME")]
    pv_name: Option<String>,
    /// The access mode of both objects. ReadOnlyMany lets several pods use the claim; each pod
    /// still gets its own tmpfs.
    #[arg(long, value_name = "MODE", default_value = "ReadOnlyMany",
          value_parser = ["ReadOnlyMany", "ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"])]
    access_mode: String,
}

/// Runs `kv manifest`: (text for stdout, exit code).
pub fn run(args: ManifestArgs) -> (String, u8) {
    let What::Pv(pv) = args.what;
    match pv_pair(&pv) {
        Ok(yaml) => (yaml, 0),
        Err(e) => (format!("kv manifest pv: {}\n", e.message()), 2),
    }
}

/// A DNS label (namespaces, claims) or subdomain (PVs, Secrets): Kubernetes refuses anything
/// else at apply time; saying so here names the flag.
fn check_name(flag: &str, v: &str, subdomain: bool) -> Result<()> {
    let max = if subdomain { 253 } else { 63 };
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (subdomain && b == b'.')
        })
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        return Ok(());
    }
    Err(Error::new(
        Code::Usage,
        format!(
            "{flag} \"{}\" is not a Kubernetes name (lower-case letters, digits and '-', at most {max} characters)",
            printable(v)
        ),
    ))
}

/// The options file: a JSON object of strings, only keys kv reads, and valid as a mount would
/// see it (checked with stand-ins for what kubelet adds: the pod's keys, and the Secret's keys
/// when there is a secretRef).
fn read_options(args: &PvArgs) -> Result<Map<String, Value>> {
    let path = args.options_file.display().to_string();
    let text = super::input::read(&args.options_file)?;
    let Ok(Value::Object(options)) = serde_json::from_str::<Value>(&text) else {
        return Err(Error::options(format!(
            "{path} is not a JSON object of option strings"
        )));
    };
    for (k, v) in &options {
        if k.to_ascii_lowercase().starts_with("kubernetes.io/") {
            return Err(Error::options(format!(
                "{path}: option {} is kubelet's own (it adds the pod's keys, and the Secret's with --secret-ref); remove it",
                printable(k)
            )));
        }
        if !v.is_string() {
            return Err(Error::options(format!(
                "{path}: option {} must be a string (quote it)",
                printable(k)
            )));
        }
    }
    let mut check = options.clone();
    for (k, v) in [
        ("kubernetes.io/pod.name", "kv-manifest-check"),
        ("kubernetes.io/pod.namespace", args.namespace.as_str()),
        (
            "kubernetes.io/pod.uid",
            "00000000-0000-0000-0000-000000000000",
        ),
        ("kubernetes.io/serviceAccount.name", "default"),
    ] {
        check.insert(k.into(), json!(v));
    }
    if args.secret_ref.is_some() {
        // Base64, as kubelet passes a Secret's data: "stand-in".
        for key in ["clientid", "clientsecret"] {
            check.insert(format!("kubernetes.io/secret/{key}"), json!("c3RhbmQtaW4="));
        }
    }
    let spec = VolumeSpec::parse(&Value::Object(check).to_string())
        .map_err(|e| Error::new(e.code(), format!("{path}: {}", e.message())))?;
    // A mount only logs an unknown key (old specs carry removed ones); a new manifest has no
    // reason to, and a typo would silently do nothing.
    if let Some(k) = spec.unknown_keys.first() {
        return Err(Error::options(format!(
            "{path}: option {k} is not one kv reads (README, Options)"
        )));
    }
    Ok(options)
}

fn pv_pair(args: &PvArgs) -> Result<String> {
    check_name("--name", &args.name, false)?;
    check_name("--namespace", &args.namespace, false)?;
    let pv_name = args
        .pv_name
        .clone()
        .unwrap_or_else(|| format!("kv-{}-{}", args.namespace, args.name));
    check_name(
        if args.pv_name.is_some() {
            "--pv-name"
        } else {
            "kv-<namespace>-<name>"
        },
        &pv_name,
        true,
    )?;
    if let Some(s) = &args.secret_ref {
        check_name("--secret-ref", s, true)?;
    }
    if let Some(s) = &args.secret_namespace {
        check_name("--secret-namespace", s, false)?;
    }
    let options = read_options(args)?;

    // No `readOnly` here: for a PersistentVolume kubelet sends `kubernetes.io/readwrite` from
    // the pod's `persistentVolumeClaim.readOnly`, never from the PV's flexVolume.
    let mut flex = json!({"driver": "azure/kv", "options": options});
    if let Some(s) = &args.secret_ref {
        let ns = args.secret_namespace.as_deref().unwrap_or(&args.namespace);
        flex["secretRef"] = json!({"name": s, "namespace": ns});
    }
    let labels = json!({"app.kubernetes.io/part-of": "kv"});
    // A flexVolume needs no space; the API requires a capacity and a matching request.
    let size = "1Mi";
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": labels},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": [args.access_mode],
            // Reserved for this one claim: no other namespace can bind it (and reach its
            // secretRef); deleting the claim leaves it Released, never reused.
            "claimRef": {"namespace": args.namespace, "name": args.name},
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "flexVolume": flex,
        }
    });
    let pvc = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": args.name, "namespace": args.namespace, "labels": labels},
        "spec": {
            "accessModes": [args.access_mode],
            // No class: the claim binds only the volume above, never a provisioned one.
            "storageClassName": "",
            "volumeName": pv_name,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": size}},
        }
    });
    let to_yaml = |v: &Value| {
        serde_yaml::to_string(v)
            .map_err(|e| Error::new(Code::Internal, format!("cannot print YAML: {e}")))
    };
    Ok(format!(
        "# kv manifest pv --name {} --namespace {}: kv's volume for pods that may not use an inline\n\
         # flexVolume (Pod Security \"restricted\"). Apply as a cluster admin; pods then mount\n\
         # persistentVolumeClaim: {{claimName: {}, readOnly: true}} (each pod gets its own tmpfs,\n\
         # read-only with readOnly: true).\n{}---\n{}",
        args.name,
        args.namespace,
        args.name,
        to_yaml(&pv)?,
        to_yaml(&pvc)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(subcommand)]
        what: What,
    }

    fn run_with(options: &str, extra: &[&str]) -> (String, u8) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let file = std::env::temp_dir().join(format!(
            "kv-manifest-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&file, options).unwrap();
        let mut argv = vec![
            "t",
            "pv",
            "--name",
            "app-secrets",
            "--namespace",
            "app",
            "--options-file",
        ];
        let f = file.display().to_string();
        argv.push(&f);
        argv.extend_from_slice(extra);
        let t = T::try_parse_from(argv).unwrap();
        let out = run(ManifestArgs { what: t.what });
        let _ = std::fs::remove_file(&file);
        out
    }

    const SP: &str = r#"{"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","tenantid":"11111111-2222-3333-4444-555555555555"}"#;

    #[test]
    fn prints_a_bound_pair() {
        let (out, code) = run_with(
            SP,
            &["--secret-ref", "kv-sp", "--secret-namespace", "kv-creds"],
        );
        assert_eq!(code, 0, "{out}");
        let docs: Vec<Value> = out
            .split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let (pv, pvc) = (&docs[0], &docs[1]);
        assert_eq!(pv["metadata"]["name"], "kv-app-app-secrets");
        assert_eq!(
            pv["spec"]["claimRef"],
            json!({"namespace": "app", "name": "app-secrets"})
        );
        assert_eq!(pv["spec"]["flexVolume"]["driver"], "azure/kv");
        assert_eq!(
            pv["spec"]["flexVolume"]["secretRef"],
            json!({"name": "kv-sp", "namespace": "kv-creds"})
        );
        assert_eq!(
            pv["spec"]["flexVolume"]["options"]["keyvaultname"],
            "kvdemo"
        );
        assert_eq!(pvc["spec"]["volumeName"], "kv-app-app-secrets");
        assert_eq!(pvc["metadata"]["namespace"], "app");
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadOnlyMany"]));
        assert_eq!(pvc["spec"]["storageClassName"], "");
    }

    #[test]
    fn refuses_what_a_mount_would_refuse() {
        for (opts, extra, needle) in [
            // a service principal without its Secret: no identity at all
            (SP, &[][..], "identity"),
            (
                r#"{"keyvaultname":"kvdemo","keyvaultobjectnames":"a","keyvaultobjecttypes":"secret","usepodidentity":"true","keyvaultobjectaliases":"../x"}"#,
                &[][..],
                "not a single safe file name",
            ),
            (
                r#"{"keyvaultname":"kvdemo","usepodidentity":"true","keyvaultobjectnames":"a","keyvaultobjecttypes":"secret","keyvaultnmae":"x"}"#,
                &[][..],
                "keyvaultnmae is not one kv reads",
            ),
            (
                r#"{"keyvaultname":"kvdemo","usepodidentity":"true","keyvaultobjectnames":"a","keyvaultobjecttypes":"secret","kubernetes.io/mounterArgs.FsGroup":"0"}"#,
                &[][..],
                "kubelet's own",
            ),
            (
                r#"{"keyvaultname":"kvdemo","usepodidentity":true}"#,
                &[][..],
                "must be a string",
            ),
            ("[]", &[][..], "not a JSON object"),
            (SP, &["--secret-ref", "Bad_Name"][..], "--secret-ref"),
        ] {
            let (out, code) = run_with(opts, extra);
            assert_eq!(code, 2, "{opts}: {out}");
            assert!(
                out.starts_with("kv manifest pv: ") && out.contains(needle),
                "{opts}: {out}"
            );
            assert_eq!(out.lines().count(), 1, "{out}");
        }
    }
}
