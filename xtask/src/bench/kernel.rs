//! Kernel-side cost: `kernel.bpf_stats_enabled`, and the slowdown of a pinned
//! `perf bench sched pipe` with the daemon running against not running.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{
    cgroups::TaskCgroup,
    cleanup,
    daemon::{Daemon, Source},
    measure::bpf_stats_enabled,
    workload::in_cgroup,
};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Sets `kernel.bpf_stats_enabled` and puts the previous value back on drop (or on a
/// signal, through the cleanup registry).
pub struct BpfStats {
    path: PathBuf,
    original: String,
}

impl BpfStats {
    pub fn set(on: bool) -> Result<Self> {
        let path = PathBuf::from(BPF_STATS);
        let original = fs::read_to_string(&path).context(BPF_STATS)?;
        cleanup::add_restore(&path, &original);
        fs::write(&path, if on { "1" } else { "0" }).context(BPF_STATS)?;
        Ok(Self { path, original })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.original);
        cleanup::remove_restore(&self.path);
    }
}

#[derive(Clone, Debug, Default)]
pub struct Slowdown {
    pub loops: u64,
    /// usecs/op of each run, per arm.
    pub none: Vec<f64>,
    pub ebpf: Vec<f64>,
    pub procfs: Vec<f64>,
    /// Whether bpf_stats was found on during any run (someone else turned it on).
    pub stats_seen_on: bool,
}

/// `taskset -c 1 perf bench sched pipe -l <loops>` in the task's cgroup: usecs/op.
pub fn pinned_pipe(task: &TaskCgroup, loops: u64) -> Result<f64> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "perf", "bench", "sched", "pipe", "-l"])
        .arg(loops.to_string());
    in_cgroup(&mut cmd, &task.procs_files())?;
    let out = cmd.output().context("running perf bench sched pipe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "perf bench sched pipe failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_usecs_per_op(&text).with_context(|| format!("no usecs/op in perf's output: {text}"))
}

pub fn parse_usecs_per_op(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("usecs/op"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Rounds of: no daemon / eBPF daemon / procfs daemon (the order rotating each round),
/// each arm one pinned pipe run, with bpf_stats off.
pub fn pipe_slowdown(
    binary: &Path,
    task: &TaskCgroup,
    rounds: usize,
    loops: u64,
    interval: Duration,
    progress: &dyn Fn(&str),
) -> Result<Slowdown> {
    let _stats = BpfStats::set(false)?;
    let mut result = Slowdown {
        loops,
        ..Slowdown::default()
    };
    // One unmeasured run to warm caches and the page cache for perf.
    pinned_pipe(task, loops / 4)?;
    let arms = [None, Some(Source::Ebpf), Some(Source::Procfs)];
    for round in 0..rounds {
        for k in 0..arms.len() {
            let arm = arms[(round + k) % arms.len()];
            let daemon = match arm {
                Some(source) => {
                    let d = Daemon::start(binary, source, interval)?;
                    d.wait_cycles(2)?;
                    Some(d)
                }
                None => None,
            };
            result.stats_seen_on |= bpf_stats_enabled();
            let usecs = pinned_pipe(task, loops)?;
            result.stats_seen_on |= bpf_stats_enabled();
            if let Some(d) = daemon {
                d.stop();
            }
            let name = arm.map_or("no daemon", Source::as_str);
            progress(&format!(
                "pipe slowdown round {}/{rounds}: {name}: {usecs:.3} usecs/op",
                round + 1
            ));
            match arm {
                None => result.none.push(usecs),
                Some(Source::Ebpf) => result.ebpf.push(usecs),
                Some(Source::Procfs) => result.procfs.push(usecs),
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_output() {
        let text = "# Running 'sched/pipe' benchmark:\n\n     Total time: 1.084 [sec]\n\n      10.848950 usecs/op\n          92174 ops/sec\n";
        assert_eq!(super::parse_usecs_per_op(text), Some(10.84895));
    }
}
