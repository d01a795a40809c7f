//! Parsers of the control files' text: flat keyed files (`memory.stat`, `cpu.stat`),
//! single values and limits, PSI files, `oom_kill` counts, `cgroup.procs`. Pure
//! functions of the text, shared with the fuzz targets.

use super::types::{CpuMax, CpuStat, Limit, MemoryStat, PressureTotals};

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=N` and the same
/// for `full`.
pub fn parse_pressure(text: &str) -> Result<PressureTotals, String> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let total = words
            .find_map(|w| w.strip_prefix("total="))
            .ok_or_else(|| format!("no total= in {line:?}"))?;
        *slot = Some(parse_u64(total)?);
    }
    Ok(PressureTotals {
        some_us: some.ok_or("no `some` line")?,
        full_us: full,
    })
}

/// The `oom_kill` count of v2 `memory.events` or v1 `memory.oom_control` (both
/// flat-keyed; v1 has it since 4.13, absent before).
pub fn parse_oom_kill(text: &str) -> Result<Option<u64>, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .map(|v| parse_u64(v.trim()))
        .transpose()
}

pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse()
        .map_err(|_| format!("expected a number, got {t:?}"))
}

/// A single value that may be `max`.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim() {
        "max" => Ok(Limit::Max),
        t => parse_u64(t).map(Limit::Value),
    }
}

/// Parses a flat keyed file (`key value` lines) into `S`: `slot` names the field a key
/// fills. Values are parsed only for keys `slot` knows, so lines a newer kernel adds
/// never fail a read.
fn parse_keyed<S: Default>(
    text: &str,
    slot: for<'a> fn(&'a mut S, &str) -> Option<&'a mut Option<u64>>,
) -> Result<S, String> {
    let mut s = S::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if let Some(field) = slot(&mut s, key) {
            *field = Some(parse_u64(value).map_err(|e| format!("{key}: {e}"))?);
        }
    }
    Ok(s)
}

fn memory_stat_slot<'a>(s: &'a mut MemoryStat, key: &str) -> Option<&'a mut Option<u64>> {
    Some(match key {
        "cache" => &mut s.cache,
        "rss" => &mut s.rss,
        "mapped_file" => &mut s.mapped_file,
        "swap" => &mut s.swap,
        "total_cache" => &mut s.total_cache,
        "total_rss" => &mut s.total_rss,
        "total_mapped_file" => &mut s.total_mapped_file,
        "total_swap" => &mut s.total_swap,
        "anon" => &mut s.anon,
        "file" => &mut s.file,
        "file_mapped" => &mut s.file_mapped,
        "kernel" => &mut s.kernel,
        _ => return None,
    })
}

fn cpu_stat_slot<'a>(s: &'a mut CpuStat, key: &str) -> Option<&'a mut Option<u64>> {
    Some(match key {
        "usage_usec" => &mut s.usage_usec,
        "user_usec" => &mut s.user_usec,
        "system_usec" => &mut s.system_usec,
        "nr_periods" => &mut s.nr_periods,
        "nr_throttled" => &mut s.nr_throttled,
        "throttled_usec" => &mut s.throttled_usec,
        "throttled_time" => &mut s.throttled_time,
        _ => return None,
    })
}

pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, String> {
    parse_keyed(text, memory_stat_slot)
}

pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, String> {
    parse_keyed(text, cpu_stat_slot)
}

pub fn parse_cpu_max(text: &str) -> Result<CpuMax, String> {
    let mut parts = text.split_whitespace();
    let (Some(quota), Some(period), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected `quota period`, got {:?}", text.trim()));
    };
    Ok(CpuMax {
        quota_us: parse_limit(quota)?,
        period_us: parse_u64(period)?,
    })
}

/// v1 writes "unlimited" as the largest page-aligned `i64` (9223372036854771712 with 4 KiB
/// pages); anything within 64 KiB of `i64::MAX` is that, whatever the page size.
pub fn v1_bytes_limit(value: u64) -> Limit {
    if value >= (i64::MAX as u64) - 0xffff {
        Limit::Max
    } else {
        Limit::Value(value)
    }
}

/// Appends the PIDs listed in a `cgroup.procs` text.
pub fn parse_procs(text: &str, out: &mut Vec<u32>) -> Result<(), String> {
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        out.push(
            line.parse()
                .map_err(|_| format!("expected a PID, got {line:?}"))?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_and_oom_kills() {
        let cpu = "some avg10=1.50 avg60=0.00 avg300=0.00 total=123456\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        assert_eq!(
            parse_pressure(cpu),
            Ok(PressureTotals {
                some_us: 123456,
                full_us: Some(789)
            })
        );
        // cpu.pressure before 5.13 has no `full` line.
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(parse_pressure(old).unwrap().full_us, None);
        assert!(parse_pressure("full avg10=0.00 total=1\n").is_err());
        assert!(parse_pressure("some avg10=0.00\n").is_err());
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(events), Ok(Some(2)));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kill(v1), Ok(Some(7)));
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"),
            Ok(None)
        );
        assert!(parse_oom_kill("oom_kill x\n").is_err());
    }

    #[test]
    fn parses_keyed_files_and_ignores_unknown_lines() {
        let s = parse_memory_stat(
            "cache 10\nrss 20\nweird\nhierarchical_memory_limit x\ntotal_rss 30\n",
        )
        .unwrap();
        assert_eq!(
            (s.cache, s.rss, s.total_rss, s.anon),
            (Some(10), Some(20), Some(30), None)
        );
        assert!(parse_memory_stat("rss lots\n").is_err());
        let c = parse_cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!((c.usage_usec, c.nr_throttled), (Some(5), None));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Ok(Limit::Max));
        assert_eq!(parse_limit("4096\n"), Ok(Limit::Value(4096)));
        assert!(parse_limit("lots").is_err());
        assert_eq!(
            parse_cpu_max("max 100000\n"),
            Ok(CpuMax {
                quota_us: Limit::Max,
                period_us: 100000
            })
        );
        assert_eq!(
            parse_cpu_max("50000 100000\n").unwrap().quota_us.value(),
            Some(50000)
        );
        assert!(parse_cpu_max("50000\n").is_err());
        assert_eq!(v1_bytes_limit(9223372036854771712), Limit::Max);
        assert_eq!(v1_bytes_limit(9223372036854710272), Limit::Max); // 64 KiB pages
        assert_eq!(v1_bytes_limit(1 << 30), Limit::Value(1 << 30));
    }
}
