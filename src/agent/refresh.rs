//! The agent's real [`Refresh`]: the mount pipeline run again for a recorded volume, under the
//! node config as it is now.
//!
//! The recorded options are parsed as at mount, the node policy is checked again (a namespace
//! that lost the right to a node identity stops rotating), the objects are fetched with the
//! volume's own identity (a service principal's recorded credential, the pod's identity via NMI
//! again, the node identity, the pod's projected token as kubelet last refreshed it) and laid
//! out with the same paths, modes and group as at mount.
//!
//! `kv.json` is watched: when its inode, size or modification time changes it is read again
//! with the same owner and mode checks as at start. While it is invalid or unreadable no
//! refresh runs (fail closed: a policy kv cannot read must not be taken as "allowed"), and the
//! agent says so in its log once per change.

use super::scheduler::{Fetched, Refresh};
use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::nodestate::Record;
use crate::options::VolumeSpec;
use crate::pipeline;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the config file is looked at (a `stat`).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies one version of the file: inode, size, modification time.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

struct Watched {
    config: Option<Arc<NodeConfig>>,
    stamp: Stamp,
    checked: Instant,
}

/// Refreshes volumes with this node's config, following changes of its file.
pub struct PipelineRefresh {
    path: Option<PathBuf>,
    watched: Mutex<Watched>,
}

fn stamp_of(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl PipelineRefresh {
    /// Starts with `config`, read from `path` (`None`: a fixed config, never re-read).
    pub fn new(config: NodeConfig, path: Option<PathBuf>) -> PipelineRefresh {
        let stamp = path.as_deref().and_then(stamp_of);
        PipelineRefresh {
            path,
            watched: Mutex::new(Watched {
                config: Some(Arc::new(config)),
                stamp,
                checked: Instant::now(),
            }),
        }
    }

    /// The config as it is now (re-read if its file changed); `None` while it is invalid.
    pub fn config(&self) -> Option<Arc<NodeConfig>> {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.path else {
            return w.config.clone();
        };
        if w.checked.elapsed() < CHECK_EVERY {
            return w.config.clone();
        }
        w.checked = Instant::now();
        let stamp = stamp_of(path);
        if stamp == w.stamp {
            return w.config.clone();
        }
        w.stamp = stamp;
        let loaded = match stamp {
            None => Err(Error::new(
                Code::Config,
                format!("node config {} is gone", path.display()),
            )),
            Some(_) => NodeConfig::load(path),
        };
        match loaded {
            Ok(config) => {
                crate::log::info(
                    "agent_config_reloaded",
                    json!({"path": path.to_string_lossy()}),
                );
                w.config = Some(Arc::new(config));
            }
            Err(e) => {
                crate::log::error(
                    "agent_config_invalid",
                    json!({"path": path.to_string_lossy(), "code": e.code().as_str(), "message": e.message(), "refreshes": "stopped until it is fixed"}),
                );
                w.config = None;
            }
        }
        w.config.clone()
    }
}

impl Refresh for PipelineRefresh {
    fn usable(&self) -> bool {
        self.config().is_some()
    }

    fn fetch(&self, record: &Record) -> Result<Fetched> {
        let config = self.config().ok_or_else(|| {
            Error::new(
                Code::Config,
                "the node config is invalid: refreshes stopped until it is fixed",
            )
        })?;
        let mut spec = VolumeSpec::parse(&record.options)?;
        pipeline::use_pod_token(&mut spec, &record.dir)?;
        let cloud = pipeline::resolve(&spec, &config)?;
        let deadline = crate::auth::Deadline::after(config.deadline());
        // NMI decides at every refresh whether the pod still has its identity; the other
        // sources' tokens come from the node cache like a mount's.
        let node = crate::auth::Node {
            reauthorize_pods: true,
            ..crate::auth::Node::of(&config, &cloud)
        };
        let fetched = pipeline::fetch_on(&spec, &cloud, &config, deadline, node)?;
        let layout = pipeline::layout(&spec, fetched, &config)?;
        // The fetcher does not report version ids yet: changes are detected on the digest.
        Ok(Fetched {
            layout,
            versions: BTreeMap::new(),
        })
    }
}
