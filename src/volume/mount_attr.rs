//! `mount_setattr(2)` for one purpose: making a detached mount read-only per mount before it is
//! attached. rustix (1.1) wraps the rest of the new mount API but not this call, so this is the
//! one place kv calls the kernel directly, through `libc::syscall`.
//!
//! Why it is needed: a read-only volume must be read-only for the pod from the moment it
//! appears (kubelet, and any mount namespace it propagates to, copies the mount with its flags),
//! while its superblock stays writable for the agent's own mount of the same tmpfs. The old
//! `mount(MS_REMOUNT|MS_BIND|MS_RDONLY)` only works on an attached mount, after the volume is
//! visible, and its flag change does not reach copies already propagated.

#![allow(unsafe_code)]

use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io::Errno;

/// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`: four u64s).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes the mount `mnt` (a descriptor from `fsmount` or `open_tree`) read-only, that mount only.
pub fn set_read_only(mnt: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(dfd, path, flags, attr, size) reads `size` bytes from `attr`, which
    // points to a live, properly laid out `struct mount_attr` of exactly that size; `path` is a
    // NUL-terminated empty string and `mnt` a descriptor that outlives the call. The kernel
    // keeps no pointer after returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    }
}
