//! `kv logs --pod ns/name`: one pod's story from the node's driver log (and its rotated part).

use crate::config::NodeConfig;
use std::path::PathBuf;

/// Arguments of `kv logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The pod, as `namespace/name`.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: String,
    /// The log file (default: KV_LOG_FILE, the node config's log.path, /var/log/kv-driver.log).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Prints the pod's lines, oldest first.
pub fn run(args: LogsArgs) -> (String, u8) {
    let config = NodeConfig::load_beside_binary().unwrap_or_default();
    let path = args
        .file
        .unwrap_or_else(|| config.log_path(crate::env::get().log_file.clone()));
    let mut rotated = path.clone().into_os_string();
    rotated.push(".1");
    let mut lines = Vec::new();
    let mut found = false;
    for file in [PathBuf::from(rotated), path.clone()] {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        found = true;
        lines.extend(text.lines().map(str::to_string));
    }
    let field = |line: &str, key: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get(key).and_then(|p| p.as_str()).map(str::to_string))
    };
    // unmount only knows the directory, hence the pod uid: follow the uids the pod's mounts had.
    let uids: std::collections::BTreeSet<String> = lines
        .iter()
        .filter(|l| field(l, "pod").as_deref() == Some(args.pod.as_str()))
        .filter_map(|l| field(l, "pod_uid"))
        .collect();
    let mut out = String::new();
    for line in &lines {
        let mine = field(line, "pod").as_deref() == Some(args.pod.as_str())
            || field(line, "pod_uid").is_some_and(|u| uids.contains(&u));
        if mine {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        return (format!("no log at {}\n", path.display()), 1);
    }
    (out, 0)
}
