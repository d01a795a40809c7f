//! What the fuzz targets share: splitting an input into a selector and a payload, the
//! fixture snapshot the HTTP targets serve, and the properties every HTTP answer must
//! have.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use collector_user::{
    api::{handlers::AGENT_HEALTH_BODY, Acl, ApiState},
    model::{
        measured, CpuStats, HostCpuStats, HostDiskStats, HostMemoryStats, HostStats, MemoryStats,
        ResourceUsage, TaskResourceUsage,
    },
    snapshot::{AllocEntry, AllocInfo, AllocOrigin, Snapshot, SnapshotStore, TaskInfo},
};

/// The one token the fixture's ACL accepts (ACLs are on in every HTTP target).
pub const TOKEN: &str = "fuzz-token-0123456789";
/// The allocations of the fixture snapshot.
pub const ALLOC: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";
pub const ALLOC2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// Content type of every error answer.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// Longest error body the API can write: the 404 of an unknown allocation echoes at most
/// 64 characters (4 bytes each at most) plus the fixed text.
pub const MAX_ERROR_BODY: usize = 512;

/// Makes a stack overflow a reported crash. The targets run without Rust's runtime
/// set-up (libFuzzer owns `main`), so nothing handles the guard page fault on an
/// alternate stack: the process would die of SIGSEGV with no report and no saved input.
/// This installs a SIGSEGV handler on an alternate stack that says so and aborts;
/// libFuzzer (which keeps it as the upstream handler) then reports a deadly signal and
/// writes the input. Left alone when a sanitizer already handles SIGSEGV.
///
/// Call it from the targets' `init`.
pub fn catch_stack_overflow() {
    extern "C" fn on_segv(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        let mut msg =
            *b"fuzz target: SIGSEGV at 0x0000000000000000, most likely a stack overflow\n";
        let digits = b"fuzz target: SIGSEGV at 0x".len();
        for i in 0..16 {
            msg[digits + i] = b"0123456789abcdef"[(addr >> (60 - 4 * i)) & 0xf];
        }
        // SAFETY: write and abort are async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }

    const ALT_STACK: usize = 1 << 20;
    // SAFETY: plain libc calls on owned memory; the alternate stack is leaked on purpose
    // (it must outlive the thread).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut current) != 0
            || current.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let stack = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
        let alt = libc::stack_t {
            ss_sp: stack.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: ALT_STACK,
        };
        if libc::sigaltstack(&alt, std::ptr::null_mut()) != 0 {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_segv as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
    }
}

/// Splits the first byte off as a selector (which parser a multi-parser target feeds).
pub fn selector(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first, rest))
}

fn usage(percent: f64, rss: u64, pids: &[(u32, f64, u64)]) -> TaskResourceUsage {
    let resource = |percent: f64, rss: u64| ResourceUsage {
        memory_stats: MemoryStats {
            rss,
            cache: 4096,
            usage: rss + 4096,
            measured: vec![
                measured::RSS,
                measured::CACHE,
                measured::SWAP,
                measured::USAGE,
            ],
            ..MemoryStats::default()
        },
        cpu_stats: CpuStats {
            system_mode: percent / 4.0,
            user_mode: percent * 3.0 / 4.0,
            total_ticks: percent * 30.0,
            throttled_periods: 7,
            throttled_time: 1_000,
            percent,
            measured: vec![
                measured::SYSTEM_MODE,
                measured::USER_MODE,
                measured::THROTTLED_PERIODS,
                measured::THROTTLED_TIME,
                measured::PERCENT,
            ],
        },
        device_stats: None,
    };
    TaskResourceUsage {
        resource_usage: resource(percent, rss),
        timestamp: 1_795_608_000_000_000_000,
        pids: pids
            .iter()
            .map(|&(pid, percent, rss)| (pid.to_string(), resource(percent, rss)))
            .collect(),
    }
}

/// A small snapshot: two allocations (one found in cgroupfs, one configured), host
/// figures and a health block with text that needs escaping.
pub fn fixture_snapshot() -> Snapshot {
    let mut tasks = BTreeMap::new();
    tasks.insert(
        "web.frontend".to_owned(),
        usage(
            105.5,
            14_098_432,
            &[(27072, 6.5, 13_418_496), (27073, 99.0, 679_936)],
        ),
    );
    tasks.insert(
        "redis".to_owned(),
        usage(2.0, 1_000_000, &[(300, 2.0, 1_000_000)]),
    );
    let info = AllocInfo {
        id: ALLOC.into(),
        origin: AllocOrigin::Nomad { layout: "v2-1.7" },
        job: Some("web".to_owned()),
        namespace: Some("default".to_owned()),
        task_group: Some("front\"end".to_owned()),
        tasks: ["redis", "web.frontend"]
            .into_iter()
            .map(|name| TaskInfo {
                name: name.into(),
                cgroups: vec![PathBuf::from(format!(
                    "/sys/fs/cgroup/nomad.slice/share.slice/{ALLOC}.{name}.scope"
                ))]
                .into(),
                pids: vec![],
                cpu_total_ns: 1_000_000,
                extra: Default::default(),
            })
            .collect(),
    };
    let mut tasks2 = BTreeMap::new();
    tasks2.insert("batch".to_owned(), usage(50.0, 2048, &[(42, 50.0, 2048)]));
    let info2 = AllocInfo {
        id: ALLOC2.into(),
        origin: AllocOrigin::Config,
        job: None,
        namespace: None,
        task_group: None,
        tasks: vec![TaskInfo {
            name: "batch".into(),
            cgroups: Vec::new().into(),
            pids: vec![42],
            cpu_total_ns: 0,
            extra: Default::default(),
        }],
    };
    let mut allocations = HashMap::new();
    allocations.insert(ALLOC.into(), Arc::new(AllocEntry::new(info, tasks)));
    allocations.insert(ALLOC2.into(), Arc::new(AllocEntry::new(info2, tasks2)));
    let mut snapshot = Snapshot {
        taken_at_unix_ns: 1_795_608_000_000_000_000,
        allocations,
        host: HostStats {
            memory: HostMemoryStats {
                total: 8 << 30,
                available: 4 << 30,
                used: 3 << 30,
                free: 1 << 30,
            },
            cpu: vec![HostCpuStats {
                cpu: "cpu0".to_owned(),
                user: 10.0,
                system: 5.0,
                idle: 85.0,
                total_percent: 15.0,
                total_ticks: 450.0,
            }],
            disk_stats: vec![HostDiskStats {
                device: "/dev/sda1".to_owned(),
                mountpoint: "/".to_owned(),
                size: 100,
                used: 40,
                available: 60,
                used_percent: 40.0,
                inodes_used_percent: 1.0,
            }],
            uptime: 1234,
            timestamp: 1_795_608_000_000_000_000,
            cpu_ticks_consumed: 450.0,
            ..HostStats::default()
        },
        ..Snapshot::default()
    };
    snapshot.health.fallback_reason = Some("BPF \"denied\"\nby \\ lockdown".to_owned());
    snapshot.health.max_tracked_cgroups = 16384;
    snapshot
}

/// The API state of the HTTP targets: the fixture snapshot, ACLs on with [`TOKEN`].
pub fn fixture_state() -> ApiState {
    ApiState::new(
        Arc::new(SnapshotStore::new(fixture_snapshot())),
        Acl::new([TOKEN]),
    )
}

/// True when some header value holds [`TOKEN`]: a request without that cannot be
/// authorized, whatever the header it is in. Deliberately cruder than the ACL code, so
/// that a bug there cannot hide itself.
pub fn may_carry_token<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    header_values
        .into_iter()
        .any(|v| v.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()))
}

/// One answer of the API, as seen by a client.
pub struct Answer<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// Whether the request could have carried the token (see [`may_carry_token`]).
    pub may_carry_token: bool,
}

/// The properties every answer must have, whatever the request:
/// - a 2xx or a 4xx: nothing a client sends is a server error (or a 1xx/3xx);
/// - an error is plain text: `text/plain; charset=utf-8`, short, UTF-8, and free of
///   control characters (request text is echoed only sanitized);
/// - a success without the token is only the liveness answer (ACLs are on), and any
///   other success is JSON that parses, or Prometheus text.
pub fn check_answer(answer: &Answer<'_>) {
    let Answer {
        status,
        content_type,
        body,
        may_carry_token,
    } = *answer;
    let shown = String::from_utf8_lossy(&body[..body.len().min(200)]);
    assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "status {status} (body {shown:?})"
    );
    if status >= 400 {
        assert_eq!(
            content_type,
            Some(TEXT_PLAIN.as_bytes()),
            "content type of a {status}"
        );
        assert!(
            body.len() <= MAX_ERROR_BODY,
            "{status} body of {} bytes",
            body.len()
        );
        let text = std::str::from_utf8(body).expect("error bodies are UTF-8");
        assert!(
            !text.chars().any(char::is_control),
            "control character in a {status} body: {text:?}"
        );
        return;
    }
    if !may_carry_token {
        assert_eq!(
            body, AGENT_HEALTH_BODY,
            "ACLs are on: a {status} without the token must be the liveness answer"
        );
    }
    match content_type {
        Some(b"application/json") => {
            serde_json::from_slice::<serde_json::Value>(body).expect("a 2xx JSON body parses");
        }
        Some(t) if t.starts_with(b"text/plain; version=0.0.4") => {
            assert!(
                std::str::from_utf8(body).is_ok(),
                "Prometheus text is UTF-8"
            );
        }
        other => panic!(
            "unexpected content type {:?} of a {status}",
            other.map(String::from_utf8_lossy)
        ),
    }
}

/// One request in the text form the HTTP targets share with their seeds: a request line
/// (`METHOD TARGET [VERSION]`) and `Name: value` header lines, `\n` or `\r\n` separated,
/// up to an empty line. Every part is raw bytes; the targets keep the requests whose
/// parts are valid for the `http` types.
pub struct RawRequest<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> RawRequest<'a> {
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let mut lines = data
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut request_line = lines.next()?.splitn(3, |&b| b == b' ');
        let method = request_line.next()?;
        let target = request_line.next()?;
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let value = &line[colon + 1..];
                let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
                Some((&line[..colon], &value[start..]))
            })
            .collect();
        Some(Self {
            method,
            target,
            headers,
        })
    }
}
