//! `/v1/metrics`: go-metrics JSON, Prometheus text and OpenMetrics.

use super::{
    prometheus_parser::{promtool_check, sample},
    *,
};

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
        "threads_reported",
        "threads_carried",
        "tracked_cgroups",
        "tracked_cgroups_max",
        "tracked_cgroups_full",
        "checkpoint_failures",
        "kernel.exits_folded",
        "kernel.exits_unseen",
        "kernel.storage_failed",
        "kernel.samples_deferred",
        "kernel.lookups",
        "kernel.ran_set_slots",
        "kernel.ran_set_overflows",
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
