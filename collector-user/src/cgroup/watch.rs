//! Knowing when Nomad's parent cgroup directories gained or lost a child, from inotify.
//!
//! A child cgroup is created by `mkdir` and removed by `rmdir`, which the VFS reports to
//! inotify on every file system, cgroupfs included (`IN_CREATE` / `IN_DELETE` on the
//! parent). So an interval in which nothing changed costs one non-blocking `read` that
//! finds nothing, instead of listing a thousand directories. What inotify does not
//! report on cgroupfs is the removal of a watched directory itself, which is why the
//! hierarchy roots are watched too (Nomad's parent coming back is a `mkdir` there).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// Events that mean the set of subdirectories may have changed.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW;

/// An inotify instance watching directories for children coming and going.
#[derive(Debug)]
pub struct DirWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl DirWatch {
    pub fn new() -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a new descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: vec![0; 4096],
        })
    }

    /// Watches directory `path` (no symlink followed). Watching it again is harmless.
    pub fn watch(&mut self, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether anything was reported since the last call (the queue is drained). A read
    /// error other than "nothing queued" (an overflowed queue reads as an event) counts
    /// as a change: better one scan too many than a task missed.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            // SAFETY: reads at most buf.len() bytes into memory we own.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n > 0 {
                changed = true;
                continue;
            }
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => changed,
                Some(libc::EINTR) => continue,
                _ => true,
            };
        }
    }
}
