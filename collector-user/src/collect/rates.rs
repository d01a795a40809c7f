//! Turning two cumulative CPU readings into Nomad's figures. Pure arithmetic, the one
//! place where rates are computed.
//!
//! * `Percent` = Δcpu / Δwall × 100: percent of ONE core (250 = two and a half cores).
//! * `UserMode` / `SystemMode`: `Percent` split by the user:system ratio of the same
//!   interval (the kernel's user/system times are tick-sampled; like the kernel's own
//!   `cputime_adjust`, the exact total is split by their ratio). An interval with no tick
//!   at all uses the ratio over the whole life; with none ever, everything is user time.
//! * `TotalTicks` = Percent / 100 × (TotalCompute / cores): MHz in use.
//!
//! A counter that went backwards (a reset, or a different process or cgroup behind the
//! same name) yields no rate for that interval rather than a negative or huge one.

use std::time::Duration;

use crate::sample::CpuTimes;

/// CPU figures over one interval, in percent of one core.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuRates {
    pub percent: f64,
    pub user_mode: f64,
    pub system_mode: f64,
}

/// Rates between `prev` and `cur` over `wall`. `None` when there is no valid interval
/// (zero duration, or a counter went backwards).
pub fn cpu_rates(prev: &CpuTimes, cur: &CpuTimes, wall: Duration) -> Option<CpuRates> {
    let wall_ns = wall.as_nanos() as f64;
    if wall_ns <= 0.0 || cur.run_ns < prev.run_ns {
        return None;
    }
    let percent = (cur.run_ns - prev.run_ns) as f64 / wall_ns * 100.0;
    let (user_share, _) = user_system_split(prev, cur);
    Some(CpuRates {
        percent,
        user_mode: percent * user_share,
        system_mode: percent * (1.0 - user_share),
    })
}

/// Fraction of time that was user time: over the interval when ticks landed in it, else
/// over the whole life, else 1 (the kernel's choice when it has no sample either).
fn user_system_split(prev: &CpuTimes, cur: &CpuTimes) -> (f64, f64) {
    let du = cur.user_ns.saturating_sub(prev.user_ns) as f64;
    let ds = cur.system_ns.saturating_sub(prev.system_ns) as f64;
    let interval_ok = cur.user_ns >= prev.user_ns && cur.system_ns >= prev.system_ns;
    if interval_ok && du + ds > 0.0 {
        return (du / (du + ds), ds / (du + ds));
    }
    let (u, s) = (cur.user_ns as f64, cur.system_ns as f64);
    if u + s > 0.0 {
        (u / (u + s), s / (u + s))
    } else {
        (1.0, 0.0)
    }
}

/// MHz in use for a CPU share: `TotalTicks` of Nomad.
pub fn total_ticks(percent: f64, total_compute_mhz: f64, cores: u32) -> f64 {
    if cores == 0 {
        return 0.0;
    }
    percent / 100.0 * (total_compute_mhz / cores as f64)
}

/// Tracks one cumulative counter with its identity (a process start time, a cgroup
/// inode): the first reading, or a reading under a different identity, gives no rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterTrack {
    last: Option<(u64, CpuTimes, std::time::Instant)>,
}

impl CounterTrack {
    /// Records `cur` taken at `at` for `identity` and returns the rates since the
    /// previous reading of the same identity (zeros when there is none: Nomad reports 0
    /// for a first sample).
    pub fn update(&mut self, identity: u64, cur: CpuTimes, at: std::time::Instant) -> CpuRates {
        let rates = match self.last {
            Some((id, prev, prev_at)) if id == identity => {
                cpu_rates(&prev, &cur, at.saturating_duration_since(prev_at)).unwrap_or_default()
            }
            _ => CpuRates::default(),
        };
        self.last = Some((identity, cur, at));
        rates
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn t(run: u64, user: u64, system: u64) -> CpuTimes {
        CpuTimes {
            run_ns: run,
            user_ns: user,
            system_ns: system,
        }
    }

    #[test]
    fn one_busy_core_is_100_percent_and_two_are_200() {
        let r = cpu_rates(&t(0, 0, 0), &t(1_000_000_000, 1_000_000_000, 0), SEC).unwrap();
        assert_eq!(r.percent, 100.0);
        assert_eq!(r.user_mode, 100.0);
        assert_eq!(r.system_mode, 0.0);
        let r = cpu_rates(&t(5, 0, 0), &t(5 + 1_000_000_000, 0, 0), SEC / 2).unwrap();
        assert_eq!(r.percent, 200.0);
    }

    #[test]
    fn split_follows_the_intervals_ticks_then_the_lifetime_ratio() {
        // 3:1 user:system ticks in the interval.
        let r = cpu_rates(&t(0, 0, 0), &t(800_000_000, 300, 100), SEC).unwrap();
        assert!((r.user_mode - 60.0).abs() < 1e-9 && (r.system_mode - 20.0).abs() < 1e-9);
        // No tick in the interval: lifetime ratio 1:1.
        let r = cpu_rates(&t(0, 50, 50), &t(100_000_000, 50, 50), SEC).unwrap();
        assert!((r.user_mode - 5.0).abs() < 1e-9 && (r.system_mode - 5.0).abs() < 1e-9);
        // No tick ever: all user, like the kernel.
        let r = cpu_rates(&t(0, 0, 0), &t(10_000_000, 0, 0), SEC).unwrap();
        assert_eq!((r.user_mode, r.system_mode), (1.0, 0.0));
    }

    #[test]
    fn backwards_counters_and_empty_intervals_give_no_rate() {
        assert!(cpu_rates(&t(10, 0, 0), &t(5, 0, 0), SEC).is_none());
        assert!(cpu_rates(&t(0, 0, 0), &t(5, 0, 0), Duration::ZERO).is_none());
    }

    #[test]
    fn total_ticks_is_mhz_in_use() {
        // 2 cores of 2500 MHz (total 5000): one full core = 2500 MHz.
        assert_eq!(total_ticks(100.0, 5000.0, 2), 2500.0);
        assert_eq!(total_ticks(50.0, 5000.0, 2), 1250.0);
        assert_eq!(total_ticks(50.0, 5000.0, 0), 0.0);
    }

    #[test]
    fn a_new_identity_restarts_from_zero() {
        let start = Instant::now();
        let mut track = CounterTrack::default();
        assert_eq!(
            track.update(7, t(100, 0, 0), start).percent,
            0.0,
            "first sample is 0"
        );
        let r = track.update(7, t(100 + 500_000_000, 0, 0), start + SEC);
        assert_eq!(r.percent, 50.0);
        // Same PID, new process (different start): no rate, even if its counter is larger.
        let r = track.update(8, t(10_000_000_000, 0, 0), start + 2 * SEC);
        assert_eq!(r.percent, 0.0);
        let r = track.update(8, t(10_000_000_000 + 250_000_000, 0, 0), start + 3 * SEC);
        assert_eq!(r.percent, 25.0);
        // Counter went backwards under the same identity: no rate.
        assert_eq!(track.update(8, t(1, 0, 0), start + 4 * SEC).percent, 0.0);
    }
}
