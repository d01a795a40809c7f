//! Loading, attaching and reading the eBPF programs: [`KernelAccounting`].

use std::{
    io::Read,
    mem::size_of,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use aya::{
    maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError, MapInfo, MapType, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs, BtfTracePoint, Iter, ProgramError,
    },
    Btf as AyaBtf, Ebpf, EbpfError, EbpfLoader,
};
use collector_common::{stat, CgroupCpu, KernelLayout, ThreadLast, ThreadSample};
use thiserror::Error;
use tracing::{info, warn};

use super::{
    btf::{Btf, BtfError},
    layout::{self, Attribution},
    pins::{MapShape, PinDir, PinError},
    sys,
};

/// The compiled programs, built by build.rs (aya-build).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

const SWITCH_PROGRAM: &str = "sched_switch";
const ITER_PROGRAM: &str = "task_cpu";
const TRACKED_MAP: &str = "TRACKED_CGROUPS";
const STATS_MAP: &str = "STATS";
const THREAD_LAST_MAP: &str = "THREAD_LAST";
const SWITCH_LINK_PIN: &str = "sched_switch_link";

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
    /// Capacity of the tracked-cgroups map.
    pub max_tracked_cgroups: u32,
    /// Where to pin maps and the sched_switch link; `None` keeps nothing after exit.
    pub pin_root: Option<PathBuf>,
}

/// What the programs counted (summed over CPUs), see `collector_common::stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub exits_folded: u64,
    pub exits_unseen: u64,
    pub storage_failed: u64,
    pub samples_deferred: u64,
}

/// (run count, run time ns) per program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub sched_switch: (u64, u64),
    pub task_iter: (u64, u64),
}

/// Identifies the attached programs, for health reporting and tests.
#[derive(Clone, Debug)]
pub struct AttachedPrograms {
    pub sched_switch_id: u32,
    pub task_iter_id: u32,
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

/// The loaded and attached programs and the maps the daemon reads.
pub struct KernelAccounting {
    _ebpf: Ebpf,
    tracked: BpfHashMap<MapData, u64, CgroupCpu>,
    stats: PerCpuArray<MapData, u64>,
    iter_link: OwnedFd,
    _switch_link: SwitchLink,
    /// The attached programs (ours, or the pinned one kept from a previous run).
    switch_prog_fd: OwnedFd,
    iter_prog_fd: OwnedFd,
    programs: AttachedPrograms,
    layout: KernelLayout,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    read_buf: Vec<u8>,
    batch: Vec<(u64, CgroupCpu)>,
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

impl KernelAccounting {
    /// Loads the programs, attaches them, and opens the maps.
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        let btf = Btf::from_sys_fs()?;
        let layout = layout::resolve(&btf, &options.attribution)?;
        let aya_btf = AyaBtf::from_sys_fs().map_err(|e| KernelError::Io {
            what: "reading /sys/kernel/btf/vmlinux",
            source: std::io::Error::other(e.to_string()),
        })?;

        let pins = options.pin_root.as_deref().map(PinDir::new);
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            // THREAD_LAST is task storage, which aya only loads on request.
            .allow_unsupported_maps()
            .override_global("LAYOUT", &layout, true)
            .map_max_entries(TRACKED_MAP, options.max_tracked_cgroups);
        let pin_paths;
        if let Some(pins) = &pins {
            pins.prepare()?;
            for shape in [
                MapShape {
                    name: TRACKED_MAP,
                    map_type: MapType::Hash,
                    key_size: size_of::<u64>() as u32,
                    value_size: size_of::<CgroupCpu>() as u32,
                    max_entries: options.max_tracked_cgroups,
                },
                MapShape {
                    name: STATS_MAP,
                    map_type: MapType::PerCpuArray,
                    key_size: size_of::<u32>() as u32,
                    value_size: size_of::<u64>() as u32,
                    max_entries: stat::COUNT,
                },
                MapShape {
                    name: THREAD_LAST_MAP,
                    map_type: MapType::TaskStorage,
                    key_size: size_of::<i32>() as u32,
                    value_size: size_of::<ThreadLast>() as u32,
                    max_entries: 0,
                },
            ] {
                pins.drop_mismatched_map(&shape)?;
            }
            pin_paths =
                [TRACKED_MAP, STATS_MAP, THREAD_LAST_MAP].map(|name| (name, pins.path(name)));
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader.load(PROGRAMS)?;
        // The iterator logs its rare failures with aya-log; drained after each pass.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };

        let iter: &mut Iter = ebpf
            .program_mut(ITER_PROGRAM)
            .ok_or(KernelError::Missing(ITER_PROGRAM))?
            .try_into()
            .map_err(program_err(ITER_PROGRAM))?;
        iter.load("task", &aya_btf)
            .map_err(program_err(ITER_PROGRAM))?;
        let iter_fd = iter.fd().map_err(program_err(ITER_PROGRAM))?;
        let iter_link =
            sys::iter_link_create(iter_fd.as_fd()).map_err(|source| KernelError::Io {
                what: "creating the task iterator link",
                source,
            })?;
        let task_iter_id = iter.info().map_err(program_err(ITER_PROGRAM))?.id();
        let iter_prog_fd = dup_fd(iter_fd.as_fd())?;

        let switch: &mut BtfTracePoint = ebpf
            .program_mut(SWITCH_PROGRAM)
            .ok_or(KernelError::Missing(SWITCH_PROGRAM))?
            .try_into()
            .map_err(program_err(SWITCH_PROGRAM))?;
        switch
            .load("sched_switch", &aya_btf)
            .map_err(program_err(SWITCH_PROGRAM))?;
        let ours = switch.info().map_err(program_err(SWITCH_PROGRAM))?;
        let (switch_link, sched_switch_id, reused, switch_prog_fd) = match pins
            .as_ref()
            .and_then(|pins| reuse_pinned_switch_link(pins, &ours))
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
                let fd = dup_fd(switch.fd().map_err(program_err(SWITCH_PROGRAM))?.as_fd())?;
                (link, ours.id(), false, fd)
            }
        };

        let tracked = BpfHashMap::try_from(
            ebpf.take_map(TRACKED_MAP)
                .ok_or(KernelError::Missing(TRACKED_MAP))?,
        )
        .map_err(map_err(TRACKED_MAP))?;
        let stats = PerCpuArray::try_from(
            ebpf.take_map(STATS_MAP)
                .ok_or(KernelError::Missing(STATS_MAP))?,
        )
        .map_err(map_err(STATS_MAP))?;

        Ok(Self {
            _ebpf: ebpf,
            tracked,
            stats,
            iter_link,
            _switch_link: switch_link,
            switch_prog_fd,
            iter_prog_fd,
            programs: AttachedPrograms {
                sched_switch_id,
                task_iter_id,
                reused_pinned_link: reused,
            },
            layout,
            logger,
            read_buf: Vec::with_capacity(1 << 16),
            batch: Vec::new(),
        })
    }

    pub fn programs(&self) -> &AttachedPrograms {
        &self.programs
    }

    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// Whether the programs read per-process memory themselves.
    pub fn reads_process_memory(&self) -> bool {
        self.layout.mm_file_pages != 0
    }

    /// Starts attributing threads of cgroup `id`. `since_ns` (CLOCK_MONOTONIC) is when
    /// tracking began, see [`CgroupCpu::since_ns`]. An entry that already exists (kept
    /// across a restart) is left as it is. Returns false when the map is full.
    pub fn track(&mut self, id: u64, since_ns: u64) -> Result<bool, KernelError> {
        const BPF_NOEXIST: u64 = 1;
        let entry = CgroupCpu {
            since_ns,
            ..CgroupCpu::default()
        };
        match self.tracked.insert(id, entry, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(true)
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Ok(false)
            }
            Err(source) => Err(KernelError::Map {
                name: TRACKED_MAP,
                source,
            }),
        }
    }

    /// Stops tracking cgroup `id` (its cgroup is gone). Absent ids are fine.
    pub fn untrack(&mut self, id: u64) {
        let _ = self.tracked.remove(&id);
    }

    /// Runs the task iterator: adds what every live thread of a tracked cgroup ran since
    /// its last visit to its cgroup's counters, and returns one sample per such thread.
    pub fn sample_threads(&mut self, out: &mut Vec<ThreadSample>) -> Result<(), KernelError> {
        let io = |source| KernelError::Io {
            what: "reading the task iterator",
            source,
        };
        let mut file = sys::iter_create(self.iter_link.as_fd()).map_err(io)?;
        self.read_buf.clear();
        file.read_to_end(&mut self.read_buf).map_err(io)?;
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        out.clear();
        out.extend(
            self.read_buf
                .chunks_exact(size_of::<ThreadSample>())
                .map(|chunk| {
                    // SAFETY: ThreadSample is plain-old-data of exactly this size; the
                    // buffer carries no alignment guarantee, hence read_unaligned.
                    unsafe { chunk.as_ptr().cast::<ThreadSample>().read_unaligned() }
                }),
        );
        Ok(())
    }

    /// The cumulative counters of every tracked cgroup (one batch read).
    pub fn read_cgroups(&mut self) -> Result<&[(u64, CgroupCpu)], KernelError> {
        sys::lookup_batch(self.tracked.map().fd().as_fd(), 1024, &mut self.batch).map_err(
            |source| KernelError::Io {
                what: "batch-reading the tracked cgroups",
                source,
            },
        )?;
        Ok(&self.batch)
    }

    /// Run count and total run time of each program, as the kernel accounts them while
    /// `kernel.bpf_stats_enabled` is set (zeros otherwise).
    pub fn program_run_stats(&self) -> ProgramRunStats {
        let stats = |fd: &OwnedFd| sys::prog_run_stats(fd.as_fd()).unwrap_or_default();
        ProgramRunStats {
            sched_switch: stats(&self.switch_prog_fd),
            task_iter: stats(&self.iter_prog_fd),
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
        }
    }
}

/// Keeps a pinned sched_switch link when its program is this build's program on this
/// process's maps; otherwise unpins it (detaching it) so that ours is attached instead.
fn reuse_pinned_switch_link(
    pins: &PinDir,
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
    // has its own .rodata, so only the pinned maps are compared).
    let pinned_map_ids: Vec<u32> = [TRACKED_MAP, STATS_MAP, THREAD_LAST_MAP]
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

fn dup_fd(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, KernelError> {
    fd.try_clone_to_owned().map_err(|source| KernelError::Io {
        what: "duplicating a program descriptor",
        source,
    })
}
