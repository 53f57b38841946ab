//! `kv install`: placeholder; the installer work replaces this file.

/// Arguments of `kv install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The kubelet volume plugin dir (kubelet's --volume-plugin-dir).
    #[arg(long)]
    pub target_dir: std::path::PathBuf,
}

/// Runs `kv install`.
pub fn run(_args: InstallArgs) -> (String, u8) {
    ("kv install: not implemented yet\n".into(), 1)
}
