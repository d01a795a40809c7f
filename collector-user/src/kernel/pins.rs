//! Keeping the kernel-side counters across daemon restarts.
//!
//! Maps and the `sched_switch` link are pinned under
//! `<bpffs>/nomad-collector/v<LAYOUT_VERSION>/`. A restarted daemon opens the same maps,
//! so the cumulative counters continue, and the pinned link kept the exit folding running
//! while it was down. Pins of another layout version are removed, never read.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use collector_common::LAYOUT_VERSION;
use thiserror::Error;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum PinError {
    #[error("mounting bpffs on {path}: {source}")]
    Mount { path: String, source: io::Error },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory that holds this layout version's pins.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    dir: PathBuf,
}

/// What a pinned map must look like to be reused.
pub struct MapShape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain integers: all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string alive for the call; statfs writes
    // into the struct we own.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts bpffs on `mount_point` unless one is already there.
pub fn ensure_bpffs(mount_point: &Path) -> Result<(), PinError> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    fs::create_dir_all(mount_point).map_err(io_err(mount_point))?;
    let target = CString::new(mount_point.as_os_str().as_encoded_bytes()).expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    let opts = CString::new("mode=0700").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            path: mount_point.display().to_string(),
            source: io::Error::last_os_error(),
        });
    }
    info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

impl PinDir {
    /// `root` is the daemon's own folder on bpffs, e.g. `/sys/fs/bpf/nomad-collector`.
    pub fn new(root: &Path) -> Self {
        Self::for_build(root, "")
    }

    /// The pins of one build of the programs (`task-storage`, `thread-hash`): builds
    /// keep threads' state in maps of different types, so each has its own folder.
    pub fn for_build(root: &Path, build: &str) -> Self {
        let name = match build {
            "" => format!("v{LAYOUT_VERSION}"),
            build => format!("v{LAYOUT_VERSION}-{build}"),
        };
        Self {
            root: root.to_path_buf(),
            dir: root.join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Mounts bpffs if the pins live under `/sys/fs/bpf` and nothing is mounted there,
    /// creates this version's folder and removes every other version's pins.
    pub fn prepare(&self) -> Result<(), PinError> {
        let default_mount = Path::new("/sys/fs/bpf");
        if self.root.starts_with(default_mount) {
            ensure_bpffs(default_mount)?;
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path != self.dir {
                    warn!(
                        path = %path.display(),
                        "removing eBPF pins left by an incompatible collector version \
                         (their counters cannot be read by this one)"
                    );
                    remove_pins(&path)?;
                }
            }
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))
    }

    /// Keeps the pinned maps only if every one of `shapes` is pinned and has exactly
    /// that shape; otherwise removes all of this version's pins (maps and link), so that
    /// the loader creates a consistent set anew. The maps only make sense together: a
    /// thread's cached slot in a kept task storage would point into a recreated array.
    /// Returns whether the pins were kept.
    pub fn keep_if_consistent(&self, shapes: &[MapShape]) -> Result<bool, PinError> {
        let present: Vec<&MapShape> = shapes
            .iter()
            .filter(|shape| self.path(shape.name).exists())
            .collect();
        if present.is_empty() {
            return Ok(false);
        }
        let mismatched: Vec<&str> = shapes
            .iter()
            .filter(|shape| {
                !MapInfo::from_pin(self.path(shape.name)).is_ok_and(|info| {
                    info.map_type().is_ok_and(|t| t == shape.map_type)
                        && info.key_size() == shape.key_size
                        && info.value_size() == shape.value_size
                        && info.max_entries() == shape.max_entries
                })
            })
            .map(|shape| shape.name)
            .collect();
        if mismatched.is_empty() {
            return Ok(true);
        }
        warn!(
            maps = ?mismatched,
            path = %self.dir.display(),
            "pinned maps do not match this configuration (missing, or type or size \
             changed); replacing all of them, the counters start again from zero"
        );
        remove_pins(&self.dir)?;
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        Ok(false)
    }

    /// Removes every pin of every version: detaches the programs and frees the maps
    /// once no process holds them.
    pub fn uninstall(&self) -> Result<bool, PinError> {
        if !self.root.exists() {
            return Ok(false);
        }
        remove_pins(&self.root)?;
        Ok(true)
    }
}

fn remove_pins(path: &Path) -> Result<(), PinError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err(path))? {
            remove_pins(&entry.map_err(io_err(path))?.path())?;
        }
        fs::remove_dir(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}
