//! `kv agent`: the rotation agent (long-running, or `--once`), and `kv agent status`.
//! The work is in [`crate::agent`].

use crate::agent::refresh::PipelineRefresh;
use crate::agent::scheduler::{self, PassOptions, PassReport};
use crate::config::NodeConfig;
use crate::duration::format as format_duration;
use crate::nodestate::{NodeState, Record, Status};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Arguments of `kv agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Print each recorded volume's rotation state instead of refreshing.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// Refresh every recorded volume now, whatever its interval, and exit.
    #[arg(long)]
    pub once: bool,
    /// The node's state directory (volume records in <DIR>/volumes; default: the node config's
    /// stateDir, /run/kv).
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// The node config to use (default: kv.json beside this binary). In the installer
    /// DaemonSet: the copy `kv install` put in the plugin dir, which every mount reads too;
    /// the agent waits (exits, and is restarted) until it exists.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Volumes refreshed at the same time.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
}

/// `kv agent <command>`.
#[derive(clap::Subcommand, Debug)]
pub enum AgentCommand {
    /// Print each recorded volume: pod, interval, last success, last error, versions, next refresh.
    Status {
        /// One JSON object per volume, one per line.
        #[arg(long)]
        json: bool,
    },
}

/// Set by SIGTERM/SIGINT: the running pass finishes, then the agent exits.
static STOP: AtomicBool = AtomicBool::new(false);

/// Runs the agent, one pass, or the status report.
pub fn run(args: AgentArgs) -> (String, u8) {
    let path = args.config.clone().or_else(NodeConfig::path_beside_binary);
    let config = match &args.config {
        Some(path) if !path.exists() => {
            return (
                format!(
                    "{} does not exist yet (kv install writes it): the agent starts once it does\n",
                    path.display()
                ),
                1,
            )
        }
        Some(path) => NodeConfig::load(path),
        None => NodeConfig::load_beside_binary(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return (format!("{e}\n"), e.code().exit_class()),
    };
    let node = NodeState::at(args.state_dir.clone().unwrap_or_else(|| config.state_dir()));
    if let Some(AgentCommand::Status { json }) = args.command {
        return status(&node, json);
    }
    super::start_log(&config, "agent");
    crate::log::long_running();
    let refresh = PipelineRefresh::new(config, path);
    let opts = PassOptions {
        once: args.once,
        concurrency: args.concurrency.max(1),
        ..PassOptions::default()
    };
    if args.once {
        scheduler::sweep(&node);
        return match scheduler::run_pass(&node, &refresh, opts, scheduler::now()) {
            Ok(report) => summary(&report),
            Err(e) => (format!("{e}\n"), e.code().exit_class()),
        };
    }
    stop_on_signal();
    match scheduler::run(&node, &refresh, opts, &STOP) {
        Ok(()) => (String::new(), 0),
        Err(e) => (format!("{e}\n"), e.code().exit_class()),
    }
}

fn stop_on_signal() {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
            });
        }
        STOP.store(true, Ordering::SeqCst);
    });
}

/// `--once`: one line per volume that did something, then the counts. Exit 1 if any failed.
fn summary(report: &PassReport) -> (String, u8) {
    let mut out = String::new();
    for dir in &report.switched {
        out.push_str(&format!("switched   {}\n", dir.display()));
    }
    for (dir, e) in &report.failed {
        out.push_str(&format!("failed     {}: {e}\n", dir.display()));
    }
    for dir in &report.collected {
        out.push_str(&format!(
            "collected  {} (its mount is gone)\n",
            dir.display()
        ));
    }
    for p in &report.problems {
        out.push_str(&format!("skipped    {p}\n"));
    }
    out.push_str(&format!(
        "{} switched, {} unchanged, {} failed, {} collected\n",
        report.switched.len(),
        report.unchanged.len(),
        report.failed.len(),
        report.collected.len()
    ));
    (out, u8::from(!report.failed.is_empty()))
}

fn status(node: &NodeState, json: bool) -> (String, u8) {
    let store = node.volumes();
    let loaded = match store.load_all() {
        Ok(l) => l,
        Err(e) => return (format!("{e}\n"), e.code().exit_class()),
    };
    let now = scheduler::now();
    let mut out = String::new();
    for record in &loaded.records {
        let st = store.load_status(&record.dir);
        if json {
            out.push_str(&status_json(record, &st).to_string());
            out.push('\n');
        } else {
            out.push_str(&status_text(record, &st, now));
        }
    }
    for p in &loaded.problems {
        out.push_str(&format!("skipped: {p}\n"));
    }
    if loaded.records.is_empty() && !json {
        out.push_str(&format!(
            "no rotating volumes recorded in {}\n",
            store.dir().display()
        ));
    }
    (out, 0)
}

/// Everything but the options (they may hold a client secret).
fn status_json(record: &Record, st: &Status) -> serde_json::Value {
    // Not what was written: its digest is a hash of the secrets' bytes.
    let mut st = serde_json::to_value(st).unwrap_or_default();
    if let Some(o) = st.as_object_mut() {
        o.remove("written");
    }
    serde_json::json!({
        "dir": record.dir,
        "pod": record.pod,
        "identity": record.identity,
        "interval_secs": record.interval_secs,
        "read_only": record.read_only,
        "agent_mount": record.agent_mount,
        "status": st,
        "current": current_version(&record.dir),
    })
}

/// The version directory the volume's `..data` names: what the pod reads now (the link itself
/// is read, never followed).
fn current_version(dir: &std::path::Path) -> Option<String> {
    std::fs::read_link(dir.join(crate::volume::versioned::DATA))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn when(secs: Option<u64>, now: Duration) -> String {
    let Some(secs) = secs else {
        return "never".into();
    };
    let at = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string());
    format!(
        "{at} ({} ago)",
        format_duration(now.saturating_sub(Duration::from_secs(secs)))
    )
}

fn status_text(record: &Record, st: &Status, now: Duration) -> String {
    let mut out = format!("{}\n", record.dir.display());
    out.push_str(&format!(
        "  pod {} (service account {}), {}, every {}{}\n",
        record.pod_label(),
        record.pod.service_account.as_deref().unwrap_or("?"),
        record.identity,
        format_duration(record.interval()),
        if record.read_only { ", read-only" } else { "" }
    ));
    out.push_str(&format!("  last success: {}\n", when(st.last_success, now)));
    out.push_str(&format!(
        "  last switch:  {} ({} since mount)\n",
        when(st.last_switch, now),
        st.switches
    ));
    if let Some(e) = &st.last_error {
        out.push_str(&format!(
            "  last error:   {} {}: {} ({} failures in a row)\n",
            e.code,
            when(Some(e.at), now),
            e.message,
            st.failures
        ));
    }
    out.push_str(&format!(
        "  current:      {}\n",
        current_version(&record.dir).unwrap_or_else(|| "none (no ..data in the volume)".into())
    ));
    if !st.versions.is_empty() {
        let v: Vec<String> = st
            .versions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!("  versions:     {}\n", v.join(", ")));
    }
    let due = Duration::from_millis(st.next_due_ms);
    out.push_str(&match st.next_due_ms {
        0 => "  next refresh: at the agent's next pass\n".to_string(),
        _ if due <= now => "  next refresh: due now\n".to_string(),
        _ => format!("  next refresh: in {}\n", format_duration(due - now)),
    });
    out
}
