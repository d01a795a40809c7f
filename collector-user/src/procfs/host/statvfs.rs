//! `statvfs`: a filesystem's size and use, and Nomad's disk figures from it.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use super::types::FsUsage;
use crate::{model::host::HostDiskStats, procfs::mountinfo::Mount};

impl FsUsage {
    pub fn of(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: zeroed statvfs is valid plain data, filled by the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is NUL-terminated and st is writable for the whole call.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            block_size: st.f_frsize as u64,
            blocks: st.f_blocks as u64,
            blocks_free: st.f_bfree as u64,
            blocks_available: st.f_bavail as u64,
            files: st.f_files as u64,
            files_free: st.f_ffree as u64,
        })
    }

    /// Nomad's disk figures (gopsutil's `disk.Usage`): `Used` counts the root reserve,
    /// `Available` does not, and `UsedPercent` is `Used / (Used + Available)`, i.e. of the
    /// space a user can have, as `df` reports it.
    pub fn disk_stats(&self, mount: Mount) -> HostDiskStats {
        let size = self.blocks.saturating_mul(self.block_size);
        let available = self.blocks_available.saturating_mul(self.block_size);
        let used = self
            .blocks
            .saturating_sub(self.blocks_free)
            .saturating_mul(self.block_size);
        let usable = used.saturating_add(available);
        let inodes_used = self.files.saturating_sub(self.files_free);
        HostDiskStats {
            device: mount.device,
            mountpoint: mount.mountpoint,
            size,
            used,
            available,
            used_percent: if usable == 0 {
                0.0
            } else {
                used as f64 / usable as f64 * 100.0
            },
            inodes_used_percent: if self.files == 0 {
                0.0
            } else {
                inodes_used as f64 / self.files as f64 * 100.0
            },
        }
    }
}
