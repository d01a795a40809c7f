//! Host-wide /proc and /sys files, as `HostReader` parses them. The first byte picks the
//! file; the rest is its contents:
//! 0 `/proc/meminfo`, 1 `/proc/uptime`, 2 two `/proc/stat` readings separated by a
//! `--` line (the CPU lines, turned into percentages as the daemon does), 3
//! `/proc/cpuinfo`, 4 a sysfs CPU list (`related_cpus`), 5 a cpufreq kHz file.
#![no_main]

use collector_fuzz::selector;
use collector_user::procfs::{
    parse_cpu_list, parse_cpu_ticks, parse_cpuinfo_mhz, parse_khz, parse_meminfo, parse_uptime,
    CpuTimesTracker,
};
use libfuzzer_sys::fuzz_target;

fn meminfo(text: &str) {
    let Ok(memory) = parse_meminfo(text) else {
        return;
    };
    assert_eq!(memory.used, memory.total.saturating_sub(memory.available));
    assert!(memory.used <= memory.total);
}

fn uptime(text: &str) {
    if let Ok(seconds) = parse_uptime(text) {
        assert!(seconds.is_finite() && seconds >= 0.0, "{seconds}");
    }
}

fn cpu_ticks(text: &str) {
    let (first, second) = text.split_once("\n--\n").unwrap_or((text, text));
    let (Ok(a), Ok(b)) = (parse_cpu_ticks(first), parse_cpu_ticks(second)) else {
        return;
    };
    for t in a.iter().chain(&b) {
        for part in [t.user, t.system, t.idle, t.steal] {
            assert!(part <= t.total, "{t:?}");
        }
    }
    // Counters that saturated (2^64 ticks: no kernel gets there) break `total = sum of
    // the parts`, and with it the bounds below; the percentages must stay finite still.
    let saturated = a.iter().chain(&b).any(|t| t.total == u64::MAX);
    let mut tracker = CpuTimesTracker::new();
    let first = tracker.update(a);
    assert!(first
        .iter()
        .all(|p| p.user == 0.0 && p.system == 0.0 && p.idle == 0.0));
    let cpus = b.len();
    let percents = tracker.update(b);
    assert_eq!(percents.len(), cpus);
    for p in percents {
        for value in [p.user, p.system, p.idle, p.total_percent] {
            assert!(value.is_finite(), "{p:?}");
            assert!(saturated || (0.0..=100.0).contains(&value), "{p:?}");
        }
        assert!(
            saturated || p.user + p.system + p.idle <= 100.0 + 1e-9,
            "{p:?}"
        );
    }
}

fn cpuinfo(text: &str) {
    for (cpu, mhz) in parse_cpuinfo_mhz(text) {
        assert!(mhz.is_finite() && mhz > 0.0, "{mhz}");
        let named = text.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim_end() == "processor" && v.trim().parse::<u32>() == Ok(cpu)
            })
        });
        assert!(named, "cpu {cpu} has no processor line");
    }
}

fn cpu_list(text: &str) {
    let cpus = parse_cpu_list(text);
    // Each token gives at most one range of at most 65536 CPUs.
    let tokens = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .count();
    assert!(cpus.len() <= tokens.saturating_mul(1 << 16));
    let largest = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok())
        .max();
    if let Some(&cpu) = cpus.iter().max() {
        assert!(Some(cpu) <= largest, "cpu {cpu} is not in the text");
    }
}

fn khz(text: &str) {
    assert_eq!(parse_khz(text).ok(), text.trim().parse::<u64>().ok());
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Some((which, rest)) = selector(data) else {
        return;
    };
    // The host reader reads these files as UTF-8.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => meminfo(text),
        1 => uptime(text),
        2 => cpu_ticks(text),
        3 => cpuinfo(text),
        4 => cpu_list(text),
        _ => khz(text),
    }
});
