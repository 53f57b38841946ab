//! `kv fetch`: the mount pipeline by hand, without kubelet and without a mount.
//!
//! Operators give the options as kubelet would (`--options`, `--options-file`), as flags
//! (`--vault`, `--object`, identity flags), or as a pod manifest whose `azure/kv` flexVolume
//! options are used. The same parsing, policy, token and fetch code as `kv mount` runs, so what
//! `kv fetch --dir` writes is byte for byte what a pod would see. Secrets never come from argv:
//! a client secret is read from a file.

use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::error::printable;
use crate::options::VolumeSpec;
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Arguments of `kv fetch`.
#[derive(clap::Args, Debug, Default)]
pub struct FetchArgs {
    /// The options JSON exactly as kubelet passes it.
    #[arg(long, value_name = "JSON")]
    pub options: Option<String>,
    /// A file holding the options JSON.
    #[arg(long, value_name = "FILE")]
    pub options_file: Option<PathBuf>,
    /// A Pod/Deployment manifest (YAML or JSON); its `azure/kv` flexVolume options are used.
    #[arg(long, value_name = "FILE")]
    pub pod_manifest: Option<PathBuf>,
    /// With --pod-manifest: which volume, when the pod has several `azure/kv` volumes.
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
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
    /// Service principal application id (with --client-secret-file and --tenant).
    #[arg(long)]
    pub client_id: Option<String>,
    /// File holding the service principal's client secret (never pass secrets on argv).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
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
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
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
    crate::log::init(
        config.log_path(std::env::var_os("KV_LOG_FILE").map(PathBuf::from)),
        config.log_max_bytes(),
        "fetch",
    );
    let options = options_json(&args)?;
    let spec = VolumeSpec::parse(&options)?;
    let cloud = crate::mount::resolve(&spec, &config)?;
    if args.dry_run {
        return Ok(plan(&spec, &cloud, &args));
    }
    let tty = std::io::stderr().is_terminal();
    if tty {
        let _ = writeln!(
            std::io::stderr(),
            "fetching {} object(s) from {} with {}…",
            spec.objects.len(),
            spec.vaults().join(", "),
            spec.identity.describe()
        );
    }
    let deadline = crate::auth::Deadline::after(config.deadline());
    let fetched = crate::mount::fetch(&spec, &cloud, &config, deadline)?;
    let layout = crate::mount::layout(&spec, fetched, &config)?;

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
    write_dir(&dir, &layout)?;
    let files: Vec<Value> = layout
        .files
        .iter()
        .map(|f| json!({"file": f.path, "mode": format!("{:04o}", f.mode), "bytes": f.bytes.len()}))
        .collect();
    if args.json {
        return Ok(format!(
            "{}\n",
            json!({"status": "Success", "dir": dir, "files": files})
        ));
    }
    let mut text = String::new();
    for f in &layout.files {
        text.push_str(&format!(
            "✓ {}  {:04o}  {} bytes\n",
            dir.join(&f.path).display(),
            f.mode,
            f.bytes.len()
        ));
    }
    Ok(text)
}

/// Builds kubelet-style options from whichever input the operator gave.
fn options_json(args: &FetchArgs) -> Result<String> {
    let given = [
        args.options.is_some(),
        args.options_file.is_some(),
        args.pod_manifest.is_some(),
        args.vault.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(Error::new(
            Code::Usage,
            "give the options one way: --options JSON, --options-file FILE, --pod-manifest FILE, or --vault with --object",
        ));
    }
    let mut options: Map<String, Value> = if let Some(o) = &args.options {
        parse_object(o, "--options")?
    } else if let Some(f) = &args.options_file {
        parse_object(&read(f)?, &f.display().to_string())?
    } else if let Some(f) = &args.pod_manifest {
        from_manifest(&read(f)?, args.volume.as_deref())?
    } else {
        from_flags(args)?
    };
    add_identity_flags(args, &mut options)?;
    Ok(Value::Object(options).to_string())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::new(Code::Usage, format!("cannot read {}: {e}", path.display())))
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::options(format!(
            "{what} is not a JSON object of option strings"
        ))),
    }
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

/// The flexVolume options of an `azure/kv` volume in a Pod (or a workload's pod template),
/// plus the pod keys kubelet would add.
fn from_manifest(text: &str, volume: Option<&str>) -> Result<Map<String, Value>> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| {
        Error::new(
            Code::Usage,
            format!("the manifest is not YAML or JSON: {e}"),
        )
    })?;
    let metadata = doc.get("metadata").cloned().unwrap_or_default();
    let spec = doc
        .pointer("/spec/template/spec")
        .or_else(|| doc.pointer("/spec/jobTemplate/spec/template/spec"))
        .or_else(|| doc.get("spec"))
        .cloned()
        .unwrap_or_default();
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter(|v| {
                    v.pointer("/flexVolume/driver").and_then(|d| d.as_str()) == Some("azure/kv")
                })
                .collect()
        })
        .unwrap_or_default();
    let chosen = match (volume, volumes.as_slice()) {
        (_, []) => {
            return Err(Error::new(
                Code::Usage,
                "the manifest has no volume with flexVolume.driver \"azure/kv\"",
            ))
        }
        (None, [one]) => *one,
        (None, _) => {
            return Err(Error::new(
                Code::Usage,
                "the manifest has several azure/kv volumes: pick one with --volume NAME",
            ))
        }
        (Some(name), all) => all
            .iter()
            .find(|v| v.get("name").and_then(|n| n.as_str()) == Some(name))
            .copied()
            .ok_or_else(|| {
                Error::new(
                    Code::Usage,
                    format!(
                        "the manifest has no azure/kv volume named {}",
                        printable(name)
                    ),
                )
            })?,
    };
    let mut options = chosen
        .pointer("/flexVolume/options")
        .and_then(|o| o.as_object())
        .cloned()
        .unwrap_or_default();
    let pod_name = metadata
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("kv-fetch");
    let namespace = metadata
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    options.insert("kubernetes.io/pod.name".into(), json!(pod_name));
    options.insert("kubernetes.io/pod.namespace".into(), json!(namespace));
    if let Some(g) = spec
        .pointer("/securityContext/fsGroup")
        .and_then(|g| g.as_u64())
    {
        options.insert(
            "kubernetes.io/mounterArgs.FsGroup".into(),
            json!(g.to_string()),
        );
    }
    Ok(options)
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
    if let Some(id) = &args.client_id {
        use base64::Engine;
        let secret_file = args.client_secret_file.as_ref().ok_or_else(|| {
            Error::new(Code::Usage, "--client-id needs --client-secret-file FILE (secrets never go on the command line)")
        })?;
        let secret = zeroize::Zeroizing::new(read(secret_file)?);
        let b64 = base64::engine::general_purpose::STANDARD;
        m.insert(
            "kubernetes.io/secret/clientid".into(),
            json!(b64.encode(id)),
        );
        m.insert(
            "kubernetes.io/secret/clientsecret".into(),
            json!(b64.encode(secret.trim_end())),
        );
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
    let default_mode = crate::mount::default_mode(spec);
    let objects: Vec<Value> = spec
        .objects
        .iter()
        .map(|o| {
            let mut files = vec![o.file.clone()];
            if o.version_history > 1 {
                files = (0..o.version_history).map(|i| format!("{}/{i}", o.file)).collect();
            }
            if o.render.split_cert_and_key {
                files.push(format!("{}.crt", o.file));
                files.push(format!("{}.key", o.file));
            }
            json!({
                "vault": o.vault, "url": format!("{}{}/{}{}", cloud.vault_url(&o.vault), crate::keyvault::plural(o.kind), o.name,
                    o.version.as_ref().map(|v| format!("/{v}")).unwrap_or_default()),
                "object": o.name, "type": crate::keyvault::kind_name(o.kind), "version": o.version.clone().unwrap_or_else(|| "latest".into()),
                "files": files, "mode": format!("{:04o}", o.permission.unwrap_or(default_mode)), "optional": o.optional,
            })
        })
        .collect();
    let plan = json!({
        "cloud": cloud.name, "authority": cloud.authority_host, "resource": cloud.vault_resource,
        "identity": spec.identity.describe(), "fsGroup": spec.fs_group, "objects": objects,
    });
    if args.json {
        return format!("{plan}\n");
    }
    let mut text = format!(
        "cloud     {} (token resource {})\nidentity  {}\n",
        cloud.name,
        cloud.vault_resource,
        spec.identity.describe()
    );
    for o in &objects {
        text.push_str(&format!(
            "object    {}  →  {}  mode {}{}\n",
            o["url"].as_str().unwrap_or(""),
            o["files"]
                .as_array()
                .map(|f| f
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            o["mode"].as_str().unwrap_or(""),
            if o["optional"].as_bool() == Some(true) {
                "  (optional)"
            } else {
                ""
            }
        ));
    }
    text.push_str("dry run: no request was made\n");
    text
}

/// Writes the files with the modes a mount would give them (no ownership change unless root).
fn write_dir(dir: &Path, layout: &crate::volume::Layout) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |what: String, e: std::io::Error| Error::new(Code::Mount, format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
    for f in &layout.files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io(format!("cannot create {}", parent.display()), e))?;
        }
        // A temp file created 0600 then renamed: never a half-written or world-readable file.
        let tmp = path.with_file_name(format!(
            ".{}.kv-tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)
            .map_err(|e| io(format!("cannot create {}", tmp.display()), e))?;
        let written = file.write_all(&f.bytes).and_then(|_| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(format!("cannot write {}", tmp.display()), e));
        }
        if let Some(g) = layout.gid {
            let _ = rustix::fs::fchown(&file, None, Some(rustix::fs::Gid::from_raw(g)));
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(format!("cannot write {}", path.display()), e)
            })?;
    }
    Ok(())
}
