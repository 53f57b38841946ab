//! Rotation: mounted volumes follow Key Vault without restarting pods (`kv agent`).
//!
//! kubelet calls a FlexVolume's mount once per pod, so nothing would ever refresh the files; the
//! agent, a long-running `kv agent` beside the installer, does. A volume opts in with the option
//! `rotationpollinterval`; at mount kv writes such a volume in the layout of Kubernetes'
//! secret volumes ([`crate::volume::versioned`]: a version directory, a `..data` link, per-file links) and saves a [`record`]
//! of what the agent needs to fetch it again. Every pass ([`pass`]) re-fetches the volumes that
//! are due ([`schedule`]) and switches a volume to the new files in one rename when anything
//! changed; on any error the current files stay. See docs/rotation.md.

pub mod pass;
pub mod record;
pub mod refresh;
pub mod root;
pub mod schedule;
