//! API tests: `warp::test` against [`app`] with hand-built snapshots, and the real
//! server on loopback with a raw TCP (or TLS) client.

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
        id: ALLOC.to_owned(),
        origin: AllocOrigin::Nomad {
            layout: "v2-1.7".to_owned(),
        },
        job: Some("web".to_owned()),
        namespace: Some("default".to_owned()),
        task_group: Some("front\"end".to_owned()),
        tasks: vec![
            TaskInfo {
                name: "redis".to_owned(),
                cgroups: vec![PathBuf::from(format!(
                    "/sys/fs/cgroup/nomad.slice/share.slice/{ALLOC}.redis.scope"
                ))]
                .into(),
                pids: vec![],
                cpu_total_ns: 12_000_000_000,
                extra: every_extra(),
            },
            TaskInfo {
                name: "web.frontend".to_owned(),
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
        id: ALLOC2.to_owned(),
        origin: AllocOrigin::Config,
        job: None,
        namespace: None,
        task_group: None,
        tasks: vec![TaskInfo {
            name: "batch".to_owned(),
            cgroups: Vec::new().into(),
            pids: vec![42],
            cpu_total_ns: 0,
            extra: Default::default(),
        }],
    };
    let mut allocations = HashMap::new();
    allocations.insert(ALLOC.to_owned(), Arc::new(AllocEntry::new(info, tasks)));
    allocations.insert(ALLOC2.to_owned(), Arc::new(AllocEntry::new(info2, tasks2)));
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
            },
            sched_switch_run_time_ns: 5,
            sched_switch_run_count: 6,
            tracked_cgroups: 3,
            max_tracked_cgroups: 16384,
            tracked_cgroups_full: 0,
            checkpoint_failures: 0,
            control_files_open: 12,
            processes_sampled: 9,
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

#[tokio::test]
async fn stats_have_every_seed_key_at_every_level() {
    let state = state(Acl::disabled());
    let resp = get(&state, &format!("/v1/client/allocation/{ALLOC}/stats")).await;
    assert_eq!(resp.status(), 200);
    let body = json(&resp);
    assert_keys(&body, &["ResourceUsage", "Tasks", "Timestamp"]);
    assert_resource_usage(&body["ResourceUsage"]);
    assert_eq!(body["Timestamp"], TS);
    let tasks = body["Tasks"].as_object().unwrap();
    assert_eq!(
        tasks.keys().collect::<Vec<_>>(),
        ["redis", "web.frontend"],
        "both tasks, dotted name kept whole"
    );
    for task in tasks.values() {
        assert_keys(task, &["Pids", "ResourceUsage", "Timestamp"]);
        assert_resource_usage(&task["ResourceUsage"]);
        for pid in task["Pids"].as_object().unwrap().values() {
            assert_resource_usage(pid);
        }
    }
    assert_keys(&body["Tasks"]["web.frontend"]["Pids"], &["27072", "27073"]);
    // The allocation is the sum of its tasks.
    assert_eq!(body["ResourceUsage"]["CpuStats"]["Percent"], 107.5);
    assert_eq!(body["ResourceUsage"]["MemoryStats"]["RSS"], 15_098_432u64);
    // Unpretty by default.
    assert!(!resp.body().contains(&b'\n'));
}

#[tokio::test]
async fn stats_task_filter_and_pretty() {
    let state = state(Acl::disabled());
    let path = format!("/v1/client/allocation/{ALLOC}/stats");

    let one = json(&get(&state, &format!("{path}?task=web.frontend")).await);
    assert_eq!(one["Tasks"].as_object().unwrap().len(), 1);
    assert_eq!(one["ResourceUsage"]["CpuStats"]["Percent"], 105.5);

    let encoded = json(&get(&state, &format!("{path}?task=web%2Efrontend")).await);
    assert_eq!(encoded, one);

    let unknown = get(&state, &format!("{path}?task=nope")).await;
    assert_eq!(unknown.status(), 200);
    let unknown = json(&unknown);
    assert!(unknown["Tasks"].as_object().unwrap().is_empty());
    assert_eq!(unknown["ResourceUsage"]["CpuStats"]["Percent"], 0.0);
    assert_eq!(unknown["ResourceUsage"]["MemoryStats"]["RSS"], 0);

    for query in [
        "?pretty",
        "?pretty=",
        "?pretty=true",
        "?pretty=1&region=global",
    ] {
        let pretty = get(&state, &format!("{path}{query}")).await;
        assert_eq!(pretty.status(), 200);
        assert!(
            pretty.body().starts_with(b"{\n  \""),
            "{query}: {}",
            text(&pretty)
        );
        let plain = get(&state, &path).await;
        assert_eq!(json(&pretty), json(&plain));
    }
    let pretty_task = get(&state, &format!("{path}?pretty&task=redis")).await;
    assert!(pretty_task.body().contains(&b'\n'));
    assert_eq!(json(&pretty_task)["Tasks"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_and_malformed_allocation_ids_are_404() {
    let state = state(Acl::disabled());
    let unknown = "11111111-2222-4333-8444-555555555555";
    let resp = get(&state, &format!("/v1/client/allocation/{unknown}/stats")).await;
    assert_text(&resp, 404, &format!("Unknown allocation \"{unknown}\""));

    let resp = get(&state, "/v1/client/allocation/..%2F..%2Fetc%2Fpasswd/stats").await;
    assert_text(&resp, 404, "Unknown allocation \"../../etc/passwd\"");

    let resp = get(&state, "/v1/client/allocation/%ff%fe/stats").await;
    assert_text(&resp, 404, "Unknown allocation \"%ff%fe\"");

    // Control characters are not echoed.
    let resp = get(
        &state,
        "/v1/client/allocation/a%0d%0aSet-Cookie:%20x%1b[2J/stats",
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert!(
        !text(&resp).contains(['\r', '\n', '\u{1b}']),
        "{:?}",
        text(&resp)
    );
    assert!(text(&resp).starts_with("Unknown allocation \"a\u{FFFD}\u{FFFD}Set-Cookie: x"));

    let junk: String = "aZ9-._~%41".chars().cycle().take(500).collect();
    let resp = get(&state, &format!("/v1/client/allocation/{junk}/stats")).await;
    assert_eq!(resp.status(), 404);
    assert!(text(&resp).starts_with("Unknown allocation \""));
    assert!(text(&resp).len() < 100, "echo is capped: {}", text(&resp));

    // A percent-decoded ID that exists is found; case matters as in Nomad.
    let encoded: String = ALLOC.replace('-', "%2D");
    let resp = get(&state, &format!("/v1/client/allocation/{encoded}/stats")).await;
    assert_eq!(resp.status(), 200);
    let resp = get(
        &state,
        &format!("/v1/client/allocation/{}/stats", ALLOC.to_uppercase()),
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn wrong_shapes_and_unknown_paths_are_resource_not_found() {
    let state = state(Acl::disabled());
    for path in [
        "/".to_owned(),
        "/v1".to_owned(),
        "/v1/nope".to_owned(),
        "/v1/client".to_owned(),
        "/v1/client/allocation".to_owned(),
        "/v1/client/allocation/".to_owned(),
        format!("/v1/client/allocation/{ALLOC}"),
        format!("/v1/client/allocation/{ALLOC}/"),
        format!("/v1/client/allocation/{ALLOC}/stats/"),
        format!("/v1/client/allocation/{ALLOC}/stats/extra"),
        format!("/v1/client/allocation/{ALLOC}/gc"),
        "/v1/client/allocation//stats".to_owned(),
        format!("//v1/client/allocation/{ALLOC}/stats"),
        "/v1/client/stats/more".to_owned(),
        "/v1/metricsx".to_owned(),
        "/v1/agent/health/x".to_owned(),
    ] {
        let resp = get(&state, &path).await;
        assert_text(&resp, 404, "resource not found");
    }
}

#[tokio::test]
async fn bad_query_strings_are_400() {
    let state = state(Acl::disabled());
    let path = format!("/v1/client/allocation/{ALLOC}/stats");
    for query in ["?task=%zz", "?task=%ff", "?task=a&task=b", "?pretty&task=%"] {
        let resp = get(&state, &format!("{path}{query}")).await;
        assert_eq!(resp.status(), 400, "{query}");
        assert!(content_type(&resp).starts_with("text/plain"));
        assert!(!text(&resp).is_empty());
    }
    let resp = get(&state, "/v1/metrics?format=a&format=b").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn other_methods_are_405_and_head_is_get() {
    let state = state(Acl::disabled());
    let path = format!("/v1/client/allocation/{ALLOC}/stats");
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in [path.as_str(), "/v1/agent/health", "/nope"] {
            let resp = request(&state, method, path, &[]).await;
            assert_text(&resp, 405, "Invalid method");
        }
    }
    let resp = request(&state, "HEAD", &path, &[]).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn request_bodies_are_refused() {
    let state = state(Acl::disabled());
    let resp = warp::test::request()
        .path("/v1/agent/health")
        .body("hello")
        .reply(&app(state.clone()))
        .await;
    assert_text(&resp, 413, "request body not allowed");
    let resp = request(
        &state,
        "GET",
        "/v1/client/stats",
        &[("transfer-encoding", "chunked")],
    )
    .await;
    assert_eq!(resp.status(), 413);
    let resp = request(
        &state,
        "GET",
        "/v1/client/stats",
        &[("content-length", "zero")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = request(
        &state,
        "GET",
        "/v1/client/stats",
        &[("content-length", "0")],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

// ---------------------------------------------------------------- ACL

#[tokio::test]
async fn acl_off_needs_no_token() {
    let state = state(Acl::new(Vec::<String>::new()));
    for path in [
        format!("/v1/client/allocation/{ALLOC}/stats"),
        "/v1/client/stats".to_owned(),
        "/v1/client/allocations".to_owned(),
        "/v1/metrics".to_owned(),
        "/v1/agent/health".to_owned(),
    ] {
        assert_eq!(get(&state, &path).await.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn acl_on_checks_tokens_before_anything_else() {
    let state = state(Acl::new(["another-token-xyz", TOKEN]));
    let stats = format!("/v1/client/allocation/{ALLOC}/stats");
    let unknown = "/v1/client/allocation/11111111-2222-4333-8444-555555555555/stats";
    for path in [
        stats.as_str(),
        unknown,
        "/v1/client/stats",
        "/v1/metrics",
        "/nope",
    ] {
        let resp = get(&state, path).await;
        assert_text(&resp, 403, "Permission denied");
        let resp = request(&state, "GET", path, &[("x-nomad-token", "wrong-token-123")]).await;
        assert_text(&resp, 403, "ACL token not found");
        let resp = request(
            &state,
            "GET",
            path,
            &[("authorization", "Bearer wrong-token-1")],
        )
        .await;
        assert_text(&resp, 403, "ACL token not found");
    }
    // Bad query or an unknown allocation: still 403 first.
    let resp = get(&state, &format!("{stats}?task=%zz")).await;
    assert_text(&resp, 403, "Permission denied");

    let resp = request(&state, "GET", &stats, &[("x-nomad-token", TOKEN)]).await;
    assert_eq!(resp.status(), 200);
    let resp = request(
        &state,
        "GET",
        &stats,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = request(&state, "GET", unknown, &[("x-nomad-token", TOKEN)]).await;
    assert_eq!(resp.status(), 404);
    let resp = request(&state, "GET", "/nope", &[("x-nomad-token", TOKEN)]).await;
    assert_text(&resp, 404, "resource not found");

    // Liveness never needs a token.
    let resp = get(&state, "/v1/agent/health").await;
    assert_eq!(resp.status(), 200);
    let resp = request(
        &state,
        "GET",
        "/v1/agent/health",
        &[("x-nomad-token", "wrong")],
    )
    .await;
    assert_eq!(resp.status(), 200);

    // Reload: the new token works from the next request on, the old one no longer.
    state.set_acl(Acl::new(["rotated-token-456"]));
    let resp = request(&state, "GET", &stats, &[("x-nomad-token", TOKEN)]).await;
    assert_text(&resp, 403, "ACL token not found");
    let resp = request(
        &state,
        "GET",
        &stats,
        &[("x-nomad-token", "rotated-token-456")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    state.set_acl(Acl::disabled());
    assert_eq!(get(&state, &stats).await.status(), 200);
}

// ---------------------------------------------------------------- other routes

#[tokio::test]
async fn agent_health_body() {
    let state = state(Acl::disabled());
    let resp = get(&state, "/v1/agent/health").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(text(&resp), r#"{"client":{"ok":true,"message":"ok"}}"#);
    assert_eq!(content_type(&resp), "application/json");
}

#[tokio::test]
async fn host_stats_shape_and_memo() {
    let state = state(Acl::disabled());
    let resp = get(&state, "/v1/client/stats").await;
    assert_eq!(resp.status(), 200);
    let body = json(&resp);
    assert_keys(
        &body,
        &[
            "Memory",
            "CPU",
            "DiskStats",
            "Uptime",
            "Timestamp",
            "CPUTicksConsumed",
        ],
    );
    assert_keys(&body["Memory"], &["Total", "Available", "Used", "Free"]);
    assert_keys(
        &body["CPU"][0],
        &[
            "CPU",
            "User",
            "System",
            "Idle",
            "TotalPercent",
            "TotalTicks",
        ],
    );
    assert_eq!(body["DiskStats"][0]["Mountpoint"], "/");
    let snapshot = state.store.load();
    assert_eq!(
        snapshot.host_json.get().map(|b| &b[..]),
        Some(&resp.body()[..])
    );
    let pretty = get(&state, "/v1/client/stats?pretty").await;
    assert!(pretty.body().contains(&b'\n'));
    assert_eq!(json(&pretty), body);
}

#[tokio::test]
async fn allocations_list_is_sorted_by_id() {
    let state = state(Acl::disabled());
    let resp = get(&state, "/v1/client/allocations").await;
    assert_eq!(resp.status(), 200);
    let body = json(&resp);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["ID"], ALLOC2);
    assert_eq!(list[1]["ID"], ALLOC);
    assert_keys(
        &list[1],
        &["ID", "Origin", "Job", "Namespace", "TaskGroup", "Tasks"],
    );
    assert_eq!(list[1]["Origin"]["Kind"], "Nomad");
    assert_eq!(list[1]["Origin"]["Layout"], "v2-1.7");
    assert_eq!(list[1]["Job"], "web");
    assert_eq!(list[0]["Origin"]["Kind"], "Config");
    assert_eq!(list[0]["Job"], Value::Null);
    assert_keys(&list[1]["Tasks"][0], &["Name", "Cgroups", "Pids"]);
    assert_eq!(list[1]["Tasks"][1]["Name"], "web.frontend");
    assert_eq!(list[0]["Tasks"][0]["Pids"][0], 42);
    let snapshot = state.store.load();
    assert_eq!(
        snapshot.allocations_json.get().map(|b| &b[..]),
        Some(&resp.body()[..])
    );
}

fn find_gauge<'a>(gauges: &'a [Value], name: &str, task: Option<&str>) -> Option<&'a Value> {
    gauges
        .iter()
        .find(|g| g["Name"] == name && task.is_none_or(|t| g["Labels"]["task"] == t))
}

#[tokio::test]
async fn metrics_json_shape() {
    let state = state(Acl::disabled());
    let resp = get(&state, "/v1/metrics").await;
    assert_eq!(resp.status(), 200);
    let body = json(&resp);
    assert_keys(
        &body,
        &["Timestamp", "Gauges", "Points", "Counters", "Samples"],
    );
    assert_eq!(body["Timestamp"], "2026-11-25 12:00:00 +0000 UTC");
    for key in ["Points", "Counters", "Samples"] {
        assert!(body[key].is_array(), "{key}");
    }
    let gauges = body["Gauges"].as_array().unwrap();
    for gauge in gauges {
        assert_keys(gauge, &["Name", "Value", "Labels"]);
    }

    let cpu = find_gauge(
        gauges,
        "nomad.client.allocs.cpu.total_percent",
        Some("web.frontend"),
    )
    .expect("per-task CPU gauge");
    assert_eq!(cpu["Value"], 105.5);
    let labels = cpu["Labels"].as_object().unwrap();
    assert_eq!(labels["alloc_id"], ALLOC);
    assert_eq!(labels["job"], "web");
    assert_eq!(labels["task_group"], "front\"end");
    assert_eq!(labels["namespace"], "default");
    for suffix in [
        "cpu.total_percent",
        "cpu.system",
        "cpu.user",
        "cpu.throttled_time",
        "cpu.throttled_periods",
        "cpu.total_ticks",
        "memory.rss",
        "memory.cache",
        "memory.swap",
        "memory.mapped_file",
        "memory.usage",
        "memory.max_usage",
        "memory.kernel_usage",
        "memory.kernel_max_usage",
    ] {
        let name = format!("nomad.client.allocs.{suffix}");
        assert!(
            find_gauge(gauges, &name, Some("web.frontend")).is_some(),
            "{name}"
        );
    }
    // redis (cgroup v2 style): no kernel or max usage measured, so none reported.
    assert!(find_gauge(gauges, "nomad.client.allocs.memory.usage", Some("redis")).is_some());
    assert!(find_gauge(
        gauges,
        "nomad.client.allocs.memory.kernel_usage",
        Some("redis")
    )
    .is_none());
    assert!(find_gauge(
        gauges,
        "nomad.client.allocs.memory.max_usage",
        Some("redis")
    )
    .is_none());
    // batch: only RSS and Percent measured; no job labels known.
    let batch: Vec<&Value> = gauges
        .iter()
        .filter(|g| g["Labels"]["task"] == "batch")
        .collect();
    let mut names: Vec<&str> = batch.iter().map(|g| g["Name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "nomad.client.allocs.cpu.total_percent",
            "nomad.client.allocs.cpu.total_ticks",
            "nomad.client.allocs.memory.rss",
            "nomad_collector.task.cpu_total_seconds"
        ]
    );
    let labels = batch[0]["Labels"].as_object().unwrap();
    assert_eq!(
        labels.keys().collect::<Vec<_>>(),
        ["alloc_id", "host", "task"],
        "no job, task_group or namespace label when unknown"
    );
    assert_eq!(labels["host"], metrics::hostname());

    let source = find_gauge(gauges, "nomad_collector.source", None).unwrap();
    assert_eq!(source["Value"], 1.0);
    assert_eq!(source["Labels"]["source"], "procfs");
    assert!(source["Labels"]["fallback_reason"].is_string());
    for name in [
        "programs_attached",
        "cycle_seconds",
        "cycle_cpu_seconds",
        "cycles",
        "cycle_errors",
        "control_files_open",
        "processes_sampled",
        "tracked_cgroups",
        "tracked_cgroups_max",
        "tracked_cgroups_full",
        "checkpoint_failures",
        "kernel.exits_folded",
        "kernel.exits_unseen",
        "kernel.storage_failed",
        "kernel.samples_deferred",
        "kernel.lookups",
        "bpf.sched_switch_run_time_ns",
        "bpf.sched_switch_run_count",
    ] {
        let name = format!("nomad_collector.{name}");
        assert!(find_gauge(gauges, &name, None).is_some(), "{name}");
    }
    assert_eq!(
        find_gauge(gauges, "nomad_collector.cycle_seconds", None).unwrap()["Value"],
        0.012
    );
    assert_eq!(
        find_gauge(gauges, "nomad_collector.cycles", None).unwrap()["Value"],
        100.0
    );

    let snapshot = state.store.load();
    assert_eq!(
        snapshot.metrics_json.get().map(|b| &b[..]),
        Some(&resp.body()[..])
    );
    // Any other format is JSON, as in Nomad.
    assert_eq!(json(&get(&state, "/v1/metrics?format=json").await), body);
}

/// The value of the first sample named `name` whose labels include every `labels` pair
/// (as the exposition writes them, `key="value"`).
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What `promtool check metrics` (Debian's `prometheus` package, which `cargo xtask
/// test` installs) prints about `exposition`: nothing when it is clean. `None` when
/// promtool is not installed, which fails the test under CI.
fn promtool_check(exposition: &str) -> Option<String> {
    use std::{io::Write, process::Stdio};
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            assert!(!in_ci, "CI is set but promtool is not installed");
            eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
            return None;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !printed.is_empty(),
        "promtool failed silently"
    );
    Some(printed)
}

async fn prometheus_get(state: &ApiState, accept: Option<&str>) -> Response<Bytes> {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let resp = request(state, "GET", "/v1/metrics?format=prometheus", &headers).await;
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn metrics_prometheus_text_is_lint_clean() {
    let state = state(Acl::disabled()).with_host("node-1");
    let resp = prometheus_get(&state, None).await;
    assert_eq!(
        content_type(&resp),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = text(&resp);
    if let Some(printed) = promtool_check(body) {
        assert_eq!(printed, "", "promtool check metrics on:\n{body}");
    }

    // Every family has its HELP and TYPE, once, before its samples.
    let mut described = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(!described.contains(&name), "TYPE twice for {name}");
            described.push(name);
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(described.last(), Some(&name), "{line} outside its family");
        }
    }
    let web = [("alloc_id", ALLOC), ("task", "web.frontend")];
    assert_eq!(
        sample(body, "nomad_client_allocs_memory_rss", &web),
        Some(14_098_432.0)
    );
    assert!(body.contains(&format!(
        r#"nomad_client_allocs_memory_rss{{alloc_id="{ALLOC}",task="web.frontend",job="web",task_group="front\"end",namespace="default",host="node-1"}} 14098432"#
    )));
    assert_eq!(
        sample(body, "nomad_client_allocs_cpu_total_percent", &web),
        Some(105.5)
    );
    // Cumulative figures are counters in base units.
    assert_eq!(
        sample(body, "nomad_collector_task_cpu_total_seconds_total", &web),
        Some(12.0)
    );
    assert_eq!(
        sample(
            body,
            "nomad_collector_task_cpu_throttled_seconds_total",
            &web
        ),
        Some(1e-6)
    );
    assert_eq!(
        sample(
            body,
            "nomad_collector_task_cpu_throttled_periods_total",
            &web
        ),
        Some(7.0)
    );
    assert_eq!(
        sample(body, "nomad_collector_cycles_total", &[]),
        Some(100.0)
    );
    assert_eq!(
        sample(
            body,
            "nomad_collector_bpf_sched_switch_run_seconds_total",
            &[]
        ),
        Some(5e-9)
    );
    assert_eq!(
        sample(body, "nomad_collector_bpf_sched_switch_runs_total", &[]),
        Some(6.0)
    );
    assert_eq!(
        sample(body, "nomad_collector_cycle_seconds", &[]),
        Some(0.012)
    );
    // Unmeasured figures are left out; labels that are not known are not invented.
    let batch = [("alloc_id", ALLOC2), ("task", "batch")];
    assert!(sample(body, "nomad_client_allocs_memory_usage", &batch).is_none());
    assert!(sample(body, "nomad_client_allocs_memory_rss", &batch).is_some());
    assert!(body.contains(&format!(
        r#"nomad_client_allocs_memory_rss{{alloc_id="{ALLOC2}",task="batch",host="node-1"}} 2048"#
    )));
    assert!(body.contains(
        r#"nomad_collector_source{source="procfs",fallback_reason="BPF \"denied\"\nby \\ lockdown"} 1"#
    ));
    // The figures beyond Nomad's, from the task's entry (and only where measured).
    let redis = [("alloc_id", ALLOC), ("task", "redis")];
    for (name, value) in [
        ("nomad_collector_task_cpu_wait_seconds_total", 3.5),
        ("nomad_collector_task_processes_started_total", 7.0),
        ("nomad_collector_task_processes_exited_total", 5.0),
        ("nomad_collector_task_oom_kills_total", 1.0),
        ("nomad_collector_task_cpu_pressure_some_seconds_total", 2.0),
        ("nomad_collector_task_io_pressure_full_seconds_total", 0.25),
    ] {
        assert_eq!(sample(body, name, &redis), Some(value), "{name}");
    }
    assert!(sample(body, "nomad_collector_task_cpu_wait_seconds_total", &batch).is_none());
    assert_eq!(
        sample(body, "nomad_collector_ebpf_process_iter_enabled", &[]),
        Some(0.0),
        "the fixture's source is /proc"
    );
    // Every family of the table that this snapshot measures is served.
    for name in metrics::families::sample_names() {
        assert!(
            described.contains(&name.as_str()),
            "{name} missing from\n{body}"
        );
    }
}

#[tokio::test]
async fn metrics_openmetrics_when_asked_for() {
    let state = state(Acl::disabled());
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let resp = prometheus_get(&state, Some(prometheus)).await;
    assert_eq!(
        content_type(&resp),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = text(&resp);
    assert!(body.ends_with("# EOF\n"), "{body}");
    // OpenMetrics names the family without `_total`, and its unit.
    assert!(body.contains("# TYPE nomad_collector_task_cpu_total_seconds counter\n"));
    assert!(body.contains("# UNIT nomad_collector_task_cpu_total_seconds seconds\n"));
    assert!(body.contains("# TYPE nomad_client_allocs_cpu_total_percent gauge\n"));
    assert_eq!(
        sample(
            body,
            "nomad_collector_task_cpu_total_seconds_total",
            &[("task", "redis")]
        ),
        Some(12.0)
    );
    // The same figures as the 0.0.4 text.
    let plain = prometheus_get(&state, Some("text/plain")).await;
    assert!(content_type(&plain).starts_with("text/plain; version=0.0.4"));
    assert_eq!(
        sample(
            text(&plain),
            "nomad_client_allocs_cpu_total_percent",
            &[("task", "redis")]
        ),
        sample(
            body,
            "nomad_client_allocs_cpu_total_percent",
            &[("task", "redis")]
        ),
    );
}

#[test]
fn metrics_stream_one_family_per_chunk() {
    let snapshot = state(Acl::disabled()).store.load();
    for format in [metrics::Format::Text, metrics::Format::OpenMetrics] {
        let chunks: Vec<Bytes> =
            metrics::exposition::chunks(snapshot.clone(), "h".into(), format).collect();
        let whole = metrics::exposition::render(snapshot.clone(), "h".into(), format);
        assert_eq!(chunks.concat(), whole.as_bytes());
        // Each task family is a chunk of its own (the fixture measures every one), so
        // a body in flight holds one family's samples, never all of them; then the
        // collector's own families, then OpenMetrics' end.
        let eof = usize::from(format == metrics::Format::OpenMetrics);
        assert_eq!(chunks.len(), metrics::families::TASK.len() + 1 + eof);
        if eof == 1 {
            assert_eq!(&chunks.last().unwrap()[..], b"# EOF\n");
        }
        for chunk in &chunks[..metrics::families::TASK.len()] {
            let text = std::str::from_utf8(chunk).unwrap();
            assert!(text.starts_with("# HELP "), "{text}");
            assert_eq!(text.matches("# TYPE ").count(), 1, "{text}");
        }
    }
}

#[tokio::test]
async fn empty_snapshot_serves_every_route() {
    let state = ApiState::new(Arc::new(SnapshotStore::default()), Acl::disabled());
    for path in [
        "/v1/client/stats",
        "/v1/client/allocations",
        "/v1/metrics",
        "/v1/metrics?format=prometheus",
        "/v1/agent/health",
    ] {
        assert_eq!(get(&state, path).await.status(), 200, "{path}");
    }
    assert_eq!(text(&get(&state, "/v1/client/allocations").await), "[]");
}

// ---------------------------------------------------------------- real server

mod server_tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::oneshot,
        task::JoinHandle,
        time::{timeout, Instant},
    };
    use tokio_rustls::rustls;

    use super::*;
    use crate::{
        api::server::{serve_with, Timeouts},
        config::HttpConfig,
    };

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn stop(mut self) -> Duration {
            let started = Instant::now();
            let _ = self.stop.take().unwrap().send(());
            timeout(Duration::from_secs(10), self.task)
                .await
                .expect("server stops")
                .expect("server task")
                .expect("serve result");
            started.elapsed()
        }
    }

    fn http_config() -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_connections: 16,
            max_header_bytes: 8192,
            max_uri_bytes: 256,
            tls_cert: None,
            tls_key: None,
        }
    }

    async fn start_with(
        config: HttpConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
        timeouts: Timeouts,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let state = state(Acl::disabled());
        let task = tokio::spawn(async move {
            serve_with(
                listener,
                &config,
                tls,
                state,
                async move {
                    let _ = stopped.await;
                },
                timeouts,
            )
            .await
        });
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn start(config: HttpConfig) -> Server {
        start_with(config, None, Timeouts::default()).await
    }

    /// Reads until EOF (or reset), at most 5 s.
    async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!("connection not closed: {}", String::from_utf8_lossy(&out)),
            }
        }
    }

    /// Reads one response (head + Content-Length body) from a keep-alive connection.
    async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            out.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await?;
        out.extend_from_slice(&body);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        String::from_utf8_lossy(&read_all(&mut stream).await).into_owned()
    }

    const HEALTH: &[u8] = b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n";
    const HEALTH_CLOSE: &[u8] =
        b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn serves_and_limits_head_and_uri() {
        let server = start(http_config()).await;

        let ok = exchange(server.addr, HEALTH_CLOSE).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.ends_with(r#"{"client":{"ok":true,"message":"ok"}}"#),
            "{ok}"
        );

        // Over-long head: 431 (or 400), never 500, then the connection is closed.
        let mut big = b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        big.extend_from_slice(b"\r\n\r\n");
        let resp = exchange(server.addr, &big).await;
        assert!(
            resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 400"),
            "{resp}"
        );

        // Over-long request target: 414.
        let long = format!(
            "GET /v1/client/allocation/{}/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(300)
        );
        let resp = exchange(server.addr, long.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");
        assert!(resp.ends_with("URI too long"), "{resp}");
        let long_query = format!(
            "GET /v1/metrics?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(300)
        );
        let resp = exchange(server.addr, long_query.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");

        // Non-UTF-8 bytes in the request line: 400.
        let resp = exchange(
            server.addr,
            b"GET /v1/\xff\xfe/stats HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        let resp = exchange(server.addr, b"\xff\xfe\xfd\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

        // A request body: 4xx.
        let resp = exchange(
            server.addr,
            b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
        let resp = exchange(
            server.addr,
            b"POST /v1/agent/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");

        // HEAD: headers only, and the connection stays usable.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"HEAD /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        stream.write_all(HEALTH).await.unwrap();
        let next = read_response(&mut stream).await.unwrap();
        assert!(
            next.starts_with("HTTP/1.1 200"),
            "no stray HEAD body: {next}"
        );

        // Still serving after all of that.
        let ok = exchange(server.addr, HEALTH_CLOSE).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        server.stop().await;
    }

    #[tokio::test]
    async fn slow_heads_are_cut_off() {
        let timeouts = Timeouts {
            header_read: Duration::from_millis(300),
            idle: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let server = start_with(http_config(), None, timeouts).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /v1/agent/health HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let started = Instant::now();
        let resp = String::from_utf8_lossy(&read_all(&mut stream).await).into_owned();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
            "{resp}"
        );
        // An idle keep-alive connection is bounded the same way.
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(HEALTH).await.unwrap();
        assert!(read_response(&mut idle)
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
        let mut rest = Vec::new();
        let closed = timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "idle connection closed");
        server.stop().await;
    }

    #[tokio::test]
    async fn connection_limit_is_respected() {
        let config = HttpConfig {
            max_connections: 2,
            ..http_config()
        };
        let server = start(config).await;
        let mut first = TcpStream::connect(server.addr).await.unwrap();
        let mut second = TcpStream::connect(server.addr).await.unwrap();
        for stream in [&mut first, &mut second] {
            stream.write_all(HEALTH).await.unwrap();
            assert!(read_response(stream)
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200"));
        }
        // The third connects (kernel backlog) but is not served while two are open.
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        third.write_all(HEALTH).await.unwrap();
        let waited = timeout(Duration::from_millis(500), read_response(&mut third)).await;
        assert!(waited.is_err(), "third connection served over the limit");
        // Both kept-alive connections still work.
        second.write_all(HEALTH).await.unwrap();
        assert!(read_response(&mut second)
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
        drop(first);
        let served = timeout(Duration::from_secs(3), read_response(&mut third))
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        server.stop().await;
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_in_flight_requests() {
        let server = start(http_config()).await;
        let addr = server.addr;
        // In flight: half a request head sent.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /v1/client/stats HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Idle keep-alive after one request, and connected but silent.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(HEALTH).await.unwrap();
        read_response(&mut idle).await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Let the server read the half head (a connection that sent nothing it has read
        // is dropped at shutdown).
        tokio::time::sleep(Duration::from_millis(500)).await;

        let stop = tokio::spawn(server.stop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        busy.write_all(b"\r\n").await.unwrap();
        let resp = String::from_utf8_lossy(&read_all(&mut busy).await).into_owned();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\"Memory\""), "{resp}");
        let took = stop.await.unwrap();
        assert!(
            took < Duration::from_secs(3),
            "idle and silent connections do not hold shutdown: {took:?}"
        );
        assert!(read_all(&mut idle).await.is_empty());
        assert!(read_all(&mut silent).await.is_empty());
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = cert.serialize_pem().unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, cert.serialize_private_key_pem()).unwrap();
        (cert_path, key_path, cert_pem)
    }

    async fn tls_get(addr: SocketAddr, cert_pem: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut cert_pem.as_bytes()).unwrap() {
            roots.add(&rustls::Certificate(der)).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_safe_defaults()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
        stream
            .write_all(
                format!(
                    "GET /v1/client/allocation/{ALLOC}/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&read_all(&mut stream).await).into_owned()
    }

    #[tokio::test]
    async fn tls_round_trip_and_plain_http_on_the_tls_port() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, cert_pem) = self_signed(dir.path());
        let acceptor = load_tls(&cert, &key).expect("load_tls");
        let server = start_with(http_config(), Some(acceptor), Timeouts::default()).await;

        let resp = tls_get(server.addr, &cert_pem).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\"ResourceUsage\""), "{resp}");

        // Plain HTTP to the TLS port: the handshake fails, the connection closes, and
        // nothing resembling an HTTP answer comes back.
        let mut plain = TcpStream::connect(server.addr).await.unwrap();
        plain.write_all(HEALTH_CLOSE).await.unwrap();
        let answer = read_all(&mut plain).await;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

        // The server is still up.
        let resp = tls_get(server.addr, &cert_pem).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        server.stop().await;
    }

    #[test]
    fn load_tls_reports_missing_or_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = self_signed(dir.path());
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_tls(&missing, &key),
            Err(TlsError::Read { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem").unwrap();
        assert!(matches!(
            load_tls(&empty, &key),
            Err(TlsError::NoCertificate { .. })
        ));
        // A certificate is not a key; the error does not show the file's contents.
        let err = load_tls(&cert, &cert).err().expect("no key");
        assert!(matches!(err, TlsError::NoKey { .. }));
        assert!(!err.to_string().contains("BEGIN"));
    }
}
