//! Kernel-side cost: `kernel.bpf_stats_enabled`, and the slowdown of a pinned
//! `perf bench sched pipe` with the daemon running against not running (and against an
//! empty program on the same tracepoint, the floor).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cgroups::TaskCgroup,
    cleanup,
    daemon::{Daemon, Source},
    measure::bpf_stats_enabled,
    process::ChildGuard,
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
    /// Only an empty sched_switch program attached: the tracepoint's own cost.
    pub empty: Vec<f64>,
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

/// What runs beside the pinned pipe in one arm of the slowdown measurement.
#[derive(Clone, Copy, Debug)]
enum PipeArm {
    Nothing,
    /// `nomad-collector --empty-probe`: an empty program on sched_switch, no daemon.
    EmptyProbe,
    Daemon(Source),
}

impl PipeArm {
    fn name(self) -> &'static str {
        match self {
            PipeArm::Nothing => "no daemon",
            PipeArm::EmptyProbe => "empty sched_switch program",
            PipeArm::Daemon(source) => source.as_str(),
        }
    }
}

/// Starts `nomad-collector --empty-probe` and waits until its program is attached.
fn start_empty_probe(binary: &Path) -> Result<ChildGuard> {
    let log = std::env::temp_dir().join("nomad-collector-bench-empty-probe.log");
    let file = fs::File::create(&log)?;
    let mut child = ChildGuard::spawn(
        Command::new(binary)
            .arg("--empty-probe")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file)),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("program attached") {
            return Ok(child);
        }
        if let Some(status) = child.try_wait() {
            bail!("nomad-collector --empty-probe exited ({status}): {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nomad-collector --empty-probe did not attach within 60 s")
}

/// Rounds of: nothing / an empty sched_switch program / eBPF daemon / procfs daemon (the
/// order rotating each round), each arm one pinned pipe run, with bpf_stats off.
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
    let arms = [
        PipeArm::Nothing,
        PipeArm::EmptyProbe,
        PipeArm::Daemon(Source::Ebpf),
        PipeArm::Daemon(Source::Procfs),
    ];
    for round in 0..rounds {
        for k in 0..arms.len() {
            let arm = arms[(round + k) % arms.len()];
            // Held for the run, stopped when dropped.
            let (mut daemon, mut probe) = (None, None);
            match arm {
                PipeArm::Nothing => {}
                PipeArm::EmptyProbe => probe = Some(start_empty_probe(binary)?),
                PipeArm::Daemon(source) => {
                    let d = Daemon::start(binary, source, interval)?;
                    d.wait_cycles(2)?;
                    daemon = Some(d);
                }
            }
            result.stats_seen_on |= bpf_stats_enabled();
            let usecs = pinned_pipe(task, loops)?;
            result.stats_seen_on |= bpf_stats_enabled();
            if let Some(d) = daemon.take() {
                d.stop();
            }
            if let Some(mut p) = probe.take() {
                p.stop(Duration::from_secs(15));
            }
            progress(&format!(
                "pipe slowdown round {}/{rounds}: {}: {usecs:.3} usecs/op",
                round + 1,
                arm.name()
            ));
            match arm {
                PipeArm::Nothing => result.none.push(usecs),
                PipeArm::EmptyProbe => result.empty.push(usecs),
                PipeArm::Daemon(Source::Procfs) => result.procfs.push(usecs),
                PipeArm::Daemon(_) => result.ebpf.push(usecs),
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
