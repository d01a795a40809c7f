//! API throughput: `wrk` with 64 connections on `GET /v1/client/allocation/<ID>/stats`
//! against the collecting daemon, and the same load against `plain-warp` serving a
//! fixed body of the same size (the ceiling on this machine), alternated.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{
    daemon::{Daemon, Source},
    http,
    process::{self, ChildGuard},
};

pub const CONNECTIONS: u32 = 64;
pub const THREADS: u32 = 2;

#[derive(Clone, Copy, Debug, Default)]
pub struct Wrk {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ApiResult {
    pub body_bytes: usize,
    pub seconds: u64,
    pub daemon: Vec<Wrk>,
    pub plain: Vec<Wrk>,
}

fn duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        "m" => v * 60e3,
        _ => return None,
    })
}

pub fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut wrk = Wrk::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("50%"), Some(v)) => wrk.p50_ms = duration_ms(v)?,
                (Some("99%"), Some(v)) => wrk.p99_ms = duration_ms(v)?,
                (Some(p), _) if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            wrk.requests_per_s = v.trim().parse().ok()?;
        }
        if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.errors += v.trim().parse::<u64>().unwrap_or(1);
        }
        if let Some(v) = t.strip_prefix("Socket errors:") {
            // connect N, read N, write N, timeout N
            wrk.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (wrk.requests_per_s > 0.0).then_some(wrk)
}

/// `wrk` with `connections` connections on GET `path` for `seconds`.
pub fn run_wrk(addr: SocketAddr, path: &str, seconds: u64, connections: u32) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    process::unblock_signals(&mut cmd);
    let out = cmd
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output: {text}"))
}

/// The plain warp server on a free port, serving `body_file`.
fn start_plain(bin: &Path, body_file: &Path) -> Result<(ChildGuard, SocketAddr)> {
    let port = http::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = ChildGuard::spawn(
        Command::new(bin)
            .arg(addr.to_string())
            .arg(body_file)
            .stdout(Stdio::piped()),
    )?;
    let stdout = child.child().stdout.take().context("plain-warp stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("listening") {
        bail!("plain-warp did not start: {line:?}");
    }
    Ok((child, addr))
}

/// `rounds` alternations of daemon / plain, each `seconds` long. The daemon collects
/// (eBPF source, 1 s interval) against whatever scenario is set up.
pub fn run(
    daemon_bin: &Path,
    plain_bin: &Path,
    alloc: &str,
    rounds: usize,
    seconds: u64,
    interval: Duration,
    progress: &dyn Fn(&str),
) -> Result<ApiResult> {
    let daemon = Daemon::start(daemon_bin, Source::Ebpf, interval)?;
    daemon.wait_cycles(3)?;
    let path = format!("/v1/client/allocation/{alloc}/stats");
    let body = http::get_ok(daemon.addr, &path)?;
    let body_file =
        std::env::temp_dir().join(format!("bench-api-body-{}.json", std::process::id()));
    std::fs::write(&body_file, &body)?;
    let (mut plain, plain_addr) = start_plain(plain_bin, &body_file)?;
    let check = http::get_ok(plain_addr, &path)?;
    if check.len() != body.len() {
        bail!(
            "plain-warp body is {} bytes, the daemon's {}",
            check.len(),
            body.len()
        );
    }
    let mut result = ApiResult {
        body_bytes: body.len(),
        seconds,
        ..ApiResult::default()
    };
    for round in 0..rounds {
        for k in 0..2 {
            let daemon_turn = (round + k) % 2 == 0;
            let (name, addr) = if daemon_turn {
                ("daemon", daemon.addr)
            } else {
                ("plain warp", plain_addr)
            };
            let wrk = run_wrk(addr, &path, seconds, CONNECTIONS)?;
            progress(&format!(
                "API round {}/{rounds}: {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                round + 1,
                wrk.requests_per_s,
                wrk.p50_ms,
                wrk.p99_ms
            ));
            if daemon_turn {
                result.daemon.push(wrk);
            } else {
                result.plain.push(wrk);
            }
        }
    }
    plain.stop(Duration::from_secs(5));
    daemon.stop();
    let _ = std::fs::remove_file(&body_file);
    Ok(result)
}

/// `pidstat -u -r -p ALL 1 <intervals>`: its own CPU per interval (ns).
pub fn pidstat_cpu_per_interval(intervals: u64) -> Result<f64> {
    let child = ChildGuard::spawn(
        Command::new("pidstat")
            .args(["-u", "-r", "-p", "ALL", "1"])
            .arg(intervals.to_string())
            .env("LC_ALL", "C")
            .stdout(Stdio::null()),
    )?;
    let (status, cpu) = child.wait_with_cpu()?;
    if !status.success() {
        bail!("pidstat failed ({status})");
    }
    Ok(cpu.as_nanos() as f64 / intervals as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   635.91us    0.89ms  12.92ms   93.69%\n    Req/Sec    56.20k     8.07k   62.00k    86.54%\n  Latency Distribution\n     50%  250.00us\n     75%  491.00us\n     90%    1.30ms\n     99%    5.08ms\n  1123236 requests in 10.10s, 149.96MB read\nRequests/sec: 111215.96\nTransfer/sec:     14.85MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests_per_s, 111215.96);
        assert_eq!(w.p50_ms, 0.25);
        assert_eq!(w.p99_ms, 5.08);
        assert_eq!(w.errors, 0);
    }
}
