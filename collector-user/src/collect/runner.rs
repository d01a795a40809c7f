//! The collector's own thread: one cycle per interval, each result published to the
//! snapshot store. Reloads and stop requests arrive over a channel and are acted on
//! between cycles, so a cycle is never interrupted half-way. Nothing else reaches the
//! collector: HTTP handlers only read the published snapshots.

use std::{
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use tracing::{debug, info};

use super::Collector;
use crate::{config::Config, heap, snapshot::SnapshotStore};

/// Freed heap is handed back to the kernel every this many cycles (from the first on),
/// so that what a burst of requests freed does not stay resident.
const TRIM_EVERY_CYCLES: u64 = 10;

enum Command {
    Reload(Box<Config>),
    Stop,
}

/// Handle to the running collector thread.
pub struct Runner {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<Collector>>,
}

impl Runner {
    pub fn spawn(mut collector: Collector, store: Arc<SnapshotStore>, interval: Duration) -> Self {
        let (commands, inbox) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("collector".to_owned())
            .spawn(move || {
                let mut interval = interval;
                let mut next = Instant::now();
                let mut cycles: u64 = 0;
                loop {
                    let snapshot = collector.cycle();
                    debug!(
                        took_ms = snapshot.health.cycle_duration.as_secs_f64() * 1e3,
                        allocations = snapshot.allocations.len(),
                        "cycle"
                    );
                    store.store(snapshot);
                    if cycles.is_multiple_of(TRIM_EVERY_CYCLES) {
                        heap::release_free_memory();
                    }
                    cycles += 1;
                    next += interval;
                    let now = Instant::now();
                    if next < now {
                        // Fell behind (a slow cycle or a suspended host): skip, never burst.
                        next = now + interval;
                    }
                    loop {
                        match inbox.recv_timeout(next.saturating_duration_since(Instant::now())) {
                            Ok(Command::Reload(config)) => {
                                collector.reconfigure(&config);
                                if config.interval != interval {
                                    info!(
                                        from = %humantime::format_duration(interval),
                                        to = %humantime::format_duration(config.interval),
                                        "collection interval changed"
                                    );
                                    interval = config.interval;
                                    next = Instant::now() + interval;
                                }
                            }
                            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                                return collector
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
            })
            .expect("spawning the collector thread");
        Self {
            commands,
            thread: Some(thread),
        }
    }

    /// Applies a validated configuration from the next cycle on.
    pub fn reload(&self, config: Config) {
        let _ = self.commands.send(Command::Reload(Box::new(config)));
    }

    /// Stops after the current cycle and returns the collector (whose drop detaches
    /// what is not pinned).
    pub fn stop(mut self) -> Option<Collector> {
        let _ = self.commands.send(Command::Stop);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            let _ = thread.join();
        }
    }
}
