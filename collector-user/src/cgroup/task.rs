//! [`TaskCgroups`]: a task's cgroups in whichever hierarchies it has them, and the
//! mapping of their v1 or v2 files to Nomad's figures as in spec §3.

use super::{
    dir::CgroupDir,
    types::{CpuStat, MemoryFigures, Pressure, ThrottleFigures},
    CgroupError,
};

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

fn v1_memory(dir: &CgroupDir) -> Result<MemoryFigures, CgroupError> {
    let stat = dir.read_memory_stat()?.unwrap_or_default();
    let usage = dir.read_memory_usage_in_bytes()?;
    let swap = match stat.total_swap.or(stat.swap) {
        Some(swap) => Some(swap),
        None => match (dir.read_memory_memsw_usage_in_bytes()?, usage) {
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
        max_usage: dir.read_memory_max_usage_in_bytes()?,
        kernel_usage: dir.read_memory_kmem_usage_in_bytes()?,
        kernel_max_usage: dir.read_memory_kmem_max_usage_in_bytes()?,
    })
}

fn v2_memory(dir: &CgroupDir) -> Result<MemoryFigures, CgroupError> {
    let stat = dir.read_memory_stat()?.unwrap_or_default();
    Ok(MemoryFigures {
        rss: stat.anon,
        cache: stat.file,
        mapped_file: stat.file_mapped,
        swap: dir.read_memory_swap_current()?,
        usage: dir.read_memory_current()?,
        max_usage: dir.read_memory_peak()?,
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
    /// Memory figures (spec §3): v1 memory controller if the task has it, else v2; all
    /// `None` when neither has memory accounting.
    pub fn read_memory(&self) -> Result<MemoryFigures, CgroupError> {
        match (&self.memory, &self.v2) {
            (Some(dir), _) => v1_memory(dir),
            (None, Some(dir)) => v2_memory(dir),
            (None, None) => Ok(MemoryFigures::default()),
        }
    }

    /// Throttling counters: v1 cpu controller `cpu.stat`, else v2 `cpu.stat`.
    pub fn read_throttling(&self) -> Result<ThrottleFigures, CgroupError> {
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
    /// `memory.oom_control`, else v2 `memory.events`.
    pub fn read_oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        match (&self.memory, &self.v2) {
            (Some(dir), _) => dir.read_memory_oom_control_oom_kill(),
            (None, Some(dir)) => dir.read_memory_events_oom_kill(),
            (None, None) => Ok(None),
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
