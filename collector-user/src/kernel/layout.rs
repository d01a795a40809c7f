//! Resolving [`KernelLayout`] (the struct offsets the eBPF programs read) from BTF.

use collector_common::KernelLayout;

use super::btf::{Btf, BtfError};

/// Which cgroup hierarchies the programs attribute threads by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// The cgroup v1 controller whose hierarchy holds the task cgroups (e.g. `cpuacct`).
    pub v1_controller: Option<String>,
    /// Attribute by cgroup v2 ids too.
    pub v2: bool,
}

/// Whether per-process memory can be read in the kernel on this layout.
pub fn resolve(btf: &Btf, attribution: &Attribution) -> Result<KernelLayout, BtfError> {
    let task = |member: &str| btf.member_offset("task_struct", member);
    let mut layout = KernelLayout {
        task_pid: task("pid")?,
        task_tgid: task("tgid")?,
        task_flags: task("flags")?,
        task_start_time: task("start_time")?,
        task_sum_exec_runtime: task("se.sum_exec_runtime")?,
        task_utime: task("utime")?,
        task_stime: task("stime")?,
        task_cgroups: task("cgroups")?,
        task_mm: task("mm")?,
        task_signal: task("signal")?,
        css_set_v1_subsys: 0,
        css_set_dfl_cgrp: 0,
        css_cgroup: btf.member_offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
        signal_sum_sched_runtime: btf.member_offset("signal_struct", "sum_sched_runtime")?,
        signal_utime: btf.member_offset("signal_struct", "utime")?,
        signal_stime: btf.member_offset("signal_struct", "stime")?,
        // `__state` since 5.14; `state` (a long: its low half is read) before.
        task_state: task("__state").or_else(|_| task("state"))?,
        ..KernelLayout::default()
    };
    // Run-queue wait is optional: absent without CONFIG_SCHED_INFO (the figure is then
    // reported absent, not 0).
    layout.task_run_delay = task("sched_info.run_delay").unwrap_or(0);
    if let Some(controller) = &attribution.v1_controller {
        let id = btf.enum_value(&format!("{controller}_cgrp_id"))?;
        let subsys = btf.member_offset("css_set", "subsys")?;
        layout.css_set_v1_subsys = array_element(subsys, 8, id)?;
    }
    if attribution.v2 {
        layout.css_set_dfl_cgrp = btf.member_offset("css_set", "dfl_cgrp")?;
    }
    // Memory counters are optional: a layout this code does not know leaves them 0 and
    // per-process memory then comes from /proc.
    if let Ok(counters) = mm_counters(btf) {
        [
            layout.mm_file_pages,
            layout.mm_anon_pages,
            layout.mm_swap_entries,
            layout.mm_shmem_pages,
        ] = counters;
    }
    // Cgroup counters are optional too: without them the task cgroups' single-value
    // control files are read instead.
    if let Ok(counters) = cgroup_counters(btf) {
        counters.apply(&mut layout);
    }
    Ok(layout)
}

/// The offsets of [`KernelLayout`]'s memory and cpu cgroup counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CgroupCounters {
    memory_subsys: u32,
    usage: u32,
    watermark: u32,
    swap_usage: u32,
    kmem_usage: u32,
    kmem_watermark: u32,
    oom_kills: u32,
    cpu_subsys: u32,
    nr_throttled: u32,
    throttled_time: u32,
}

impl CgroupCounters {
    fn apply(self, layout: &mut KernelLayout) {
        layout.css_set_memory_subsys = self.memory_subsys;
        layout.memcg_usage = self.usage;
        layout.memcg_watermark = self.watermark;
        layout.memcg_swap_usage = self.swap_usage;
        layout.memcg_kmem_usage = self.kmem_usage;
        layout.memcg_kmem_watermark = self.kmem_watermark;
        layout.memcg_oom_kills = self.oom_kills;
        layout.css_set_cpu_subsys = self.cpu_subsys;
        layout.tg_nr_throttled = self.nr_throttled;
        layout.tg_throttled_time = self.throttled_time;
    }
}

/// Where `struct mem_cgroup` keeps the counters behind `memory.usage_in_bytes`,
/// `memory.max_usage_in_bytes`, `memory.kmem.*` and `memory.oom_control` (v1) or
/// `memory.current`, `memory.peak` and `memory.swap.current` (v2), and `struct task_group`
/// those of `cpu.stat`'s throttling lines. Both structs begin with their css, which is
/// what `css_set.subsys[]` points to. The memory part is required (an error leaves every
/// counter to the control files); the cpu part is left 0 without CFS bandwidth control.
fn cgroup_counters(btf: &Btf) -> Result<CgroupCounters, BtfError> {
    let memcg = |member: &str| btf.member_offset("mem_cgroup", member);
    let subsys = btf.member_offset("css_set", "subsys")?;
    if memcg("css")? != 0 {
        return Err(BtfError::Malformed(
            "mem_cgroup does not begin with its css",
        ));
    }
    let events = memcg("memory_events")?;
    let mut counters = CgroupCounters {
        memory_subsys: array_element(subsys, 8, btf.enum_value("memory_cgrp_id")?)?,
        usage: memcg("memory.usage")?,
        watermark: memcg("memory.watermark")?,
        // `swap` (v2) shares a union with v1's `memsw`, which is memory + swap: read for
        // cgroup v2 only.
        swap_usage: memcg("swap.usage").unwrap_or(0),
        // v1's kernel-memory counter: gone from kernels built without cgroup v1.
        kmem_usage: memcg("kmem.usage").unwrap_or(0),
        kmem_watermark: memcg("kmem.watermark").unwrap_or(0),
        oom_kills: array_element(events, 8, btf.enum_value("MEMCG_OOM_KILL")?)?,
        ..CgroupCounters::default()
    };
    let task_group = |member: &str| btf.member_offset("task_group", member);
    let cpu = (|| -> Result<[u32; 3], BtfError> {
        if task_group("css")? != 0 {
            return Err(BtfError::Malformed(
                "task_group does not begin with its css",
            ));
        }
        Ok([
            array_element(subsys, 8, btf.enum_value("cpu_cgrp_id")?)?,
            task_group("cfs_bandwidth.nr_throttled")?,
            task_group("cfs_bandwidth.throttled_time")?,
        ])
    })();
    if let Ok([cpu_subsys, nr_throttled, throttled_time]) = cpu {
        counters.cpu_subsys = cpu_subsys;
        counters.nr_throttled = nr_throttled;
        counters.throttled_time = throttled_time;
    }
    Ok(counters)
}

/// Offsets of the `count` of `mm->rss_stat[MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS,
/// MM_SHMEMPAGES]`. Since 6.2 each is a `struct percpu_counter`; before, they were
/// `atomic_long_t` in a `struct mm_rss_stat`.
fn mm_counters(btf: &Btf) -> Result<[u32; 4], BtfError> {
    let base = btf.member_offset("mm_struct", "rss_stat")?;
    let (stride, count) = if btf.has_struct("mm_rss_stat") {
        (8, btf.member_offset("mm_rss_stat", "count")?)
    } else {
        (
            btf.struct_size("percpu_counter")?,
            btf.member_offset("percpu_counter", "count")?,
        )
    };
    let at = |name: &str| -> Result<u32, BtfError> {
        let first = base
            .checked_add(count)
            .ok_or(BtfError::Malformed("mm_struct counter offset overflows"))?;
        array_element(first, stride, btf.enum_value(name)?)
    };
    Ok([
        at("MM_FILEPAGES")?,
        at("MM_ANONPAGES")?,
        at("MM_SWAPENTS")?,
        at("MM_SHMEMPAGES")?,
    ])
}

/// Offset of element `index` of an array at `base` with elements `stride` bytes apart;
/// an index from BTF that is negative, implausibly large or overflows is malformed BTF.
fn array_element(base: u32, stride: u32, index: i64) -> Result<u32, BtfError> {
    u32::try_from(index)
        .ok()
        .filter(|&i| i < 256)
        .and_then(|i| stride.checked_mul(i))
        .and_then(|o| base.checked_add(o))
        .ok_or(BtfError::Malformed("enum index out of range for its array"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_are_bounded() {
        assert_eq!(array_element(16, 8, 3).unwrap(), 40);
        assert!(array_element(16, 8, -1).is_err());
        assert!(array_element(16, 8, 1 << 29).is_err());
        assert!(array_element(u32::MAX - 4, 8, 1).is_err());
    }
}
