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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Ebpf,
    Procfs,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Procfs => "procfs",
        }
    }
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

/// Removes ANSI colour sequences (the log is written to a file, but be safe).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Daemon {
    pub fn start(binary: &Path, source: Source, interval: Duration) -> Result<Self> {
        let port = http::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::env::temp_dir().join(format!("nomad-collector-bench-{port}.log"));
        let file = fs::File::create(&log)?;
        let child = ChildGuard::spawn(
            Command::new(binary)
                .args(["--listen", &addr.to_string()])
                .args(["--source", source.as_str(), "--no-pin"])
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
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// (sched_switch program id, task iterator program id), from the start-up log line.
    pub fn program_ids(&self) -> Option<(u64, u64)> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("task_iter="))?;
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        Some((field("sched_switch=")?, field("task_iter=")?))
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
            if m.get("cycles") >= n as f64 {
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
