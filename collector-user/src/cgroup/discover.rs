//! Finding Nomad's task cgroups with no help from Nomad (spec §4).
//!
//! Nomad names task cgroups after the allocation and task in every layout but one, so a
//! scan is a few `readdir`s of the parent directories, whatever the number of processes:
//!
//! | layout | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | 1.7+ | `<ctrl>/<parent>/<alloc>.<task>`; cpuset `<parent>/{share,reserve}/<alloc>.<task>` | `nomad.slice/{share,reserve}.slice/<alloc>.<task>.scope` |
//! | 1.3–1.6 | `<ctrl>/<parent>/<uuid>`; cpuset `<parent>/reserved/<alloc>-<task>` | `nomad.slice/<alloc>.<task>.scope` |
//!
//! The exception is 1.3–1.6 on v1, where the executor names the cgroup with a fresh UUID.
//! Such a directory is identified once, from the `NOMAD_ALLOC_ID` and `NOMAD_TASK_NAME`
//! environment of a process in it, and remembered by (path, inode).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::{debug, warn};

use super::{mounts::Hierarchies, watch::DirWatch, CgroupDir, CgroupMounts, TaskCgroups};
use crate::{
    config::is_alloc_id,
    fsutil::{inode_set_fingerprint, SubDir, Tree},
};

/// v1 controllers whose Nomad task cgroups are looked for.
const SCANNED_V1: &[&str] = &["cpu", "cpuacct", "cpuset", "freezer", "memory", "pids"];

/// Processes of a legacy cgroup whose environment is tried before giving up until the next
/// scan. The first member may be Nomad's executor, whose environment is not the task's.
const MAX_ENVIRON_TRIES: usize = 8;

/// Which Nomad generation and cgroup version a task's cgroups were found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NomadLayout {
    /// Nomad 1.7+ on cgroup v1: `<ctrl>/nomad/<alloc>.<task>`.
    V1,
    /// Nomad 1.3–1.6 on cgroup v1: `<ctrl>/nomad/<uuid>`, cpuset `nomad/reserved/<alloc>-<task>`.
    V1Legacy,
    /// Nomad 1.7+ on cgroup v2: `nomad.slice/{share,reserve}.slice/<alloc>.<task>.scope`.
    V2,
    /// Nomad 1.3–1.6 on cgroup v2: `nomad.slice/<alloc>.<task>.scope`.
    V2Legacy,
}

impl NomadLayout {
    /// The layout's name, as logged and served.
    pub fn as_str(self) -> &'static str {
        match self {
            NomadLayout::V1 => "Nomad 1.7+ cgroup v1",
            NomadLayout::V1Legacy => "Nomad 1.3-1.6 cgroup v1",
            NomadLayout::V2 => "Nomad 1.7+ cgroup v2",
            NomadLayout::V2Legacy => "Nomad 1.3-1.6 cgroup v2",
        }
    }

    /// Which layout describes a task found in several: v1 first, since Nomad on a hybrid
    /// host puts tasks in v1, and the current generation before the legacy one.
    fn rank(self) -> u8 {
        match self {
            NomadLayout::V1 => 0,
            NomadLayout::V1Legacy => 1,
            NomadLayout::V2 => 2,
            NomadLayout::V2Legacy => 3,
        }
    }
}

impl fmt::Display for NomadLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parent cgroups Nomad puts tasks under (Nomad's `cgroup_parent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NomadParents {
    /// Relative to each v1 controller's mount.
    pub v1: String,
    /// Relative to the unified mount.
    pub v2: String,
}

impl Default for NomadParents {
    fn default() -> Self {
        Self {
            v1: "nomad".to_owned(),
            v2: "nomad.slice".to_owned(),
        }
    }
}

/// A cgroup directory found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundCgroup {
    /// Absolute path.
    pub path: PathBuf,
    /// Inode number = the kernel's cgroup id; a new number under the same path means the
    /// cgroup was removed and recreated.
    pub inode: u64,
}

/// One task's cgroups, merged across hierarchies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredTask {
    pub alloc_id: String,
    pub task: String,
    pub layout: NomadLayout,
    /// v1 controller -> the task's cgroup in that controller.
    pub v1: BTreeMap<String, FoundCgroup>,
    /// The task's cgroup in the unified hierarchy.
    pub v2: Option<FoundCgroup>,
}

/// `<alloc><sep><task>[suffix]` -> (alloc, task). The task may contain any character,
/// dots included; it must not be empty.
fn split_task_name<'a>(name: &'a str, sep: char, suffix: &str) -> Option<(&'a str, &'a str)> {
    let name = name.strip_suffix(suffix)?;
    let alloc = name.get(..36)?;
    let task = name.get(36..)?.strip_prefix(sep)?;
    (is_alloc_id(alloc) && !task.is_empty()).then_some((alloc, task))
}

/// A legacy (1.3–1.6, v1) cgroup named by a bare UUID, awaiting identification.
struct LegacyDir {
    tree: Arc<Tree>,
    rel: PathBuf,
    abs: PathBuf,
    inode: u64,
    controllers: Vec<String>,
}

/// What a legacy directory was found to belong to.
struct LegacyIdentity {
    inode: u64,
    alloc_id: String,
    task: String,
}

/// Finds Nomad's task cgroups; keeps what it learned about legacy directories between
/// scans.
pub struct Discovery {
    hierarchies: Hierarchies,
    parents: NomadParents,
    proc: Tree,
    /// v1 mounts to scan, each with the scanned controllers it holds (co-mounted
    /// controllers share one `readdir`).
    v1_groups: Vec<(Arc<Tree>, Vec<String>)>,
    /// Legacy directory path -> identity, valid while the inode matches.
    legacy: HashMap<PathBuf, LegacyIdentity>,
    /// Directories whose listing failed other than by not existing, warned about once.
    warned: HashSet<PathBuf>,
    /// Tasks claimed by several legacy directories at the last scan, warned about once.
    conflicts: HashSet<(String, String)>,
    environ: Vec<u8>,
    /// Every directory the last scan listed, with the fingerprint of its subdirectories
    /// then (None: it did not exist), for [`Discovery::scan_if_changed`].
    listed: Vec<(Arc<Tree>, PathBuf, Option<u64>)>,
    /// The last scan left something to retry (a legacy cgroup not identified yet).
    retry: bool,
    /// Reports children of the listed directories coming and going; `None` where inotify
    /// is unavailable (the listed directories are then compared every interval).
    watch: Option<DirWatch>,
    /// Intervals since the listed directories were last compared with the last scan.
    unchecked: u32,
}

/// How many intervals may pass, inotify reporting nothing, before the listed directories
/// are compared anyway: a safety net, should a change ever go unreported (a watch limit
/// reached, a watched directory replaced).
const CHECK_ANYWAY_EVERY: u32 = 60;

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("mounts", self.hierarchies.mounts())
            .field("parents", &self.parents)
            .field("proc", &self.proc.path())
            .field("legacy_known", &self.legacy.len())
            .finish()
    }
}

/// Adds or merges a task's cgroup into the scan result.
fn entry<'a>(
    found: &'a mut BTreeMap<(String, String), DiscoveredTask>,
    alloc_id: &str,
    task: &str,
    layout: NomadLayout,
) -> &'a mut DiscoveredTask {
    let t = found
        .entry((alloc_id.to_owned(), task.to_owned()))
        .or_insert_with(|| DiscoveredTask {
            alloc_id: alloc_id.to_owned(),
            task: task.to_owned(),
            layout,
            v1: BTreeMap::new(),
            v2: None,
        });
    if layout.rank() < t.layout.rank() {
        t.layout = layout;
    }
    t
}

/// Finds `NOMAD_ALLOC_ID` and `NOMAD_TASK_NAME` in a NUL-separated environment.
fn nomad_identity(environ: &[u8]) -> Option<(String, String)> {
    let (mut alloc, mut task) = (None, None);
    for var in environ.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"NOMAD_ALLOC_ID=") {
            alloc = std::str::from_utf8(v).ok();
        } else if let Some(v) = var.strip_prefix(b"NOMAD_TASK_NAME=") {
            task = std::str::from_utf8(v).ok();
        }
    }
    match (alloc, task) {
        (Some(alloc), Some(task)) if is_alloc_id(alloc) && !task.is_empty() => {
            Some((alloc.to_owned(), task.to_owned()))
        }
        _ => None,
    }
}

impl Discovery {
    /// `proc_root` is where process environments are read for legacy v1 cgroups (normally
    /// `/proc`); failing to open it is the only error.
    pub fn new(mounts: CgroupMounts, parents: NomadParents, proc_root: &Path) -> io::Result<Self> {
        let proc = Tree::open(proc_root)?;
        let hierarchies = Hierarchies::open(mounts);
        let mut v1_groups: Vec<(Arc<Tree>, Vec<String>)> = Vec::new();
        for controller in SCANNED_V1 {
            let Some(tree) = hierarchies.v1(controller) else {
                continue;
            };
            match v1_groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, tree)) {
                Some((_, controllers)) => controllers.push((*controller).to_owned()),
                None => v1_groups.push((Arc::clone(tree), vec![(*controller).to_owned()])),
            }
        }
        let watch = match DirWatch::new() {
            Ok(watch) => Some(watch),
            Err(e) => {
                warn!(error = %e, "inotify unavailable: Nomad's cgroup directories are listed every interval instead");
                None
            }
        };
        let mut discovery = Self {
            hierarchies,
            parents,
            proc,
            v1_groups,
            legacy: HashMap::new(),
            warned: HashSet::new(),
            conflicts: HashSet::new(),
            environ: Vec::new(),
            listed: Vec::new(),
            retry: true,
            watch,
            unchecked: 0,
        };
        // Nomad's parent directories may be created (or removed and created again) later:
        // that is a `mkdir` in a hierarchy's root.
        let roots: Vec<Arc<Tree>> = discovery
            .v1_groups
            .iter()
            .map(|(tree, _)| Arc::clone(tree))
            .chain(discovery.hierarchies.v2().cloned())
            .collect();
        for root in roots {
            discovery.watch_dir(&root, Path::new(""));
        }
        Ok(discovery)
    }

    /// Turns inotify off, as where it is unavailable (for tests of that path).
    #[cfg(test)]
    pub fn without_watch(mut self) -> Self {
        self.watch = None;
        self
    }

    /// Adds `rel` in `tree` to the inotify watch; a directory that does not exist is left
    /// to its parent's watch. Any other failure (the watch limit) turns inotify off: the
    /// directories are then compared every interval.
    fn watch_dir(&mut self, tree: &Tree, rel: &Path) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        match watch.watch(&tree.path().join(rel)) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
            Err(e) => {
                warn!(
                    path = %tree.path().join(rel).display(),
                    error = %e,
                    "cannot watch a cgroup directory with inotify: Nomad's cgroup \
                     directories are listed every interval instead"
                );
                self.watch = None;
            }
        }
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// The readers for a discovered task.
    pub fn task_cgroups(&self, task: &DiscoveredTask) -> TaskCgroups {
        let hierarchies = &self.hierarchies;
        let v1 = |controller: &str| {
            let found = task.v1.get(controller)?;
            Hierarchies::dir_in(hierarchies.v1(controller)?, &found.path)
        };
        TaskCgroups {
            memory: v1("memory"),
            cpu: v1("cpu"),
            cpuacct: v1("cpuacct"),
            v2: task
                .v2
                .as_ref()
                .and_then(|found| Hierarchies::dir_in(hierarchies.v2()?, &found.path)),
        }
    }

    /// Lists `rel` in `tree`; a directory that does not exist is simply empty. Notes the
    /// fingerprint of what was listed, so that the next [`Discovery::scan_if_changed`]
    /// sees any change made since (during the listing included).
    fn list(&mut self, tree: &Arc<Tree>, rel: &Path) -> Vec<SubDir> {
        // Watched before it is listed: a change during the listing is reported.
        self.watch_dir(tree, rel);
        let listed = tree.subdirs_with_inodes(rel);
        let fingerprint = listed
            .as_ref()
            .ok()
            .map(|entries| inode_set_fingerprint(entries.iter().map(|d| d.inode)));
        self.listed
            .push((Arc::clone(tree), rel.to_path_buf(), fingerprint));
        match listed {
            Ok(entries) => {
                if !self.warned.is_empty() {
                    self.warned.remove(&tree.path().join(rel));
                }
                entries
            }
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {
                Vec::new()
            }
            Err(err) => {
                let path = tree.path().join(rel);
                if self.warned.insert(path.clone()) {
                    warn!(path = %path.display(), %err, "cannot list cgroup directory");
                }
                Vec::new()
            }
        }
    }

    /// Like [`Discovery::scan`], but `None` when no directory the last scan listed has
    /// gained or lost a subdirectory since: inotify says so for the price of one `read`
    /// (without inotify, and once a minute anyway, each directory's subdirectories are
    /// compared with the last listing: one `readdir` pass each, nothing parsed).
    pub fn scan_if_changed(&mut self) -> Option<Vec<DiscoveredTask>> {
        if self.retry || self.listed.is_empty() {
            return Some(self.scan());
        }
        let compare = match self.watch.as_mut().map(DirWatch::changed) {
            Some(true) => return Some(self.scan()),
            Some(false) => {
                self.unchecked += 1;
                self.unchecked >= CHECK_ANYWAY_EVERY
            }
            None => true,
        };
        if compare {
            self.unchecked = 0;
            let unchanged = self
                .listed
                .iter()
                .all(|(tree, rel, seen)| tree.subdirs_fingerprint(rel).ok() == *seen);
            if !unchanged {
                return Some(self.scan());
            }
        }
        None
    }

    /// Every Nomad task cgroup present now, one entry per (alloc, task), sorted.
    pub fn scan(&mut self) -> Vec<DiscoveredTask> {
        self.listed.clear();
        self.retry = false;
        self.unchecked = 0;
        let mut found = BTreeMap::new();
        self.scan_v2(&mut found);
        let mut legacy: BTreeMap<String, Vec<LegacyDir>> = BTreeMap::new();
        let groups = std::mem::take(&mut self.v1_groups);
        for (tree, controllers) in &groups {
            self.scan_v1(tree, controllers, &mut found, &mut legacy);
        }
        self.v1_groups = groups;
        self.resolve_legacy(legacy, &mut found);
        found.into_values().collect()
    }

    fn scan_v2(&mut self, found: &mut BTreeMap<(String, String), DiscoveredTask>) {
        let Some(tree) = self.hierarchies.v2().cloned() else {
            return;
        };
        let parent = PathBuf::from(&self.parents.v2);
        let mut add = |dir: &Path, d: &SubDir, layout| {
            if let Some((alloc, task)) =
                d.name_str().and_then(|n| split_task_name(n, '.', ".scope"))
            {
                entry(found, alloc, task, layout).v2 = Some(FoundCgroup {
                    path: tree.path().join(dir).join(&d.name),
                    inode: d.inode,
                });
            }
        };
        for d in self.list(&tree, &parent) {
            match d.name_str() {
                Some("share.slice" | "reserve.slice") => {
                    let sub = parent.join(&d.name);
                    for t in self.list(&tree, &sub) {
                        add(&sub, &t, NomadLayout::V2);
                    }
                }
                _ => add(&parent, &d, NomadLayout::V2Legacy),
            }
        }
    }

    fn scan_v1(
        &mut self,
        tree: &Arc<Tree>,
        controllers: &[String],
        found: &mut BTreeMap<(String, String), DiscoveredTask>,
        legacy: &mut BTreeMap<String, Vec<LegacyDir>>,
    ) {
        let parent = PathBuf::from(&self.parents.v1);
        let has_cpuset = controllers.iter().any(|c| c == "cpuset");
        let found_at = |dir: &Path, d: &SubDir| FoundCgroup {
            path: tree.path().join(dir).join(&d.name),
            inode: d.inode,
        };
        for d in self.list(tree, &parent) {
            let Some(name) = d.name_str() else { continue };
            if let Some((alloc, task)) = split_task_name(name, '.', "") {
                let t = entry(found, alloc, task, NomadLayout::V1);
                for c in controllers {
                    t.v1.insert(c.clone(), found_at(&parent, &d));
                }
            } else if is_alloc_id(name) {
                legacy.entry(name.to_owned()).or_default().push(LegacyDir {
                    tree: Arc::clone(tree),
                    rel: parent.join(name),
                    abs: tree.path().join(&parent).join(name),
                    inode: d.inode,
                    controllers: controllers.to_vec(),
                });
            } else if has_cpuset && matches!(name, "share" | "reserve" | "reserved") {
                let (sep, layout) = if name == "reserved" {
                    ('-', NomadLayout::V1Legacy)
                } else {
                    ('.', NomadLayout::V1)
                };
                let sub = parent.join(name);
                for t in self.list(tree, &sub) {
                    if let Some((alloc, task)) =
                        t.name_str().and_then(|n| split_task_name(n, sep, ""))
                    {
                        entry(found, alloc, task, layout)
                            .v1
                            .insert("cpuset".to_owned(), found_at(&sub, &t));
                    }
                }
            }
        }
    }

    /// Identifies the bare-UUID directories of this scan (the same UUID names the task's
    /// directory in every controller), from the cache or else from a member's environment,
    /// and forgets cached directories that are gone.
    ///
    /// A process can rewrite its own environment, so a task could claim another task's
    /// identity: when several UUID directories claim the same (alloc, task), none of them
    /// is reported (a task missing from the stats beats one credited with another's usage).
    fn resolve_legacy(
        &mut self,
        legacy: BTreeMap<String, Vec<LegacyDir>>,
        found: &mut BTreeMap<(String, String), DiscoveredTask>,
    ) {
        let mut seen = HashSet::new();
        let mut claims: BTreeMap<(String, String), Vec<Vec<LegacyDir>>> = BTreeMap::new();
        for (uuid, dirs) in legacy {
            seen.extend(dirs.iter().map(|d| d.abs.clone()));
            let cached = dirs.iter().find_map(|d| {
                self.legacy
                    .get(&d.abs)
                    .filter(|id| id.inode == d.inode)
                    .map(|id| (id.alloc_id.clone(), id.task.clone()))
            });
            let Some(identity) = cached.or_else(|| self.identify(&uuid, &dirs)) else {
                // Not identified yet (no member, or none readable): look again next time
                // even if no directory changes.
                self.retry = true;
                continue;
            };
            for d in &dirs {
                self.legacy.insert(
                    d.abs.clone(),
                    LegacyIdentity {
                        inode: d.inode,
                        alloc_id: identity.0.clone(),
                        task: identity.1.clone(),
                    },
                );
            }
            claims.entry(identity).or_default().push(dirs);
        }
        self.legacy.retain(|path, _| seen.contains(path));

        let mut conflicts = HashSet::new();
        for ((alloc_id, task), mut claimants) in claims {
            if claimants.len() > 1 {
                if !self.conflicts.contains(&(alloc_id.clone(), task.clone())) {
                    let dirs: Vec<_> = claimants.iter().map(|c| c[0].abs.display()).collect();
                    warn!(alloc = %alloc_id, %task, ?dirs,
                        "several legacy cgroups claim the same task; reporting none");
                }
                conflicts.insert((alloc_id, task));
                continue;
            }
            let t = entry(found, &alloc_id, &task, NomadLayout::V1Legacy);
            for d in claimants.pop().unwrap_or_default() {
                for c in d.controllers {
                    t.v1.insert(
                        c,
                        FoundCgroup {
                            path: d.abs.clone(),
                            inode: d.inode,
                        },
                    );
                }
            }
        }
        self.conflicts = conflicts;
    }

    /// Reads the environment of the processes in a legacy directory until one names its
    /// allocation and task. `None` (retried on a later scan) when the cgroup is empty or
    /// no member's environment could be read or named a task.
    fn identify(&mut self, uuid: &str, dirs: &[LegacyDir]) -> Option<(String, String)> {
        let mut pids = Vec::new();
        let mut source = None;
        for d in dirs {
            let cg = CgroupDir::new(Arc::clone(&d.tree), d.rel.clone());
            match cg.read_cgroup_procs(&mut pids) {
                Ok(_) if !pids.is_empty() => {
                    source = Some(cg);
                    break;
                }
                Ok(_) => {}
                Err(err) => debug!(%err, "reading legacy cgroup members"),
            }
        }
        let Some(source) = source else {
            debug!(uuid, "legacy Nomad cgroup has no process yet");
            return None;
        };
        let mut again = Vec::new();
        for &pid in pids.iter().take(MAX_ENVIRON_TRIES) {
            let environ = PathBuf::from(format!("{pid}/environ"));
            if let Err(err) = self.proc.read_bytes_into(&environ, &mut self.environ) {
                debug!(pid, %err, "reading process environment");
                continue;
            }
            let Some(identity) = nomad_identity(&self.environ) else {
                continue;
            };
            // The PID may have exited and been reused between the two reads: trust the
            // environment only if the PID is still a member afterwards.
            again.clear();
            if !matches!(source.read_cgroup_procs(&mut again), Ok(Some(())))
                || !again.contains(&pid)
            {
                debug!(uuid, pid, "process left the legacy cgroup while being read");
                continue;
            }
            debug!(uuid, pid, alloc = %identity.0, task = %identity.1,
                "identified legacy Nomad cgroup");
            return Some(identity);
        }
        debug!(uuid, "no process of the legacy Nomad cgroup names its task");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";

    #[test]
    fn splits_alloc_and_task_names() {
        let n = format!("{A}.web.frontend");
        assert_eq!(split_task_name(&n, '.', ""), Some((A, "web.frontend")));
        let n = format!("{A}.web.scope");
        assert_eq!(split_task_name(&n, '.', ".scope"), Some((A, "web")));
        let n = format!("{A}.web.scope.scope");
        assert_eq!(split_task_name(&n, '.', ".scope"), Some((A, "web.scope")));
        assert_eq!(split_task_name(&format!("{A}.web"), '.', ".scope"), None);
        assert_eq!(split_task_name(&format!("{A}.scope"), '.', ".scope"), None);
        assert_eq!(split_task_name(&format!("{A}."), '.', ""), None);
        assert_eq!(split_task_name(A, '.', ""), None);
        assert_eq!(
            split_task_name(&format!("{A}-db-1"), '-', ""),
            Some((A, "db-1"))
        );
        assert_eq!(split_task_name(&format!("{A}-db"), '.', ""), None);
        assert_eq!(split_task_name("share.slice", '.', ".scope"), None);
        assert_eq!(
            split_task_name("ééééééééééééééééééééééééééééééééééééé", '.', ""),
            None
        );
    }

    #[test]
    fn reads_identity_from_environ() {
        let env = format!("PATH=/bin\0NOMAD_TASK_NAME=web.1\0NOMAD_ALLOC_ID={A}\0");
        assert_eq!(
            nomad_identity(env.as_bytes()),
            Some((A.to_owned(), "web.1".to_owned()))
        );
        assert_eq!(
            nomad_identity(b"NOMAD_ALLOC_ID=nope\0NOMAD_TASK_NAME=x"),
            None
        );
        assert_eq!(
            nomad_identity(format!("NOMAD_ALLOC_ID={A}").as_bytes()),
            None
        );
    }

    #[test]
    fn layouts_display() {
        assert_eq!(NomadLayout::V1.to_string(), "Nomad 1.7+ cgroup v1");
        assert_eq!(NomadLayout::V2Legacy.to_string(), "Nomad 1.3-1.6 cgroup v2");
    }
}
