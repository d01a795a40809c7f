//! Where the cgroup hierarchies are mounted.
//!
//! Hosts come in three shapes: cgroup v1 (one mount per controller or per group of
//! co-mounted controllers), cgroup v2 (one unified mount), and hybrid (v1 controllers plus
//! a cgroup2 mount, usually at `/sys/fs/cgroup/unified`, with no controllers enabled).
//! Nomad's task cgroups can be in either kind, so both are recorded.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::{debug, warn};

use super::{dir::CgroupDir, task::TaskCgroups};
use crate::{
    fsutil::Tree,
    procfs::mountinfo::{unescape_path, MountInfoLine},
};

/// cgroup v1 controller names. Mount options and directory names are checked against this
/// list so that named hierarchies (`name=systemd`), mount flags (`noprefix`,
/// `clone_children`, `xattr`) and unrelated directories never pass for controllers.
pub const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "debug",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

fn is_v1_controller(name: &str) -> bool {
    V1_CONTROLLERS.contains(&name)
}

/// The cgroup mounts of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// cgroup v1 controller (e.g. `cpuacct`) -> its hierarchy's mount point. Co-mounted
    /// controllers (`cpu,cpuacct`) map to the same mount point.
    pub v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
}

/// Which cgroup versions a host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// v1 controllers only.
    V1,
    /// The unified hierarchy only.
    V2,
    /// v1 controllers and a cgroup2 mount.
    Hybrid,
    /// No cgroup mount at all.
    None,
}

impl CgroupMounts {
    /// Parses `/proc/self/mountinfo` text. `cgroup` entries give v1 controllers (from the
    /// super options); the first `cgroup2` entry gives the unified mount. A controller
    /// mounted twice (bind mounts) keeps its first mount point.
    pub fn parse_mountinfo(text: &str) -> Self {
        let mut mounts = CgroupMounts::default();
        for line in MountInfoLine::lines(text) {
            let Some(fstype) = line.fstype else {
                continue;
            };
            match fstype {
                "cgroup2" if mounts.v2.is_none() => {
                    mounts.v2 = Some(unescape_path(line.mount_point));
                }
                "cgroup" => {
                    let path = unescape_path(line.mount_point);
                    for opt in line.super_options.unwrap_or("").split(',') {
                        if is_v1_controller(opt) {
                            mounts
                                .v1
                                .entry(opt.to_owned())
                                .or_insert_with(|| path.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }

    /// Reads and parses a mountinfo file (normally `/proc/self/mountinfo`).
    pub fn from_mountinfo_file(path: &Path) -> io::Result<Self> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a file path: {}", path.display()),
            ));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let text = Tree::open(parent)?.read_to_string(Path::new(name))?;
        Ok(Self::parse_mountinfo(&text))
    }

    /// Finds the hierarchies below a configured cgroup root (e.g. `/sys/fs/cgroup`, or a
    /// fake tree in tests) by looking at it rather than at mountinfo:
    /// - `root` holding `cgroup.controllers` is itself the unified hierarchy (pure v2);
    /// - otherwise `root/unified` is the unified hierarchy if it holds `cgroup.controllers`,
    ///   and every other subdirectory without `cgroup.controllers` is a v1 hierarchy named
    ///   after its controllers (`cpu,cpuacct` provides both). Symlinks (`cpu ->
    ///   cpu,cpuacct` on real hosts) are not followed: the comma-named directory covers them.
    pub fn probe_root(root: &Path) -> io::Result<Self> {
        let tree = Tree::open(root)?;
        let is_v2 = |rel: &str| {
            tree.inode_of(&Path::new(rel).join("cgroup.controllers"))
                .is_ok()
        };
        let mut mounts = CgroupMounts::default();
        if is_v2("") {
            mounts.v2 = Some(root.to_path_buf());
            return Ok(mounts);
        }
        if is_v2("unified") {
            mounts.v2 = Some(root.join("unified"));
        }
        let mut names: Vec<String> = tree
            .subdirs_with_inodes(Path::new(""))?
            .into_iter()
            .filter_map(|d| d.name.into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if is_v2(&name) {
                continue;
            }
            for controller in name.split(',').filter(|c| is_v1_controller(c)) {
                mounts
                    .v1
                    .entry(controller.to_owned())
                    .or_insert_with(|| root.join(&name));
            }
        }
        Ok(mounts)
    }

    pub fn kind(&self) -> HostKind {
        match (self.v1.is_empty(), self.v2.is_some()) {
            (false, true) => HostKind::Hybrid,
            (false, false) => HostKind::V1,
            (true, true) => HostKind::V2,
            (true, false) => HostKind::None,
        }
    }

    /// The mount point of a v1 controller.
    pub fn controller(&self, name: &str) -> Option<&Path> {
        self.v1.get(name).map(PathBuf::as_path)
    }
}

/// The hierarchies of [`CgroupMounts`], each opened once as a [`Tree`] shared by every
/// reader of a cgroup inside it (one descriptor per mount, not per task).
#[derive(Debug)]
pub struct Hierarchies {
    mounts: CgroupMounts,
    v1: BTreeMap<String, Arc<Tree>>,
    v2: Option<Arc<Tree>>,
}

impl Hierarchies {
    /// Opens every mount. One that cannot be opened is left out with a warning: the
    /// others still work.
    pub fn open(mounts: CgroupMounts) -> Self {
        let mut by_path: BTreeMap<PathBuf, Option<Arc<Tree>>> = BTreeMap::new();
        let mut open = |path: &Path| -> Option<Arc<Tree>> {
            by_path
                .entry(path.to_path_buf())
                .or_insert_with(|| match Tree::open(path) {
                    Ok(tree) => Some(Arc::new(tree)),
                    Err(err) => {
                        warn!(path = %path.display(), %err, "cannot open cgroup mount");
                        None
                    }
                })
                .clone()
        };
        let v1 = mounts
            .v1
            .iter()
            .filter_map(|(controller, path)| Some((controller.clone(), open(path)?)))
            .collect();
        let v2 = mounts.v2.as_deref().and_then(&mut open);
        debug!(kind = ?mounts.kind(), v1 = ?mounts.v1, v2 = ?mounts.v2, "cgroup hierarchies");
        Self {
            v1,
            v2,
            mounts: mounts.clone(),
        }
    }

    pub fn mounts(&self) -> &CgroupMounts {
        &self.mounts
    }

    /// The hierarchy holding a v1 controller.
    pub fn v1(&self, controller: &str) -> Option<&Arc<Tree>> {
        self.v1.get(controller)
    }

    /// The unified hierarchy.
    pub fn v2(&self) -> Option<&Arc<Tree>> {
        self.v2.as_ref()
    }

    /// A reader for the absolute cgroup directory `abs` inside `tree`, if it is inside.
    pub(super) fn dir_in(tree: &Arc<Tree>, abs: &Path) -> Option<CgroupDir> {
        let rel = abs.strip_prefix(tree.path()).ok()?;
        Some(CgroupDir::new(Arc::clone(tree), rel.to_path_buf()))
    }

    /// The readers for a cgroup given by absolute path (a statically configured task).
    /// A path in the unified hierarchy gives a v2 reader. A path in a v1 hierarchy names
    /// the same relative path in every other v1 controller where it exists, as v1 tools
    /// (Nomad included) create a task's cgroup under the same name in each controller.
    /// `None` when the path is under no known mount.
    pub fn task_cgroups_at(&self, abs: &Path) -> Option<TaskCgroups> {
        if let Some(dir) = self.v2.as_ref().and_then(|t| Self::dir_in(t, abs)) {
            return Some(TaskCgroups {
                v2: Some(dir),
                ..TaskCgroups::default()
            });
        }
        let rel = self
            .v1
            .values()
            .filter_map(|t| abs.strip_prefix(t.path()).ok())
            .min_by_key(|rel| rel.components().count())?
            .to_path_buf();
        let v1 = |controller: &str| {
            let tree = self.v1.get(controller)?;
            matches!(tree.inode_of(&rel), Ok((_, true)))
                .then(|| CgroupDir::new(Arc::clone(tree), rel.clone()))
        };
        Some(TaskCgroups {
            memory: v1("memory"),
            cpu: v1("cpu"),
            cpuacct: v1("cpuacct"),
            v2: None,
        })
    }
}
