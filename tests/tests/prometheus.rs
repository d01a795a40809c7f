//! The daemon as Prometheus and Grafana users meet it: Debian's real `prometheus`
//! scraping it every second over TLS with an ACL token, PromQL through Prometheus's
//! HTTP API, `promtool check metrics` on a live exposition, and the Grafana dashboard's
//! queries checked against the families the daemon really serves.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{
    daemon_binary, eventually, free_port, privileged, uuid, workspace_root, Cgroup, ChildGuard,
    Daemon,
};

const TOKEN: &str = "prometheus-scrape-token-0123";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Whether `binary` (from Debian's `prometheus` package, which `cargo xtask test`
/// installs) is on the PATH; with `CI` set its absence fails the test.
fn have(test: &str, binary: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !in_ci(),
            "{test}: CI is set but {binary} is not installed (apt-get install prometheus)"
        );
        eprintln!("SKIPPED {test}: {binary} not installed (apt-get install prometheus)");
    }
    found
}

/// A directory removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nomad-collector-{what}-{}", uuid()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Prometheus on loopback, killed (and its TSDB removed with its TempDir) on drop.
struct Prometheus {
    process: ChildGuard,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &TempDir, config: &str) -> Prometheus {
        let config = dir.file("prometheus.yml", config);
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            process: ChildGuard::from(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let ready = eventually(Duration::from_secs(30), || {
            if let Some(status) = prometheus.process.child().try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log_text());
            }
            ureq::get(&format!("{}/-/ready", prometheus.url))
                .call()
                .ok()
                .map(|_| ())
        });
        assert!(
            ready.is_some(),
            "prometheus not ready:\n{}",
            prometheus.log_text()
        );
        prometheus
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query at `at` (Unix seconds): each series' labels and value.
    fn query(&self, promql: &str, at: f64) -> Vec<(serde_json::Value, f64)> {
        let response = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .query("time", &format!("{at:.3}"))
            .call()
            .unwrap_or_else(|e| panic!("query {promql}: {e}\n{}", self.log_text()));
        let body: serde_json::Value =
            serde_json::from_str(&response.into_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value of `promql` at `at`, if it has exactly one series.
    fn value(&self, promql: &str, at: f64) -> Option<f64> {
        match self.query(promql, at).as_slice() {
            [(_, value)] => Some(*value),
            _ => None,
        }
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A task that keeps one core busy: a shell loop, at the highest priority so that other
/// work on a shared machine takes as little as possible from it.
fn busy_task(alloc: &str) -> (Cgroup, ChildGuard) {
    let cgroup = Cgroup::task(alloc, "busy");
    let busy =
        cgroup.spawn(Command::new("nice").args(["-n", "-20", "sh", "-c", "while :; do :; done"]));
    (cgroup, busy)
}

/// What a scrape configuration needs to reach the daemon over TLS: the certificate the
/// daemon serves, self-signed for `localhost`, which Prometheus trusts as its CA.
fn self_signed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        dir.file("cert.pem", &cert.serialize_pem().unwrap()),
        dir.file("key.pem", &cert.serialize_private_key_pem()),
    )
}

#[test]
fn prometheus_scrapes_task_cpu_over_tls_with_a_token() {
    let test = "prometheus_scrapes_task_cpu_over_tls_with_a_token";
    if !privileged(test) || !have(test, "prometheus") || !have(test, "promtool") {
        return;
    }
    // Declared first so that it goes last: everything below keeps files in it.
    let dir = TempDir::new("prometheus-test");
    let (cert, key) = self_signed(&dir);
    let alloc = uuid();
    let (cgroup, _busy) = busy_task(&alloc);

    let port = free_port();
    let config = dir.file(
        "collector.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[acl]\ntokens = [\"{TOKEN}\"]\n",
            cert.display(),
            key.display()
        ),
    );
    let log = fs::File::create(dir.path().join("collector.log")).unwrap();
    let mut daemon = ChildGuard::from(
        Command::new(daemon_binary())
            .args(["--config", config.to_str().unwrap(), "--no-pin"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the daemon"),
    );
    let collector_log = || fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default();

    // Two jobs on the same target: one as configured for the daemon, one without the
    // token, which must be refused (so the first one's success is the token's doing).
    let job = |name: &str, auth: &str| {
        format!(
            r#"  - job_name: {name}
    scheme: https
    metrics_path: /v1/metrics
    params:
      format: [prometheus]
{auth}    tls_config:
      ca_file: {cert}
      server_name: localhost
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"#,
            cert = cert.display()
        )
    };
    let prometheus = Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}{}",
            job(
                "nomad-collector",
                &format!("    authorization:\n      credentials: {TOKEN}\n")
            ),
            job("no-token", "")
        ),
    );

    let scraped = eventually(Duration::from_secs(30), || {
        if let Some(status) = daemon.child().try_wait().unwrap() {
            panic!("daemon exited ({status}):\n{}", collector_log());
        }
        let at = now_unix();
        (prometheus.value("up{job=\"nomad-collector\"}", at) == Some(1.0)).then_some(())
    });
    assert!(
        scraped.is_some(),
        "Prometheus never scraped the daemon:\n{}\n{}",
        prometheus.log_text(),
        collector_log()
    );
    let refused = eventually(Duration::from_secs(10), || {
        prometheus.value("up{job=\"no-token\"}", now_unix())
    });
    assert_eq!(
        refused,
        Some(0.0),
        "a scrape without the token must be refused"
    );

    // Ten seconds of the busy task, measured by the kernel's own accounting of its
    // cgroup at both ends, while Prometheus scrapes every second.
    let selector = format!("alloc_id=\"{alloc}\",task=\"busy\",job=\"nomad-collector\"");
    let window = Duration::from_secs(10);
    let (usage_0, t0) = (cgroup.cpu_usage_ns(), Instant::now());
    std::thread::sleep(window);
    let (usage_1, t1) = (cgroup.cpu_usage_ns(), Instant::now());
    // Let the scrape that follows the window's end land.
    std::thread::sleep(Duration::from_millis(1500));
    let at = now_unix() - 1.5;
    let truth = (usage_1 - usage_0) as f64 / (t1 - t0).as_nanos() as f64;

    let cores = prometheus
        .value(
            &format!("rate(nomad_collector_task_cpu_total_seconds_total{{{selector}}}[10s])"),
            at,
        )
        .unwrap_or_else(|| panic!("no CPU counter for the task:\n{}", collector_log()));
    let percent = prometheus
        .value(
            &format!("nomad_client_allocs_cpu_total_percent{{{selector}}}"),
            at,
        )
        .expect("Nomad's percent gauge for the task");
    let percent_avg = prometheus
        .value(
            &format!("avg_over_time(nomad_client_allocs_cpu_total_percent{{{selector}}}[10s])"),
            at,
        )
        .unwrap();
    eprintln!(
        "busy task: rate() {cores:.3} cores, percent {percent:.1} (10 s average {percent_avg:.1}), \
         cgroup's own accounting {truth:.3} cores"
    );
    // Against the kernel's figure for the same cgroup: the counter is exact, so the only
    // difference is where the 1 s scrapes fall in the window.
    assert!(
        (cores - truth).abs() <= 0.05 * truth.max(0.5),
        "rate() {cores} against the cgroup's {truth}"
    );
    assert!(
        (percent_avg / 100.0 - truth).abs() <= 0.08 * truth.max(0.5),
        "average percent {percent_avg} against the cgroup's {truth}"
    );
    // And what the task is: one core kept busy. The margins are the time a shared
    // 2-core machine may take from a top-priority loop (CI runs nothing else).
    assert!((0.85..=1.05).contains(&cores), "rate() {cores} cores");
    assert!((80.0..=105.0).contains(&percent), "percent {percent}");

    // Labels as Nomad puts them on its own metrics.
    let series = prometheus.query(
        &format!("nomad_client_allocs_cpu_total_percent{{{selector}}}"),
        at,
    );
    let labels = &series[0].0;
    assert!(
        labels["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{labels}"
    );
    // Prometheus scraped OpenMetrics (it asks for it first) and read the counter's type
    // from it.
    let metadata: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("{}/api/v1/metadata", prometheus.url))
            .query("metric", "nomad_collector_task_cpu_total_seconds")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        metadata["data"]["nomad_collector_task_cpu_total_seconds"][0]["type"], "counter",
        "{metadata}"
    );
    assert_eq!(
        metadata["data"]["nomad_collector_task_cpu_total_seconds"][0]["unit"], "seconds",
        "{metadata}"
    );
    drop(prometheus);
    drop(daemon);
}

/// The names of the metrics a PromQL expression reads: every identifier that starts
/// with `nomad_` (every family this daemon serves does; label names never do).
fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("nomad_"))
}

/// Every PromQL expression in the dashboard: panel targets and template variable
/// queries (`label_values(<metric>, <label>)` reads a metric too).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        // Rows nest their panels.
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a PromQL target").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = &variable["query"];
            let text = query["query"].as_str().or(query.as_str()).unwrap();
            exprs.push(text.to_owned());
        }
    }
    exprs
}

#[test]
fn dashboard_queries_name_families_the_daemon_serves() {
    let test = "dashboard_queries_name_families_the_daemon_serves";
    if !privileged(test) || !have(test, "promtool") {
        return;
    }
    let path = workspace_root().join("deploy/grafana/nomad-collector.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["job", "alloc_id", "task"] {
        assert!(
            variables.contains(wanted),
            "no {wanted} variable: {variables:?}"
        );
    }
    let exprs = dashboard_queries(&dashboard);
    let used: BTreeSet<&str> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(
        used.len() >= 8,
        "the dashboard should chart CPU, memory, throttling and overhead: {used:?}"
    );

    // A live exposition with a task that has every figure: a busy loop under a CPU
    // quota (so it is throttled) in a memory cgroup.
    let alloc = uuid();
    let (cgroup, _busy) = busy_task(&alloc);
    cgroup.set_cpu_quota(20_000, 100_000);
    let daemon = Daemon::start(&["--no-pin"]);
    // Memory and throttling of an allocation nobody asked about are read within one
    // cgroup_refresh (10 s) of its discovery.
    let served_names = |exposition: &str| -> BTreeSet<String> {
        exposition
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    };
    let mut last = (BTreeSet::new(), String::new());
    let complete = eventually(Duration::from_secs(30), || {
        let (status, body) = daemon.get("/v1/metrics?format=prometheus");
        assert_eq!(status, 200, "{body}");
        let served = served_names(&body);
        let found = body.contains(&format!("alloc_id=\"{alloc}\""))
            && used.iter().all(|name| served.contains(*name));
        last = (served, body);
        found.then_some(())
    });
    let (served, exposition) = last;
    let missing: Vec<&&str> = used
        .iter()
        .filter(|name| !served.contains(**name))
        .collect();
    assert!(
        complete.is_some() && missing.is_empty(),
        "the dashboard queries {missing:?}, which the daemon does not serve; it serves {served:?}"
    );

    // The live exposition, real task labels and all, is lint-clean too.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.is_empty(),
        "promtool check metrics: {printed}"
    );
}
