//! Where `kv fetch` and `kv doctor` get a volume's options: kubelet's JSON (`--options`,
//! `--options-file`) or a pod manifest's `azure/kv` flexVolume (`--pod-manifest`, `--volume`).
//! One set of flags for both commands, flattened into each.

use crate::error::{printable, Code, Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The options of one volume, given one way.
#[derive(clap::Args, Debug, Default)]
pub struct OptionsInput {
    /// The options JSON exactly as kubelet passes it (no secretRef keys: secrets never go on
    /// the command line; use --options-file or --client-secret-file).
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
}

impl OptionsInput {
    /// How many of the ways were used (callers allow exactly one, or none).
    pub fn given(&self) -> usize {
        [
            self.options.is_some(),
            self.options_file.is_some(),
            self.pod_manifest.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count()
    }

    /// The options as a JSON object, or `None` when no way was used.
    pub fn read(&self) -> Result<Option<Map<String, Value>>> {
        if self.given() > 1 {
            return Err(Error::new(
                Code::Usage,
                "give the options one way: --options JSON, --options-file FILE or --pod-manifest FILE",
            ));
        }
        if let Some(o) = &self.options {
            let m = parse_object(o, "--options")?;
            // A client secret on the command line is visible to every user of the node (ps).
            if m.keys()
                .any(|k| k.to_ascii_lowercase().starts_with("kubernetes.io/secret/"))
            {
                return Err(Error::new(
                    Code::Usage,
                    "--options holds secretRef keys (kubernetes.io/secret/…): secrets never go on the command line; use --options-file, or --client-id with --client-secret-file",
                ));
            }
            return Ok(Some(m));
        }
        if let Some(f) = &self.options_file {
            return parse_object(&read(f)?, &f.display().to_string()).map(Some);
        }
        if let Some(f) = &self.pod_manifest {
            return from_manifest(&read(f)?, self.volume.as_deref()).map(Some);
        }
        Ok(None)
    }
}

/// A file's text, or a usage error naming it.
pub fn read(path: &Path) -> Result<String> {
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
    if let Some(sa) = spec.get("serviceAccountName").and_then(|n| n.as_str()) {
        options.insert("kubernetes.io/serviceAccount.name".into(), json!(sa));
    }
    if let Some(g) = spec
        .pointer("/securityContext/fsGroup")
        .and_then(|g| g.as_u64())
    {
        options.insert(
            "kubernetes.io/mounterArgs.FsGroup".into(),
            json!(g.to_string()),
        );
    }
    if chosen
        .pointer("/flexVolume/readOnly")
        .and_then(|r| r.as_bool())
        == Some(true)
    {
        options.insert("kubernetes.io/readwrite".into(), json!("ro"));
    }
    Ok(options)
}
