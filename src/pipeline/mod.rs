//! The data path of one volume, shared by `kv mount`, `kv fetch` and `kv doctor`:
//!
//! ```text
//! resolve (policy, cloud; no I/O) → fetch (token, selections listed and expanded, objects; in
//! memory) → layout (paths, modes, ownership, tmpfs size) → write (a tmpfs at the mount dir, or
//! a plain directory)
//! ```
//!
//! Selections (`objectNamePattern`, `objectTags`) expand inside fetch, into the same
//! [`ObjectSpec`]s as objects named by the pod: `kv agent` re-runs fetch at every refresh, so it
//! lists again and follows what matches.
//!
//! Nothing touches the node until every object is fetched and rendered, so a vault error leaves
//! nothing behind. Each step is a function the front-ends (`crate::cmd`) call in order; the
//! dry-run [`plan`] is computed from the same [`crate::options::ObjectSpec::file_path`] as the
//! files a mount writes.

pub mod write;

use crate::auth::{Deadline, Provider, Source};
use crate::cloud::Cloud;
use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::keyvault::{FetchedObject, Fetcher};
use crate::options::{ObjectSpec, VolumeSpec};
use crate::volume::{self, Layout, VolumeFile};

/// Default mode of files when the pod has an fsGroup: owner root, readable by the group only.
pub const MODE_WITH_FSGROUP: u32 = 0o440;
/// Default mode of files without an fsGroup: the app may run as any user.
pub const MODE_WITHOUT_FSGROUP: u32 = 0o444;

/// Step 1: the cloud of the volume, after the node policy allowed the request. No I/O.
pub fn resolve(spec: &VolumeSpec, config: &NodeConfig) -> Result<Cloud> {
    if !spec.unknown_keys.is_empty() {
        crate::log::warn("unknown_options", crate::log::names(&spec.unknown_keys));
    }
    let cloud = config.cloud(spec.cloud.as_deref())?;
    rotation(spec, config)?;
    config.check_policy(
        spec.pod.namespace.as_deref(),
        &spec.identity,
        &spec.vaults(),
    )?;
    Ok(cloud)
}

/// How often `kv agent` refreshes the volume: its `rotationpollinterval`, else the node's
/// `rotation.defaultInterval`, raised to `rotation.minInterval`; `None` when it does not rotate.
/// A Failure when the volume asks for rotation on a node that turns it off.
pub fn rotation(spec: &VolumeSpec, config: &NodeConfig) -> Result<Option<std::time::Duration>> {
    config.rotation().interval(spec.rotation_interval)
}

/// Workload identity reads the pod's own projected token, found from the mount dir kubelet gave
/// (at mount, and again at every refresh by `kv agent`: kubelet keeps the token fresh).
pub fn use_pod_token(spec: &mut VolumeSpec, mount_dir: &std::path::Path) -> Result<()> {
    if let crate::options::Identity::WorkloadIdentity { token, .. } = &spec.identity {
        spec.token_file = Some(crate::options::TokenFile::for_mount(
            mount_dir, &spec.pod, token,
        )?);
    }
    Ok(())
}

/// What fetch produced: the volume's objects (those named, then every selection's matches)
/// and each one's rendered files.
pub struct FetchedVolume {
    /// The objects, selections expanded; [`FetchedObject::index`] points into it.
    pub objects: Vec<ObjectSpec>,
    /// The rendered files of each object.
    pub fetched: Vec<FetchedObject>,
}

/// Step 2: lists what the selections select, then fetches and renders every object of `spec`
/// into memory.
pub fn fetch(
    spec: &VolumeSpec,
    cloud: &Cloud,
    config: &NodeConfig,
    deadline: Deadline,
) -> Result<FetchedVolume> {
    fetch_on(
        spec,
        cloud,
        config,
        deadline,
        crate::auth::Node::of(config, cloud),
    )
}

/// [`fetch`] with explicit node settings (the rotation agent re-asks NMI for pods).
pub fn fetch_on(
    spec: &VolumeSpec,
    cloud: &Cloud,
    config: &NodeConfig,
    deadline: Deadline,
    node: crate::auth::Node,
) -> Result<FetchedVolume> {
    let node = crate::auth::Node {
        owner: spec.pod.namespace.clone(),
        any_node_identity: spec
            .pod
            .namespace
            .as_deref()
            .is_some_and(|ns| config.allows_any_node_identity(ns)),
        ..node
    };
    block_on(async {
        let tls = crate::http::tls_config()?;
        let http = crate::http::client_with(tls.clone(), None)?;
        let provider = Provider::on_node(token_source(spec, cloud, config)?, http, deadline, node);
        // Start the token at once: from the node's cache it is at hand before any object
        // request is set up; else it overlaps the vault's 401 challenge.
        let prefetch = {
            let provider = provider.clone();
            let resource = cloud.vault_resource.clone();
            tokio::spawn(async move {
                let _ = provider.token(&resource).await;
            })
        };
        // Let the token request go out before the object requests are set up.
        tokio::task::yield_now().await;
        let fetcher = Fetcher {
            tls,
            provider,
            cloud: cloud.clone(),
            deadline,
            limits: crate::keyvault::Limits {
                max_bytes: config.tmpfs_max_bytes(),
                max_files: config.max_files_per_volume(),
            },
        };
        let result = async {
            let objects = fetcher.expand(&spec.objects, &spec.selections).await?;
            let fetched = fetcher.fetch_all(&objects).await?;
            Ok(FetchedVolume { objects, fetched })
        }
        .await;
        prefetch.abort();
        result
    })
}

/// Where the volume's tokens come from.
pub fn token_source(spec: &VolumeSpec, cloud: &Cloud, config: &NodeConfig) -> Result<Source> {
    Source::for_volume(spec, &cloud.authority_host, config.nmi_port())
}

/// Runs a future on a current-thread runtime: one kv call is one short-lived process.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("async runtime: {e}")))?
        .block_on(f)
}

/// The mode of a file with no explicit permission: `filepermission`, else by fsGroup.
pub fn default_mode(spec: &VolumeSpec) -> u32 {
    spec.file_permission.unwrap_or(if spec.fs_group.is_some() {
        MODE_WITH_FSGROUP
    } else {
        MODE_WITHOUT_FSGROUP
    })
}

/// The mode of one object's files.
pub fn mode_of(spec: &VolumeSpec, object: &ObjectSpec) -> u32 {
    object.permission.unwrap_or_else(|| default_mode(spec))
}

/// Step 3: paths, modes, ownership and the tmpfs size of the fetched files.
pub fn layout(spec: &VolumeSpec, fetched: FetchedVolume, config: &NodeConfig) -> Result<Layout> {
    let mut files = Vec::new();
    for object in fetched.fetched {
        let permission = fetched.objects.get(object.index).and_then(|o| o.permission);
        let mode = permission.unwrap_or_else(|| default_mode(spec));
        for (path, rendered) in object.files {
            files.push(VolumeFile {
                path,
                bytes: rendered.bytes,
                mode,
            });
        }
    }
    let rotating = rotation(spec, config)?.is_some();
    // A rotating volume holds two versions during a switch (and its links): sized for both.
    let (needed, versions) = if rotating {
        let one = crate::volume::versioned::needed(&files)?.bytes;
        config.rotation().check_size(one)?;
        (one, 2)
    } else {
        (volume::needed_bytes(&files), 1)
    };
    let size = tmpfs_size(spec.tmpfs_size, needed, versions, config.tmpfs_max_bytes())?;
    Ok(Layout {
        files,
        // The directory needs x for traversal; with an fsGroup only that group gets in.
        dir_mode: if spec.fs_group.is_some() {
            0o550
        } else {
            0o555
        },
        gid: spec.fs_group,
        size,
        read_only: spec.read_only,
        rotating,
    })
}

/// The tmpfs `size=`: what the pod asked for, else what `versions` copies of the files need
/// (two for a rotating volume: the current version and the next during a switch) plus
/// [`volume::HEADROOM`] for the runtime's metadata. Only one copy is required: the rest is cut
/// to the node's cap rather than failing a small volume on a small cap (a switch that does not
/// fit then fails, keeping the current files, and says so in `kv agent status`).
fn tmpfs_size(asked: Option<u64>, needed: u64, versions: u64, cap: u64) -> Result<u64> {
    match asked {
        Some(asked) if asked > cap => Err(Error::options(format!(
            "tmpfssize {asked} is above this node's cap of {cap} bytes (node config tmpfsMaxBytes)"
        ))),
        Some(asked) if asked < needed => Err(Error::options(format!(
            "tmpfssize {asked} is too small: the objects need {needed} bytes"
        ))),
        Some(asked) => Ok(asked),
        None if needed > cap => Err(Error::new(
            Code::Mount,
            format!("the objects need {needed} bytes of tmpfs, above this node's cap of {cap} (node config tmpfsMaxBytes)"),
        )),
        None => Ok((needed.saturating_mul(versions) + volume::HEADROOM).min(cap)),
    }
}

/// One object as a dry run shows it: where it is fetched from and the files it becomes.
pub struct PlannedObject<'a> {
    /// The object.
    pub object: &'a ObjectSpec,
    /// The Key Vault URL of the object (latest or the pinned version).
    pub url: String,
    /// Every file it may write, volume-relative.
    pub files: Vec<String>,
    /// Their mode.
    pub mode: u32,
}

/// What [`fetch`] and [`layout`] will do for `spec`, without any request.
pub fn plan<'a>(spec: &'a VolumeSpec, cloud: &Cloud) -> Vec<PlannedObject<'a>> {
    spec.objects
        .iter()
        .map(|o| PlannedObject {
            object: o,
            url: format!(
                "{}{}/{}{}",
                cloud.vault_url(&o.vault),
                crate::keyvault::plural(o.kind),
                o.name,
                o.version
                    .as_ref()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            ),
            files: o.file_paths(),
            mode: mode_of(spec, o),
        })
        .collect()
}

/// One selection as a dry run shows it: the listing it makes, and what each match becomes.
pub struct PlannedSelection<'a> {
    /// The selection.
    pub selection: &'a crate::options::Selection,
    /// The Key Vault list URL (followed page by page through `nextLink`).
    pub url: String,
    /// The mode of every match's files.
    pub mode: u32,
}

/// The listings [`fetch`] will make for `spec`'s selections, without any request.
pub fn plan_selections<'a>(spec: &'a VolumeSpec, cloud: &Cloud) -> Vec<PlannedSelection<'a>> {
    spec.selections
        .iter()
        .map(|s| PlannedSelection {
            selection: s,
            url: format!(
                "{}{}",
                cloud.vault_url(&s.template.vault),
                crate::keyvault::plural(s.template.kind)
            ),
            mode: mode_of(spec, &s.template),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_volumes_fit_a_small_cap() {
        // One page of data on a node capped at 64 KiB: the headroom shrinks, the mount works.
        assert_eq!(tmpfs_size(None, 4096, 1, 65536).unwrap(), 65536);
        assert_eq!(
            tmpfs_size(None, 4096, 1, 1 << 20).unwrap(),
            4096 + volume::HEADROOM
        );
        assert_eq!(tmpfs_size(None, 65536, 1, 65536).unwrap(), 65536);
        assert_eq!(
            tmpfs_size(None, 65537, 1, 65536).unwrap_err().code(),
            Code::Mount
        );
        assert_eq!(tmpfs_size(Some(8192), 4096, 1, 65536).unwrap(), 8192);
        assert_eq!(
            tmpfs_size(Some(4095), 4096, 1, 65536).unwrap_err().code(),
            Code::Options
        );
        assert_eq!(
            tmpfs_size(Some(65537), 4096, 1, 65536).unwrap_err().code(),
            Code::Options
        );
        // Rotating: room for two versions when the cap allows it; one is what must fit.
        assert_eq!(
            tmpfs_size(None, 4096, 2, 1 << 20).unwrap(),
            8192 + volume::HEADROOM
        );
        assert_eq!(tmpfs_size(None, 40960, 2, 65536).unwrap(), 65536);
    }
}
