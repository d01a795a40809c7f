//! Task cgroups in Nomad 1.7+'s cgroup v1 layout:
//! `/sys/fs/cgroup/{cpu,cpuacct,memory}/nomad/<alloc-uuid>.<task>`.
//!
//! Every task name the benchmark makes starts with [`TASK_PREFIX`], so that a run killed
//! with SIGKILL (which no handler can catch) is cleaned up by the next run.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::cleanup;

pub const V1_ROOT: &str = "/sys/fs/cgroup";
pub const HIERARCHIES: [&str; 3] = ["cpu", "cpuacct", "memory"];
pub const TASK_PREFIX: &str = "bench-";

fn nomad_dir(hierarchy: &str) -> PathBuf {
    Path::new(V1_ROOT).join(hierarchy).join("nomad")
}

/// Checks that the three v1 hierarchies are mounted.
pub fn check_layout() -> Result<()> {
    for h in HIERARCHIES {
        let dir = Path::new(V1_ROOT).join(h);
        if !dir.join("cgroup.procs").exists() {
            bail!(
                "cgroup v1 hierarchy `{h}` is not mounted at {}: the benchmark builds Nomad's \
                 cgroup v1 layout",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The `nomad` parent directories. Removed on drop if this guard made them and they
/// are empty (another user of the host may have tasks there).
pub struct NomadParents {
    created: Vec<PathBuf>,
}

impl NomadParents {
    pub fn ensure() -> Result<Self> {
        let mut created = Vec::new();
        for h in HIERARCHIES {
            let dir = nomad_dir(h);
            if !dir.exists() {
                cleanup::add_cgroup(&dir);
                fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                created.push(dir);
            }
        }
        Ok(Self { created })
    }
}

impl Drop for NomadParents {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
            cleanup::remove_cgroup(dir);
        }
    }
}

/// One task's cgroup: the same relative directory in each hierarchy. Dropping it kills
/// what runs inside and removes the directories.
pub struct TaskCgroup {
    pub alloc: String,
    pub task: String,
    dirs: Vec<PathBuf>,
}

impl TaskCgroup {
    pub fn create(alloc: &str, task: &str) -> Result<Self> {
        let name = format!("{alloc}.{task}");
        let mut cgroup = Self {
            alloc: alloc.to_owned(),
            task: task.to_owned(),
            dirs: Vec::new(),
        };
        for h in HIERARCHIES {
            let dir = nomad_dir(h).join(&name);
            cleanup::add_cgroup(&dir);
            fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            cgroup.dirs.push(dir);
        }
        Ok(cgroup)
    }

    pub fn dir(&self, hierarchy: &str) -> &Path {
        let i = HIERARCHIES
            .iter()
            .position(|h| *h == hierarchy)
            .expect("a known hierarchy");
        &self.dirs[i]
    }

    /// The `cgroup.procs` file of each hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// `cpuacct.usage`: the CPU time (ns) of everything that ran in the cgroup.
    pub fn cpuacct_usage(&self) -> Result<u64> {
        let file = self.dir("cpuacct").join("cpuacct.usage");
        let text = fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", file.display()))
    }

    pub fn pids(&self) -> Vec<i32> {
        cleanup::cgroup_pids(self.dir("cpuacct"))
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        for dir in cleanup::remove_cgroups(&self.dirs, Duration::from_secs(20)) {
            eprintln!("warning: could not remove cgroup {}", dir.display());
        }
        for dir in &self.dirs {
            cleanup::remove_cgroup(dir);
        }
    }
}

/// Removes task cgroups a previous, killed run left behind. Returns how many.
pub fn remove_stale() -> usize {
    let mut stale = Vec::new();
    for h in HIERARCHIES {
        let Ok(entries) = fs::read_dir(nomad_dir(h)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .split_once('.')
                .is_some_and(|(_, task)| task.starts_with(TASK_PREFIX))
            {
                stale.push(e.path());
            }
        }
    }
    let n = stale.len();
    cleanup::remove_cgroups(&stale, Duration::from_secs(20));
    for h in HIERARCHIES {
        // Only succeeds when empty.
        let _ = fs::remove_dir(nomad_dir(h));
    }
    n
}

/// What is left under `/sys/fs/cgroup/*/nomad` (should be nothing after a run).
pub fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(hierarchies) = fs::read_dir(V1_ROOT) else {
        return out;
    };
    for h in hierarchies.flatten() {
        let nomad = h.path().join("nomad");
        if nomad.exists() {
            let entries: Vec<String> = fs::read_dir(&nomad)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push(format!("{} ({} entries)", nomad.display(), entries.len()));
        }
    }
    out
}

/// A random v4-shaped UUID (allocation IDs).
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 16, "getrandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
