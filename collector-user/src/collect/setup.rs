//! Setting the collector up: cgroup mounts and discovery, the /proc and host readers,
//! and the eBPF source (or the fallback to /proc, and why).

use std::{collections::HashSet, path::PathBuf};

use thiserror::Error;
use tracing::{error, warn};

use super::{
    clock::monotonic_ns, ebpf::EbpfSource, fastmap::FastMap, sampling::Scratch, tasks::TaskSet,
    Collector, Settings,
};
use crate::{
    cgroup::{CgroupMounts, Discovery, NomadParents},
    config::{Config, SourceChoice},
    kernel::{
        Attribution, KernelOptions, ThreadStateChoice, ThreadStateStore, CGROUP_WALK_RING_BYTES,
    },
    procfs::{HostReader, ProcReader},
    snapshot::CpuSourceKind,
};

#[derive(Debug, Error)]
pub enum CollectError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF is required (source = \"ebpf\") but could not be loaded: {0}")]
    EbpfRequired(String),
}

/// Picks the cgroup hierarchies threads are attributed by.
fn attribution_for(config: &Config, mounts: &CgroupMounts) -> Attribution {
    match config.ebpf.attribution.as_str() {
        "auto" => Attribution {
            v1_controller: ["cpuacct", "cpu", "memory"]
                .into_iter()
                .find(|c| mounts.v1.contains_key(*c))
                .map(str::to_owned),
            v2: mounts.v2.is_some(),
        },
        "v2" => Attribution {
            v1_controller: None,
            v2: true,
        },
        controller => Attribution {
            v1_controller: Some(controller.to_owned()),
            v2: false,
        },
    }
}

/// The mount points of the hierarchies threads are attributed by: what the cgroup walk
/// goes over.
fn cgroup_roots(attribution: &Attribution, mounts: &CgroupMounts) -> Vec<PathBuf> {
    let v1 = attribution
        .v1_controller
        .as_ref()
        .and_then(|controller| mounts.v1.get(controller));
    let v2 = mounts.v2.as_ref().filter(|_| attribution.v2);
    v1.into_iter().chain(v2).cloned().collect()
}

impl Collector {
    /// Sets up the sources. With `source = auto`, an eBPF failure is logged loudly and
    /// the collector measures CPU from /proc instead.
    pub fn new(config: &Config) -> Result<Self, CollectError> {
        let open_err = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| CollectError::Open { path, source }
        };
        let proc_root = config.proc_root.clone();
        let mounts = match &config.cgroup_root {
            Some(root) => CgroupMounts::probe_root(root).map_err(open_err(root))?,
            None => {
                let mountinfo = proc_root
                    .join(std::process::id().to_string())
                    .join("mountinfo");
                CgroupMounts::from_mountinfo_file(&mountinfo).map_err(open_err(&mountinfo))?
            }
        };
        let attribution = attribution_for(config, &mounts);
        // Nomad writes its cgroup_parent as "/nomad"; the trees here take relative paths.
        let parents = NomadParents {
            v1: config
                .nomad
                .cgroup_parent_v1
                .trim_start_matches('/')
                .to_owned(),
            v2: config
                .nomad
                .cgroup_parent_v2
                .trim_start_matches('/')
                .to_owned(),
        };
        let discovery = match Discovery::new(mounts.clone(), parents, &proc_root) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "cgroup discovery unavailable: only configured allocations are followed");
                None
            }
        };
        let procs = ProcReader::open(&proc_root).map_err(open_err(&proc_root))?;
        let host = HostReader::open(&proc_root, std::path::Path::new("/sys"))
            .map_err(open_err(&proc_root))?;

        let (ebpf, fallback_reason) = match config.source {
            SourceChoice::Procfs => (None, None),
            choice => {
                let cgroup_roots = cgroup_roots(&attribution, &mounts);
                let options = KernelOptions {
                    attribution,
                    max_tracked_cgroups: config.ebpf.max_tracked_cgroups,
                    pin_root: config.pin_root().map(|p| p.to_path_buf()),
                    thread_state: match config.ebpf.thread_state.as_str() {
                        "task_storage" => ThreadStateChoice::Only(ThreadStateStore::TaskStorage),
                        "hash" => ThreadStateChoice::Only(ThreadStateStore::Hash),
                        _ => ThreadStateChoice::Auto,
                    },
                    max_threads: config.ebpf.max_threads,
                    cgroup_roots,
                    cgroup_walk_ring_bytes: CGROUP_WALK_RING_BYTES,
                };
                match EbpfSource::load(&options) {
                    Ok(source) => (Some(source), None),
                    Err(e) if choice == SourceChoice::Ebpf => {
                        return Err(CollectError::EbpfRequired(e.to_string()))
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        error!(
                            reason = %reason,
                            "!!! eBPF COULD NOT BE LOADED: falling back to reading CPU time from /proc \
                             for every process every interval (Nomad's costly method; exited \
                             processes between samples are missed). Run as root on a kernel with \
                             BTF and tp_btf programs (5.10+) to use eBPF."
                        );
                        (None, Some(reason))
                    }
                }
            }
        };
        Ok(Self {
            settings: Settings::from_config(config),
            discovery,
            ebpf,
            fallback_reason,
            procs,
            host,
            tasks: TaskSet::default(),
            previous_scan_ns: monotonic_ns(),
            cycles: 0,
            cycle_errors: 0,
            synced_generation: None,
            untrackable: HashSet::new(),
            ticks_per_percent: 0.0,
            kernel_cpu: FastMap::default(),
            scratch: Scratch::default(),
        })
    }

    pub fn source_kind(&self) -> CpuSourceKind {
        if self.ebpf.is_some() {
            CpuSourceKind::Ebpf
        } else {
            CpuSourceKind::Procfs
        }
    }

    /// The eBPF source, when in use.
    pub fn ebpf(&self) -> Option<&EbpfSource> {
        self.ebpf.as_ref()
    }

    /// Takes the reloadable settings of a new configuration (already validated).
    pub fn reconfigure(&mut self, config: &Config) {
        self.settings = Settings::from_config(config);
    }
}
