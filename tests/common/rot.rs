//! A node for rotation tests: rotation state in the test's own dir, 1s minimum interval, a
//! scenario file the test rewrites and the emulator reloads, and `kv agent` run as the
//! DaemonSet runs it.

use super::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// The record name of a mount dir: hex SHA-256 of the path (what kv names its files by).
pub fn name_of(dir: &Path) -> String {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    hex::encode(sha2::Sha256::digest(dir.as_os_str().as_bytes()))
}

/// A node whose `kv.json` keeps rotation state in the test's own dir and lets intervals go
/// down to 1s, with the emulator serving a scenario file the test rewrites.
pub struct Rot {
    pub node: Node,
    pub state: PathBuf,
    pub scenario_file: PathBuf,
    pub scenario: Value,
}

impl Rot {
    pub fn new() -> Rot {
        Rot::with(scenario())
    }

    pub fn with(scenario: Value) -> Rot {
        let mut node = Node::new();
        let state = node.root.join("state");
        let scenario_file = node.root.join("scenario.json");
        std::fs::write(&scenario_file, scenario.to_string()).unwrap();
        node.ns.restart_emulator(scenario_file.clone()).unwrap();
        let rot = Rot {
            node,
            state,
            scenario_file,
            scenario,
        };
        rot.config(json!({}));
        rot
    }

    /// `kv.json`: the test's state dir, a 1s minimum interval, a short deadline, plus `extra`.
    pub fn config(&self, extra: Value) {
        let mut c = json!({
            "stateDir": self.state,
            "rotation": {"minInterval": "1s"},
            "deadlineSeconds": 5,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.node.set_config(c);
    }

    /// Serves the current scenario (SIGHUP reload).
    pub fn publish(&self) {
        reload(&self.node.ns, &self.scenario_file, &self.scenario);
    }

    pub fn secrets(&mut self) -> &mut Vec<Value> {
        self.scenario["vaults"][0]["secrets"]
            .as_array_mut()
            .unwrap()
    }

    /// Sets (or deletes, `None`) a secret and serves it.
    pub fn set_secret(&mut self, name: &str, value: Option<&str>) {
        let secrets = self.secrets();
        secrets.retain(|x| x["name"] != name);
        if let Some(v) = value {
            secrets.push(json!({"name": name, "value": v}));
        }
        self.publish();
    }

    /// `kv agent <args>` in the namespace, as the DaemonSet runs it.
    pub fn agent_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.node.ns.command(&self.node.kv);
        c.arg("agent")
            .args(args)
            .env("KV_LOG_FILE", &self.node.log)
            .stdin(Stdio::null());
        c
    }

    pub fn agent(&self, args: &[&str]) -> (String, i32) {
        let out = self.agent_command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "kv agent wrote to stderr: {stderr}");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            out.status.code().unwrap_or(-1),
        )
    }

    pub fn spawn_agent(&self, args: &[&str]) -> Child {
        self.agent_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `kv agent status --json`, one object per volume.
    pub fn status(&self) -> Vec<Value> {
        let (out, code) = self.agent(&["status", "--json"]);
        assert_eq!(code, 0, "{out}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn status_of(&self, dir: &Path) -> Value {
        self.status()
            .into_iter()
            .find(|s| s["dir"] == json!(dir))
            .unwrap_or_else(|| panic!("no status for {}", dir.display()))
    }

    pub fn record(&self, dir: &Path) -> PathBuf {
        self.state
            .join("volumes")
            .join(format!("{}.json", name_of(dir)))
    }

    /// The version directory `..data` names.
    pub fn version(&self, dir: &Path) -> String {
        std::fs::read_link(self.node.ns.host_path(dir.join("..data")))
            .unwrap()
            .to_string_lossy()
            .to_string()
    }

    /// The `..<timestamp>` version directories and whether a `..data_tmp` link exists.
    pub fn versions_on_disk(&self, dir: &Path) -> (Vec<String>, bool) {
        let mut versions = Vec::new();
        let mut tmp = false;
        for e in std::fs::read_dir(self.node.ns.host_path(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            if name == "..data_tmp" {
                tmp = true;
            } else if name.starts_with("..") && name != "..data" {
                versions.push(name);
            }
        }
        versions.sort();
        (versions, tmp)
    }
}
