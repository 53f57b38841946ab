//! Test fixtures for the volume layout and the agent: real tmpfs mounts (source `kv`, like a volume) in temp dirs,
//! unmounted and removed on drop.

use crate::volume::VolumeFile;
use rustix::fd::OwnedFd;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "kv-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs with source `kv` mounted at a fresh directory.
pub struct Tmpfs {
    pub dir: PathBuf,
    _tmp: TempDir,
}

impl Tmpfs {
    pub fn new(tag: &str, size: u64) -> Tmpfs {
        let tmp = TempDir::new(tag);
        let dir = tmp.0.join("pods/uid-1/volumes/azure~kv/vol");
        std::fs::create_dir_all(&dir).unwrap();
        mount_tmpfs(&dir, size);
        Tmpfs { dir, _tmp: tmp }
    }

    pub fn root(&self) -> OwnedFd {
        crate::atomic::open_dir(&self.dir).unwrap()
    }
}

pub fn mount_tmpfs(dir: &Path, size: u64) {
    rustix::mount::mount(
        "kv",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        std::ffi::CString::new(format!("size={size},mode=755"))
            .unwrap()
            .as_c_str(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "mounting a tmpfs at {} (tests run as root): {e}",
            dir.display()
        )
    });
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
    }
}

pub fn file(path: &str, bytes: &[u8], mode: u32) -> VolumeFile {
    VolumeFile {
        path: path.into(),
        bytes: Zeroizing::new(bytes.to_vec()),
        mode,
    }
}
