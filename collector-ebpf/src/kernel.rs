//! Reading kernel structs through offsets resolved from BTF by the daemon.
//!
//! `LAYOUT` lives in `.rodata`, which aya freezes after writing it, so the verifier knows
//! every offset as a constant. With [`Direct`] access each field read is a plain load from
//! a trusted/RCU BTF pointer, checked by the verifier against the kernel's BTF. [`Probed`]
//! access reads through `bpf_probe_read_kernel` instead: for a `task_struct` address the
//! verifier knows only as a number (`bpf_get_current_task()`, on kernels before 5.11 that
//! lack `bpf_get_current_task_btf()`).

use core::marker::PhantomData;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use collector_common::{KernelLayout, ThreadState};

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_pid: 0,
    task_tgid: 0,
    task_flags: 0,
    task_start_time: 0,
    task_sum_exec_runtime: 0,
    task_utime: 0,
    task_stime: 0,
    task_cgroups: 0,
    task_mm: 0,
    task_signal: 0,
    css_set_v1_subsys: 0,
    css_set_dfl_cgrp: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    signal_sum_sched_runtime: 0,
    signal_utime: 0,
    signal_stime: 0,
    mm_file_pages: 0,
    mm_anon_pages: 0,
    mm_shmem_pages: 0,
    mm_swap_entries: 0,
    task_state: 0,
    task_run_delay: 0,
    css_set_memory_subsys: 0,
    css_set_cpu_subsys: 0,
    memcg_usage: 0,
    memcg_watermark: 0,
    memcg_swap_usage: 0,
    memcg_kmem_usage: 0,
    memcg_kmem_watermark: 0,
    memcg_oom_kills: 0,
    tg_nr_throttled: 0,
    tg_throttled_time: 0,
};

/// Reads one field of `LAYOUT`; volatile so that the compiler cannot fold the zeros above.
macro_rules! layout {
    ($field:ident) => {{
        // SAFETY: LAYOUT is a static of plain integers, valid for the program's life.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const LAYOUT.$field) };
        value
    }};
}

/// How fields of a kernel object are read.
pub trait Access: Copy {
    /// Reads a `T` at `base + offset`.
    ///
    /// # Safety
    /// `base` must be an object of the kind the offset belongs to, of the kind this
    /// access reads (see [`Direct`] and [`Probed`]), and `T` the field's type.
    unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T;
}

/// Plain loads from pointers the verifier tracks as BTF objects: a missing or null
/// object is caught by the kernel's exception table and reads as zero.
#[derive(Clone, Copy)]
pub struct Direct;

impl Access for Direct {
    #[inline(always)]
    unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
        // SAFETY: the caller's contract: `offset` is a field's offset inside the object at
        // `base`, so the sum stays inside it.
        let at = unsafe { base.add(offset as usize) } as *const T;
        // SAFETY: the caller's contract (a `T` field of a BTF object); the verifier checks
        // the load against BTF.
        unsafe { *at }
    }
}

/// `bpf_probe_read_kernel`: for addresses the verifier knows only as numbers. A read
/// that faults yields zero, as a direct BTF load would.
#[derive(Clone, Copy)]
pub struct Probed;

impl Access for Probed {
    #[inline(always)]
    unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
        let at = base.wrapping_add(offset as usize) as *const T;
        // SAFETY: bpf_probe_read_kernel copies from any kernel address and fails cleanly
        // on a bad one.
        let read = unsafe { bpf_probe_read_kernel(at) };
        // SAFETY: every T read here (integers and pointers) is valid when zeroed.
        read.unwrap_or_else(|_| unsafe { core::mem::zeroed() })
    }
}

/// A `struct task_struct`, read with access `A`.
///
/// Invariant (established by [`Task::new`]): the pointer is a live `task_struct` of the
/// kind `A` reads — a BTF pointer the verifier tracks for [`Direct`], a kernel address for
/// [`Probed`] — for as long as the program runs. Every field reader relies on it.
#[derive(Clone, Copy)]
pub struct Task<A: Access> {
    ptr: *const u8,
    _access: PhantomData<A>,
}

#[derive(Clone, Copy)]
pub struct CpuTimes {
    pub run: u64,
    pub user: u64,
    pub system: u64,
    /// Time spent waiting on a run queue (0 where the kernel does not keep it).
    pub wait: u64,
}

impl CpuTimes {
    pub const ZERO: Self = Self {
        run: 0,
        user: 0,
        system: 0,
        wait: 0,
    };

    /// What was last accounted for a thread.
    #[inline(always)]
    pub fn accounted(state: &ThreadState) -> Self {
        Self {
            run: state.run_ns,
            user: state.user_ns,
            system: state.system_ns,
            wait: state.wait_ns,
        }
    }

    #[inline(always)]
    pub fn store(&self, state: &mut ThreadState) {
        state.run_ns = self.run;
        state.user_ns = self.user;
        state.system_ns = self.system;
        state.wait_ns = self.wait;
    }

    /// `self - base`, never negative.
    #[inline(always)]
    pub fn since(&self, base: &Self) -> Self {
        Self {
            run: self.run.saturating_sub(base.run),
            user: self.user.saturating_sub(base.user),
            system: self.system.saturating_sub(base.system),
            wait: self.wait.saturating_sub(base.wait),
        }
    }
}

impl<A: Access> Task<A> {
    /// # Safety
    /// `ptr` must be a `task_struct` of the kind `A` reads (see the type's invariant),
    /// live while the program runs: a tracepoint's task argument, the iterator's task, or
    /// the current task.
    #[inline(always)]
    pub unsafe fn new(ptr: *const u8) -> Self {
        Self {
            ptr,
            _access: PhantomData,
        }
    }

    /// The `task_struct` address (a map key; never dereferenced through this).
    #[allow(dead_code, reason = "each of the two builds uses one of these")]
    #[inline(always)]
    pub fn address(self) -> u64 {
        self.ptr as u64
    }

    /// The raw pointer, for helpers that take a BTF task (task storage).
    #[allow(dead_code, reason = "each of the two builds uses one of these")]
    #[inline(always)]
    pub fn as_ptr(self) -> *const u8 {
        self.ptr
    }

    #[inline(always)]
    fn field<T: Copy>(self, offset: u32) -> T {
        // SAFETY: the type's invariant: ptr is a task_struct that A reads, and every
        // offset passed here is one of LAYOUT's task_struct offsets for the field's type.
        unsafe { A::load(self.ptr, offset) }
    }

    #[inline(always)]
    pub fn pid(self) -> u32 {
        self.field(layout!(task_pid))
    }

    #[inline(always)]
    pub fn tgid(self) -> u32 {
        self.field(layout!(task_tgid))
    }

    #[inline(always)]
    pub fn flags(self) -> u32 {
        self.field(layout!(task_flags))
    }

    /// The scheduler state (`__state`, or the low half of `state` before 5.14).
    #[inline(always)]
    pub fn state(self) -> u32 {
        self.field(layout!(task_state))
    }

    #[inline(always)]
    pub fn start_time(self) -> u64 {
        self.field(layout!(task_start_time))
    }

    #[inline(always)]
    pub fn cpu_times(self) -> CpuTimes {
        let run_delay = layout!(task_run_delay);
        CpuTimes {
            run: self.field(layout!(task_sum_exec_runtime)),
            user: self.field(layout!(task_utime)),
            system: self.field(layout!(task_stime)),
            wait: if run_delay != 0 {
                self.field(run_delay)
            } else {
                0
            },
        }
    }

    /// CPU of the process's threads that have already exited (`signal_struct`).
    #[inline(always)]
    pub fn exited_threads_times(self) -> CpuTimes {
        let signal: *const u8 = self.field(layout!(task_signal));
        // SAFETY (each load): task->signal is the task's signal_struct (never null for a
        // live task; a null one reads as zeros), read with the same access as the task, at
        // offsets of its u64 fields.
        CpuTimes {
            // SAFETY: as above.
            run: unsafe { A::load(signal, layout!(signal_sum_sched_runtime)) },
            // SAFETY: as above.
            user: unsafe { A::load(signal, layout!(signal_utime)) },
            // SAFETY: as above.
            system: unsafe { A::load(signal, layout!(signal_stime)) },
            wait: 0,
        }
    }

    /// (resident pages, swapped-out pages) of the process, as `/proc/<pid>/statm` and
    /// `VmSwap` read them; `None` when the layout is unknown or the task has no mm.
    #[inline(always)]
    pub fn memory_pages(self) -> Option<(i64, i64)> {
        let file_off = layout!(mm_file_pages);
        if file_off == 0 {
            return None;
        }
        let mm: *const u8 = self.field(layout!(task_mm));
        if mm.is_null() {
            return None;
        }
        // Probed even for a BTF task: before 6.2 the counters are `atomic_long_t`
        // elements of an array, a typedef'd struct that 6.1's verifier cannot walk into
        // ("Type 'atomic_long_t' is not a struct"). Four helper calls per process read.
        // SAFETY (each load): mm is the task's non-null mm_struct; the offsets are its
        // RSS counters (i64 each), read with bpf_probe_read_kernel.
        // SAFETY: as above.
        let file: i64 = unsafe { Probed::load(mm, file_off) };
        // SAFETY: as above.
        let anon: i64 = unsafe { Probed::load(mm, layout!(mm_anon_pages)) };
        // SAFETY: as above.
        let shmem: i64 = unsafe { Probed::load(mm, layout!(mm_shmem_pages)) };
        // SAFETY: as above.
        let swap: i64 = unsafe { Probed::load(mm, layout!(mm_swap_entries)) };
        Some((file + anon + shmem, swap))
    }

    /// The thread's `css_set`, as an address: it changes whenever the thread moves to
    /// another cgroup in any hierarchy, so it keys the cached attribution.
    #[inline(always)]
    pub fn css_set(self) -> u64 {
        self.field::<*const u8>(layout!(task_cgroups)) as u64
    }

    /// Ids of the thread's cgroup in the attribution hierarchies: (cgroup v1, cgroup v2);
    /// 0 where that hierarchy is not used.
    #[inline(always)]
    pub fn cgroup_ids(self) -> (u64, u64) {
        let cset: *const u8 = self.field(layout!(task_cgroups));
        let v1_off = layout!(css_set_v1_subsys);
        let v1 = if v1_off != 0 {
            // SAFETY: cset is the task's css_set; subsys[id] is a cgroup_subsys_state.
            let css: *const u8 = unsafe { A::load(cset, v1_off) };
            // SAFETY: css is a cgroup_subsys_state, whose `cgroup` is a struct cgroup.
            let cgroup: *const u8 = unsafe { A::load(css, layout!(css_cgroup)) };
            cgroup_id::<A>(cgroup)
        } else {
            0
        };
        let v2_off = layout!(css_set_dfl_cgrp);
        let v2 = if v2_off != 0 {
            // SAFETY: cset is the task's css_set; dfl_cgrp is a struct cgroup.
            cgroup_id::<A>(unsafe { A::load(cset, v2_off) })
        } else {
            0
        };
        (v1, v2)
    }
}

/// The counters of a task's memory and cpu cgroups (see [`Task::memory_counters`] and
/// [`Task::cpu_counters`]).
#[derive(Clone, Copy)]
pub struct MemoryCounters {
    pub usage: i64,
    pub watermark: u64,
    pub swap: i64,
    pub kmem: i64,
    pub kmem_watermark: u64,
    pub oom_kills: i64,
}

#[derive(Clone, Copy)]
pub struct CpuCounters {
    pub nr_throttled: u32,
    pub throttled_ns: u64,
}

impl<A: Access> Task<A> {
    /// The task's css of the controller at `css_set` offset `subsys`, if that css is the
    /// one of cgroup `id`: a task cgroup where the controller is not enabled (cgroup v2)
    /// shares an ancestor's css, whose counters are not the task's.
    #[inline(always)]
    fn css_of(self, subsys: u32, id: u64) -> Option<*const u8> {
        if subsys == 0 || id == 0 {
            return None;
        }
        let cset: *const u8 = self.field(layout!(task_cgroups));
        // SAFETY: cset is the task's css_set; subsys[i] is a cgroup_subsys_state.
        let css: *const u8 = unsafe { A::load(cset, subsys) };
        // SAFETY: css is a cgroup_subsys_state, whose `cgroup` is a struct cgroup.
        let cgroup: *const u8 = unsafe { A::load(css, layout!(css_cgroup)) };
        (!css.is_null() && cgroup_id::<A>(cgroup) == id).then_some(css)
    }

    /// The page counters and OOM kills of the task's memory cgroup, if it is cgroup `id`.
    #[inline(always)]
    pub fn memory_counters(self, id: u64) -> Option<MemoryCounters> {
        let memcg = self.css_of(layout!(css_set_memory_subsys), id)?;
        let optional = |offset: u32| -> i64 {
            if offset == 0 {
                0
            } else {
                // SAFETY: as below, for an offset that this kernel has.
                unsafe { Probed::load(memcg, offset) }
            }
        };
        // Probed: the verifier types the pointer as the css, the first member of
        // struct mem_cgroup; the counters lie beyond it.
        // SAFETY (each load): memcg is a live mem_cgroup (its css is the task's, held by
        // the task's css_set while the task is); the offsets are its page counters'
        // `usage` (atomic_long_t) and `watermark` (unsigned long) and a memory_events
        // element (atomic_long_t), each 8 bytes.
        Some(MemoryCounters {
            // SAFETY: as above.
            usage: unsafe { Probed::load(memcg, layout!(memcg_usage)) },
            // SAFETY: as above.
            watermark: unsafe { Probed::load(memcg, layout!(memcg_watermark)) },
            swap: optional(layout!(memcg_swap_usage)),
            kmem: optional(layout!(memcg_kmem_usage)),
            kmem_watermark: optional(layout!(memcg_kmem_watermark)) as u64,
            // SAFETY: as above.
            oom_kills: unsafe { Probed::load(memcg, layout!(memcg_oom_kills)) },
        })
    }

    /// The CFS bandwidth counters of the task's cpu cgroup, if it is cgroup `id`.
    #[inline(always)]
    pub fn cpu_counters(self, id: u64) -> Option<CpuCounters> {
        if layout!(tg_throttled_time) == 0 {
            return None;
        }
        let tg = self.css_of(layout!(css_set_cpu_subsys), id)?;
        // Probed, as for the memory cgroup: the css is task_group's first member.
        // SAFETY (each load): tg is a live task_group (its css is the task's); the
        // offsets are its cfs_bandwidth's `int` counters and `u64` throttled_time.
        Some(CpuCounters {
            // SAFETY: as above.
            nr_throttled: unsafe { Probed::load(tg, layout!(tg_nr_throttled)) },
            // SAFETY: as above.
            throttled_ns: unsafe { Probed::load(tg, layout!(tg_throttled_time)) },
        })
    }
}

/// `cgroup->kn->id`: the id cgroupfs shows as the directory's inode number.
#[inline(always)]
pub fn cgroup_id<A: Access>(cgroup: *const u8) -> u64 {
    // SAFETY: callers pass a struct cgroup read with access A (a null one reads as 0).
    let kn: *const u8 = unsafe { A::load(cgroup, layout!(cgroup_kn)) };
    // SAFETY: a cgroup's kn is a kernfs_node, read with the same access (null reads 0).
    unsafe { A::load(kn, layout!(kernfs_node_id)) }
}
