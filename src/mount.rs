//! The `mount` verb: options → policy → tokens and objects in memory → tmpfs at `<dir>`.
//!
//! Nothing touches the node until every object is fetched and rendered, so a vault error leaves
//! nothing behind; the tmpfs becomes visible at `<dir>` only complete (see [`crate::volume`]).

use crate::auth::{Deadline, Provider, Source};
use crate::cloud::Cloud;
use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::keyvault::{FetchedObject, Fetcher};
use crate::options::{Identity, VolumeSpec};
use crate::volume::{self, Layout, VolumeFile};
use serde_json::json;
use std::path::Path;

/// Default mode of files when the pod has an fsGroup: owner root, readable by the group only.
pub const MODE_WITH_FSGROUP: u32 = 0o440;
/// Default mode of files without an fsGroup: the app may run as any user.
pub const MODE_WITHOUT_FSGROUP: u32 = 0o444;

/// Runs `kv mount <dir> <json>`.
pub fn run(dir: &Path, json: &str, config: &NodeConfig) -> Result<()> {
    let deadline = Deadline::after(config.deadline());
    let spec = VolumeSpec::parse(json)?;
    log_context(dir, &spec);
    volume::validate_kubelet_dir(dir)?;
    let cloud = resolve(&spec, config)?;

    volume::ensure_dir(dir)?;
    let _lock = volume::lock(dir)?;
    if volume::is_mount_point(dir)? {
        // kubelet normally checks this itself; a repeated call must not refetch.
        crate::log::info("already_mounted", json!({}));
        return Ok(());
    }
    let fetched = fetch(&spec, &cloud, config, deadline)?;
    let layout = layout(&spec, fetched, config)?;
    if deadline.remaining().is_zero() {
        return Err(Error::new(
            Code::Timeout,
            format!(
                "timed out after {}s: the objects arrived too late to mount them",
                deadline.total().as_secs_f64()
            ),
        ));
    }
    volume::mount(dir, &layout)?;
    crate::log::info(
        "mounted",
        json!({"files": layout.files.len(), "tmpfs_bytes": layout.size}),
    );
    Ok(())
}

/// The cloud of the volume, after the node policy allowed the request.
pub fn resolve(spec: &VolumeSpec, config: &NodeConfig) -> Result<Cloud> {
    if !spec.unknown_keys.is_empty() {
        crate::log::warn("unknown_options", json!({"keys": spec.unknown_keys}));
    }
    let cloud = config.cloud(spec.cloud.as_deref())?;
    let uses_node_identity = matches!(spec.identity, Identity::NodeManagedIdentity { .. });
    config.check_policy(
        spec.pod.namespace.as_deref(),
        uses_node_identity,
        &spec.vaults(),
    )?;
    Ok(cloud)
}

fn log_context(dir: &Path, spec: &VolumeSpec) {
    let pod = format!(
        "{}/{}",
        spec.pod.namespace.as_deref().unwrap_or(""),
        spec.pod.name.as_deref().unwrap_or("")
    );
    crate::log::set_context("pod", pod);
    if let Some(uid) = &spec.pod.uid {
        crate::log::set_context("pod_uid", uid.as_str());
    }
    if let Some(v) = &spec.volume_name {
        crate::log::set_context("volume", v.as_str());
    }
    crate::log::set_context("dir", dir.to_string_lossy().as_ref());
    crate::log::info(
        "mount_start",
        json!({"identity": spec.identity.describe(), "vaults": spec.vaults(), "objects": spec.objects.iter().map(|o| &o.name).collect::<Vec<_>>()}),
    );
}

/// Fetches and renders every object of `spec`; shared by `mount` and `kv fetch`.
pub fn fetch(
    spec: &VolumeSpec,
    cloud: &Cloud,
    config: &NodeConfig,
    deadline: Deadline,
) -> Result<Vec<FetchedObject>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("async runtime: {e}")))?;
    runtime.block_on(async {
        let http = crate::http::client()?;
        let source = Source::for_identity(
            &spec.identity,
            &spec.pod,
            spec.tenant.as_deref(),
            &cloud.authority_host,
            config.nmi_port(),
        );
        let provider = Provider::new(source, http.clone(), deadline);
        // Start the token at once: it overlaps the vault's 401 challenge.
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
            http,
            provider,
            cloud: cloud.clone(),
            deadline,
        };
        let result = fetcher.fetch_all(&spec.objects).await;
        prefetch.abort();
        result
    })
}

/// The mode of a file with no explicit permission: `filepermission`, else by fsGroup.
pub fn default_mode(spec: &VolumeSpec) -> u32 {
    spec.file_permission.unwrap_or(if spec.fs_group.is_some() {
        MODE_WITH_FSGROUP
    } else {
        MODE_WITHOUT_FSGROUP
    })
}

/// Decides modes, ownership and the tmpfs size.
pub fn layout(
    spec: &VolumeSpec,
    fetched: Vec<FetchedObject>,
    config: &NodeConfig,
) -> Result<Layout> {
    let default_mode = default_mode(spec);
    let mut files = Vec::new();
    for object in fetched {
        let mode = spec.objects[object.index]
            .permission
            .unwrap_or(default_mode);
        for (path, rendered) in object.files {
            files.push(VolumeFile {
                path,
                bytes: rendered.bytes,
                mode,
            });
        }
    }
    let needed = volume::needed_bytes(&files);
    let cap = config.tmpfs_max_bytes();
    let size = match spec.tmpfs_size {
        Some(asked) if asked > cap => {
            return Err(Error::options(format!(
                "tmpfssize {asked} is above this node's cap of {cap} bytes (node config tmpfsMaxBytes)"
            )))
        }
        Some(asked) if asked < needed => {
            return Err(Error::options(format!(
                "tmpfssize {asked} is too small: the objects need {needed} bytes"
            )))
        }
        Some(asked) => asked,
        None if needed > cap => {
            return Err(Error::new(
                Code::Mount,
                format!("the objects need {needed} bytes of tmpfs, above this node's cap of {cap} (node config tmpfsMaxBytes)"),
            ))
        }
        None => needed,
    };
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
    })
}
