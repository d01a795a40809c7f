//! [`TaskCgroups`]: a task's cgroups in whichever hierarchies it has them, and the
//! mapping of their v1 or v2 files to Nomad's figures as in spec §3.

use super::{
    dir::{CgroupDir, CounterFile},
    types::{
        CpuStat, KernelMemoryCounters, KernelThrottleCounters, MemoryFigures, MemoryStat, Pressure,
        ThrottleFigures,
    },
    CgroupError,
};

/// One figure of `dir`: the counter the kernel read (`kernel`) where the control file it
/// stands for was there at the previous read (`previous` is `Some(Some(_))`), else the
/// file. A file that was absent stays absent (and is looked for again), and a task's
/// first read is from its files only. A file the kernel stands in for is closed: it is
/// not read again while the kernel's counters come (a cheap no-op once closed).
fn figure(
    dir: &CgroupDir,
    file: CounterFile,
    previous: Option<Option<u64>>,
    kernel: Option<u64>,
) -> Result<Option<u64>, CgroupError> {
    match (previous, kernel) {
        (Some(Some(_)), Some(value)) => {
            dir.close_counter(file);
            Ok(Some(value))
        }
        _ => dir.read_counter(file),
    }
}

/// One task's cgroups, in whichever hierarchies it has them. Where a task is in both v1
/// and v2 (possible on a hybrid host), v1 is read: Nomad on a hybrid host uses v1, and the
/// unified hierarchy there has no controllers enabled.
#[derive(Clone, Debug, Default)]
pub struct TaskCgroups {
    pub memory: Option<CgroupDir>,
    pub cpu: Option<CgroupDir>,
    pub cpuacct: Option<CgroupDir>,
    pub v2: Option<CgroupDir>,
}

/// The directory memory figures come from, and whether it is v1's memory controller.
enum MemoryDir<'a> {
    V1(&'a CgroupDir),
    V2(&'a CgroupDir),
}

/// `memory.stat` of `dir`, or what it gave at the previous read (`carried`, as
/// `as_stat` turns the figures back into its lines).
fn memory_stat(
    dir: &CgroupDir,
    carried: Option<&MemoryFigures>,
    as_stat: fn(&MemoryFigures) -> MemoryStat,
) -> Result<MemoryStat, CgroupError> {
    match carried {
        Some(previous) => Ok(as_stat(previous)),
        None => Ok(dir.read_memory_stat()?.unwrap_or_default()),
    }
}

fn v1_memory(
    dir: &CgroupDir,
    kernel: Option<&KernelMemoryCounters>,
    previous: Option<&MemoryFigures>,
    carry: bool,
) -> Result<MemoryFigures, CgroupError> {
    let counter = |file, was: fn(&MemoryFigures) -> Option<u64>, kernel_value| {
        figure(dir, file, previous.map(was), kernel_value)
    };
    let stat = memory_stat(dir, previous.filter(|_| carry), |m| MemoryStat {
        total_rss: m.rss,
        total_cache: m.cache,
        total_mapped_file: m.mapped_file,
        total_swap: m.swap,
        ..MemoryStat::default()
    })?;
    let usage = counter(
        CounterFile::MemoryUsageInBytes,
        |m| m.usage,
        kernel.map(|k| k.usage),
    )?;
    let swap = match stat.total_swap.or(stat.swap) {
        Some(swap) => Some(swap),
        None => match (
            dir.read_counter(CounterFile::MemoryMemswUsageInBytes)?,
            usage,
        ) {
            (Some(memsw), Some(usage)) => Some(memsw.saturating_sub(usage)),
            _ => None,
        },
    };
    Ok(MemoryFigures {
        rss: stat.total_rss.or(stat.rss),
        cache: stat.total_cache.or(stat.cache),
        mapped_file: stat.total_mapped_file.or(stat.mapped_file),
        swap,
        usage,
        max_usage: counter(
            CounterFile::MemoryMaxUsageInBytes,
            |m| m.max_usage,
            kernel.map(|k| k.peak),
        )?,
        kernel_usage: counter(
            CounterFile::MemoryKmemUsageInBytes,
            |m| m.kernel_usage,
            kernel.and_then(|k| k.kernel_usage),
        )?,
        kernel_max_usage: counter(
            CounterFile::MemoryKmemMaxUsageInBytes,
            |m| m.kernel_max_usage,
            kernel.and_then(|k| k.kernel_peak),
        )?,
    })
}

fn v2_memory(
    dir: &CgroupDir,
    kernel: Option<&KernelMemoryCounters>,
    previous: Option<&MemoryFigures>,
    carry: bool,
) -> Result<MemoryFigures, CgroupError> {
    let counter = |file, was: fn(&MemoryFigures) -> Option<u64>, kernel_value| {
        figure(dir, file, previous.map(was), kernel_value)
    };
    let stat = memory_stat(dir, previous.filter(|_| carry), |m| MemoryStat {
        anon: m.rss,
        file: m.cache,
        file_mapped: m.mapped_file,
        kernel: m.kernel_usage,
        ..MemoryStat::default()
    })?;
    Ok(MemoryFigures {
        rss: stat.anon,
        cache: stat.file,
        mapped_file: stat.file_mapped,
        swap: counter(
            CounterFile::MemorySwapCurrent,
            |m| m.swap,
            kernel.and_then(|k| k.swap),
        )?,
        usage: counter(
            CounterFile::MemoryCurrent,
            |m| m.usage,
            kernel.map(|k| k.usage),
        )?,
        // memory.peak (5.19+) shows the counter's watermark; older kernels have the
        // watermark but not the file, so the previous read keeps it absent there.
        max_usage: counter(
            CounterFile::MemoryPeak,
            |m| m.max_usage,
            kernel.map(|k| k.peak),
        )?,
        kernel_usage: stat.kernel,
        kernel_max_usage: None,
    })
}

fn v1_throttling(stat: Option<CpuStat>) -> ThrottleFigures {
    let stat = stat.unwrap_or_default();
    ThrottleFigures {
        periods: stat.nr_throttled,
        time_ns: stat.throttled_time,
    }
}

fn v2_throttling(stat: Option<CpuStat>) -> ThrottleFigures {
    let stat = stat.unwrap_or_default();
    ThrottleFigures {
        periods: stat.nr_throttled,
        time_ns: stat.throttled_usec.map(|us| us.saturating_mul(1000)),
    }
}

impl TaskCgroups {
    /// The directory memory figures come from: v1's memory controller if the task has
    /// it, else v2.
    fn memory_source(&self) -> Option<MemoryDir<'_>> {
        match (&self.memory, &self.v2) {
            (Some(dir), _) => Some(MemoryDir::V1(dir)),
            (None, Some(dir)) => Some(MemoryDir::V2(dir)),
            (None, None) => None,
        }
    }

    /// Memory figures (spec §3): v1 memory controller if the task has it, else v2; all
    /// `None` when neither has memory accounting. `memory.stat` is always read; each
    /// single-value file is replaced by its counter from `kernel`, where the previous
    /// read (`previous`) found the file.
    pub fn read_memory(
        &self,
        kernel: Option<&KernelMemoryCounters>,
        previous: Option<&MemoryFigures>,
    ) -> Result<MemoryFigures, CgroupError> {
        self.memory(kernel, previous, false)
    }

    /// [`TaskCgroups::read_memory`] with what `memory.stat` gave at the `previous` read
    /// carried over instead of read: the caller knows from the kernel's counters that
    /// the cgroup's memory has not moved since (see `collect::steady`).
    pub fn read_memory_carrying_stat(
        &self,
        kernel: Option<&KernelMemoryCounters>,
        previous: &MemoryFigures,
    ) -> Result<MemoryFigures, CgroupError> {
        self.memory(kernel, Some(previous), true)
    }

    fn memory(
        &self,
        kernel: Option<&KernelMemoryCounters>,
        previous: Option<&MemoryFigures>,
        carry: bool,
    ) -> Result<MemoryFigures, CgroupError> {
        match self.memory_source() {
            Some(MemoryDir::V1(dir)) => v1_memory(dir, kernel, previous, carry),
            Some(MemoryDir::V2(dir)) => v2_memory(dir, kernel, previous, carry),
            None => Ok(MemoryFigures::default()),
        }
    }

    /// The directory [`TaskCgroups::read_memory`] reads.
    pub fn memory_dir(&self) -> Option<&CgroupDir> {
        self.memory_source()
            .map(|(MemoryDir::V1(dir) | MemoryDir::V2(dir))| dir)
    }

    /// The directory [`TaskCgroups::read_throttling`] reads.
    pub fn cpu_dir(&self) -> Option<&CgroupDir> {
        self.cpu.as_ref().or(self.v2.as_ref())
    }

    /// Throttling counters: v1 cpu controller `cpu.stat`, else v2 `cpu.stat`; from
    /// `kernel` instead where the previous read (`previous`) found them.
    pub fn read_throttling(
        &self,
        kernel: Option<&KernelThrottleCounters>,
        previous: &ThrottleFigures,
    ) -> Result<ThrottleFigures, CgroupError> {
        let v1 = self.cpu.is_some();
        if let (Some(k), Some(dir), Some(_), Some(_)) =
            (kernel, self.cpu_dir(), previous.periods, previous.time_ns)
        {
            dir.close_cpu_stat();
            return Ok(ThrottleFigures {
                periods: Some(k.nr_throttled),
                // cgroup v2's cpu.stat shows whole µs.
                time_ns: Some(if v1 {
                    k.throttled_ns
                } else {
                    k.throttled_ns / 1000 * 1000
                }),
            });
        }
        match (&self.cpu, &self.v2) {
            (Some(dir), _) => Ok(v1_throttling(dir.read_cpu_stat()?)),
            (None, Some(dir)) => Ok(v2_throttling(dir.read_cpu_stat()?)),
            (None, None) => Ok(ThrottleFigures::default()),
        }
    }

    /// Pressure stall totals, cgroup v2 only (the files do not exist on v1).
    pub fn read_pressure(&self) -> Result<Option<Pressure>, CgroupError> {
        let Some(dir) = &self.v2 else {
            return Ok(None);
        };
        let pressure = Pressure {
            cpu: dir.read_pressure("cpu")?,
            memory: dir.read_pressure("memory")?,
            io: dir.read_pressure("io")?,
        };
        Ok((pressure != Pressure::default()).then_some(pressure))
    }

    /// Processes the kernel's OOM killer killed in the task's memory cgroup: v1
    /// `memory.oom_control` (or its counter from `kernel`, where the previous read found
    /// it), else v2 `memory.events`, always from the file: with cgroup2's
    /// `memory_localevents` mount option it shows a different counter.
    pub fn read_oom_kills(
        &self,
        kernel: Option<&KernelMemoryCounters>,
        previous: Option<u64>,
    ) -> Result<Option<u64>, CgroupError> {
        match self.memory_source() {
            Some(MemoryDir::V1(dir)) => figure(
                dir,
                CounterFile::MemoryOomControl,
                Some(previous),
                kernel.map(|k| k.oom_kills),
            ),
            Some(MemoryDir::V2(dir)) => dir.read_memory_events_oom_kill(),
            None => Ok(None),
        }
    }

    /// The directory whose membership defines the task's processes.
    pub fn procs_dir(&self) -> Option<&CgroupDir> {
        self.v2
            .as_ref()
            .or(self.cpuacct.as_ref())
            .or(self.cpu.as_ref())
            .or(self.memory.as_ref())
    }

    /// The task's PIDs: `cgroup.procs` of its cgroup and of every descendant, sorted and
    /// deduplicated.
    pub fn read_procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        if let Some(dir) = self.procs_dir() {
            dir.read_procs_recursive(&mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}
