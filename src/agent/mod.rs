//! Rotation: mounted volumes follow Key Vault without restarting pods (`kv agent`).
//!
//! kubelet calls a FlexVolume's mount once per pod, so nothing would ever refresh the files; the
//! agent, a long-running `kv agent` beside the installer, does. A volume opts in with the option
//! `rotationpollinterval`; at mount kv writes such a volume in the layout of Kubernetes' secret
//! volumes ([`crate::volume::versioned`]: a version directory, a `..data` link, per-file links),
//! gives the agent its own mount of it and saves a record in the node state
//! ([`crate::nodestate::volumes`]). The [`scheduler`] refreshes each volume when it is due
//! ([`schedule`]) through the mount pipeline ([`refresh`]) and switches it to the new files in
//! one rename when anything changed ([`refresh_volume`]); on any error the current files stay.
//! See docs/rotation.md.

pub mod refresh;
pub mod refresh_volume;
pub mod root;
pub mod schedule;
pub mod scheduler;
