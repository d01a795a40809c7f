//! Every metric family `/v1/metrics` serves, in one table per subject: its Prometheus
//! name, type, unit and help, its go-metrics (JSON) name, and how its value is read
//! from a snapshot. Both renderers ([`super::json`], [`super::exposition`]) walk these
//! tables, so the two forms cannot drift apart.
//!
//! Per-task families keep Nomad's own names (`nomad_client_allocs_*`), which Nomad
//! users' dashboards and alerts query; Nomad exposes them as gauges, the cumulative ones
//! (`throttled_time`, `throttled_periods`) included, so they stay gauges here and this
//! collector adds proper counters beside them (`nomad_collector_task_*_total`).

use prometheus_client::{metrics::MetricType, registry::Unit};

use crate::{
    model::{measured, CpuStats, MemoryStats},
    snapshot::{Health, PressureSeconds, TaskInfo, TaskPressure},
};

/// What a Prometheus family is: a counter's samples end in `_total` (the encoder adds
/// it), a gauge's do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// A Prometheus metric family.
#[derive(Debug)]
pub struct Family {
    /// Without the unit and `_total` suffixes, which the encoder appends.
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

impl Family {
    const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            unit: None,
            help,
        }
    }

    const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            unit: None,
            help,
        }
    }

    /// A gauge in seconds: the encoder appends `_seconds`.
    const fn seconds_gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            unit: Some(Unit::Seconds),
            help,
        }
    }

    /// A counter in seconds: `_seconds_total`.
    const fn seconds_counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            unit: Some(Unit::Seconds),
            help,
        }
    }

    pub fn metric_type(&self) -> MetricType {
        match self.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        }
    }

    /// The name of the family's samples, as a PromQL query names them.
    pub fn sample_name(&self) -> String {
        let mut name = self.name.to_owned();
        if let Some(unit) = &self.unit {
            name.push('_');
            name.push_str(unit.as_str());
        }
        if self.kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }
}

/// The figures of one task that the per-task families read.
pub struct TaskFigures<'a> {
    pub cpu: &'a CpuStats,
    pub memory: &'a MemoryStats,
    /// The task's entry in the allocation's task list: its cumulative figures (`None`:
    /// the task is not in the list, which a snapshot never produces but a reader must not
    /// assume).
    pub info: Option<&'a TaskInfo>,
}

impl TaskFigures<'_> {
    fn pressure(
        &self,
        resource: fn(&TaskPressure) -> Option<PressureSeconds>,
        full: bool,
    ) -> Option<f64> {
        let totals = resource(self.info?.extra.pressure.as_ref()?)?;
        if full {
            totals.full_seconds
        } else {
            Some(totals.some_seconds)
        }
    }

    fn cpu(&self, needs: &str, value: fn(&CpuStats) -> f64) -> Option<f64> {
        self.cpu.measured.contains(&needs).then(|| value(self.cpu))
    }

    fn memory(&self, needs: &str, value: fn(&MemoryStats) -> u64) -> Option<f64> {
        self.memory
            .measured
            .contains(&needs)
            .then(|| value(self.memory) as f64)
    }
}

/// A per-task family: `None` from `value` when the task's `Measured` lacks the figure,
/// so that an unmeasured 0 is never exported as if it were read.
pub struct TaskFamily {
    pub family: Family,
    /// go-metrics name in the JSON form; `None`: Prometheus only.
    pub json: Option<&'static str>,
    pub value: fn(&TaskFigures<'_>) -> Option<f64>,
}

const NS_PER_SEC: f64 = 1e9;

/// How many per-task families there are.
pub const TASK_FAMILIES: usize = 27;

pub static TASK: [TaskFamily; TASK_FAMILIES] = [
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_total_percent",
            "CPU used by the task over the last interval, in percent of one core (Nomad's Percent).",
        ),
        json: Some("nomad.client.allocs.cpu.total_percent"),
        value: |t| t.cpu(measured::PERCENT, |c| c.percent),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_system",
            "Kernel-mode share of the task's CPU over the last interval, in percent of one core.",
        ),
        json: Some("nomad.client.allocs.cpu.system"),
        value: |t| t.cpu(measured::SYSTEM_MODE, |c| c.system_mode),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_user",
            "User-mode share of the task's CPU over the last interval, in percent of one core.",
        ),
        json: Some("nomad.client.allocs.cpu.user"),
        value: |t| t.cpu(measured::USER_MODE, |c| c.user_mode),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_throttled_time",
            "Time the task's cgroup was throttled by its CPU quota, in nanoseconds since the cgroup was created (Nomad's cumulative gauge; see nomad_collector_task_cpu_throttled_seconds_total).",
        ),
        json: Some("nomad.client.allocs.cpu.throttled_time"),
        value: |t| t.cpu(measured::THROTTLED_TIME, |c| c.throttled_time as f64),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_throttled_periods",
            "CPU quota periods in which the task's cgroup was throttled, since the cgroup was created (Nomad's cumulative gauge; see nomad_collector_task_cpu_throttled_periods_total).",
        ),
        json: Some("nomad.client.allocs.cpu.throttled_periods"),
        value: |t| t.cpu(measured::THROTTLED_PERIODS, |c| c.throttled_periods as f64),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_cpu_total_ticks",
            "CPU used by the task over the last interval, in MHz (Nomad's TotalTicks).",
        ),
        // Derived from Percent, so present exactly when Percent is.
        json: Some("nomad.client.allocs.cpu.total_ticks"),
        value: |t| t.cpu(measured::PERCENT, |c| c.total_ticks),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_rss",
            "Anonymous memory of the task, in bytes (cgroup v1 total_rss, v2 anon).",
        ),
        json: Some("nomad.client.allocs.memory.rss"),
        value: |t| t.memory(measured::RSS, |m| m.rss),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_cache",
            "Page cache charged to the task, in bytes.",
        ),
        json: Some("nomad.client.allocs.memory.cache"),
        value: |t| t.memory(measured::CACHE, |m| m.cache),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_swap",
            "Swap used by the task, in bytes (swap alone, unlike Nomad's memory+swap).",
        ),
        json: Some("nomad.client.allocs.memory.swap"),
        value: |t| t.memory(measured::SWAP, |m| m.swap),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_mapped_file",
            "Memory-mapped file pages of the task, in bytes.",
        ),
        json: Some("nomad.client.allocs.memory.mapped_file"),
        value: |t| t.memory(measured::MAPPED_FILE, |m| m.mapped_file),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_usage",
            "Memory charged to the task's cgroup, in bytes (v1 memory.usage_in_bytes, v2 memory.current).",
        ),
        json: Some("nomad.client.allocs.memory.usage"),
        value: |t| t.memory(measured::USAGE, |m| m.usage),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_max_usage",
            "Highest memory charged to the task's cgroup, in bytes (v1 memory.max_usage_in_bytes, v2 memory.peak).",
        ),
        json: Some("nomad.client.allocs.memory.max_usage"),
        value: |t| t.memory(measured::MAX_USAGE, |m| m.max_usage),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_kernel_usage",
            "Kernel memory charged to the task's cgroup, in bytes.",
        ),
        json: Some("nomad.client.allocs.memory.kernel_usage"),
        value: |t| t.memory(measured::KERNEL_USAGE, |m| m.kernel_usage),
    },
    TaskFamily {
        family: Family::gauge(
            "nomad_client_allocs_memory_kernel_max_usage",
            "Highest kernel memory charged to the task's cgroup, in bytes.",
        ),
        json: Some("nomad.client.allocs.memory.kernel_max_usage"),
        value: |t| t.memory(measured::KERNEL_MAX_USAGE, |m| m.kernel_max_usage),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_cpu_total",
            "CPU time spent in the task's cgroups since the collector began following it, exited processes included; rate() of it is cores in use.",
        ),
        json: Some("nomad_collector.task.cpu_total_seconds"),
        value: |t| t.info.map(|i| i.cpu_total_ns as f64 / NS_PER_SEC),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_cpu_wait",
            "Time the task's threads waited on a run queue (sched_info.run_delay, counted in the kernel at each context switch, exited processes included); rate() of it is the threads kept waiting. Absent where the kernel does not keep it.",
        ),
        json: None,
        value: |t| Some(t.info?.extra.cpu_wait?.total_seconds),
    },
    TaskFamily {
        family: Family::counter(
            "nomad_collector_task_processes_started",
            "Processes started in the task's cgroups since the collector began following it, counted in the kernel (those shorter than an interval included).",
        ),
        json: None,
        value: |t| Some(t.info?.extra.processes?.started as f64),
    },
    TaskFamily {
        family: Family::counter(
            "nomad_collector_task_processes_exited",
            "Processes of the task that exited since the collector began following it, counted in the kernel at their final context switch.",
        ),
        json: None,
        value: |t| Some(t.info?.extra.processes?.exited as f64),
    },
    TaskFamily {
        family: Family::counter(
            "nomad_collector_task_oom_kills",
            "Processes the kernel's OOM killer killed in the task's memory cgroup (v2 memory.events, v1 memory.oom_control).",
        ),
        json: None,
        value: |t| t.info?.extra.oom_kills.map(|n| n as f64),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_cpu_pressure_some",
            "Time in which some of the task's threads were stalled waiting for CPU (cgroup v2 cpu.pressure).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.cpu, false),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_cpu_pressure_full",
            "Time in which all of the task's non-idle threads were stalled waiting for CPU (cgroup v2 cpu.pressure, 5.13+).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.cpu, true),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_memory_pressure_some",
            "Time in which some of the task's threads were stalled on memory (cgroup v2 memory.pressure).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.memory, false),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_memory_pressure_full",
            "Time in which all of the task's non-idle threads were stalled on memory (cgroup v2 memory.pressure).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.memory, true),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_io_pressure_some",
            "Time in which some of the task's threads were stalled on I/O (cgroup v2 io.pressure).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.io, false),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_io_pressure_full",
            "Time in which all of the task's non-idle threads were stalled on I/O (cgroup v2 io.pressure).",
        ),
        json: None,
        value: |t| t.pressure(|p| p.io, true),
    },
    TaskFamily {
        family: Family::seconds_counter(
            "nomad_collector_task_cpu_throttled",
            "Time the task's cgroup was throttled by its CPU quota; rate() of it is the share of time throttled.",
        ),
        json: None,
        value: |t| {
            t.cpu(measured::THROTTLED_TIME, |c| {
                c.throttled_time as f64 / NS_PER_SEC
            })
        },
    },
    TaskFamily {
        family: Family::counter(
            "nomad_collector_task_cpu_throttled_periods",
            "CPU quota periods in which the task's cgroup was throttled.",
        ),
        json: None,
        value: |t| t.cpu(measured::THROTTLED_PERIODS, |c| c.throttled_periods as f64),
    },
];

/// The family that says which source measures CPU (value 1, labels `source` and, after
/// a fallback, `fallback_reason`).
pub static SOURCE: Family = Family::gauge(
    "nomad_collector_source",
    "Which source measures CPU: always 1, labelled source=\"ebpf\" or \"procfs\" (with fallback_reason when eBPF could not load).",
);
pub const SOURCE_JSON: &str = "nomad_collector.source";

/// The number of allocations is not a [`Health`] field: the snapshot counts them.
pub struct HealthInput<'a> {
    pub health: &'a Health,
    pub allocations: usize,
}

/// A label-less family about the collector itself.
pub struct HealthFamily {
    pub family: Family,
    pub json: &'static str,
    pub value: fn(&HealthInput<'_>) -> f64,
}

/// 1 where the kernel runs `feature`, 0 where it was turned off (or no eBPF at all).
fn feature_on(h: &HealthInput<'_>, feature: &str) -> f64 {
    h.health.kernel_features.as_ref().map_or(0.0, |f| {
        f.optional()
            .iter()
            .find(|(name, _)| *name == feature)
            .map_or(0.0, |(_, f)| f64::from(u8::from(f.enabled)))
    })
}

pub static HEALTH: [HealthFamily; 29] = [
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_programs_attached",
            "eBPF programs attached (0 on the /proc source).",
        ),
        json: "nomad_collector.programs_attached",
        value: |h| f64::from(h.health.programs_attached),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_allocations",
            "Allocations the collector sees.",
        ),
        json: "nomad_collector.allocations",
        value: |h| h.allocations as f64,
    },
    HealthFamily {
        family: Family::seconds_gauge(
            "nomad_collector_cycle",
            "Wall time of the last collection cycle.",
        ),
        json: "nomad_collector.cycle_seconds",
        value: |h| h.health.cycle_duration.as_secs_f64(),
    },
    HealthFamily {
        family: Family::seconds_gauge(
            "nomad_collector_cycle_cpu",
            "CPU time (user + system) the collection thread used in the last cycle.",
        ),
        json: "nomad_collector.cycle_cpu_seconds",
        value: |h| h.health.cycle_cpu.as_secs_f64(),
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_cycles",
            "Collection cycles completed since the daemon started.",
        ),
        json: "nomad_collector.cycles",
        value: |h| h.health.cycles as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_cycle_errors",
            "Collection cycles in which something failed (each is logged).",
        ),
        json: "nomad_collector.cycle_errors",
        value: |h| h.health.cycle_errors as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_processes_sampled",
            "Processes of every task sampled in the last cycle (Pids).",
        ),
        json: "nomad_collector.processes_sampled",
        value: |h| h.health.processes_sampled as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_threads_reported",
            "Threads the last task iterator pass reported: those that ran since their last record, and every thread of the tasks read in full.",
        ),
        json: "nomad_collector.threads_reported",
        value: |h| h.health.threads_reported as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_threads_carried",
            "Threads that did not run since their last record, whose record was carried into the last cycle instead of read again.",
        ),
        json: "nomad_collector.threads_carried",
        value: |h| h.health.threads_carried as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_control_files_open",
            "Cgroup control files kept open to be re-read every interval.",
        ),
        json: "nomad_collector.control_files_open",
        value: |h| h.health.control_files_open as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_tracked_cgroups",
            "Cgroups in the kernel's tracked-cgroups map.",
        ),
        json: "nomad_collector.tracked_cgroups",
        value: |h| h.health.tracked_cgroups as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_tracked_cgroups_max",
            "Capacity of the tracked-cgroups map (ebpf.max_tracked_cgroups).",
        ),
        json: "nomad_collector.tracked_cgroups_max",
        value: |h| h.health.max_tracked_cgroups as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_tracked_cgroups_full",
            "Cgroups that could not be tracked because the map was full; their tasks are measured per process.",
        ),
        json: "nomad_collector.tracked_cgroups_full",
        value: |h| h.health.tracked_cgroups_full as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_checkpoint_failures",
            "CPUs on which accounting the running thread before a read failed.",
        ),
        json: "nomad_collector.checkpoint_failures",
        value: |h| h.health.checkpoint_failures as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_exits_folded",
            "Exiting threads of tracked cgroups whose final CPU time was accounted.",
        ),
        json: "nomad_collector.kernel.exits_folded",
        value: |h| h.health.kernel.exits_folded as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_exits_unseen",
            "Threads that exited before ever being accounted and had started before tracking began (their earlier time is not counted).",
        ),
        json: "nomad_collector.kernel.exits_unseen",
        value: |h| h.health.kernel.exits_unseen as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_storage_failed",
            "Threads for which task storage could not be allocated (their time since last accounted is lost).",
        ),
        json: "nomad_collector.kernel.storage_failed",
        value: |h| h.health.kernel.storage_failed as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_samples_deferred",
            "Per-process iterator samples deferred to the next read because its buffer was full (nothing is lost).",
        ),
        json: "nomad_collector.kernel.samples_deferred",
        value: |h| h.health.kernel.samples_deferred as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_lookups",
            "Context switches that looked their cgroup up in the tracked-cgroups map (the slow path).",
        ),
        json: "nomad_collector.kernel.lookups",
        value: |h| h.health.kernel.lookups as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_ran_set_slots",
            "Task cgroups the cgroup walk read from their set of threads that ran (only those threads looked at).",
        ),
        json: "nomad_collector.kernel.ran_set_slots",
        value: |h| h.health.kernel.ran_set_slots as f64,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_kernel_ran_set_overflows",
            "Task cgroups where more threads ran than their set holds, walked thread by thread instead.",
        ),
        json: "nomad_collector.kernel.ran_set_overflows",
        value: |h| h.health.kernel.ran_set_overflows as f64,
    },
    HealthFamily {
        family: Family::seconds_counter(
            "nomad_collector_bpf_sched_switch_run",
            "Kernel CPU time spent in the sched_switch program (counted while kernel.bpf_stats_enabled=1).",
        ),
        json: "nomad_collector.bpf.sched_switch_run_time_ns",
        value: |h| h.health.sched_switch_run_time_ns as f64 / NS_PER_SEC,
    },
    HealthFamily {
        family: Family::counter(
            "nomad_collector_bpf_sched_switch_runs",
            "Runs of the sched_switch program (counted while kernel.bpf_stats_enabled=1).",
        ),
        json: "nomad_collector.bpf.sched_switch_run_count",
        value: |h| h.health.sched_switch_run_count as f64,
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_checkpoint_enabled",
            "1 where the checkpoint program runs (running threads counted up to each read), 0 where this kernel refused it (see kernel_features in the JSON form).",
        ),
        json: "nomad_collector.ebpf.checkpoint_enabled",
        value: |h| feature_on(h, "checkpoint"),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_process_iter_enabled",
            "1 where the per-process task iterator runs, 0 where per-process figures come from /proc (kernels before 6.1).",
        ),
        json: "nomad_collector.ebpf.process_iter_enabled",
        value: |h| feature_on(h, "process_iter"),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_cgroup_walk_enabled",
            "1 where each pass walks only the tracked cgroups' threads (css task iterator, 6.7+), 0 where it walks every task on the host.",
        ),
        json: "nomad_collector.ebpf.cgroup_walk_enabled",
        value: |h| feature_on(h, "cgroup_walk"),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_cgroup_counters_enabled",
            "1 where the task iterator reads the task cgroups' memory and throttling counters in the kernel, 0 where they come from the control files.",
        ),
        json: "nomad_collector.ebpf.cgroup_counters_enabled",
        value: |h| feature_on(h, "cgroup_counters"),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_cpu_wait_enabled",
            "1 where run-queue wait is counted per task, 0 where the kernel keeps none (no CONFIG_SCHED_INFO).",
        ),
        json: "nomad_collector.ebpf.cpu_wait_enabled",
        value: |h| feature_on(h, "cpu_wait"),
    },
    HealthFamily {
        family: Family::gauge(
            "nomad_collector_ebpf_thread_hash",
            "1 where threads' state is kept in a hash map keyed by task (kernels without task storage, 5.10), 0 with task storage or no eBPF.",
        ),
        json: "nomad_collector.ebpf.thread_hash",
        value: |h| {
            h.health.kernel_features.as_ref().map_or(0.0, |f| {
                f64::from(u8::from(
                    f.thread_state == crate::kernel::ThreadStateStore::Hash,
                ))
            })
        },
    },
];

/// The sample name of every family served, in exposition order.
pub fn sample_names() -> impl Iterator<Item = String> {
    TASK.iter()
        .map(|t| &t.family)
        .chain(std::iter::once(&SOURCE))
        .chain(HEALTH.iter().map(|h| &h.family))
        .map(Family::sample_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_names_follow_the_conventions() {
        let names: Vec<String> = sample_names().collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "duplicate family in {names:?}");
        assert!(names.contains(&"nomad_collector_task_cpu_total_seconds_total".to_owned()));
        assert!(names.contains(&"nomad_collector_bpf_sched_switch_run_seconds_total".to_owned()));
        for family in TASK
            .iter()
            .map(|t| &t.family)
            .chain(HEALTH.iter().map(|h| &h.family))
        {
            let name = family.sample_name();
            // The encoder adds the suffixes: a table entry that carries one would have it
            // twice.
            assert!(!name.ends_with("_total_total"), "{name}");
            assert!(!family.name.ends_with("_seconds"), "{name}");
            assert_eq!(name.ends_with("_total"), family.kind == Kind::Counter);
            assert!(!name.ends_with("_count") && !name.contains("_ns"), "{name}");
            assert!(family.help.ends_with('.'), "{name}: help is a sentence");
        }
    }
}
