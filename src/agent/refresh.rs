//! The agent's real [`Refresh`]: the mount pipeline run again for a recorded volume.
//!
//! The recorded options are parsed as at mount, the node policy is checked again (a namespace
//! that lost the right to a node identity stops rotating), the objects are fetched with the
//! volume's own identity (a service principal's recorded credential, the pod's identity via NMI
//! again, the node identity, the pod's projected token as kubelet last refreshed it) and laid out with the same paths, modes and group as at mount.

use super::pass::{Fetched, Refresh};
use super::record::Record;
use crate::config::NodeConfig;
use crate::error::Result;
use crate::options::VolumeSpec;
use crate::pipeline;
use std::collections::BTreeMap;

/// Refreshes volumes with this node's config.
pub struct PipelineRefresh {
    /// The node config (`kv.json`), read when the agent starts.
    pub config: NodeConfig,
}

impl Refresh for PipelineRefresh {
    fn fetch(&self, record: &Record) -> Result<Fetched> {
        let mut spec = VolumeSpec::parse(&record.options)?;
        pipeline::use_pod_token(&mut spec, &record.dir)?;
        let cloud = pipeline::resolve(&spec, &self.config)?;
        let deadline = crate::auth::Deadline::after(self.config.deadline());
        // NMI decides at every refresh whether the pod still has its identity; the other
        // sources' tokens come from the node cache like a mount's.
        let node = crate::auth::Node {
            reauthorize_pods: true,
            ..crate::auth::Node::of(&self.config, &cloud)
        };
        let fetched = pipeline::fetch_on(&spec, &cloud, &self.config, deadline, node)?;
        let layout = pipeline::layout(&spec, fetched, &self.config)?;
        // The fetcher does not report version ids yet: changes are detected on the bytes.
        Ok(Fetched {
            layout,
            versions: BTreeMap::new(),
        })
    }
}
