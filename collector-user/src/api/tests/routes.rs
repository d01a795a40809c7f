//! Routing, queries, methods, bodies, the ACL and the shapes of the JSON routes.

use super::*;

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

/// The example response on Nomad's API page for this endpoint, as the project's seed
/// page (`shared/seed/allocation-stats-api.md`) has it, copied here verbatim so that the
/// test does not depend on a path outside the repository.
const SEED_STATS: &str = include_str!("seed-allocation-stats.json");

/// Every key of `seed` is in `ours`, at every level, with a value of the same JSON kind,
/// and every name a seed `Measured` list has is in ours. Under `Tasks` and `Pids`, maps
/// keyed by task name and by PID, the seed's entries give the shape every one of ours
/// must have.
fn assert_has_seed_shape(seed: &Value, ours: &Value, path: &str) {
    match (seed, ours) {
        (Value::Object(seed_map), Value::Object(our_map)) => {
            if path.ends_with(".Tasks") || path.ends_with(".Pids") {
                assert!(!our_map.is_empty(), "{path}: none of ours to compare");
                for shape in seed_map.values() {
                    for (key, mine) in our_map {
                        assert_has_seed_shape(shape, mine, &format!("{path}.{key}"));
                    }
                }
            } else {
                for (key, value) in seed_map {
                    let mine = our_map
                        .get(key)
                        .unwrap_or_else(|| panic!("{path}: no {key:?} in {ours}"));
                    assert_has_seed_shape(value, mine, &format!("{path}.{key}"));
                }
            }
        }
        (Value::Array(seed_items), Value::Array(our_items)) => {
            for item in seed_items {
                assert!(our_items.contains(item), "{path}: no {item} in {ours}");
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        _ => panic!("{path}: the seed has {seed}, ours is {ours}"),
    }
}

#[tokio::test]
async fn stats_have_the_seed_pages_shape() {
    let seed: Value = serde_json::from_str(SEED_STATS).expect("the seed page's JSON decodes");
    assert_keys(&seed, &["ResourceUsage", "Tasks", "Timestamp"]);
    let state = state(Acl::disabled());
    let resp = get(&state, &format!("/v1/client/allocation/{ALLOC}/stats")).await;
    assert_eq!(resp.status(), 200);
    assert_has_seed_shape(&seed, &json(&resp), "$");
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
