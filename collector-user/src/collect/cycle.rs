//! One collection cycle: the task set brought up to date, the kernel read, every task
//! sampled, and the snapshot made of it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::{
    clock::{monotonic_ns, thread_cpu_time, unix_ns},
    rates::total_ticks,
    sampling::{refresh_cgroup_figures, task_cpu, Sources, Vanished},
    tasks::{Members, TaskEntry},
    Collector,
};
use crate::snapshot::{AllocEntry, AllocInfo, Health, Snapshot, TaskInfo};

impl Collector {
    /// What is served before the first cycle ends: no allocation yet, but the collector's
    /// own health (which source, why not eBPF, what is attached) is already known, so a
    /// scrape right after start-up never reports the default source.
    pub fn startup_snapshot(&self) -> Snapshot {
        Snapshot {
            health: self.health(Duration::ZERO, Duration::ZERO),
            ..Snapshot::default()
        }
    }

    /// One collection cycle.
    pub fn cycle(&mut self) -> Snapshot {
        let started = Instant::now();
        let cpu_before = thread_cpu_time();
        let mut errors = 0u64;

        let scan_ns = monotonic_ns();
        let attribution = self.ebpf.as_ref().map(|e| e.attribution().clone());
        self.tasks.refresh(
            self.discovery.as_mut(),
            &self.settings.allocations,
            attribution.as_ref(),
            // The first cycle counts from now (processes already running start at 0);
            // later ones from the previous scan, so a task's first children are counted.
            if self.cycles == 0 {
                scan_ns
            } else {
                self.previous_scan_ns
            },
        );
        self.previous_scan_ns = scan_ns;

        let kernel_read = match self.ebpf.as_mut() {
            Some(ebpf) => {
                if self.synced_generation != Some(self.tasks.generation()) {
                    let wanted = self.tasks.attribution_ids();
                    match ebpf.sync(&wanted) {
                        Ok(full) => {
                            self.untrackable = full;
                            // Cgroups that did not fit are tried again next cycle.
                            if self.untrackable.is_empty() {
                                self.synced_generation = Some(self.tasks.generation());
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            warn!(error = %e, "updating the tracked cgroups failed");
                        }
                    }
                }
                let read = match ebpf.read(&mut self.kernel_cpu) {
                    Ok(()) => true,
                    Err(e) => {
                        errors += 1;
                        warn!(error = %e, "reading the eBPF programs failed; CPU figures are 0 this cycle");
                        false
                    }
                };
                if ebpf.samples_processes() {
                    if let Err(e) = ebpf.sample_processes() {
                        errors += 1;
                        warn!(error = %e, "the task iterator failed; processes are read from /proc this cycle");
                    }
                }
                read
            }
            None => false,
        };
        let at = Instant::now();
        let timestamp = unix_ns();
        let (total_compute, cores) = self.compute_capacity();
        self.ticks_per_percent = total_ticks(1.0, total_compute, cores);

        self.scratch.sampled = 0;
        let mut vanished = Vec::new();
        let mut sources = Sources {
            ebpf: self.ebpf.as_mut(),
            procs: &mut self.procs,
            scratch: &mut self.scratch,
        };
        for (key, task) in self.tasks.tasks.iter_mut() {
            let kernel = (kernel_read
                && !task.attribution.is_empty()
                && !task
                    .attribution
                    .iter()
                    .any(|id| self.untrackable.contains(id)))
            .then_some(&self.kernel_cpu);
            let cpu = match task_cpu(task, kernel, &mut sources, at) {
                Ok(cpu) => cpu,
                Err(Vanished) => {
                    vanished.push(key.clone());
                    continue;
                }
            };
            let cgroup_counters = sources
                .ebpf
                .as_deref()
                .filter(|e| kernel.is_some() && e.has_processes())
                .zip(task.counter_cgroups)
                .and_then(|(e, c)| e.cgroup_counters_in(c.id));
            match refresh_cgroup_figures(task, cgroup_counters.as_ref(), self.cycles, at) {
                Ok(()) => {}
                Err(true) => {
                    vanished.push(key.clone());
                    continue;
                }
                Err(false) => errors += 1,
            }
            task.set_figures(cpu.rates, cpu.total_ns, cpu.pids, timestamp);
        }
        for key in vanished {
            debug!(alloc_id = %key.0, task = %key.1, "task cgroup vanished during the cycle");
            self.tasks.remove(&key);
        }

        let host = self
            .host
            .sample(&self.settings.data_dirs, self.settings.cpu_total_compute);
        self.cycles += 1;
        if errors > 0 {
            self.cycle_errors += 1;
        }
        let allocations = self.allocation_entries();
        let health = self.health(
            started.elapsed(),
            thread_cpu_time().saturating_sub(cpu_before),
        );
        Snapshot {
            taken_at_unix_ns: timestamp,
            allocations,
            host,
            health,
            ..Snapshot::default()
        }
    }

    /// Every allocation's snapshot entry.
    fn allocation_entries(&self) -> HashMap<Arc<str>, Arc<AllocEntry>> {
        let mut out = HashMap::new();
        // The tasks are ordered by (allocation, task): each allocation's are a run.
        let tasks: Vec<&TaskEntry> = self.tasks.tasks.values().collect();
        for group in tasks.chunk_by(|a, b| a.alloc_id == b.alloc_id) {
            if let Some(entry) = self.entry_of(group) {
                out.insert(Arc::clone(&group[0].alloc_id), Arc::new(entry));
            }
        }
        out
    }

    /// The entry of the allocation made of `tasks` (all its tasks, at least one). Nomad's
    /// types are built from the tasks' figures only when something reads them.
    fn entry_of(&self, tasks: &[&TaskEntry]) -> Option<AllocEntry> {
        let first = tasks.first()?;
        let mut info = AllocInfo {
            id: Arc::clone(&first.alloc_id),
            origin: first.origin.clone(),
            job: first.meta.job.clone(),
            namespace: first.meta.namespace.clone(),
            task_group: first.meta.task_group.clone(),
            tasks: Vec::with_capacity(tasks.len()),
        };
        let mut figures = Vec::with_capacity(tasks.len());
        let wait_measured = self
            .ebpf
            .as_ref()
            .is_some_and(|e| e.features().cpu_wait.enabled);
        for task in tasks {
            let Some(f) = &task.figures else {
                continue;
            };
            info.tasks.push(TaskInfo {
                name: Arc::clone(&task.name),
                cgroups: task.cgroup_paths.clone(),
                pids: match &task.members {
                    Members::Pids(p) => p.clone(),
                    Members::Cgroups(_) => Vec::new(),
                },
                cpu_total_ns: task.cpu_total_ns,
                extra: task.extra_figures(wait_measured),
            });
            figures.push((Arc::clone(&task.name), Arc::clone(f)));
        }
        if figures.is_empty() {
            return None;
        }
        let ticks_per_percent = self.ticks_per_percent;
        Some(AllocEntry::lazy(info, move |with_pids| {
            figures
                .iter()
                .map(|(name, f)| (name.to_string(), f.usage(ticks_per_percent, with_pids)))
                .collect()
        }))
    }

    /// (TotalCompute MHz, logical cores) for TotalTicks.
    fn compute_capacity(&self) -> (f64, u32) {
        let cores = self.host.frequencies().len().max(1) as u32;
        let total = self
            .settings
            .cpu_total_compute
            .unwrap_or_else(|| self.host.total_compute_mhz());
        (total as f64, cores)
    }

    fn health(&self, took: Duration, cpu: Duration) -> Health {
        let mut health = Health {
            source: self.source_kind(),
            fallback_reason: self.fallback_reason.clone(),
            cycle_duration: took,
            cycle_cpu: cpu,
            cycles: self.cycles,
            cycle_errors: self.cycle_errors,
            processes_sampled: self.scratch.sampled,
            control_files_open: crate::cgroup::control_files::kept() as u64,
            ..Health::default()
        };
        if let Some(ebpf) = &self.ebpf {
            let features = ebpf.features();
            health.programs_attached = 1
                + u32::from(features.checkpoint.enabled)
                + u32::from(features.process_iter.enabled);
            health.kernel_features = Some(features.clone());
            health.kernel = ebpf.kernel_stats();
            (
                health.sched_switch_run_count,
                health.sched_switch_run_time_ns,
            ) = ebpf.program_run_stats().sched_switch;
            health.tracked_cgroups = ebpf.tracked() as u64;
            health.max_tracked_cgroups = u64::from(ebpf.max_tracked());
            health.tracked_cgroups_full = ebpf.full_events();
            health.checkpoint_failures = ebpf.checkpoint_failures();
            (health.threads_reported, health.threads_carried) = ebpf.thread_records();
        }
        health
    }
}
