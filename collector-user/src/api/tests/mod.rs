//! API tests: `warp::test` against [`app`] with hand-built snapshots, and the real
//! server on loopback with a raw TCP (or TLS) client. The fixtures and helpers are here;
//! the tests are by concern: [`routes`] (paths, queries, methods, bodies, ACL, shapes),
//! [`metrics_output`] (`/v1/metrics` as JSON and as Prometheus/OpenMetrics text),
//! [`prometheus_parser`] (reading an exposition back, and promtool), [`sockets`] (the
//! real listener: limits, timeouts, shutdown, TLS).

mod metrics_output;
mod prometheus_parser;
mod routes;
mod sockets;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;
use warp::http::Response;

use super::*;
use crate::{
    kernel::KernelStats,
    model::{
        measured, CpuStats, HostCpuStats, HostDiskStats, HostMemoryStats, HostStats, MemoryStats,
        ResourceUsage, TaskResourceUsage,
    },
    snapshot::{
        AllocEntry, AllocInfo, AllocOrigin, CpuSourceKind, CpuWait, Health, PressureSeconds,
        ProcessChurn, Snapshot, SnapshotStore, TaskExtra, TaskInfo, TaskPressure,
    },
};

const ALLOC: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";
const ALLOC2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const TOKEN: &str = "right-token-0123456789";
const TS: i64 = 1_795_608_000_000_000_000;

const CPU_MEASURED: [&str; 5] = [
    measured::SYSTEM_MODE,
    measured::USER_MODE,
    measured::THROTTLED_PERIODS,
    measured::THROTTLED_TIME,
    measured::PERCENT,
];

fn pid_usage(percent: f64, rss: u64) -> ResourceUsage {
    ResourceUsage {
        memory_stats: MemoryStats {
            rss,
            measured: vec![measured::RSS, measured::SWAP],
            ..Default::default()
        },
        cpu_stats: CpuStats {
            system_mode: percent / 4.0,
            user_mode: percent * 3.0 / 4.0,
            percent,
            measured: vec![
                measured::SYSTEM_MODE,
                measured::USER_MODE,
                measured::PERCENT,
            ],
            ..Default::default()
        },
        device_stats: None,
    }
}

fn task_usage(
    percent: f64,
    rss: u64,
    memory_measured: &[&'static str],
    cpu_measured: &[&'static str],
    pids: &[(u32, f64, u64)],
) -> TaskResourceUsage {
    TaskResourceUsage {
        resource_usage: ResourceUsage {
            memory_stats: MemoryStats {
                rss,
                cache: 4096,
                swap: 0,
                mapped_file: 8192,
                usage: rss + 4096,
                max_usage: rss * 2,
                kernel_usage: 100,
                kernel_max_usage: 200,
                measured: memory_measured.to_vec(),
            },
            cpu_stats: CpuStats {
                system_mode: percent / 4.0,
                user_mode: percent * 3.0 / 4.0,
                total_ticks: percent * 30.0,
                throttled_periods: 7,
                throttled_time: 1_000,
                percent,
                measured: cpu_measured.to_vec(),
            },
            device_stats: None,
        },
        timestamp: TS,
        pids: pids
            .iter()
            .map(|&(pid, percent, rss)| (pid.to_string(), pid_usage(percent, rss)))
            .collect(),
    }
}

fn snapshot() -> Snapshot {
    let mut tasks = BTreeMap::new();
    tasks.insert(
        "web.frontend".to_owned(),
        task_usage(
            105.5,
            14_098_432,
            &[
                measured::RSS,
                measured::CACHE,
                measured::SWAP,
                measured::MAPPED_FILE,
                measured::USAGE,
                measured::MAX_USAGE,
                measured::KERNEL_USAGE,
                measured::KERNEL_MAX_USAGE,
            ],
            &CPU_MEASURED,
            &[(27072, 6.5, 13_418_496), (27073, 99.0, 679_936)],
        ),
    );
    tasks.insert(
        "redis".to_owned(),
        task_usage(
            2.0,
            1_000_000,
            &[
                measured::RSS,
                measured::CACHE,
                measured::SWAP,
                measured::USAGE,
            ],
            &CPU_MEASURED,
            &[(300, 2.0, 1_000_000)],
        ),
    );
    let info = AllocInfo {
        id: ALLOC.into(),
        origin: AllocOrigin::Nomad { layout: "v2-1.7" },
        job: Some("web".to_owned()),
        namespace: Some("default".to_owned()),
        task_group: Some("front\"end".to_owned()),
        tasks: vec![
            TaskInfo {
                name: "redis".into(),
                cgroups: vec![PathBuf::from(format!(
                    "/sys/fs/cgroup/nomad.slice/share.slice/{ALLOC}.redis.scope"
                ))]
                .into(),
                pids: vec![],
                cpu_total_ns: 12_000_000_000,
                extra: every_extra(),
            },
            TaskInfo {
                name: "web.frontend".into(),
                cgroups: vec![PathBuf::from(format!(
                    "/sys/fs/cgroup/nomad.slice/share.slice/{ALLOC}.web.frontend.scope"
                ))]
                .into(),
                pids: vec![],
                cpu_total_ns: 12_000_000_000,
                extra: Default::default(),
            },
        ],
    };
    let mut tasks2 = BTreeMap::new();
    tasks2.insert(
        "batch".to_owned(),
        task_usage(
            50.0,
            2048,
            &[measured::RSS],
            &[measured::PERCENT],
            &[(42, 50.0, 2048)],
        ),
    );
    let info2 = AllocInfo {
        id: ALLOC2.into(),
        origin: AllocOrigin::Config,
        job: None,
        namespace: None,
        task_group: None,
        tasks: vec![TaskInfo {
            name: "batch".into(),
            cgroups: Vec::new().into(),
            pids: vec![42],
            cpu_total_ns: 0,
            extra: Default::default(),
        }],
    };
    let mut allocations = HashMap::new();
    allocations.insert(ALLOC.into(), Arc::new(AllocEntry::new(info, tasks)));
    allocations.insert(ALLOC2.into(), Arc::new(AllocEntry::new(info2, tasks2)));
    Snapshot {
        taken_at_unix_ns: TS,
        allocations,
        host: HostStats {
            memory: HostMemoryStats {
                total: 8 << 30,
                available: 4 << 30,
                used: 3 << 30,
                free: 1 << 30,
            },
            cpu: vec![HostCpuStats {
                cpu: "cpu0".to_owned(),
                user: 10.0,
                system: 5.0,
                idle: 85.0,
                total_percent: 15.0,
                total_ticks: 450.0,
            }],
            disk_stats: vec![HostDiskStats {
                device: "/dev/sda1".to_owned(),
                mountpoint: "/".to_owned(),
                size: 100,
                used: 40,
                available: 60,
                used_percent: 40.0,
                inodes_used_percent: 1.0,
            }],
            alloc_dir_stats: None,
            device_stats: None,
            uptime: 1234,
            timestamp: TS,
            cpu_ticks_consumed: 450.0,
        },
        health: Health {
            source: CpuSourceKind::Procfs,
            fallback_reason: Some("BPF \"denied\"\nby \\ lockdown".to_owned()),
            programs_attached: 0,
            kernel_features: None,
            kernel: KernelStats {
                exits_folded: 11,
                exits_unseen: 1,
                storage_failed: 0,
                samples_deferred: 2,
                lookups: 40,
                ran_set_slots: 7,
                ran_set_overflows: 1,
            },
            sched_switch_run_time_ns: 5,
            sched_switch_run_count: 6,
            tracked_cgroups: 3,
            max_tracked_cgroups: 16384,
            tracked_cgroups_full: 0,
            checkpoint_failures: 0,
            control_files_open: 12,
            processes_sampled: 9,
            threads_reported: 4,
            threads_carried: 6,
            cycle_duration: Duration::from_millis(12),
            cycle_cpu: Duration::from_millis(3),
            cycles: 100,
            cycle_errors: 1,
        },
        ..Snapshot::default()
    }
}

/// Every figure beyond Nomad's, measured: so that each of their families is served.
fn every_extra() -> TaskExtra {
    let totals = |some: f64| {
        Some(PressureSeconds {
            some_seconds: some,
            full_seconds: Some(some / 2.0),
        })
    };
    TaskExtra {
        cpu_wait: Some(CpuWait {
            total_seconds: 3.5,
            percent: Some(25.0),
        }),
        processes: Some(ProcessChurn {
            started: 7,
            exited: 5,
        }),
        oom_kills: Some(1),
        pressure: Some(TaskPressure {
            cpu: totals(2.0),
            memory: totals(1.0),
            io: totals(0.5),
        }),
    }
}

fn state(acl: Acl) -> ApiState {
    ApiState::new(Arc::new(SnapshotStore::new(snapshot())), acl)
}

async fn request(
    state: &ApiState,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Bytes> {
    let mut req = warp::test::request().method(method).path(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.reply(&app(state.clone())).await
}

async fn get(state: &ApiState, path: &str) -> Response<Bytes> {
    request(state, "GET", path, &[]).await
}

fn text(resp: &Response<Bytes>) -> &str {
    std::str::from_utf8(resp.body()).expect("UTF-8 body")
}

fn content_type(resp: &Response<Bytes>) -> &str {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn json(resp: &Response<Bytes>) -> Value {
    assert_eq!(content_type(resp), "application/json");
    serde_json::from_slice(resp.body()).expect("JSON body")
}

fn assert_text(resp: &Response<Bytes>, status: u16, body: &str) {
    assert_eq!(resp.status().as_u16(), status, "body: {}", text(resp));
    assert_eq!(text(resp), body);
    assert!(
        content_type(resp).starts_with("text/plain"),
        "{}",
        content_type(resp)
    );
}

fn assert_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    for key in keys {
        assert!(object.contains_key(*key), "missing {key} in {value}");
    }
}

fn assert_resource_usage(value: &Value) {
    assert_keys(value, &["MemoryStats", "CpuStats", "DeviceStats"]);
    assert_keys(
        &value["MemoryStats"],
        &[
            "RSS",
            "Cache",
            "Swap",
            "MappedFile",
            "Usage",
            "MaxUsage",
            "KernelUsage",
            "KernelMaxUsage",
            "Measured",
        ],
    );
    assert_keys(
        &value["CpuStats"],
        &[
            "SystemMode",
            "UserMode",
            "TotalTicks",
            "ThrottledPeriods",
            "ThrottledTime",
            "Percent",
            "Measured",
        ],
    );
}

// ---------------------------------------------------------------- allocation stats
