//! Per-process /proc files, as `ProcReader` parses them. The first byte picks the file;
//! the rest is its contents:
//! 0 `/proc/<pid>/stat`, 1 `statm`, 2 `status` (VmSwap), 3 `schedstat`, 4 `environ`,
//! 5 a `stat` line built from the input (pid, comm of any bytes, fields) that must parse
//! back to what was written.
#![no_main]

use collector_fuzz::selector;
use collector_user::procfs::{
    parse_environ_vars, parse_schedstat, parse_stat, parse_statm, parse_status_vmswap, ProcStat,
};
use libfuzzer_sys::fuzz_target;

/// The variables the /proc source looks up (Nomad's executor sets them).
const NAMES: &[&str] = &["NOMAD_ALLOC_ID", "NOMAD_TASK_NAME", "NOMAD_TASK_DIR", ""];

/// `ProcReader` reads bytes and converts them lossily before parsing.
fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn stat(text: &str) {
    let Ok(stat) = parse_stat(text) else {
        return;
    };
    // The pid is the decimal number before the comm; the state is the one character
    // right after the last `)`.
    let open = text.find('(').expect("a parsed stat has a comm");
    assert_eq!(text[..open].trim().parse::<u32>(), Ok(stat.pid));
    let close = text.rfind(')').expect("a parsed stat has a comm");
    let after: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    assert_eq!(after[0].chars().collect::<Vec<_>>(), vec![stat.state]);
    assert_eq!(after[1].parse::<u32>(), Ok(stat.ppid));
    assert_eq!(after[11].parse::<u64>(), Ok(stat.utime));
    assert_eq!(after[12].parse::<u64>(), Ok(stat.stime));
    assert_eq!(after[17].parse::<u32>(), Ok(stat.num_threads));
    assert_eq!(after[19].parse::<u64>(), Ok(stat.starttime));
    assert_eq!(after[21].parse::<u64>(), Ok(stat.rss));
}

/// A stat line as the kernel writes it, with fuzzed values, must give them back.
fn stat_roundtrip(data: &[u8]) {
    if data.len() < 32 {
        return;
    }
    let (numbers, comm) = data.split_at(32);
    let u32_at = |i: usize| u32::from_le_bytes(numbers[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(numbers[i..i + 8].try_into().unwrap());
    let states = b"RSDZTtXIKWP";
    let expected = ProcStat {
        pid: u32_at(0),
        state: char::from(states[usize::from(numbers[4]) % states.len()]),
        ppid: u32_at(5) >> 8,
        utime: u64_at(8),
        stime: u64_at(16),
        num_threads: u32_at(24),
        starttime: u64::from(u32_at(28)),
        rss: u64_at(8) ^ u64_at(16),
    };
    // prctl(PR_SET_NAME) takes any bytes but NUL; the kernel keeps 15 of them, but a
    // parser must not depend on that.
    let comm = lossy(comm).replace('\0', "");
    let line = format!(
        "{} ({comm}) {} {} 1 1 0 -1 4194560 500 0 0 0 {} {} 0 0 20 0 {} 0 {} 123456789 {} \
         18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
        expected.pid,
        expected.state,
        expected.ppid,
        expected.utime,
        expected.stime,
        expected.num_threads,
        expected.starttime,
        expected.rss,
    );
    assert_eq!(parse_stat(&line), Ok(expected), "{line:?}");
}

fn statm(text: &str) {
    let Ok(statm) = parse_statm(text) else {
        return;
    };
    let fields: Vec<u64> = text
        .split_ascii_whitespace()
        .take(6)
        .map(|f| f.parse().unwrap_or(u64::MAX))
        .collect();
    assert_eq!(
        [
            statm.size,
            statm.resident,
            statm.shared,
            statm.text,
            statm.data
        ],
        [fields[0], fields[1], fields[2], fields[3], fields[5]]
    );
}

fn vmswap(text: &str) {
    let Some(bytes) = parse_status_vmswap(text) else {
        return;
    };
    assert_eq!(bytes % 1024, 0, "VmSwap is in kB");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmSwap:"))
        .expect("a VmSwap line");
    let mut fields = line.split_ascii_whitespace();
    assert_eq!(fields.next().map(str::parse), Some(Ok(bytes / 1024)));
    assert_eq!(fields.next(), Some("kB"));
}

fn schedstat(text: &str) {
    if let Ok(ns) = parse_schedstat(text) {
        assert_eq!(
            text.split_ascii_whitespace().next().map(str::parse),
            Some(Ok(ns))
        );
    }
}

fn environ(data: &[u8]) {
    let values = parse_environ_vars(data, NAMES);
    assert_eq!(values.len(), NAMES.len());
    for (name, value) in NAMES.iter().zip(&values) {
        // The first `NAME=` entry wins, as getenv.
        let expected = data
            .split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(value, &expected, "{name}");
    }
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Some((which, rest)) = selector(data) else {
        return;
    };
    match which % 6 {
        0 => stat(&lossy(rest)),
        1 => statm(&lossy(rest)),
        2 => vmswap(&lossy(rest)),
        3 => schedstat(&lossy(rest)),
        4 => environ(rest),
        _ => stat_roundtrip(rest),
    }
});
