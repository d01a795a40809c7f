//! Types shared by the eBPF programs (`collector-ebpf`) and the daemon (`collector-user`).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each is `#[repr(C)]`
//! with explicit padding, and the daemon's `user` feature marks them `aya::Pod`.
//! [`LAYOUT_VERSION`] is part of the bpffs pin path: a daemon never reads maps that were
//! pinned by a build whose layouts differ.
#![no_std]

/// Bump whenever a type in this crate or the meaning of a map changes.
pub const LAYOUT_VERSION: u32 = 4;

/// `TASK_DEAD` from `include/linux/sched.h`: the state of a thread at its final switch.
pub const TASK_DEAD: u32 = 0x80;
/// `PF_KTHREAD`: kernel threads (and the idle tasks) are never part of an allocation.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Where the fields the programs read live in this kernel's structs. Resolved from
/// `/sys/kernel/btf/vmlinux` by the daemon and written into the programs' `.rodata`
/// before load, which the verifier then treats as constants, so every field read is a
/// single direct load with no helper call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_flags: u32,
    pub task_start_time: u32,
    /// `task_struct.se.sum_exec_runtime`: the thread's exact on-CPU time in ns.
    pub task_sum_exec_runtime: u32,
    pub task_utime: u32,
    pub task_stime: u32,
    pub task_cgroups: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    /// `css_set.subsys[id]` of the cgroup v1 controller used for attribution; 0 = no v1.
    pub css_set_v1_subsys: u32,
    /// `css_set.dfl_cgrp` (the cgroup v2 cgroup); 0 = do not attribute by cgroup v2.
    pub css_set_dfl_cgrp: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub signal_sum_sched_runtime: u32,
    pub signal_utime: u32,
    pub signal_stime: u32,
    /// Offsets within `mm_struct` of the `count` of each RSS counter; 0 = unknown layout
    /// (per-process memory then comes from /proc instead).
    pub mm_file_pages: u32,
    pub mm_anon_pages: u32,
    pub mm_shmem_pages: u32,
    pub mm_swap_entries: u32,
    /// `task_struct.__state` (5.14+; `state`, a `long`, before: its low 32 bits on a
    /// little-endian machine). Read at each switch instead of `sched_switch`'s
    /// `prev_state` argument, which only 5.18+ passes.
    pub task_state: u32,
    /// `task_struct.sched_info.run_delay`: ns the thread has waited on a run queue
    /// (kept where `CONFIG_SCHED_INFO` is set); 0 = not in this kernel.
    pub task_run_delay: u32,
    /// `css_set.subsys[memory_cgrp_id]` and `css_set.subsys[cpu_cgrp_id]`: where the
    /// task iterator finds a task cgroup's `mem_cgroup` and `task_group`; 0 = that
    /// controller's counters are read from its control files instead.
    pub css_set_memory_subsys: u32,
    pub css_set_cpu_subsys: u32,
    /// Offsets within `struct mem_cgroup` (whose first member is its css) of the page
    /// counters behind `memory.usage_in_bytes`/`memory.current` (`memory.usage`), the
    /// peak (`memory.watermark`), cgroup v2 swap (`swap.usage`), v1 kernel memory
    /// (`kmem.usage`, `kmem.watermark`; 0 = not in this kernel) and the OOM kill count
    /// (`memory_events[MEMCG_OOM_KILL]`).
    pub memcg_usage: u32,
    pub memcg_watermark: u32,
    pub memcg_swap_usage: u32,
    pub memcg_kmem_usage: u32,
    pub memcg_kmem_watermark: u32,
    pub memcg_oom_kills: u32,
    /// Offsets within `struct task_group` (whose first member is its css) of
    /// `cfs_bandwidth.nr_throttled` (a C `int`) and `.throttled_time` (ns), what
    /// `cpu.stat` shows; 0 = no CFS bandwidth control in this kernel.
    pub tg_nr_throttled: u32,
    pub tg_throttled_time: u32,
}

/// Value of the `TRACKED_CGROUPS` hash map, keyed by cgroup id (the kernfs node id, which
/// is the inode number of the cgroup's directory). The daemon inserts one entry per task
/// cgroup it tracks; the programs only read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedCgroup {
    /// Index of the cgroup's counters in the `CGROUP_CPU` array.
    pub slot: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns when tracking began. A thread first met after it started and
    /// that started before this instant contributes no earlier time (the first sample of
    /// a process that existed before the daemon is 0); one that started later is counted
    /// from its birth, so a child shorter than an interval is not lost.
    pub since_ns: u64,
}

/// Element of the `CGROUP_CPU` array: cumulative CPU of one tracked cgroup. The programs
/// only add to it; the daemon zeroes a slot before giving it to a new cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCpu {
    /// Exact on-CPU ns of every thread while attributed to this cgroup, exited ones included.
    pub run_ns: u64,
    /// Tick-sampled user and system ns (the kernel's `utime`/`stime`), used for the split.
    pub user_ns: u64,
    pub system_ns: u64,
    /// Threads whose final CPU time was accounted at their last context switch.
    pub exited_threads: u64,
    /// ns the cgroup's threads waited on a run queue (`sched_info.run_delay`), exited
    /// ones included; stays 0 on a kernel without it (see `KernelLayout::task_run_delay`).
    pub wait_ns: u64,
    /// Processes (thread-group leaders) first seen here that started since tracking
    /// began, and leaders whose final switch was accounted here.
    pub processes_started: u64,
    pub processes_exited: u64,
}

/// Slots of the `CONTROL` array, written by the daemon.
pub mod control {
    /// Bumped by the daemon whenever it adds or removes a tracked cgroup: a thread whose
    /// cached attribution carries an older generation looks its cgroup up again.
    pub const GENERATION: u32 = 0;
    /// The number of the task iterator pass the daemon is about to run: a slot whose
    /// [`SlotCgroups::full_pass`](super::SlotCgroups::full_pass) equals it has every
    /// thread reported, not only those that ran.
    pub const PASS: u32 = 1;
    /// A pass in which every slot is full (the daemon's first, or after it lost track).
    pub const FULL_PASS: u32 = 2;
    /// Where the programs put a thread that ran ([`RanThreads`]): the context-switch
    /// program into the set of `MARK`, the checkpoint into the set of `MARK - 1`, which
    /// the next cgroup walk reads. The daemon bumps it just before each checkpoint of
    /// every CPU, whose runs order every switch that saw the old value before the walk.
    pub const MARK: u32 = 3;
    /// 1 when the set of `MARK - 1` holds every thread of each slot that ran since the
    /// walk before (one checkpoint of every CPU between the two walks, none failed):
    /// only then does the walk read a slot's threads from its set.
    pub const RAN_SETS_VALID: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Threads a [`RanSet`] holds; a slot where more ran is walked thread by thread.
pub const RAN_SET_CAPACITY: usize = 14;

/// The threads of one slot that ran in one interval, each once: the thread's
/// `ThreadState::marked_pass` says it is in. `count` may exceed the capacity (the
/// threads past it are not kept: the set overflowed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RanSet {
    pub count: u64,
    pub tids: [u32; RAN_SET_CAPACITY],
}

/// Element of the `RAN_THREADS` array, by counter slot: the sets of two consecutive
/// marks (`control::MARK` parity), one being filled while the other is read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RanThreads {
    pub sets: [RanSet; 2],
}

/// Every slot's pass is full once in this many (see [`full_by_turn`]),
/// so that no record is carried longer: it bounds what the daemon's rules for carrying a
/// record cannot see (a sleeping thread moved to an untracked cgroup, a sleeping
/// process's pages mapped or unmapped by another process).
pub const FULL_PASS_EVERY: u64 = 10;

/// Whether `slot`'s pass `pass` is full by turn: the iterator and the daemon both ask.
#[inline(always)]
pub const fn full_by_turn(pass: u64, slot: u32) -> bool {
    (pass + slot as u64).is_multiple_of(FULL_PASS_EVERY)
}

/// [`ThreadState::slot`] of a thread that belongs to no tracked cgroup.
pub const NO_SLOT: u32 = u32::MAX;

/// Flags of a [`ThreadState`].
pub mod thread_flags {
    /// `run_ns`/`user_ns`/`system_ns`/`wait_ns` hold what was last accounted: the next
    /// delta is taken from them.
    pub const ACCOUNTED: u32 = 1;
}

/// Per-thread task-local storage, kept by the context-switch program: which tracked
/// cgroup the thread's time goes to (cached, so that most switches need no map lookup)
/// and the thread's CPU times when they were last added there. The storage belongs to the
/// `task_struct`, so a new process that reuses a PID starts from nothing.
///
/// The last three fields belong to the task iterator (which makes the state for a tracked
/// thread that has none): a thread whose accounted `run_ns` and cgroup are still what its
/// last record saw has not run since, and is not reported again (see `iter`). The two
/// writers never write the same word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub run_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    /// The thread's `run_delay` when last accounted.
    pub wait_ns: u64,
    /// The `css_set` pointer the attribution was resolved for: it changes whenever the
    /// thread moves to another cgroup in any hierarchy.
    pub css_set: u64,
    /// The `control::GENERATION` the attribution was resolved at.
    pub generation: u64,
    /// Slot in `CGROUP_CPU`, or [`NO_SLOT`].
    pub slot: u32,
    pub flags: u32,
    /// `run_ns` when the iterator last reported the thread, the slot and the thread id
    /// it reported it with; `reported_tid` 0 = never reported (no user thread has id 0).
    /// (The id changes when a thread that is not its process's leader execs.)
    pub reported_run_ns: u64,
    pub reported_slot: u32,
    pub reported_tid: u32,
    /// The `control::MARK` whose [`RanSet`] of the slot the thread was last put in (by
    /// the context-switch program and the checkpoint): once per interval, not at every
    /// switch.
    pub marked_pass: u64,
}

/// Value of the per-thread hash map that replaces task storage on kernels without it
/// (5.10): keyed by the `task_struct` address, which stays the thread's through `exec`
/// (a PID does not: a non-leader thread that execs takes its leader's). The entry is
/// deleted at the thread's final switch; `start_ns` tells a new thread that got a freed
/// `task_struct`'s address from the old one, so it starts from nothing like a new
/// task storage would.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadEntry {
    pub state: ThreadState,
    /// The thread's `start_time` when the entry was made.
    pub start_ns: u64,
}

/// Flags of a [`ThreadSample`].
pub mod sample_flags {
    /// The thread is its process's leader.
    pub const LEADER: u32 = 1;
    /// The RSS and swap fields were read from the process's `mm_struct`.
    pub const MEMORY: u32 = 2;
    /// The record is a [`CgroupSample`](super::CgroupSample), not a thread.
    pub const CGROUP: u32 = 4;
}

/// One record of the task iterator: one thread of a tracked cgroup, reported when its
/// slot's pass is full or when it ran (or changed cgroup) since its last record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSample {
    pub tid: u32,
    pub tgid: u32,
    /// The thread's cumulative `sum_exec_runtime`, `utime`, `stime`.
    pub run_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    /// The thread's start time (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// Process-wide, read at every thread: CPU of the process's threads that already
    /// exited (`signal_struct.sum_sched_runtime`, `.utime`, `.stime`).
    pub exited_run_ns: u64,
    pub exited_user_ns: u64,
    pub exited_system_ns: u64,
    /// Process-wide, with [`sample_flags::MEMORY`]: resident pages (file + anon + shmem,
    /// as `/proc/<pid>/statm` counts them) and swapped-out pages (`VmSwap`). Signed: the
    /// kernel's per-CPU counters may read slightly negative.
    pub rss_pages: i64,
    pub swap_pages: i64,
    pub flags: u32,
    /// The thread's tracked cgroup: its [`TrackedCgroup::slot`].
    pub slot: u32,
}

/// Which parts of a [`CgroupSample`] were read.
pub mod cgroup_parts {
    /// The `mem_cgroup` counters (the task's memory cgroup was the one registered).
    pub const MEMORY: u64 = 1;
    /// The `task_group` bandwidth counters.
    pub const CPU: u64 = 2;
}

/// A record of the task iterator with [`sample_flags::CGROUP`] set: the counters of one
/// tracked cgroup's memory and cpu cgroups, read from the kernel structs behind their
/// single-value control files, at the first thread of the cgroup the pass meets. Same
/// size as a [`ThreadSample`], with `flags` and `slot` at the same offsets, so that one
/// stream carries both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// Pages: `memory.usage`, `memory.watermark`, `swap.usage` (cgroup v2 only),
    /// `kmem.usage`, `kmem.watermark` (cgroup v1 only).
    pub memory_pages: u64,
    pub memory_peak_pages: u64,
    pub swap_pages: u64,
    pub kmem_pages: u64,
    pub kmem_peak_pages: u64,
    pub oom_kills: u64,
    pub nr_throttled: u64,
    pub throttled_ns: u64,
    /// [`cgroup_parts`] bits.
    pub parts: u64,
    pub _pad: u64,
    pub flags: u32,
    pub slot: u32,
}

/// Element of the `SLOT_CGROUPS` array, by counter slot: the ids of the memory and cpu
/// cgroups whose counters the task iterator reports with that slot (0 = none). Written
/// by the daemon; the iterator writes only `session` and the last three fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCgroups {
    pub memory_id: u64,
    pub cpu_id: u64,
    /// The iterator session (`bpf_iter_meta.session_id`) that last reported the slot's
    /// counters: one record per slot per pass.
    pub session: u64,
    /// The `control::PASS` in which every thread of the slot is reported, whether it
    /// ran or not (the daemon sets it when it cannot carry the slot's last records).
    pub full_pass: u64,
    /// The iterator's own, decided at the first thread of the slot in a pass (session
    /// `decided_session`): the slot's `CgroupCpu::run_ns` then, and whether it moved
    /// since the pass before (`active` 1). In a slot that did not, no thread ran, and
    /// none is looked at further.
    pub seen_run_ns: u64,
    pub decided_session: u64,
    pub active: u64,
}

/// Slots of the per-CPU `STATS` array: events the programs count so that nothing they
/// drop is silent.
pub mod stat {
    /// Final CPU time of an exiting thread of a tracked cgroup accounted.
    pub const EXITS_FOLDED: u32 = 0;
    /// A thread of a tracked cgroup exited before it was ever accounted and had started
    /// before tracking began: its earlier time is deliberately not counted.
    pub const EXITS_UNSEEN: u32 = 1;
    /// Task storage could not be allocated for a thread (out of memory): its time since
    /// it was last accounted is not attributed.
    pub const STORAGE_FAILED: u32 = 2;
    /// The iterator's output buffer was full: the thread is shown again by the next
    /// read() of the same pass (nothing is lost; counted to size the buffer).
    pub const SAMPLES_DEFERRED: u32 = 3;
    /// A thread looked its cgroup up in `TRACKED_CGROUPS` (its cached attribution was
    /// missing or stale): the slow path of the context-switch program.
    pub const LOOKUPS: u32 = 4;
    /// A slot that the cgroup walk read from its ran set: only the threads that ran
    /// were looked at.
    pub const RAN_SET_SLOTS: u32 = 5;
    /// A slot where more threads ran than its ran set holds: the cgroup walk went over
    /// all its threads instead.
    pub const RAN_SET_OVERFLOWS: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Kernel functions (kfuncs) the programs may call. aya 0.14 cannot emit a kfunc call
/// (aya-rs/aya#432), so a program calls one as if it were a helper with a placeholder id
/// from this table, and the daemon rewrites each such call into a kfunc call to the
/// function's BTF id in the running kernel before loading the object (see the daemon's
/// `kernel::kfunc`). A placeholder is far above any helper id the kernel has (about 220
/// in 6.18), so no real helper call is mistaken for one.
pub mod kfunc {
    /// `bpf_iter_css_task_new(it, css, flags)`: starts a walk over a css's tasks (6.7+).
    pub const ITER_CSS_TASK_NEW: i32 = 0x4b46_0001;
    /// `bpf_iter_css_task_next(it)`: the walk's next task, or null at its end (6.7+).
    pub const ITER_CSS_TASK_NEXT: i32 = 0x4b46_0002;
    /// `bpf_iter_css_task_destroy(it)`: ends the walk (6.7+).
    pub const ITER_CSS_TASK_DESTROY: i32 = 0x4b46_0003;
    /// `bpf_task_from_pid(pid)`: the task of a thread id, with a reference, or null
    /// (6.2+).
    pub const TASK_FROM_PID: i32 = 0x4b46_0004;
    /// `bpf_task_release(task)`: drops the reference `bpf_task_from_pid` took (6.2+).
    pub const TASK_RELEASE: i32 = 0x4b46_0005;
    /// `bpf_iter_num_new(it, start, end)`: a loop over `start..end` that the verifier
    /// checks once, not once per round (6.4+).
    pub const ITER_NUM_NEW: i32 = 0x4b46_0006;
    /// `bpf_iter_num_next(it)`: a pointer to the next number, or null at the end (6.4+).
    pub const ITER_NUM_NEXT: i32 = 0x4b46_0007;
    /// `bpf_iter_num_destroy(it)`: ends the loop (6.4+).
    pub const ITER_NUM_DESTROY: i32 = 0x4b46_0008;

    /// Each placeholder with the kernel function it stands for.
    pub const ALL: [(i32, &str); 8] = [
        (ITER_CSS_TASK_NEW, "bpf_iter_css_task_new"),
        (ITER_CSS_TASK_NEXT, "bpf_iter_css_task_next"),
        (ITER_CSS_TASK_DESTROY, "bpf_iter_css_task_destroy"),
        (TASK_FROM_PID, "bpf_task_from_pid"),
        (TASK_RELEASE, "bpf_task_release"),
        (ITER_NUM_NEW, "bpf_iter_num_new"),
        (ITER_NUM_NEXT, "bpf_iter_num_next"),
        (ITER_NUM_DESTROY, "bpf_iter_num_destroy"),
    ];
}

// The kernel and the daemon read these as raw bytes: their sizes are part of the ABI
// between the two builds (and of the pinned maps' shapes).
const _: () = {
    assert!(core::mem::size_of::<KernelLayout>() == 34 * 4);
    assert!(core::mem::size_of::<TrackedCgroup>() == 16);
    assert!(core::mem::size_of::<CgroupCpu>() == 56);
    assert!(core::mem::size_of::<ThreadState>() == 80);
    assert!(core::mem::size_of::<ThreadEntry>() == 88);
    assert!(core::mem::size_of::<ThreadSample>() == 88);
    assert!(core::mem::size_of::<CgroupSample>() == 88);
    assert!(
        core::mem::offset_of!(CgroupSample, flags) == core::mem::offset_of!(ThreadSample, flags)
    );
    assert!(core::mem::offset_of!(CgroupSample, slot) == core::mem::offset_of!(ThreadSample, slot));
    assert!(core::mem::size_of::<SlotCgroups>() == 56);
    assert!(core::mem::size_of::<RanSet>() == 8 + 4 * RAN_SET_CAPACITY);
    assert!(core::mem::size_of::<RanThreads>() == 2 * core::mem::size_of::<RanSet>());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // aya::Pod asks for a `Copy` type with no padding and any bit pattern valid. Each
    // type below is `#[repr(C)]`, `Copy`, and made of integers only; its size is asserted
    // above to be the sum of its fields', so no byte is implicit padding.

    // SAFETY: 34 `u32` offsets, 136 bytes: no padding, every bit pattern a valid value.
    unsafe impl aya::Pod for KernelLayout {}
    // SAFETY: `u32` slot, `u32` explicit `_pad`, `u64` since_ns: 16 bytes, no padding,
    // every bit pattern valid.
    unsafe impl aya::Pod for TrackedCgroup {}
    // SAFETY: seven `u64` counters, 56 bytes: no padding, every bit pattern valid.
    unsafe impl aya::Pod for CgroupCpu {}
    // SAFETY: six `u64`, two `u32`, a `u64`, two `u32`, a `u64`, 80 bytes: no padding,
    // every bit pattern valid.
    unsafe impl aya::Pod for ThreadState {}
    // SAFETY: a `ThreadState` (Pod, above: 80 bytes, 8-aligned) then a `u64`, 88 bytes:
    // no padding, every bit pattern valid.
    unsafe impl aya::Pod for ThreadEntry {}
    // SAFETY: two `u32`, seven `u64`, two `i64`, two `u32`, 88 bytes, each field at an
    // offset that is a multiple of its size: no padding, every bit pattern valid.
    unsafe impl aya::Pod for ThreadSample {}
    // SAFETY: ten `u64` then two `u32`, 88 bytes: no padding, every bit pattern valid.
    unsafe impl aya::Pod for CgroupSample {}
    // SAFETY: seven `u64`, 56 bytes: no padding, every bit pattern valid.
    unsafe impl aya::Pod for SlotCgroups {}
    // SAFETY: a `u64` then 14 `u32`, 64 bytes (asserted above): no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for RanSet {}
    // SAFETY: two `RanSet` (Pod, above: 64 bytes, 8-aligned), 128 bytes: no padding.
    unsafe impl aya::Pod for RanThreads {}
}
