//! Loading, attaching and reading the eBPF programs: [`KernelAccounting`].

use std::{
    io::Read,
    mem::size_of,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use aya::{
    maps::{
        Array, HashMap as BpfHashMap, IterableMap, MapData, MapError, MapInfo, MapType,
        PerCpuArray, RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs, BtfTracePoint, Iter, ProgramError, RawTracePoint, RawTracePointRunOptions,
        TestRun,
    },
    Btf as AyaBtf, Ebpf, EbpfError, EbpfLoader,
};
use collector_common::{
    control, kfunc as kfuncs, sample_flags, stat, CgroupCpu, CgroupSample, KernelLayout,
    RanThreads, SlotCgroups, ThreadEntry, ThreadSample, ThreadState, TrackedCgroup,
};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::heap;

use super::{
    btf::{Btf, BtfError},
    features::{Feature, KernelFeatures, Refusal, ThreadStateChoice, ThreadStateStore},
    kfunc,
    layout::{self, Attribution},
    pins::{MapShape, PinDir, PinError},
    sys,
};

/// The compiled programs, built by build.rs (aya-build): the same programs with each
/// thread's state in task storage (5.11+) or in a hash map keyed by task (5.10).
pub(crate) static TASK_STORAGE_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));
pub(crate) static THREAD_HASH_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector-thread-hash"));

const SWITCH_PROGRAM: &str = "sched_switch";
const CHECKPOINT_PROGRAM: &str = "checkpoint";
const ITER_PROGRAM: &str = "tracked_threads";
const TRACKED_MAP: &str = "TRACKED_CGROUPS";
const CGROUP_CPU_MAP: &str = "CGROUP_CPU";
const CONTROL_MAP: &str = "CONTROL";
const SLOT_CGROUPS_MAP: &str = "SLOT_CGROUPS";
const STATS_MAP: &str = "STATS";
const THREAD_STATE_MAP: &str = "THREAD_STATE";
const THREAD_HASH_MAP: &str = "THREAD_STATE_HASH";
const SWITCH_LINK_PIN: &str = "sched_switch_link";
const EMPTY_PROGRAM: &str = "sched_switch_empty";
const CGROUP_WALK_PROGRAM: &str = "tracked_cgroup_threads";
const SAMPLES_MAP: &str = "SAMPLES";
const RING_DROPS_MAP: &str = "RING_DROPS";
const RAN_THREADS_MAP: &str = "RAN_THREADS";
const RAN_SETS_ON_GLOBAL: &str = "RAN_SETS_ON";
/// The cgroup walk's ring buffer's default size: room for about 10,000 records a pass (96
/// bytes and an 8-byte header each). The walk makes only the passes that are not full
/// for every slot: the threads that ran, the slots full by turn (a tenth) or after an
/// exit, and the cgroup samples. A host-wide full pass (the first, and the one after a loss)
/// is the task walk's, which has no such bound. A pass that does not fit loses records,
/// and the daemon then makes a full pass. The kernel maps the ring's pages twice into the
/// daemon (so that a record can wrap), and both count in its RSS from the start: 4 MiB cost
/// 8 MiB of RSS at 10,000 processes; this costs 2.
pub const CGROUP_WALK_RING_BYTES: u32 = 1 << 20;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("loading eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("eBPF program or map `{0}` missing from the object")]
    Missing(&'static str),
    /// The kernel refused the program: the one line that says why.
    #[error("{0}")]
    Refused(String),
    #[error("pinning: {0}")]
    Pin(#[from] PinError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct KernelOptions {
    pub attribution: Attribution,
    /// Capacity of the tracked-cgroups map and of the counters array.
    pub max_tracked_cgroups: u32,
    /// Where to pin maps and the sched_switch link; `None` keeps nothing after exit.
    pub pin_root: Option<PathBuf>,
    /// Where threads' state is kept (`Auto`: task storage where the kernel has it).
    pub thread_state: ThreadStateChoice,
    /// Capacity of the per-thread hash map (kernels without task storage only).
    pub max_threads: u32,
    /// Mount points of the hierarchies threads are attributed by (the v1 controller's,
    /// cgroup2's), which the cgroup walk goes over; empty, every task on the host is
    /// walked instead.
    pub cgroup_roots: Vec<PathBuf>,
    /// Size of the cgroup walk's ring buffer ([`CGROUP_WALK_RING_BYTES`]; a power of
    /// two, at least a page).
    pub cgroup_walk_ring_bytes: u32,
}

/// What the programs counted (summed over CPUs), see `collector_common::stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub exits_folded: u64,
    pub exits_unseen: u64,
    pub storage_failed: u64,
    pub samples_deferred: u64,
    pub lookups: u64,
    pub ran_set_slots: u64,
    pub ran_set_overflows: u64,
}

/// (run count, run time ns) per program, as the kernel accounts them while
/// `kernel.bpf_stats_enabled` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub sched_switch: (u64, u64),
    pub checkpoint: (u64, u64),
    pub process_iter: (u64, u64),
}

/// Identifies the attached programs, for health reporting and tests.
#[derive(Clone, Debug)]
pub struct AttachedPrograms {
    pub sched_switch_id: u32,
    /// `None` where the kernel refused the program (see [`KernelFeatures`]).
    pub checkpoint_id: Option<u32>,
    pub process_iter_id: Option<u32>,
    /// The cgroup walk's (6.7+), which makes the passes that are not host-wide.
    pub cgroup_walk_id: Option<u32>,
    /// The sched_switch link was found pinned and kept (a restart), not attached anew.
    pub reused_pinned_link: bool,
}

/// Held for its `Drop`: an owned link detaches the program; a pinned one only closes
/// this process's descriptor and the program stays attached through the pin.
#[expect(dead_code, reason = "the links are only held, never read")]
enum SwitchLink {
    /// Attached by this process; detached when dropped.
    Owned(FdLink),
    /// Pinned: stays attached after this process exits.
    Pinned(PinnedLink),
}

/// The loaded and attached programs and the maps the daemon reads and writes.
pub struct KernelAccounting {
    ebpf: Ebpf,
    tracked: BpfHashMap<MapData, u64, TrackedCgroup>,
    cgroup_cpu: Array<MapData, CgroupCpu>,
    slot_cgroups: Array<MapData, SlotCgroups>,
    /// What the daemon last wrote to each slot of `slot_cgroups`, so that marking a
    /// slot's pass full rewrites it whole.
    slot_entries: Vec<SlotCgroups>,
    control: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    _switch_link: SwitchLink,
    /// The attached programs (ours, or the pinned one kept from a previous run); the
    /// optional ones are `None` where the kernel refused them.
    switch_prog_fd: OwnedFd,
    checkpoint_prog_fd: Option<OwnedFd>,
    iter_prog_fd: Option<OwnedFd>,
    /// The task iterator's link (over every task), opened again for each pass.
    iter_link: Option<OwnedFd>,
    /// Where the kernel has the css task iterator: the cgroup walk used instead.
    cgroup_walk: Option<CgroupWalk>,
    programs: AttachedPrograms,
    features: KernelFeatures,
    layout: KernelLayout,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// CPUs the checkpoint runs on (the configured ones; offline ones are skipped).
    cpus: u32,
    read_buf: Vec<u8>,
    /// The ran sets' bookkeeping, where the programs fill them.
    ran_sets: Option<RanSets>,
}

/// Where the context-switch program and the checkpoint put each thread that ran into
/// its slot's set (`RAN_THREADS`, see `collector_common::control::MARK`): the mark the
/// daemon last set, and whether the set the next walk reads is complete.
struct RanSets {
    mark: u64,
    /// Checkpoints of every CPU since the last pass, and whether one failed on a CPU: a
    /// set is complete after exactly one, none failed.
    checkpoints: u32,
    failed: bool,
}

/// The cgroup walk (`tracked_cgroup_threads`): one iterator link per hierarchy, and the
/// ring buffer its records come through.
struct CgroupWalk {
    prog_fd: OwnedFd,
    links: Vec<OwnedFd>,
    ring: RingBuf<MapData>,
    drops: Array<MapData, u64>,
    /// `RING_DROPS` after the last pass.
    drops_seen: u64,
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// The maps pinned for a build: those a kept context-switch program writes.
fn pinned_maps(store: ThreadStateStore) -> Vec<&'static str> {
    let mut maps = vec![
        TRACKED_MAP,
        CGROUP_CPU_MAP,
        CONTROL_MAP,
        STATS_MAP,
        thread_map(store),
    ];
    if store == ThreadStateStore::TaskStorage {
        maps.push(RAN_THREADS_MAP);
    }
    maps
}

fn thread_map(store: ThreadStateStore) -> &'static str {
    match store {
        ThreadStateStore::TaskStorage => THREAD_STATE_MAP,
        ThreadStateStore::Hash => THREAD_HASH_MAP,
    }
}

fn object(store: ThreadStateStore) -> &'static [u8] {
    match store {
        ThreadStateStore::TaskStorage => TASK_STORAGE_PROGRAMS,
        ThreadStateStore::Hash => THREAD_HASH_PROGRAMS,
    }
}

/// The shapes the pinned maps must have for this build and configuration.
fn map_shapes(store: ThreadStateStore, options: &KernelOptions) -> Vec<MapShape> {
    let max_tracked = options.max_tracked_cgroups;
    let thread = match store {
        ThreadStateStore::TaskStorage => MapShape {
            name: THREAD_STATE_MAP,
            map_type: MapType::TaskStorage,
            key_size: size_of::<i32>() as u32,
            value_size: size_of::<ThreadState>() as u32,
            max_entries: 0,
        },
        ThreadStateStore::Hash => MapShape {
            name: THREAD_HASH_MAP,
            map_type: MapType::Hash,
            key_size: size_of::<u64>() as u32,
            value_size: size_of::<ThreadEntry>() as u32,
            max_entries: options.max_threads,
        },
    };
    let mut shapes = vec![
        MapShape {
            name: TRACKED_MAP,
            map_type: MapType::Hash,
            key_size: size_of::<u64>() as u32,
            value_size: size_of::<TrackedCgroup>() as u32,
            max_entries: max_tracked,
        },
        MapShape {
            name: CGROUP_CPU_MAP,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<CgroupCpu>() as u32,
            max_entries: max_tracked,
        },
        MapShape {
            name: CONTROL_MAP,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u64>() as u32,
            max_entries: control::COUNT,
        },
        MapShape {
            name: STATS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u64>() as u32,
            max_entries: stat::COUNT,
        },
        thread,
    ];
    if store == ThreadStateStore::TaskStorage {
        shapes.push(MapShape {
            name: RAN_THREADS_MAP,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<RanThreads>() as u32,
            max_entries: max_tracked,
        });
    }
    shapes
}

/// The stores to try, in order: task storage first where the kernel has the map type
/// (a kernel that has it but refuses it in tracing programs then gets the hash map).
fn stores_to_try(choice: ThreadStateChoice) -> Vec<ThreadStateStore> {
    match choice {
        ThreadStateChoice::Only(store) => vec![store],
        ThreadStateChoice::Auto => match aya::sys::is_map_supported(MapType::TaskStorage) {
            Ok(true) => vec![ThreadStateStore::TaskStorage, ThreadStateStore::Hash],
            supported => {
                warn!(
                    probe = ?supported,
                    "this kernel has no task storage (5.11+): each thread's state is kept \
                     in a hash map keyed by task instead (exact; costs a hash lookup per \
                     context switch and ebpf.max_threads entries of kernel memory)"
                );
                vec![ThreadStateStore::Hash]
            }
        },
    }
}

fn reading_btf_err(e: impl std::fmt::Display) -> KernelError {
    KernelError::Io {
        what: "reading /sys/kernel/btf/vmlinux",
        source: std::io::Error::other(e.to_string()),
    }
}

fn configured_cpus() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).unwrap_or(1).max(1)
}

impl KernelAccounting {
    /// Loads the programs, attaches them, and opens the maps. Only the context-switch
    /// program is required; the checkpoint and the per-process iterator are loaded on
    /// their own, and one the kernel refuses is turned off with the reason (see
    /// [`KernelAccounting::features`]).
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        let btf = Btf::from_sys_fs()?;
        let layout = layout::resolve(&btf, &options.attribution);
        let kfunc_ids: Vec<(&'static str, u32)> = kfuncs::ALL
            .iter()
            .filter_map(|&(_, name)| btf.func_id(name).map(|id| (name, id)))
            .collect();
        drop(btf);
        // Each parse of the kernel's BTF takes 15-20 MiB for a moment: one at a time, each
        // freed and handed back before the next, so that start-up does not set the
        // daemon's peak memory (see `load_build`).
        heap::release_free_memory();
        let layout = layout?;
        let stores = stores_to_try(options.thread_state);
        let mut failure = None;
        for (i, &store) in stores.iter().enumerate() {
            match Self::load_build(options, store, &layout, &kfunc_ids) {
                Ok(kernel) => return Ok(kernel),
                Err(e) => {
                    if i + 1 < stores.len() {
                        warn!(
                            build = store.build_name(),
                            error = %e,
                            "this kernel refused the programs' build; trying the next one"
                        );
                    }
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or(KernelError::Missing(SWITCH_PROGRAM)))
    }

    fn load_build(
        options: &KernelOptions,
        store: ThreadStateStore,
        layout: &KernelLayout,
        kfunc_ids: &[(&'static str, u32)],
    ) -> Result<Self, KernelError> {
        let pins = options
            .pin_root
            .as_deref()
            .map(|root| PinDir::for_build(root, store.build_name()));
        // aya's loader parses the kernel's BTF itself when it is made (for CO-RE
        // relocations, which these programs have none of: their offsets come in LAYOUT).
        let mut loader = EbpfLoader::new();
        loader
            // THREAD_STATE is task storage, which aya only loads on request.
            .allow_unsupported_maps()
            .override_global("LAYOUT", layout, true)
            .map_max_entries(TRACKED_MAP, options.max_tracked_cgroups)
            .map_max_entries(CGROUP_CPU_MAP, options.max_tracked_cgroups)
            .map_max_entries(SLOT_CGROUPS_MAP, options.max_tracked_cgroups)
            .map_max_entries(RAN_THREADS_MAP, options.max_tracked_cgroups);
        // The ran sets are filled where the cgroup walk can read them: its kfuncs and its
        // own (`missing_kfuncs` below), and a hierarchy to walk. Elsewhere the programs
        // skip that code (the flag is read-only data, which the verifier prunes by).
        let ran_sets_on = store == ThreadStateStore::TaskStorage
            && !options.cgroup_roots.is_empty()
            && kfuncs::ALL
                .iter()
                .all(|(_, name)| kfunc_ids.iter().any(|(n, _)| n == name));
        let ran_sets_flag = u32::from(ran_sets_on);
        loader.override_global(
            RAN_SETS_ON_GLOBAL,
            &ran_sets_flag,
            store == ThreadStateStore::TaskStorage,
        );
        match store {
            ThreadStateStore::Hash => loader.map_max_entries(THREAD_HASH_MAP, options.max_threads),
            ThreadStateStore::TaskStorage => {
                loader.map_max_entries(SAMPLES_MAP, options.cgroup_walk_ring_bytes)
            }
        };
        let pin_paths;
        if let Some(pins) = &pins {
            pins.prepare()?;
            if pins.keep_if_consistent(&map_shapes(store, options))? {
                info!(path = %pins.dir().display(), "reusing pinned eBPF maps: counters continue");
            }
            pin_paths = pinned_maps(store)
                .into_iter()
                .map(|name| (name, pins.path(name)))
                .collect::<Vec<_>>();
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        }
        // The programs' kfunc calls are placeholders until patched (see `kfunc`); one
        // this kernel lacks stays one, and only the program that makes it is refused.
        let mut patched_object = object(store).to_vec();
        let patched = kfunc::patch_calls(&mut patched_object, &kfuncs::ALL, |name| {
            kfunc_ids
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, id)| id)
        })
        .map_err(|e| KernelError::Refused(e.to_string()))?;
        let mut ebpf = loader.load(&patched_object)?;
        drop(patched_object);
        // The loader's BTF is freed before the one the programs' attach points are looked
        // up in is parsed: two parses at once set a peak RSS of 43-45 MiB, one at a time
        // 29-30 MiB (BENCHMARKS.md, VmHWM).
        drop(loader);
        heap::release_free_memory();
        let aya_btf = &AyaBtf::from_sys_fs().map_err(reading_btf_err)?;
        // The programs log their rare failures with aya-log; drained after each read.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };

        // Required: without it there is no kernel-side accounting at all.
        let switch: &mut BtfTracePoint = ebpf
            .program_mut(SWITCH_PROGRAM)
            .ok_or(KernelError::Missing(SWITCH_PROGRAM))?
            .try_into()
            .map_err(program_err(SWITCH_PROGRAM))?;
        switch
            .load("sched_switch", aya_btf)
            .map_err(|e| refused(SWITCH_PROGRAM, &e))?;
        let ours = switch.info().map_err(program_err(SWITCH_PROGRAM))?;

        let checkpoint_prog_fd = load_optional(CHECKPOINT_PROGRAM, || {
            let checkpoint: &mut RawTracePoint = ebpf
                .program_mut(CHECKPOINT_PROGRAM)
                .ok_or(KernelError::Missing(CHECKPOINT_PROGRAM))?
                .try_into()
                .map_err(program_err(CHECKPOINT_PROGRAM))?;
            checkpoint
                .load()
                .map_err(|e| refused(CHECKPOINT_PROGRAM, &e))?;
            probe_checkpoint(checkpoint)?;
            prog_fd(checkpoint.fd(), CHECKPOINT_PROGRAM)
        });
        let iter = load_optional(ITER_PROGRAM, || {
            let iter: &mut Iter = ebpf
                .program_mut(ITER_PROGRAM)
                .ok_or(KernelError::Missing(ITER_PROGRAM))?
                .try_into()
                .map_err(program_err(ITER_PROGRAM))?;
            iter.load("task", aya_btf)
                .map_err(|e| refused(ITER_PROGRAM, &e))?;
            let fd = prog_fd(iter.fd(), ITER_PROGRAM)?;
            let link = sys::task_iter_link_create(fd.as_fd()).map_err(|e| {
                KernelError::Refused(format!("{ITER_PROGRAM}: creating its link: {e}"))
            })?;
            probe_task_iter(link.as_fd())?;
            Ok((fd, link))
        });
        let (iter_prog_fd, iter_link) = match iter {
            Ok((fd, link)) => (Ok(fd), Some(link)),
            Err(e) => (Err(e), None),
        };
        // The cgroup walk only replaces the task walk pass by pass (which stays the
        // fallback), so it is tried only where the task walk works.
        let cgroup_walk = match &iter_prog_fd {
            Ok(_) if store == ThreadStateStore::Hash => Err(KernelError::Refused(
                "the thread-hash build (for kernels without task storage) has no cgroup walk"
                    .to_owned(),
            )),
            Ok(_) => load_cgroup_walk(&mut ebpf, aya_btf, &patched.missing, options),
            Err(_) => Err(KernelError::Refused(
                "the task iterator is off, and the cgroup walk needs it as its fallback".to_owned(),
            )),
        };
        if let Err(e) = &cgroup_walk {
            warn!(
                reason = %e,
                "!!! the cgroup walk is off on this kernel: every pass walks every task on \
                 the host, not only the tracked cgroups' threads"
            );
        }
        let features = KernelFeatures {
            thread_state: store,
            checkpoint: feature_of(&checkpoint_prog_fd),
            process_iter: feature_of(&iter_prog_fd),
            cgroup_walk: match &cgroup_walk {
                Ok(_) => Feature::on(),
                Err(e) => Feature::off(e.to_string()),
            },
            cgroup_counters: match (&iter_prog_fd, layout.css_set_memory_subsys) {
                (Err(_), _) => Feature::off(
                    "the task iterator is off: cgroup memory and throttling counters are \
                     read from the control files",
                ),
                (Ok(_), 0) => Feature::off(
                    "this kernel's struct mem_cgroup is not one this daemon knows (BTF): \
                     cgroup memory and throttling counters are read from the control files",
                ),
                (Ok(_), _) => Feature::on(),
            },
            cpu_wait: if layout.task_run_delay != 0 {
                Feature::on()
            } else {
                Feature::off(
                    "this kernel keeps no run-queue delay (task_struct.sched_info, \
                     CONFIG_SCHED_INFO): CPU wait is not reported",
                )
            },
        };
        if !features.cgroup_counters.enabled {
            warn!(reason = ?features.cgroup_counters.reason, "reading cgroup counters in the kernel is off");
        }
        if !features.cpu_wait.enabled {
            warn!(reason = ?features.cpu_wait.reason, "CPU wait per task is off");
        }
        let id_of = |fd: &Result<OwnedFd, KernelError>| {
            fd.as_ref()
                .ok()
                .and_then(|fd| sys::prog_id(fd.as_fd()).ok())
        };
        let (checkpoint_id, process_iter_id) = (id_of(&checkpoint_prog_fd), id_of(&iter_prog_fd));
        let cgroup_walk_id = cgroup_walk
            .as_ref()
            .ok()
            .and_then(|walk| sys::prog_id(walk.prog_fd.as_fd()).ok());

        let switch: &mut BtfTracePoint = ebpf
            .program_mut(SWITCH_PROGRAM)
            .ok_or(KernelError::Missing(SWITCH_PROGRAM))?
            .try_into()
            .map_err(program_err(SWITCH_PROGRAM))?;
        let (switch_link, sched_switch_id, reused, switch_prog_fd) = match pins
            .as_ref()
            .and_then(|pins| reuse_pinned_switch_link(pins, store, &ours))
        {
            Some((link, id, fd)) => (SwitchLink::Pinned(link), id, true, fd),
            None => {
                let link_id = switch.attach().map_err(program_err(SWITCH_PROGRAM))?;
                let link: FdLink = switch
                    .take_link(link_id)
                    .map_err(program_err(SWITCH_PROGRAM))?
                    .into();
                let link = match &pins {
                    Some(pins) => {
                        SwitchLink::Pinned(link.pin(pins.path(SWITCH_LINK_PIN)).map_err(|e| {
                            KernelError::Io {
                                what: "pinning the sched_switch link",
                                source: std::io::Error::other(e.to_string()),
                            }
                        })?)
                    }
                    None => SwitchLink::Owned(link),
                };
                let fd = prog_fd(switch.fd(), SWITCH_PROGRAM)?;
                (link, ours.id(), false, fd)
            }
        };

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(KernelError::Missing(name))
        };
        let control: Array<MapData, u64> =
            Array::try_from(take(&mut ebpf, CONTROL_MAP)?).map_err(map_err(CONTROL_MAP))?;
        // Without the walk nothing reads the sets, and the mark stays where it is.
        let ran_sets = match (ran_sets_on, &cgroup_walk) {
            (true, Ok(_)) => Some(RanSets {
                mark: control
                    .get(&control::MARK, 0)
                    .map_err(map_err(CONTROL_MAP))?,
                checkpoints: 0,
                failed: false,
            }),
            _ => None,
        };
        let tracked =
            BpfHashMap::try_from(take(&mut ebpf, TRACKED_MAP)?).map_err(map_err(TRACKED_MAP))?;
        let cgroup_cpu =
            Array::try_from(take(&mut ebpf, CGROUP_CPU_MAP)?).map_err(map_err(CGROUP_CPU_MAP))?;
        let slot_cgroups = Array::try_from(take(&mut ebpf, SLOT_CGROUPS_MAP)?)
            .map_err(map_err(SLOT_CGROUPS_MAP))?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?).map_err(map_err(STATS_MAP))?;

        Ok(Self {
            ebpf,
            tracked,
            cgroup_cpu,
            slot_cgroups,
            slot_entries: Vec::new(),
            control,
            stats,
            _switch_link: switch_link,
            switch_prog_fd,
            checkpoint_prog_fd: checkpoint_prog_fd.ok(),
            iter_prog_fd: iter_prog_fd.ok(),
            iter_link,
            cgroup_walk: cgroup_walk.ok(),
            programs: AttachedPrograms {
                sched_switch_id,
                checkpoint_id,
                process_iter_id,
                cgroup_walk_id,
                reused_pinned_link: reused,
            },
            features,
            layout: *layout,
            logger,
            cpus: configured_cpus(),
            read_buf: Vec::new(),
            ran_sets,
        })
    }

    /// What runs in the kernel and what was turned off, with the reasons.
    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    pub fn programs(&self) -> &AttachedPrograms {
        &self.programs
    }

    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// Whether the iterator reads per-process memory itself.
    pub fn reads_process_memory(&self) -> bool {
        self.layout.mm_file_pages != 0
    }

    /// Whether per-process figures can come from the kernel (the task iterator loaded).
    pub fn samples_processes(&self) -> bool {
        self.iter_prog_fd.is_some()
    }

    /// Every tracked cgroup in the kernel map (after a restart: what the pins kept).
    pub fn tracked_entries(&self) -> Result<Vec<(u64, TrackedCgroup)>, KernelError> {
        let mut out = Vec::new();
        sys::lookup_batch(self.tracked.map().fd().as_fd(), 1024, &mut out).map_err(|source| {
            KernelError::Io {
                what: "batch-reading the tracked cgroups",
                source,
            }
        })?;
        Ok(out)
    }

    /// Starts attributing threads of cgroup `id` to `entry.slot`, whose counters are
    /// zeroed first. Returns false when the map is full. The programs see the new entry
    /// once the generation is bumped ([`KernelAccounting::set_generation`]).
    pub fn track(&mut self, id: u64, entry: TrackedCgroup) -> Result<bool, KernelError> {
        self.cgroup_cpu
            .set(entry.slot, CgroupCpu::default(), 0)
            .map_err(map_err(CGROUP_CPU_MAP))?;
        match self.tracked.insert(id, entry, 0) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Ok(false)
            }
            Err(source) => Err(KernelError::Map {
                name: TRACKED_MAP,
                source,
            }),
        }
    }

    /// Registers the memory and cpu cgroups (ids; 0 = none) whose counters the task
    /// iterator reports with `slot`, replacing what the slot had.
    pub fn set_slot_cgroups(
        &mut self,
        slot: u32,
        memory_id: u64,
        cpu_id: u64,
    ) -> Result<(), KernelError> {
        let entry = SlotCgroups {
            memory_id,
            cpu_id,
            ..SlotCgroups::default()
        };
        self.slot_cgroups
            .set(slot, entry, 0)
            .map_err(map_err(SLOT_CGROUPS_MAP))?;
        let index = slot as usize;
        if self.slot_entries.len() <= index {
            self.slot_entries.resize(index + 1, SlotCgroups::default());
        }
        self.slot_entries[index] = entry;
        Ok(())
    }

    /// Makes the task iterator report every thread of `slot` in pass `pass`.
    pub fn mark_full(&mut self, slot: u32, pass: u64) -> Result<(), KernelError> {
        let mut entry = self
            .slot_entries
            .get(slot as usize)
            .copied()
            .unwrap_or_default();
        entry.full_pass = pass;
        // The iterator's fields go back to 0 with it, harmlessly: `session` and
        // `decided_session` are only compared with the session of a pass, and the
        // slot's `seen_run_ns` is taken again in this pass, which is full anyway.
        self.slot_cgroups
            .set(slot, entry, 0)
            .map_err(map_err(SLOT_CGROUPS_MAP))
    }

    /// Stops tracking cgroup `id`. Absent ids are fine.
    pub fn untrack(&mut self, id: u64) {
        let _ = self.tracked.remove(&id);
    }

    /// The generation the programs compare their cached attributions with.
    pub fn generation(&self) -> Result<u64, KernelError> {
        self.control
            .get(&control::GENERATION, 0)
            .map_err(map_err(CONTROL_MAP))
    }

    /// Makes every thread look its cgroup up again at its next switch.
    pub fn set_generation(&mut self, generation: u64) -> Result<(), KernelError> {
        self.control
            .set(control::GENERATION, generation, 0)
            .map_err(map_err(CONTROL_MAP))
    }

    /// Accounts the thread running on every CPU up to now (its last context switch may
    /// be long ago), one `BPF_PROG_TEST_RUN` per CPU. Returns how many CPUs failed
    /// (offline ones are skipped silently).
    pub fn checkpoint(&mut self) -> u32 {
        if self.checkpoint_prog_fd.is_none() {
            return 0; // turned off at start-up, and said so then
        }
        let Some(program) = self.ebpf.program(CHECKPOINT_PROGRAM) else {
            return self.cpus;
        };
        let Ok(program): Result<&RawTracePoint, _> = program.try_into() else {
            return self.cpus;
        };
        // The threads that run from now on go into the next sets; the runs below order
        // every switch that saw the old mark before the next walk (see `control::MARK`).
        if let Some(sets) = &mut self.ran_sets {
            sets.checkpoints += 1;
            sets.mark += 1;
            if self.control.set(control::MARK, sets.mark, 0).is_err() {
                sets.failed = true;
            }
        }
        let mut failed = 0;
        for cpu in 0..self.cpus {
            let options = RawTracePointRunOptions {
                cpu: Some(cpu),
                ..RawTracePointRunOptions::default()
            };
            match program.test_run(options) {
                Ok(_) => {}
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENXIO) => {}
                Err(_) => failed += 1,
            }
        }
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        if let Some(sets) = &mut self.ran_sets {
            sets.failed |= failed > 0;
        }
        failed
    }

    /// The counters of slots `0..count` (one batch read).
    pub fn read_cgroup_cpu(&self, count: u32, out: &mut Vec<CgroupCpu>) -> Result<(), KernelError> {
        sys::lookup_array_prefix(self.cgroup_cpu.map().fd().as_fd(), count, out).map_err(|source| {
            KernelError::Io {
                what: "batch-reading the cgroup counters",
                source,
            }
        })
    }

    /// Makes one pass over the tracked threads and replaces `threads` with one sample
    /// per thread of a tracked cgroup and `cgroups` with the counters of the tracked
    /// cgroups it could read them for.
    ///
    /// `pass` numbers the pass (see `control::PASS`); with `full`, every thread is
    /// reported, else only those that ran since their last record and those of the
    /// slots marked full for this pass ([`KernelAccounting::mark_full`]). A full pass
    /// is the task iterator's, over every task on the host; the others are the cgroup
    /// walk's where it is on (`features().cgroup_walk`), over the threads of the tracked
    /// cgroups that have something to report. `Err` when the walk's ring overflowed: the
    /// pass is lost, and the caller's next must be full.
    pub fn sample_tracked_threads(
        &mut self,
        pass: u64,
        full: bool,
        threads: &mut Vec<ThreadSample>,
        cgroups: &mut Vec<CgroupSample>,
    ) -> Result<(), KernelError> {
        let io = |what| move |source| KernelError::Io { what, source };
        let Some(link) = &self.iter_link else {
            return Err(KernelError::Missing(ITER_PROGRAM));
        };
        if full {
            self.control
                .set(control::FULL_PASS, pass, 0)
                .map_err(map_err(CONTROL_MAP))?;
        }
        self.control
            .set(control::PASS, pass, 0)
            .map_err(map_err(CONTROL_MAP))?;
        if let Some(sets) = &mut self.ran_sets {
            // The sets a walk reads hold every thread that ran since the walk before
            // only if exactly one checkpoint of every CPU came between the two.
            let valid = sets.checkpoints == 1 && !sets.failed;
            sets.checkpoints = 0;
            sets.failed = false;
            self.control
                .set(control::RAN_SETS_VALID, u64::from(valid), 0)
                .map_err(map_err(CONTROL_MAP))?;
        }
        self.read_buf.clear();
        match &mut self.cgroup_walk {
            // A host-wide full pass reports every tracked thread: more than the walk's
            // ring is sized for, and rare (see `CGROUP_WALK_RING_BYTES`).
            Some(walk) if !full => walk.run(&mut self.read_buf)?,
            _ => {
                let mut file =
                    sys::iter_create(link.as_fd()).map_err(io("opening the task iterator"))?;
                file.read_to_end(&mut self.read_buf)
                    .map_err(io("reading the task iterator"))?;
            }
        }
        threads.clear();
        cgroups.clear();
        for record in self.read_buf.chunks_exact(size_of::<ThreadSample>()) {
            match record_of(record) {
                Record::Thread(t) => threads.push(t),
                Record::Cgroup(c) => cgroups.push(c),
            }
        }
        Ok(())
    }

    /// Run count and total run time of each program, as the kernel accounts them while
    /// `kernel.bpf_stats_enabled` is set (zeros otherwise).
    pub fn program_run_stats(&self) -> ProgramRunStats {
        let stats = |fd: Option<&OwnedFd>| {
            fd.and_then(|fd| sys::prog_run_stats(fd.as_fd()).ok())
                .unwrap_or_default()
        };
        ProgramRunStats {
            sched_switch: stats(Some(&self.switch_prog_fd)),
            checkpoint: stats(self.checkpoint_prog_fd.as_ref()),
            process_iter: {
                let (task_runs, task_ns) = stats(self.iter_prog_fd.as_ref());
                let (walk_runs, walk_ns) = stats(self.cgroup_walk.as_ref().map(|w| &w.prog_fd));
                (task_runs + walk_runs, task_ns + walk_ns)
            },
        }
    }

    pub fn stats(&self) -> KernelStats {
        let slot = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelStats {
            exits_folded: slot(stat::EXITS_FOLDED),
            exits_unseen: slot(stat::EXITS_UNSEEN),
            storage_failed: slot(stat::STORAGE_FAILED),
            samples_deferred: slot(stat::SAMPLES_DEFERRED),
            lookups: slot(stat::LOOKUPS),
            ran_set_slots: slot(stat::RAN_SET_SLOTS),
            ran_set_overflows: slot(stat::RAN_SET_OVERFLOWS),
        }
    }
}

/// The do-nothing sched_switch program, attached while this is held (see
/// [`attach_empty_probe`]).
pub struct EmptyProbe {
    _ebpf: Ebpf,
}

/// Attaches only the empty sched_switch program: what the tracepoint costs with any
/// program on it, the floor under the accounting program's cost (for the benchmark).
pub fn attach_empty_probe() -> Result<EmptyProbe, KernelError> {
    let store = *stores_to_try(ThreadStateChoice::Auto)
        .first()
        .unwrap_or(&ThreadStateStore::Hash);
    // One BTF parse at a time, as in `KernelAccounting::load_build`.
    let mut ebpf = EbpfLoader::new()
        .allow_unsupported_maps()
        .load(object(store))?;
    heap::release_free_memory();
    let btf = AyaBtf::from_sys_fs().map_err(reading_btf_err)?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(EMPTY_PROGRAM)
        .ok_or(KernelError::Missing(EMPTY_PROGRAM))?
        .try_into()
        .map_err(program_err(EMPTY_PROGRAM))?;
    program
        .load("sched_switch", &btf)
        .map_err(program_err(EMPTY_PROGRAM))?;
    program.attach().map_err(program_err(EMPTY_PROGRAM))?;
    Ok(EmptyProbe { _ebpf: ebpf })
}

/// Keeps a pinned sched_switch link when its program is this build's program on this
/// process's maps; otherwise unpins it (detaching it) so that ours is attached instead.
fn reuse_pinned_switch_link(
    pins: &PinDir,
    store: ThreadStateStore,
    ours: &aya::programs::ProgramInfo,
) -> Option<(PinnedLink, u32, OwnedFd)> {
    let path = pins.path(SWITCH_LINK_PIN);
    if !path.exists() {
        return None;
    }
    let pinned = match PinnedLink::from_pin(&path) {
        Ok(link) => link,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable pinned link; replacing it");
            let _ = std::fs::remove_file(&path);
            return None;
        }
    };
    let prog_id = FdLink::from(pinned)
        .info()
        .ok()
        .map(|info| info.program_id());
    let theirs = prog_id.and_then(|id| {
        loaded_programs()
            .flatten()
            .find(|program| program.id() == id)
    });
    // Same code, and it writes the maps this process opened from the pins (each load
    // has its own .rodata and log buffer, so only the pinned maps are compared). Its
    // log buffer is the old process's, so its rare log lines are not forwarded; what it
    // logs is counted in the pinned STATS map too.
    let pinned_map_ids: Vec<u32> = pinned_maps(store)
        .iter()
        .filter_map(|name| MapInfo::from_pin(pins.path(name)).ok())
        .map(|info| info.id())
        .collect();
    let same = theirs.as_ref().is_some_and(|theirs| {
        let theirs_maps = theirs.map_ids().ok().flatten().unwrap_or_default();
        theirs.tag() == ours.tag()
            && !pinned_map_ids.is_empty()
            && pinned_map_ids.iter().all(|id| theirs_maps.contains(id))
    });
    if let (true, Some(theirs)) = (same, theirs) {
        let id = theirs.id();
        info!(
            program_id = id,
            "kept the pinned sched_switch program (it never stopped counting)"
        );
        let fd = theirs.fd().ok().and_then(|fd| dup_fd(fd.as_fd()).ok());
        match (PinnedLink::from_pin(&path), fd) {
            (Ok(link), Some(fd)) => return Some((link, id, fd)),
            _ => warn!("reopening the pinned link or its program failed; attaching anew"),
        }
    } else {
        warn!(
            path = %path.display(),
            "pinned sched_switch program is another build or uses other maps; replacing it"
        );
    }
    let _ = std::fs::remove_file(&path);
    None
}

/// The kernel refused `program`: its one-line reason at error level by the caller, the
/// whole verifier log here at debug level.
fn refused(program: &'static str, error: &ProgramError) -> KernelError {
    let refusal = Refusal::of(program, error);
    if let Some(log) = &refusal.log {
        debug!(program, verifier_log = %log, "the verifier's whole log");
    }
    KernelError::Refused(refusal.reason)
}

impl CgroupWalk {
    /// One pass: each hierarchy's walk, then the ring's records appended to `out`.
    /// `Err` when records did not fit in the ring: the caller's pass is lost, and its
    /// next one is full (the task walk).
    fn run(&mut self, out: &mut Vec<u8>) -> Result<(), KernelError> {
        let io = |what| move |source| KernelError::Io { what, source };
        for link in &self.links {
            let mut file = sys::iter_create(link.as_fd()).map_err(io("opening the cgroup walk"))?;
            // Nothing comes through the seq_file (a cgroup iterator cannot resume a walk
            // in a second read()): this read runs the whole walk.
            file.read_to_end(out)
                .map_err(io("running the cgroup walk"))?;
        }
        while let Some(record) = self.ring.next() {
            out.extend_from_slice(&record);
        }
        let drops = self.drops.get(&0, 0).map_err(map_err(RING_DROPS_MAP))?;
        if drops != self.drops_seen {
            self.drops_seen = drops;
            warn!(
                drops,
                "the cgroup walk's records did not fit in its ring buffer; this pass is \
                 lost and the next one is full, walking every task"
            );
            return Err(KernelError::Io {
                what: "the cgroup walk",
                source: std::io::Error::other("its ring buffer was full: records lost"),
            });
        }
        Ok(())
    }
}

/// Loads the cgroup walk and links it to each hierarchy of `options.cgroup_roots`.
fn load_cgroup_walk(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    missing_kfuncs: &[&str],
    options: &KernelOptions,
) -> Result<CgroupWalk, KernelError> {
    if !missing_kfuncs.is_empty() {
        return Err(KernelError::Refused(format!(
            "{CGROUP_WALK_PROGRAM}: this kernel lacks {} (the css task iterator, 6.7+)",
            missing_kfuncs.join(", ")
        )));
    }
    if options.cgroup_roots.is_empty() {
        return Err(KernelError::Refused(format!(
            "{CGROUP_WALK_PROGRAM}: no cgroup hierarchy to walk"
        )));
    }
    let program: &mut Iter = ebpf
        .program_mut(CGROUP_WALK_PROGRAM)
        .ok_or(KernelError::Missing(CGROUP_WALK_PROGRAM))?
        .try_into()
        .map_err(program_err(CGROUP_WALK_PROGRAM))?;
    program
        .load("cgroup", btf)
        .map_err(|e| refused(CGROUP_WALK_PROGRAM, &e))?;
    if let Ok(info) = program.info() {
        info!(
            verified_insns = ?info.verified_instruction_count(),
            "the cgroup walk passed the verifier"
        );
    }
    let prog_fd = prog_fd(program.fd(), CGROUP_WALK_PROGRAM)?;
    let links = options
        .cgroup_roots
        .iter()
        .map(|root| {
            let dir = std::fs::File::open(root).map_err(|source| KernelError::Io {
                what: "opening a cgroup hierarchy for the cgroup walk",
                source,
            })?;
            sys::cgroup_iter_link_create(prog_fd.as_fd(), dir.as_fd()).map_err(|e| {
                KernelError::Refused(format!(
                    "{CGROUP_WALK_PROGRAM}: creating its link on {}: {e}",
                    root.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let take =
        |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(KernelError::Missing(name));
    let ring = RingBuf::try_from(take(ebpf, SAMPLES_MAP)?).map_err(map_err(SAMPLES_MAP))?;
    let drops = Array::try_from(take(ebpf, RING_DROPS_MAP)?).map_err(map_err(RING_DROPS_MAP))?;
    Ok(CgroupWalk {
        prog_fd,
        links,
        ring,
        drops,
        drops_seen: 0,
    })
}

/// Runs `load` for an optional program; a failure turns only that program off, loudly.
fn load_optional<T>(
    program: &'static str,
    load: impl FnOnce() -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    let loaded = load();
    if let Err(e) = &loaded {
        error!(
            program,
            reason = %e,
            "!!! eBPF program turned off on this kernel: {}",
            match program {
                CHECKPOINT_PROGRAM =>
                    "a running thread's current slice is counted at its next context switch \
                     instead of at each read",
                _ => "per-process figures (Pids) are read from /proc, process by process \
                      (Nomad's cost)",
            }
        );
    }
    loaded
}

fn feature_of(loaded: &Result<OwnedFd, KernelError>) -> Feature {
    match loaded {
        Ok(_) => Feature::on(),
        Err(e) => Feature::off(e.to_string()),
    }
}

fn prog_fd(
    fd: Result<&aya::programs::ProgramFd, ProgramError>,
    name: &'static str,
) -> Result<OwnedFd, KernelError> {
    dup_fd(fd.map_err(program_err(name))?.as_fd())
}

/// Test-runs the checkpoint on one CPU: a kernel that loads it but cannot run it on a
/// chosen CPU (`BPF_F_TEST_RUN_ON_CPU`, 5.10+) has no checkpoint either.
fn probe_checkpoint(program: &RawTracePoint) -> Result<(), KernelError> {
    let options = RawTracePointRunOptions {
        cpu: Some(0),
        ..RawTracePointRunOptions::default()
    };
    match program.test_run(options) {
        Ok(_) => Ok(()),
        Err(e) => Err(KernelError::Refused(format!(
            "{CHECKPOINT_PROGRAM}: running it on a chosen CPU failed: {e}"
        ))),
    }
}

/// Runs one pass of the task iterator: nothing is tracked yet, so it must succeed and
/// write nothing. A kernel that cannot run it refuses here, at load, not in a cycle.
fn probe_task_iter(link: std::os::fd::BorrowedFd<'_>) -> Result<(), KernelError> {
    let failed = |e: std::io::Error| {
        KernelError::Refused(format!("{ITER_PROGRAM}: running the task iterator: {e}"))
    };
    let mut file = sys::iter_create(link).map_err(failed)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(failed)?;
    Ok(())
}

/// One record of the task iterator's output.
enum Record {
    Thread(ThreadSample),
    Cgroup(CgroupSample),
}

/// Decodes one record (`record` is one chunk of the record size): both kinds have the
/// same size and their `flags` at the same offset, which tells them apart.
fn record_of(record: &[u8]) -> Record {
    debug_assert_eq!(record.len(), size_of::<ThreadSample>());
    let thread = record.as_ptr().cast::<ThreadSample>();
    // SAFETY: ThreadSample and CgroupSample are plain-old-data of exactly this chunk's
    // size (asserted in collector-common), so any bytes are a valid value of either; the
    // buffer carries no alignment guarantee, hence read_unaligned.
    let as_thread = unsafe { thread.read_unaligned() };
    if as_thread.flags & sample_flags::CGROUP == 0 {
        Record::Thread(as_thread)
    } else {
        // SAFETY: as above.
        Record::Cgroup(unsafe { thread.cast::<CgroupSample>().read_unaligned() })
    }
}

fn dup_fd(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, KernelError> {
    fd.try_clone_to_owned().map_err(|source| KernelError::Io {
        what: "duplicating a program descriptor",
        source,
    })
}
