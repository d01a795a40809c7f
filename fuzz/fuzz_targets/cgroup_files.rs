//! Cgroup control files, as `CgroupDir`'s readers parse them. The first byte picks the
//! file; the rest is its contents:
//! 0 `memory.stat` (v1 or v2), 1 `cpu.stat` (v1 or v2), 2 `cpu.max`, 3 a single number
//! (`memory.current`, `cpuacct.usage`, v1 `memory.limit_in_bytes`, …), 4 a limit that may
//! be `max` (`memory.max`, `pids.max`), 5 `cgroup.procs`.
#![no_main]

use collector_fuzz::selector;
use collector_user::cgroup::{
    parse_cpu_max, parse_cpu_stat, parse_limit, parse_memory_stat, parse_procs, parse_u64,
    v1_bytes_limit, CpuStat, Limit, MemoryFigures, MemoryStat, ThrottleFigures,
};
use libfuzzer_sys::fuzz_target;

/// The last value a flat keyed file gives `key`, parsed as the readers do; `None` when no
/// line has it.
fn last_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .rfind(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().parse().expect("the parser accepted it"))
}

/// `Measured` must name exactly the figures that were read, and the Nomad shape must
/// carry them (0 for the others).
fn check_memory_figures(figures: MemoryFigures) {
    let fields = [
        (figures.rss, "RSS"),
        (figures.cache, "Cache"),
        (figures.swap, "Swap"),
        (figures.mapped_file, "Mapped File"),
        (figures.usage, "Usage"),
        (figures.max_usage, "Max Usage"),
        (figures.kernel_usage, "Kernel Usage"),
        (figures.kernel_max_usage, "Kernel Max Usage"),
    ];
    let expected: Vec<&str> = fields
        .iter()
        .filter_map(|(v, name)| v.map(|_| *name))
        .collect();
    assert_eq!(figures.measured(), expected);
    let stats = figures.to_memory_stats();
    assert_eq!(stats.measured, expected);
    assert_eq!(stats.rss, figures.rss.unwrap_or(0));
    assert_eq!(stats.cache, figures.cache.unwrap_or(0));
    assert_eq!(stats.swap, figures.swap.unwrap_or(0));
    assert_eq!(stats.mapped_file, figures.mapped_file.unwrap_or(0));
    assert_eq!(stats.usage, figures.usage.unwrap_or(0));
}

fn memory_stat(text: &str) {
    let Ok(stat) = parse_memory_stat(text) else {
        return;
    };
    let fields: [(Option<u64>, &str); 12] = [
        (stat.cache, "cache"),
        (stat.rss, "rss"),
        (stat.mapped_file, "mapped_file"),
        (stat.swap, "swap"),
        (stat.total_cache, "total_cache"),
        (stat.total_rss, "total_rss"),
        (stat.total_mapped_file, "total_mapped_file"),
        (stat.total_swap, "total_swap"),
        (stat.anon, "anon"),
        (stat.file, "file"),
        (stat.file_mapped, "file_mapped"),
        (stat.kernel, "kernel"),
    ];
    for (value, key) in fields {
        assert_eq!(value, last_value(text, key), "memory.stat {key}");
    }
    // The figures the v1 and v2 readers build from it (usage figures from other files
    // are absent here, as on a kernel without them).
    let MemoryStat {
        anon,
        file,
        file_mapped,
        kernel,
        ..
    } = stat;
    check_memory_figures(MemoryFigures {
        rss: stat.total_rss.or(stat.rss),
        cache: stat.total_cache.or(stat.cache),
        mapped_file: stat.total_mapped_file.or(stat.mapped_file),
        swap: stat.total_swap.or(stat.swap),
        ..MemoryFigures::default()
    });
    check_memory_figures(MemoryFigures {
        rss: anon,
        cache: file,
        mapped_file: file_mapped,
        kernel_usage: kernel,
        ..MemoryFigures::default()
    });
}

fn cpu_stat(text: &str) {
    let Ok(stat) = parse_cpu_stat(text) else {
        return;
    };
    let CpuStat {
        usage_usec,
        user_usec,
        system_usec,
        nr_periods,
        nr_throttled,
        throttled_usec,
        throttled_time,
    } = stat;
    for (value, key) in [
        (usage_usec, "usage_usec"),
        (user_usec, "user_usec"),
        (system_usec, "system_usec"),
        (nr_periods, "nr_periods"),
        (nr_throttled, "nr_throttled"),
        (throttled_usec, "throttled_usec"),
        (throttled_time, "throttled_time"),
    ] {
        assert_eq!(value, last_value(text, key), "cpu.stat {key}");
    }
    for throttling in [
        ThrottleFigures {
            periods: nr_throttled,
            time_ns: throttled_time,
        },
        ThrottleFigures {
            periods: nr_throttled,
            time_ns: throttled_usec.map(|us| us.saturating_mul(1000)),
        },
    ] {
        let mut expected = Vec::new();
        if throttling.periods.is_some() {
            expected.push("Throttled Periods");
        }
        if throttling.time_ns.is_some() {
            expected.push("Throttled Time");
        }
        assert_eq!(throttling.measured(), expected);
    }
}

fn cpu_max(text: &str) {
    let Ok(max) = parse_cpu_max(text) else {
        return;
    };
    let quota = match max.quota_us {
        Limit::Max => "max".to_owned(),
        Limit::Value(v) => v.to_string(),
    };
    assert_eq!(
        parse_cpu_max(&format!("{quota} {}\n", max.period_us)),
        Ok(max)
    );
}

fn single(text: &str) {
    let Ok(value) = parse_u64(text) else {
        return;
    };
    assert_eq!(parse_u64(&format!("{value}\n")), Ok(value));
    assert_eq!(parse_limit(text), Ok(Limit::Value(value)));
    match v1_bytes_limit(value) {
        Limit::Max => assert!(value > (i64::MAX as u64) - 0x10000),
        Limit::Value(v) => assert_eq!(v, value),
    }
}

fn limit(text: &str) {
    match parse_limit(text) {
        Ok(Limit::Max) => assert_eq!(text.trim(), "max"),
        Ok(Limit::Value(v)) => assert_eq!(parse_u64(text), Ok(v)),
        Err(_) => assert!(parse_u64(text).is_err()),
    }
}

fn procs(text: &str) {
    let mut pids = vec![1];
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    match parse_procs(text, &mut pids) {
        // Appends, one PID per non-empty line.
        Ok(()) => assert_eq!(pids.len(), 1 + lines),
        Err(_) => assert!(pids.len() <= lines),
    }
    assert_eq!(pids[0], 1);
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Some((which, rest)) = selector(data) else {
        return;
    };
    // The readers read control files as UTF-8 (`Tree::read_into` into a String).
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => memory_stat(text),
        1 => cpu_stat(text),
        2 => cpu_max(text),
        3 => single(text),
        4 => limit(text),
        _ => procs(text),
    }
});
