//! Reading kernel structs through offsets resolved from BTF by the daemon.
//!
//! `LAYOUT` lives in `.rodata`, which aya freezes after writing it, so the verifier knows
//! every offset as a constant and checks each load against the kernel's BTF: these are
//! plain loads from trusted/RCU BTF pointers, not `bpf_probe_read_kernel` calls.

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
};

/// Reads one field of `LAYOUT`; volatile so that the compiler cannot fold the zeros above.
macro_rules! layout {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const LAYOUT.$field) };
        value
    }};
}

/// Loads a `T` at `base + offset`.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { *(base.add(offset as usize) as *const T) }
}

/// A `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

#[derive(Clone, Copy)]
pub struct CpuTimes {
    pub run: u64,
    pub user: u64,
    pub system: u64,
}

impl CpuTimes {
    pub const ZERO: Self = Self {
        run: 0,
        user: 0,
        system: 0,
    };

    /// What was last accounted for a thread.
    #[inline(always)]
    pub fn accounted(state: &ThreadState) -> Self {
        Self {
            run: state.run_ns,
            user: state.user_ns,
            system: state.system_ns,
        }
    }

    #[inline(always)]
    pub fn store(&self, state: &mut ThreadState) {
        state.run_ns = self.run;
        state.user_ns = self.user;
        state.system_ns = self.system;
    }

    /// `self - base`, never negative.
    #[inline(always)]
    pub fn since(&self, base: &Self) -> Self {
        Self {
            run: self.run.saturating_sub(base.run),
            user: self.user.saturating_sub(base.user),
            system: self.system.saturating_sub(base.system),
        }
    }
}

impl Task {
    #[inline(always)]
    pub unsafe fn pid(self) -> u32 {
        unsafe { load(self.0, layout!(task_pid)) }
    }

    #[inline(always)]
    pub unsafe fn tgid(self) -> u32 {
        unsafe { load(self.0, layout!(task_tgid)) }
    }

    #[inline(always)]
    pub unsafe fn flags(self) -> u32 {
        unsafe { load(self.0, layout!(task_flags)) }
    }

    #[inline(always)]
    pub unsafe fn start_time(self) -> u64 {
        unsafe { load(self.0, layout!(task_start_time)) }
    }

    #[inline(always)]
    pub unsafe fn cpu_times(self) -> CpuTimes {
        unsafe {
            CpuTimes {
                run: load(self.0, layout!(task_sum_exec_runtime)),
                user: load(self.0, layout!(task_utime)),
                system: load(self.0, layout!(task_stime)),
            }
        }
    }

    /// CPU of the process's threads that have already exited (`signal_struct`).
    #[inline(always)]
    pub unsafe fn exited_threads_times(self) -> CpuTimes {
        unsafe {
            let signal: *const u8 = load(self.0, layout!(task_signal));
            CpuTimes {
                run: load(signal, layout!(signal_sum_sched_runtime)),
                user: load(signal, layout!(signal_utime)),
                system: load(signal, layout!(signal_stime)),
            }
        }
    }

    /// (resident pages, swapped-out pages) of the process, as `/proc/<pid>/statm` and
    /// `VmSwap` read them; `None` when the layout is unknown or the task has no mm.
    #[inline(always)]
    pub unsafe fn memory_pages(self) -> Option<(i64, i64)> {
        let file_off = layout!(mm_file_pages);
        if file_off == 0 {
            return None;
        }
        unsafe {
            let mm: *const u8 = load(self.0, layout!(task_mm));
            if mm.is_null() {
                return None;
            }
            let file: i64 = load(mm, file_off);
            let anon: i64 = load(mm, layout!(mm_anon_pages));
            let shmem: i64 = load(mm, layout!(mm_shmem_pages));
            let swap: i64 = load(mm, layout!(mm_swap_entries));
            Some((file + anon + shmem, swap))
        }
    }

    /// The thread's `css_set`, as an address: it changes whenever the thread moves to
    /// another cgroup in any hierarchy, so it keys the cached attribution.
    #[inline(always)]
    pub unsafe fn css_set(self) -> u64 {
        unsafe { load::<*const u8>(self.0, layout!(task_cgroups)) as u64 }
    }

    /// Ids of the thread's cgroup in the attribution hierarchies: (cgroup v1, cgroup v2);
    /// 0 where that hierarchy is not used.
    #[inline(always)]
    pub unsafe fn cgroup_ids(self) -> (u64, u64) {
        unsafe {
            let cset: *const u8 = load(self.0, layout!(task_cgroups));
            let v1_off = layout!(css_set_v1_subsys);
            let v1 = if v1_off != 0 {
                let css: *const u8 = load(cset, v1_off);
                let cgroup: *const u8 = load(css, layout!(css_cgroup));
                cgroup_id(cgroup)
            } else {
                0
            };
            let v2_off = layout!(css_set_dfl_cgrp);
            let v2 = if v2_off != 0 {
                cgroup_id(load(cset, v2_off))
            } else {
                0
            };
            (v1, v2)
        }
    }
}

/// `cgroup->kn->id`: the id cgroupfs shows as the directory's inode number.
#[inline(always)]
unsafe fn cgroup_id(cgroup: *const u8) -> u64 {
    unsafe {
        let kn: *const u8 = load(cgroup, layout!(cgroup_kn));
        load(kn, layout!(kernfs_node_id))
    }
}
