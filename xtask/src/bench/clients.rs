//! Nomad's own clients of the stats endpoint, polling the daemon during the `clients-*`
//! scenarios' measured windows:
//!
//! * **nomad-apm** (nomad-autoscaler's APM plugin): at each policy evaluation, every
//!   [`APM_EVERY`], one `GET /v1/client/allocation/<ID>/stats` per allocation, for every
//!   allocation of the scenario, one after another; it reads the allocation's
//!   `CpuStats.Percent`, `CpuStats.TotalTicks` and `MemoryStats.Usage`;
//! * **the Nomad UI**: one allocation, a request [`UI_EVERY`] after the last answer; it
//!   reads `TotalTicks` and `RSS` (or `Usage`) of the allocation and of each of its tasks.
//!
//! Both run on threads of the benchmark process (their CPU is not the daemon's), over
//! loopback through [`super::http`]. Every answer is parsed and must carry the fields its
//! client reads; anything else (an error, a status other than 200, a missing field) is a
//! failed request.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{http, workload::Scenario};

/// nomad-autoscaler's default policy evaluation interval.
pub const APM_EVERY: Duration = Duration::from_secs(10);
/// The Nomad UI's polling interval.
pub const UI_EVERY: Duration = Duration::from_secs(2);

/// Requests one client made, and how many of them failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
}

/// Both clients' requests over a stretch of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounts {
    pub apm: Counts,
    pub ui: Counts,
    /// nomad-apm passes over every allocation completed.
    pub apm_sweeps: u64,
}

impl ClientCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ClientCounts) -> ClientCounts {
        let d = |a: Counts, b: Counts| Counts {
            requests: a.requests - b.requests,
            failed: a.failed - b.failed,
        };
        ClientCounts {
            apm: d(self.apm, earlier.apm),
            ui: d(self.ui, earlier.ui),
            apm_sweeps: self.apm_sweeps - earlier.apm_sweeps,
        }
    }

    pub fn requests(&self) -> u64 {
        self.apm.requests + self.ui.requests
    }

    pub fn failed(&self) -> u64 {
        self.apm.failed + self.ui.failed
    }
}

#[derive(Default)]
struct Counter {
    requests: AtomicU64,
    failed: AtomicU64,
}

impl Counter {
    fn get(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
        }
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    apm: Counter,
    ui: Counter,
    apm_sweeps: AtomicU64,
    /// The first failure, for the progress line.
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// One request's outcome, counted for `counter`.
    fn record(&self, counter: &Counter, outcome: Result<()>) {
        counter.requests.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = outcome {
            counter.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    /// Sleeps until `deadline`, or less when asked to stop; false when stopping.
    fn sleep_until(&self, deadline: Instant) -> bool {
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(50)));
        }
        false
    }
}

/// The two clients, polling until dropped.
pub struct Clients {
    shared: Arc<Shared>,
    /// When nomad-apm started its first pass (its passes start every [`APM_EVERY`] from
    /// there).
    apm_origin: Instant,
    threads: Vec<JoinHandle<()>>,
}

/// A number at `pointer` in `v`.
fn number(v: &Value, pointer: &str) -> Result<f64> {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number at {pointer}"))
}

fn stats(addr: SocketAddr, alloc: &str) -> Result<Value> {
    let body = http::get_ok(addr, &format!("/v1/client/allocation/{alloc}/stats"))?;
    serde_json::from_str(&body).context("stats JSON")
}

/// What nomad-apm reads of an allocation.
fn apm_reads(v: &Value) -> Result<()> {
    for field in [
        "/ResourceUsage/CpuStats/Percent",
        "/ResourceUsage/CpuStats/TotalTicks",
        "/ResourceUsage/MemoryStats/Usage",
    ] {
        number(v, field)?;
    }
    Ok(())
}

/// What the UI reads of an allocation and of each of its `tasks`.
fn ui_reads(v: &Value, tasks: &[String]) -> Result<()> {
    let usage = |prefix: &str| -> Result<()> {
        number(v, &format!("{prefix}/ResourceUsage/CpuStats/TotalTicks"))?;
        number(v, &format!("{prefix}/ResourceUsage/MemoryStats/RSS"))
            .or_else(|_| number(v, &format!("{prefix}/ResourceUsage/MemoryStats/Usage")))?;
        Ok(())
    };
    usage("")?;
    for task in tasks {
        usage(&format!(
            "/Tasks/{}",
            task.replace('~', "~0").replace('/', "~1")
        ))?;
    }
    Ok(())
}

impl Clients {
    /// Starts nomad-apm on every allocation of `scenario` (its first pass at once) and the
    /// UI on the first one.
    pub fn start(addr: SocketAddr, scenario: &Scenario) -> Result<Self> {
        let allocs = scenario.allocs();
        let ui_alloc = allocs
            .first()
            .context("a scenario without allocations")?
            .clone();
        let ui_tasks: Vec<String> = scenario
            .tasks
            .iter()
            .filter(|t| t.alloc == ui_alloc)
            .map(|t| t.task.clone())
            .collect();
        let shared = Arc::new(Shared::default());
        let apm_origin = Instant::now();
        let apm = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("bench-nomad-apm".into())
                .spawn(move || {
                    let mut next = apm_origin;
                    while shared.sleep_until(next) {
                        for alloc in &allocs {
                            if shared.stop.load(Ordering::SeqCst) {
                                return;
                            }
                            let outcome = stats(addr, alloc).and_then(|v| apm_reads(&v));
                            shared.record(&shared.apm, outcome);
                        }
                        shared.apm_sweeps.fetch_add(1, Ordering::SeqCst);
                        // A fixed schedule, as the autoscaler's ticker: a pass that
                        // overruns its period delays the next one, never doubles it.
                        next += APM_EVERY;
                        while next < Instant::now() {
                            next += APM_EVERY;
                        }
                    }
                })?
        };
        let ui = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("bench-nomad-ui".into())
                .spawn(move || loop {
                    let outcome = stats(addr, &ui_alloc).and_then(|v| ui_reads(&v, &ui_tasks));
                    shared.record(&shared.ui, outcome);
                    if !shared.sleep_until(Instant::now() + UI_EVERY) {
                        return;
                    }
                })?
        };
        Ok(Self {
            shared,
            apm_origin,
            threads: vec![apm, ui],
        })
    }

    pub fn counts(&self) -> ClientCounts {
        ClientCounts {
            apm: self.shared.apm.get(),
            ui: self.shared.ui.get(),
            apm_sweeps: self.shared.apm_sweeps.load(Ordering::SeqCst),
        }
    }

    /// The first failure since the last call, if any.
    pub fn take_first_error(&self) -> Option<String> {
        self.shared
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Waits until nomad-apm has been through every allocation once (the windows start
    /// after it, so that start-up and first answers stay out of them).
    pub fn wait_first_sweep(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.shared.apm_sweeps.load(Ordering::SeqCst) == 0 {
            if Instant::now() > deadline {
                bail!(
                    "nomad-apm did not get through the allocations in {} s",
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The next moment half-way between two nomad-apm passes: a window started there and
    /// lasting a whole number of [`APM_EVERY`] periods holds the same number of passes in
    /// every run.
    pub fn between_passes(&self) -> Instant {
        let now = Instant::now();
        let mut at = self.apm_origin + APM_EVERY / 2;
        while at < now {
            at += APM_EVERY;
        }
        at
    }

    /// Stops both clients and waits for them (a request under way finishes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_clients_read() {
        let v: Value = serde_json::from_str(
            r#"{"ResourceUsage":{"CpuStats":{"Percent":1.5,"TotalTicks":30.0},
                "MemoryStats":{"RSS":4096,"Usage":8192}},
              "Tasks":{"web":{"ResourceUsage":{"CpuStats":{"TotalTicks":1.0},
                "MemoryStats":{"Usage":10}}}},"Timestamp":1}"#,
        )
        .unwrap();
        apm_reads(&v).unwrap();
        ui_reads(&v, &["web".to_owned()]).unwrap();
        assert!(ui_reads(&v, &["db".to_owned()]).is_err());
        let no_percent: Value =
            serde_json::from_str(r#"{"ResourceUsage":{"CpuStats":{"TotalTicks":1}}}"#).unwrap();
        assert!(apm_reads(&no_percent).is_err());
    }

    #[test]
    fn counts_since() {
        let a = ClientCounts {
            apm: Counts {
                requests: 10,
                failed: 1,
            },
            ui: Counts {
                requests: 3,
                failed: 0,
            },
            apm_sweeps: 1,
        };
        let b = ClientCounts {
            apm: Counts {
                requests: 30,
                failed: 1,
            },
            ui: Counts {
                requests: 8,
                failed: 2,
            },
            apm_sweeps: 3,
        };
        let d = b.since(&a);
        assert_eq!((d.requests(), d.failed(), d.apm_sweeps), (25, 2, 2));
    }
}
