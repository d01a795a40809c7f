//! `/proc/stat`: cumulative ticks per logical CPU, and the percentages over the interval
//! between two readings.

use super::types::{CpuPercent, CpuTicks};
use crate::procfs::ParseError;

/// Parses the per-CPU lines (`cpu0 …`, not the aggregate `cpu …`) of `/proc/stat`.
/// Columns a kernel does not have yet (iowait and later arrived in 2.5/2.6) count as 0.
/// Offline CPUs have no line.
pub fn parse_cpu_ticks(text: &str) -> Result<Vec<CpuTicks>, ParseError> {
    const F: &str = "stat";
    let mut cpus = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("cpu")
            .filter(|rest| rest.as_bytes().first().is_some_and(u8::is_ascii_digit))
        else {
            if cpus.is_empty() {
                continue;
            }
            // The CPU lines come first, together; the rest (`intr` is long) is not needed.
            break;
        };
        let mut fields = rest.split_ascii_whitespace();
        let cpu = fields
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or(ParseError::Invalid {
                file: F,
                field: "cpuN",
            })?;
        // user nice system idle iowait irq softirq steal
        let mut v = [0u64; 8];
        for (i, slot) in v.iter_mut().enumerate() {
            match fields.next() {
                Some(text) => {
                    *slot = text.parse().map_err(|_| ParseError::Invalid {
                        file: F,
                        field: "cpuN ticks",
                    })?
                }
                None if i >= 4 => break,
                None => {
                    return Err(ParseError::Missing {
                        file: F,
                        field: "cpuN ticks",
                    })
                }
            }
        }
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
        cpus.push(CpuTicks {
            cpu,
            user: user.saturating_add(nice),
            system: system.saturating_add(irq).saturating_add(softirq),
            idle: idle.saturating_add(iowait),
            steal,
            total: v.iter().fold(0u64, |sum, &x| sum.saturating_add(x)),
        });
    }
    if cpus.is_empty() {
        return Err(ParseError::Missing {
            file: F,
            field: "cpuN lines",
        });
    }
    Ok(cpus)
}

/// Turns successive `/proc/stat` readings into per-CPU percentages over each interval.
#[derive(Debug, Default)]
pub struct CpuTimesTracker {
    /// The previous reading, sorted by CPU.
    prev: Vec<CpuTicks>,
}

impl CpuTimesTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Percentages between the previous reading and `now`, one per CPU of `now`. A CPU
    /// with no usable interval reads all zeros: on the first call, when it just came
    /// online, when no tick elapsed, or when one of its counters went backwards (CPU
    /// hotplug can reset them; a difference would wrap to a huge number).
    pub fn update(&mut self, mut now: Vec<CpuTicks>) -> Vec<CpuPercent> {
        now.sort_unstable_by_key(|t| t.cpu);
        let percents = now
            .iter()
            .map(|t| {
                self.prev
                    .binary_search_by_key(&t.cpu, |p| p.cpu)
                    .ok()
                    .and_then(|i| interval_percent(&self.prev[i], t))
                    .unwrap_or(CpuPercent {
                        cpu: t.cpu,
                        ..CpuPercent::default()
                    })
            })
            .collect();
        self.prev = now;
        percents
    }
}

fn interval_percent(prev: &CpuTicks, now: &CpuTicks) -> Option<CpuPercent> {
    let user = now.user.checked_sub(prev.user)?;
    let system = now.system.checked_sub(prev.system)?;
    let idle = now.idle.checked_sub(prev.idle)?;
    if now.steal < prev.steal {
        return None;
    }
    let total = now.total.checked_sub(prev.total)?;
    if total == 0 {
        return None;
    }
    let pct = |part: u64| part as f64 / total as f64 * 100.0;
    let idle = pct(idle);
    Some(CpuPercent {
        cpu: now.cpu,
        user: pct(user),
        system: pct(system),
        idle,
        total_percent: 100.0 - idle,
    })
}
