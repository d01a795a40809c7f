//! What the running kernel lets the programs do, found by trying each at start-up, and
//! how a refusal is told to the operator.

use aya::programs::ProgramError;
use serde::Serialize;

/// Where the context-switch program keeps each thread's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadStateStore {
    /// `BPF_MAP_TYPE_TASK_STORAGE` (tracing programs, 5.11+).
    TaskStorage,
    /// A preallocated hash map keyed by task, entries deleted at exit (5.10).
    Hash,
}

impl ThreadStateStore {
    /// The name of the embedded object built for this store and of its pin folder.
    pub fn build_name(self) -> &'static str {
        match self {
            Self::TaskStorage => "task-storage",
            Self::Hash => "thread-hash",
        }
    }
}

/// Which store to use: `auto` probes the kernel for task storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadStateChoice {
    Auto,
    Only(ThreadStateStore),
}

/// One optional part of the kernel side: on, or off with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub enabled: bool,
    /// Why it is off (the verifier's or the kernel's one-line answer); `None` when on.
    pub reason: Option<String>,
}

impl Feature {
    pub fn on() -> Self {
        Self {
            enabled: true,
            reason: None,
        }
    }

    pub fn off(reason: impl Into<String>) -> Self {
        Self {
            enabled: false,
            reason: Some(reason.into()),
        }
    }
}

/// What runs in the kernel. CPU accounting at context switches is not listed: without
/// it there is no kernel side at all (the daemon falls back to /proc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelFeatures {
    pub thread_state: ThreadStateStore,
    /// Accounting the threads running on each CPU up to now before each read; off, a
    /// running thread's current slice is counted at its next switch.
    pub checkpoint: Feature,
    /// The per-process task iterator; off, per-process figures come from /proc.
    pub process_iter: Feature,
    /// The per-process records read by walking only the tracked cgroups' threads (a
    /// cgroup iterator with the css task iterator, 6.7+); off, by walking every task on
    /// the host (`process_iter`).
    pub cgroup_walk: Feature,
    /// Cgroup memory and throttling counters read by the task iterator from the
    /// kernel's structs; off, they come from the single-value control files.
    pub cgroup_counters: Feature,
    /// Run-queue wait per task (`sched_info.run_delay`); off, the figure is absent.
    pub cpu_wait: Feature,
}

impl KernelFeatures {
    /// (name, feature) pairs, for logs and metrics.
    pub fn optional(&self) -> [(&'static str, &Feature); 5] {
        [
            ("checkpoint", &self.checkpoint),
            ("process_iter", &self.process_iter),
            ("cgroup_walk", &self.cgroup_walk),
            ("cgroup_counters", &self.cgroup_counters),
            ("cpu_wait", &self.cpu_wait),
        ]
    }
}

/// A program the kernel refused: the one line that says why, and the whole verifier log
/// when there is one.
pub struct Refusal {
    pub reason: String,
    pub log: Option<String>,
}

impl Refusal {
    pub fn of(program: &str, error: &ProgramError) -> Self {
        match error {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                let log = format!("{verifier_log:?}");
                let reason = match verifier_reason(&log) {
                    Some(line) => format!("{program}: verifier: {line} ({io_error})"),
                    None => format!("{program}: {io_error}"),
                };
                Self {
                    reason,
                    log: (!log.trim().is_empty()).then_some(log),
                }
            }
            other => Self {
                reason: format!("{program}: {other}"),
                log: None,
            },
        }
    }
}

/// The line of a verifier log that says why it rejected the program: the last one that
/// is not a statistic or a trailer. (The first lines can be notes that do not fail the
/// load, such as a BTF argument-type mismatch of the main function.)
pub fn verifier_reason(log: &str) -> Option<&str> {
    const NOT_REASONS: [&str; 5] = [
        "processed ",
        "verification time",
        "stack depth",
        "-- END PROG LOAD LOG --",
        "max_states_per_insn",
    ];
    log.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rfind(|l| !NOT_REASONS.iter().any(|n| l.starts_with(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_reason_is_the_last_line_before_the_statistics() {
        let log = "reg type unsupported for arg#0 function process_threads#21\n\
                   0: R1=ctx(off=0,imm=0) R10=fp0\n\
                   ; let meta = unsafe { *ctx };\n\
                   0: (79) r6 = *(u64 *)(r1 +0)\n\
                   R1 invalid mem access 'scalar'\n\
                   processed 12 insns (limit 1000000) max_states_per_insn 0 total_states 1\n\
                   \n";
        assert_eq!(verifier_reason(log), Some("R1 invalid mem access 'scalar'"));
        assert_eq!(verifier_reason("\n processed 1 insns\n"), None);
        assert_eq!(verifier_reason(""), None);
    }
}
