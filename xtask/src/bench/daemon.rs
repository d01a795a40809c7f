//! The daemon under test, started as an operator would: `--source <s> --no-pin
//! --interval <i> --listen 127.0.0.1:<free port>`, its log kept in a file.

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{http, process::ChildGuard};

/// How the daemon under test collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// eBPF, as deployed: every allocation in full (every process through one
    /// task-iterator pass, and the cgroup memory and throttling) every interval, the
    /// same work as Nomad's method done the eBPF way.
    Ebpf,
    /// Nomad's method: every process of every task from /proc, every interval.
    Procfs,
}

impl Source {
    /// The arm's name in the report and results.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Procfs => "procfs",
        }
    }

    /// What the daemon's `nomad_collector_source` gauge says for this arm.
    pub fn reported(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Procfs => "procfs",
        }
    }

    fn daemon_args(self) -> &'static [&'static str] {
        match self {
            Source::Ebpf => &["--source", "ebpf"],
            Source::Procfs => &["--source", "procfs"],
        }
    }

    pub fn is_ebpf(self) -> bool {
        self == Source::Ebpf
    }
}

/// Ids of the daemon's eBPF programs, from its start-up log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramIds {
    pub sched_switch: u64,
    pub checkpoint: u64,
    pub process_iter: u64,
    /// The cgroup walk's (6.7+), which makes the passes that are not host-wide.
    pub cgroup_walk: Option<u64>,
}

pub struct Daemon {
    child: ChildGuard,
    pub addr: SocketAddr,
    pub source: Source,
    log: PathBuf,
}

/// The daemon's own figures from `/v1/metrics?format=prometheus` (label-less
/// `nomad_collector_*` gauges, plus `source`).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub values: HashMap<String, f64>,
    pub source: Option<String>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> f64 {
        self.values
            .get(&format!("nomad_collector_{name}"))
            .copied()
            .unwrap_or(0.0)
    }

    pub fn parse(text: &str) -> Self {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            if !line.starts_with("nomad_collector_") {
                continue;
            }
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(labels) = name.strip_prefix("nomad_collector_source{") {
                metrics.source = labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("source=\""))
                    .map(|v| v.trim_end_matches(['"', '}']).to_owned());
                continue;
            }
            if let Ok(v) = value.parse() {
                metrics.values.insert(name.to_owned(), v);
            }
        }
        metrics
    }
}

impl Daemon {
    pub fn start(binary: &Path, source: Source, interval: Duration) -> Result<Self> {
        Self::start_with_pins(binary, source, interval, None)
    }

    /// Like [`Daemon::start`], with the eBPF pins under `pin_root` (so that counting goes
    /// on across a restart) instead of `--no-pin` when given.
    pub fn start_with_pins(
        binary: &Path,
        source: Source,
        interval: Duration,
        pin_root: Option<&Path>,
    ) -> Result<Self> {
        let port = http::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::env::temp_dir().join(format!("nomad-collector-bench-{port}.log"));
        let file = fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        match pin_root {
            Some(root) => cmd.arg("--pin-root").arg(root),
            None => cmd.arg("--no-pin"),
        };
        let child = ChildGuard::spawn(
            cmd.args(["--listen", &addr.to_string()])
                .args(source.daemon_args())
                .arg("--interval")
                .arg(format!("{}ms", interval.as_millis()))
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone()?))
                .stderr(Stdio::from(file)),
        )?;
        let mut daemon = Self {
            child,
            addr,
            source,
            log,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait() {
                bail!("the daemon exited early ({status}):\n{}", self.log_text());
            }
            if http::get_ok(self.addr, "/v1/agent/health").is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("the daemon did not serve within 60 s:\n{}", self.log_text())
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The eBPF programs' ids, from the start-up log line (None on the /proc source).
    pub fn program_ids(&self) -> Option<ProgramIds> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("process_iter="))?;
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        Some(ProgramIds {
            sched_switch: field("sched_switch=")?,
            checkpoint: field("checkpoint=")?,
            process_iter: field("process_iter=")?,
            cgroup_walk: field("cgroup_walk="),
        })
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let text = http::get_ok(self.addr, "/v1/metrics?format=prometheus")?;
        Ok(Metrics::parse(&text))
    }

    /// Waits until the daemon has completed at least `n` cycles; returns the metrics.
    pub fn wait_cycles(&self, n: u64) -> Result<Metrics> {
        let deadline = Instant::now() + Duration::from_secs(30 + n * 5);
        loop {
            let m = self.metrics()?;
            if m.get("cycles_total") >= n as f64 {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not complete {n} cycles in time");
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops with SIGTERM (the daemon detaches its programs); false if it had to be
    /// killed or exited with an error.
    pub fn stop(mut self) -> bool {
        let ok = self.child.stop(Duration::from_secs(15));
        if ok {
            let _ = fs::remove_file(&self.log);
        } else {
            eprintln!(
                "warning: the daemon did not stop cleanly; its log: {}",
                self.log.display()
            );
        }
        ok
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.stop(Duration::from_secs(15));
    }
}
