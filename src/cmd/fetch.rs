//! `kv fetch`: the mount pipeline by hand, without kubelet and without a mount.
//!
//! Operators give the options as kubelet would (`--options`, `--options-file`), as flags
//! (`--vault`, `--object`, identity flags), or as a pod manifest whose `azure/kv` flexVolume
//! options are used. The same parsing, policy, token and fetch code as `kv mount` runs, so what
//! `kv fetch --dir` writes is byte for byte what a pod would see. Secrets never come from argv:
//! a client secret is read from a file.

use crate::config::NodeConfig;
use crate::error::{printable, Code, Error, Result};
use crate::options::VolumeSpec;
use crate::pipeline;
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Arguments of `kv fetch`.
#[derive(clap::Args, Debug, Default)]
pub struct FetchArgs {
    /// The options, as kubelet passes them or from a pod manifest.
    #[command(flatten)]
    pub input: super::input::OptionsInput,
    /// Vault name (builds options from flags).
    #[arg(long)]
    pub vault: Option<String>,
    /// An object as `name[:type[:version[:alias]]]` (type secret, key or cert; default secret).
    #[arg(long = "object", value_name = "SPEC")]
    pub objects: Vec<String>,
    /// Use aad-pod-identity's NMI for this pod (`namespace/name`).
    #[arg(long, value_name = "NS/NAME")]
    pub pod_identity: Option<String>,
    /// Use the node's managed identity; give a client id for a user-assigned one.
    #[arg(long, value_name = "CLIENT_ID", num_args = 0..=1, default_missing_value = "")]
    pub node_identity: Option<String>,
    /// Use the node's user-assigned managed identity with this resource id.
    #[arg(long, value_name = "RESOURCE_ID", conflicts_with = "node_identity")]
    pub node_identity_resource_id: Option<String>,
    /// Service principal application id (with --client-secret-file or --client-certificate-file,
    /// and --tenant), or with --workload-identity the federated identity's client id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// File holding the service principal's client secret (never pass secrets on argv).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// File holding the service principal's client certificate: PEM (certificate and key) or
    /// PKCS#12.
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret_file")]
    pub client_certificate_file: Option<PathBuf>,
    /// File holding the PKCS#12 password of --client-certificate-file.
    #[arg(long, value_name = "FILE", requires = "client_certificate_file")]
    pub client_certificate_password_file: Option<PathBuf>,
    /// Use workload identity: --client-id, --tenant and --token-file (a service-account token
    /// with audience api://AzureADTokenExchange).
    #[arg(long, requires_all = ["client_id", "token_file"])]
    pub workload_identity: bool,
    /// With --workload-identity: the service-account token file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// With --workload-identity: the namespace of the service account the token must be bound
    /// to (with --service-account). Only then may the node's token cache answer; without them
    /// the token is always exchanged at AAD, which verifies it.
    #[arg(long, value_name = "NS", requires_all = ["workload_identity", "service_account"])]
    pub namespace: Option<String>,
    /// With --workload-identity and --namespace: the service account the token must be bound to.
    #[arg(long, value_name = "NAME", requires_all = ["workload_identity", "namespace"])]
    pub service_account: Option<String>,
    /// AAD tenant id.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Cloud name (AzurePublicCloud, AzureChinaCloud, ...).
    #[arg(long)]
    pub cloud: Option<String>,
    /// Write the files into this directory (created if missing; no mount).
    #[arg(long, value_name = "DIR", conflicts_with = "stdout")]
    pub dir: Option<PathBuf>,
    /// Print the bytes of the one object (or the file named) to stdout.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    pub stdout: Option<String>,
    /// Validate and print the plan (vault URLs, identity, files, modes) without any request.
    #[arg(long)]
    pub dry_run: bool,
    /// Mode of the files written with --dir (default: the volume's modes, at most 0600 unless
    /// the dir is on a tmpfs: a plain directory may be on disk and backed up).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode_arg)]
    pub mode: Option<u32>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn parse_mode_arg(s: &str) -> std::result::Result<u32, String> {
    crate::options::parse_mode("--mode", s).map_err(|e| e.message().to_string())
}

/// Runs `kv fetch`; returns (stdout text, exit code).
pub fn run(args: FetchArgs) -> (String, u8) {
    let json_out = args.json;
    match fetch(args) {
        Ok(text) => (text, 0),
        Err(e) => {
            let text = if json_out {
                format!(
                    "{}\n",
                    json!({"status": "Failure", "code": e.code().as_str(), "message": e.message()})
                )
            } else {
                format!("error: {e}\n")
            };
            (text, e.code().exit_class())
        }
    }
}

fn fetch(args: FetchArgs) -> Result<String> {
    let config = NodeConfig::load_beside_binary()?;
    super::start_log(&config, "fetch");
    let options = options_json(&args)?;
    let mut spec = VolumeSpec::parse(&options)?;
    if let Some(file) = &args.token_file {
        spec.token_file = Some(crate::options::TokenFile::File {
            path: file.clone(),
            bound: args.namespace.is_some() && args.service_account.is_some(),
        });
    }
    let cloud = pipeline::resolve(&spec, &config)?;
    if args.dry_run {
        return Ok(plan(&spec, &cloud, &args));
    }
    let tty = std::io::stderr().is_terminal();
    if tty {
        let _ = writeln!(
            std::io::stderr(),
            "fetching {} object(s){} from {} with {}…",
            spec.objects.len(),
            match spec.selections.len() {
                0 => String::new(),
                n => format!(" and what {n} selection(s) match"),
            },
            spec.vaults().join(", "),
            spec.identity.describe()
        );
    }
    let deadline = crate::auth::Deadline::after(config.deadline());
    let fetched = pipeline::fetch(&spec, &cloud, &config, deadline)?;
    let layout = pipeline::layout(&spec, fetched, &config)?;

    if let Some(which) = &args.stdout {
        let file =
            if which.is_empty() {
                match layout.files.as_slice() {
                    [one] => one,
                    _ => {
                        return Err(Error::new(
                            Code::Usage,
                            format!(
                            "--stdout needs one file, the volume has {}: name it, e.g. --stdout {}",
                            layout.files.len(),
                            layout.files.first().map(|f| f.path.as_str()).unwrap_or("NAME")
                        ),
                        ))
                    }
                }
            } else {
                layout
                    .files
                    .iter()
                    .find(|f| f.path == *which)
                    .ok_or_else(|| {
                        Error::new(
                            Code::Usage,
                            format!("the volume has no file \"{}\"", printable(which)),
                        )
                    })?
            };
        // Bytes go straight to stdout; the caller asked for them.
        let mut out = std::io::stdout().lock();
        out.write_all(&file.bytes)
            .and_then(|_| out.flush())
            .map_err(|e| Error::new(Code::Internal, format!("cannot write to stdout: {e}")))?;
        return Ok(String::new());
    }
    let dir = args.dir.clone().ok_or_else(|| {
        Error::new(
            Code::Usage,
            "say where the files go: --dir DIR, --stdout, or --dry-run",
        )
    })?;
    let modes = pipeline::write::to_dir(&dir, &layout, args.mode)?;
    let files: Vec<Value> = layout
        .files
        .iter()
        .zip(&modes)
        .map(|(f, mode)| json!({"file": f.path, "mode": format!("{mode:04o}"), "bytes": f.bytes.len()}))
        .collect();
    if args.json {
        return Ok(format!(
            "{}\n",
            json!({"status": "Success", "dir": dir, "files": files})
        ));
    }
    let mut text = String::new();
    for (f, mode) in layout.files.iter().zip(&modes) {
        text.push_str(&format!(
            "✓ {}  {mode:04o}  {} bytes\n",
            dir.join(&f.path).display(),
            f.bytes.len()
        ));
    }
    Ok(text)
}

/// Builds kubelet-style options from whichever input the operator gave.
fn options_json(args: &FetchArgs) -> Result<String> {
    if args.input.given() + usize::from(args.vault.is_some()) != 1 {
        return Err(Error::new(
            Code::Usage,
            "give the options one way: --options JSON, --options-file FILE, --pod-manifest FILE, or --vault with --object",
        ));
    }
    let mut options = match args.input.read()? {
        Some(m) => m,
        None => from_flags(args)?,
    };
    add_identity_flags(args, &mut options)?;
    Ok(Value::Object(options).to_string())
}

fn from_flags(args: &FetchArgs) -> Result<Map<String, Value>> {
    if args.objects.is_empty() {
        return Err(Error::new(
            Code::Usage,
            "--vault needs at least one --object name[:type[:version[:alias]]]",
        ));
    }
    let (mut names, mut types, mut versions, mut aliases) = (vec![], vec![], vec![], vec![]);
    for o in &args.objects {
        let mut parts = o.split(':');
        names.push(parts.next().unwrap_or_default().to_string());
        types.push(
            parts
                .next()
                .filter(|t| !t.is_empty())
                .unwrap_or("secret")
                .to_string(),
        );
        versions.push(parts.next().unwrap_or_default().to_string());
        aliases.push(parts.next().unwrap_or_default().to_string());
        if parts.next().is_some() {
            return Err(Error::new(
                Code::Usage,
                format!("--object \"{}\" has too many ':' parts", printable(o)),
            ));
        }
    }
    let mut m = Map::new();
    m.insert("keyvaultname".into(), json!(args.vault));
    m.insert("keyvaultobjectnames".into(), json!(names.join(";")));
    m.insert("keyvaultobjecttypes".into(), json!(types.join(";")));
    if versions.iter().any(|v| !v.is_empty()) {
        m.insert("keyvaultobjectversions".into(), json!(versions.join(";")));
    }
    if aliases.iter().any(|a| !a.is_empty()) {
        m.insert("keyvaultobjectaliases".into(), json!(aliases.join(";")));
    }
    Ok(m)
}

fn add_identity_flags(args: &FetchArgs, m: &mut Map<String, Value>) -> Result<()> {
    if let Some(pod) = &args.pod_identity {
        let (ns, name) = pod
            .split_once('/')
            .ok_or_else(|| Error::new(Code::Usage, "--pod-identity takes NAMESPACE/NAME"))?;
        m.insert("usepodidentity".into(), json!("true"));
        m.insert("kubernetes.io/pod.namespace".into(), json!(ns));
        m.insert("kubernetes.io/pod.name".into(), json!(name));
    }
    if let Some(id) = &args.node_identity {
        m.insert("usevmmanagedidentity".into(), json!("true"));
        if !id.is_empty() {
            m.insert("vmmanagedidentityclientid".into(), json!(id));
        }
    }
    if let Some(rid) = &args.node_identity_resource_id {
        m.insert("usevmmanagedidentity".into(), json!("true"));
        m.insert("vmmanagedidentityresourceid".into(), json!(rid));
    }
    match (&args.client_id, args.workload_identity) {
        (Some(id), true) => {
            m.insert("useworkloadidentity".into(), json!("true"));
            m.insert("clientid".into(), json!(id));
            // kubelet's keys: the service account the operator named, which the token must be
            // bound to; else the token's own subject (the operator chose the token), and then
            // the node's token cache is not used.
            if let (Some(ns), Some(sa)) = (&args.namespace, &args.service_account) {
                m.insert("kubernetes.io/pod.namespace".into(), json!(ns));
                m.insert("kubernetes.io/serviceAccount.name".into(), json!(sa));
            } else {
                let token = super::input::read(
                    args.token_file.as_deref().unwrap_or_else(|| Path::new("")),
                )?;
                let claims = crate::auth::jwt::claims(&token)?;
                let mut parts = claims.subject.splitn(4, ':');
                if let (Some("system"), Some("serviceaccount"), Some(ns), Some(sa)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    m.insert("kubernetes.io/pod.namespace".into(), json!(ns));
                    m.insert("kubernetes.io/serviceAccount.name".into(), json!(sa));
                }
            }
            m.insert("kubernetes.io/pod.uid".into(), json!("kv-fetch"));
        }
        (Some(id), false) => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            m.insert(
                "kubernetes.io/secret/clientid".into(),
                json!(b64.encode(id)),
            );
            match (&args.client_secret_file, &args.client_certificate_file) {
                (Some(file), _) => {
                    let secret = zeroize::Zeroizing::new(super::input::read(file)?);
                    m.insert(
                        "kubernetes.io/secret/clientsecret".into(),
                        json!(b64.encode(secret.trim_end())),
                    );
                }
                (None, Some(file)) => {
                    let bytes = zeroize::Zeroizing::new(std::fs::read(file).map_err(|e| {
                        Error::new(Code::Usage, format!("cannot read {}: {e}", file.display()))
                    })?);
                    let key = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                        "kubernetes.io/secret/clientcertificate"
                    } else {
                        "kubernetes.io/secret/clientcertificatepfx"
                    };
                    m.insert(key.into(), json!(b64.encode(&*bytes)));
                    if let Some(pw) = &args.client_certificate_password_file {
                        let pw = zeroize::Zeroizing::new(super::input::read(pw)?);
                        m.insert(
                            "kubernetes.io/secret/clientcertificatepassword".into(),
                            json!(b64.encode(pw.trim_end())),
                        );
                    }
                }
                (None, None) => {
                    return Err(Error::new(
                        Code::Usage,
                        "--client-id needs --client-secret-file FILE or --client-certificate-file FILE (secrets never go on the command line), or --workload-identity",
                    ))
                }
            }
        }
        (None, _) => {}
    }
    if let Some(t) = &args.tenant {
        m.insert("tenantid".into(), json!(t));
    }
    if let Some(c) = &args.cloud {
        m.insert("cloudname".into(), json!(c));
    }
    Ok(())
}

/// The resolved plan, without any request.
fn plan(spec: &VolumeSpec, cloud: &crate::cloud::Cloud, args: &FetchArgs) -> String {
    let planned = pipeline::plan(spec, cloud);
    let selections = pipeline::plan_selections(spec, cloud);
    if args.json {
        let objects: Vec<Value> = planned
            .iter()
            .map(|p| {
                json!({
                    "vault": p.object.vault, "url": p.url, "object": p.object.name,
                    "type": crate::keyvault::kind_name(p.object.kind),
                    "version": p.object.version.as_deref().unwrap_or("latest"),
                    "files": p.files, "mode": format!("{:04o}", p.mode), "optional": p.object.optional,
                })
            })
            .collect();
        let selections: Vec<Value> = selections
            .iter()
            .map(|p| {
                let s = p.selection;
                json!({
                    "entry": s.entry, "vault": s.template.vault, "list": p.url,
                    "type": crate::keyvault::kind_name(s.template.kind),
                    "objectNamePattern": s.pattern.as_ref().map(|p| p.as_str()),
                    "objectTags": s.tags, "mode": format!("{:04o}", p.mode), "optional": s.template.optional,
                })
            })
            .collect();
        let plan = json!({
            "cloud": cloud.name, "authority": cloud.authority_host, "resource": cloud.vault_resource,
            "identity": spec.identity.describe(), "fsGroup": spec.fs_group, "objects": objects,
            "selections": selections,
        });
        return format!("{plan}\n");
    }
    let mut text = format!(
        "cloud     {} (token resource {})\nidentity  {}\n",
        cloud.name,
        cloud.vault_resource,
        spec.identity.describe()
    );
    for p in &planned {
        text.push_str(&format!(
            "object    {}  →  {}  mode {:04o}{}\n",
            p.url,
            p.files.join(", "),
            p.mode,
            if p.object.optional {
                "  (optional)"
            } else {
                ""
            }
        ));
    }
    for p in &selections {
        text.push_str(&format!(
            "select    {}: lists {} (every page), then gets each enabled match  →  a file per match, named by the object  mode {:04o}{}\n",
            p.selection.describe(),
            p.url,
            p.mode,
            if p.selection.template.optional {
                "  (optional)"
            } else {
                ""
            }
        ));
    }
    text.push_str("dry run: no request was made\n");
    text
}
