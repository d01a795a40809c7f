//! Per-process readers over a proc root: the CPU and memory figures Nomad's executor polls
//! for every process of a task, and the few other files the /proc CPU source needs.
//!
//! The /proc source reads these for up to ~10,000 processes a second, so a [`ProcReader`]
//! owns one byte buffer that every read reuses, builds file names on the stack, and parses
//! with plain splitting: nothing here allocates per process or per line on the way to a
//! [`ProcessSample`].

use std::{
    borrow::Cow,
    fmt,
    io::{self, Write},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use tracing::{trace, warn};

use super::{
    clock_ticks_per_sec,
    error::{is_gone, ParseError, ProcError},
    page_size,
};
use crate::{
    fsutil::Tree,
    sample::{CpuTimes, ProcessMemory, ProcessSample},
};

/// The fields of `/proc/<pid>/stat` the collector uses (see proc(5) for their meaning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// One letter: `R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`, …
    pub state: char,
    pub ppid: u32,
    /// User-mode CPU time in clock ticks (of the whole thread group in `/proc/<pid>/stat`).
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks.
    pub stime: u64,
    pub num_threads: u32,
    /// Start time in clock ticks since boot: with the pid, it names one process even when
    /// the pid is reused.
    pub starttime: u64,
    /// Resident set size in pages.
    pub rss: u64,
}

/// `/proc/<pid>/statm`, in pages. The kernel always prints `lib` and `dt` as 0, so they are
/// left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statm {
    pub size: u64,
    pub resident: u64,
    pub shared: u64,
    pub text: u64,
    pub data: u64,
}

fn number<T: std::str::FromStr>(
    token: Option<&str>,
    file: &'static str,
    field: &'static str,
) -> Result<T, ParseError> {
    token
        .ok_or(ParseError::Missing { file, field })?
        .parse()
        .map_err(|_| ParseError::Invalid { file, field })
}

/// Parses `/proc/<pid>/stat`. The command name sits in parentheses and may itself contain
/// spaces and parentheses (`prctl(PR_SET_NAME)` accepts anything), so the fixed fields
/// are those after the LAST `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    const F: &str = "stat";
    let comm = ParseError::Missing {
        file: F,
        field: "(comm)",
    };
    let open = text.find('(').ok_or(comm.clone())?;
    let close = text.rfind(')').ok_or(comm.clone())?;
    if close < open {
        return Err(comm);
    }
    let pid = number(Some(text[..open].trim()), F, "pid")?;
    // Field numbers below are proc(5)'s: 3 is state, the first after the comm.
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let state_text = fields.next().ok_or(ParseError::Missing {
        file: F,
        field: "state",
    })?;
    let mut chars = state_text.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => {
            return Err(ParseError::Invalid {
                file: F,
                field: "state",
            })
        }
    };
    let ppid = number(fields.next(), F, "ppid")?; // 4
    let utime = number(fields.nth(9), F, "utime")?; // 14
    let stime = number(fields.next(), F, "stime")?; // 15
    let num_threads = number(fields.nth(4), F, "num_threads")?; // 20
    let starttime = number(fields.nth(1), F, "starttime")?; // 22
    let rss = number(fields.nth(1), F, "rss")?; // 24
    Ok(ProcStat {
        pid,
        state,
        ppid,
        utime,
        stime,
        num_threads,
        starttime,
        rss,
    })
}

/// Parses `/proc/<pid>/statm` (`size resident shared text lib data dt`, in pages).
pub fn parse_statm(text: &str) -> Result<Statm, ParseError> {
    const F: &str = "statm";
    let mut fields = text.split_ascii_whitespace();
    let size = number(fields.next(), F, "size")?;
    let resident = number(fields.next(), F, "resident")?;
    let shared = number(fields.next(), F, "shared")?;
    let text_pages = number(fields.next(), F, "text")?;
    let data = number(fields.nth(1), F, "data")?;
    Ok(Statm {
        size,
        resident,
        shared,
        text: text_pages,
        data,
    })
}

/// Swapped-out memory in bytes from the `VmSwap: N kB` line of `/proc/<pid>/status`.
/// `None` when the line is absent (kernel threads and zombies have no memory map) or
/// malformed.
pub fn parse_status_vmswap(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|line| line.strip_prefix("VmSwap:"))?;
    let mut fields = rest.split_ascii_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// Time spent on a CPU in ns: the first field of `/proc/<pid>/schedstat`
/// (`on-cpu-ns run-queue-wait-ns timeslices`).
pub fn parse_schedstat(text: &str) -> Result<u64, ParseError> {
    number(
        text.split_ascii_whitespace().next(),
        "schedstat",
        "on-cpu time",
    )
}

/// Looks `names` up in the raw contents of `/proc/<pid>/environ` (`NAME=value` entries
/// separated by NUL). Takes bytes because the environment need not be UTF-8; values are
/// converted lossily. The first definition of a name wins, as `getenv` does.
pub fn parse_environ_vars(environ: &[u8], names: &[&str]) -> Vec<Option<String>> {
    let mut values: Vec<Option<String>> = vec![None; names.len()];
    for entry in environ.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        for (wanted, slot) in names.iter().zip(values.iter_mut()) {
            if slot.is_none() && wanted.as_bytes() == name {
                *slot = Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    values
}

/// The longest name built below the proc root is `4294967295/task/4294967295/schedstat`
/// (36 bytes).
const REL_MAX: usize = 48;

/// A file name relative to the proc root, formatted on the stack so that reading a
/// process's files allocates nothing for their names.
struct RelPath {
    buf: [u8; REL_MAX],
    len: usize,
}

impl RelPath {
    fn new(parts: fmt::Arguments<'_>) -> Self {
        let mut buf = [0; REL_MAX];
        let mut rest = &mut buf[..];
        rest.write_fmt(parts)
            .expect("names built from u32 pids fit in REL_MAX bytes");
        let len = REL_MAX - rest.len();
        Self { buf, len }
    }

    fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.buf[..self.len]))
    }
}

/// Converts ticks of `hz` per second to ns without intermediate overflow or rounding
/// drift (`1e9 / hz` need not be an integer).
fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Reads processes' files beneath one proc root. Every read reports a process that has
/// exited (or exits while being read) as `Ok(None)`: that is how processes end, not an
/// error.
#[derive(Debug)]
pub struct ProcReader {
    tree: Tree,
    /// Bytes, not a `String`: a comm set with `prctl` may be any bytes, and a UTF-8 read
    /// would fail on it. The text is converted lossily, which keeps every ASCII byte (all
    /// the numbers and the `)` parse_stat looks for) where it was.
    buf: Vec<u8>,
    clock_ticks: u64,
    page_size: u64,
}

impl ProcReader {
    pub fn new(tree: Tree) -> Self {
        Self {
            tree,
            buf: Vec::with_capacity(4096),
            clock_ticks: clock_ticks_per_sec(),
            page_size: page_size(),
        }
    }

    /// Opens `root` (normally `/proc`) and reads beneath it.
    pub fn open(root: &Path) -> io::Result<Self> {
        Ok(Self::new(Tree::open(root)?))
    }

    pub fn root(&self) -> &Path {
        self.tree.path()
    }

    /// Reads `rel` into the buffer: `Ok(false)` when its process has gone.
    fn load(&mut self, rel: &RelPath) -> Result<bool, ProcError> {
        match self.tree.read_bytes_into(rel.as_path(), &mut self.buf) {
            Ok(()) => Ok(true),
            Err(err) if is_gone(&err) => Ok(false),
            Err(source) => Err(ProcError::Io {
                path: self.tree.path().join(rel.as_path()),
                source,
            }),
        }
    }

    fn read_parsed<T>(
        &mut self,
        rel: RelPath,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<Option<T>, ProcError> {
        if !self.load(&rel)? {
            return Ok(None);
        }
        let text: Cow<'_, str> = String::from_utf8_lossy(&self.buf);
        parse(&text).map(Some).map_err(|source| ProcError::Parse {
            path: self.tree.path().join(rel.as_path()),
            source,
        })
    }

    /// `/proc/<pid>/stat`: figures of the whole thread group.
    pub fn read_stat(&mut self, pid: u32) -> Result<Option<ProcStat>, ProcError> {
        self.read_parsed(RelPath::new(format_args!("{pid}/stat")), parse_stat)
    }

    /// `/proc/<pid>/task/<tid>/stat`: figures of one thread.
    pub fn read_thread_stat(&mut self, pid: u32, tid: u32) -> Result<Option<ProcStat>, ProcError> {
        self.read_parsed(
            RelPath::new(format_args!("{pid}/task/{tid}/stat")),
            parse_stat,
        )
    }

    pub fn read_statm(&mut self, pid: u32) -> Result<Option<Statm>, ProcError> {
        self.read_parsed(RelPath::new(format_args!("{pid}/statm")), parse_statm)
    }

    /// Swapped-out bytes from `/proc/<pid>/status`; 0 when the process has no `VmSwap`
    /// line (a kernel thread or a zombie has no memory to swap).
    pub fn read_vmswap(&mut self, pid: u32) -> Result<Option<u64>, ProcError> {
        self.read_parsed(RelPath::new(format_args!("{pid}/status")), |text| {
            Ok(parse_status_vmswap(text).unwrap_or(0))
        })
    }

    /// On-CPU ns from `/proc/<pid>/schedstat`. That file describes the thread-group
    /// LEADER only, not the whole process: sum [`Self::read_thread_schedstat`] over
    /// [`Self::list_threads`] for the process. `Ok(None)` also when the kernel was built
    /// without `CONFIG_SCHED_INFO` and the file does not exist.
    pub fn read_schedstat(&mut self, pid: u32) -> Result<Option<u64>, ProcError> {
        self.read_parsed(
            RelPath::new(format_args!("{pid}/schedstat")),
            parse_schedstat,
        )
    }

    /// On-CPU ns of one thread, from `/proc/<pid>/task/<tid>/schedstat`.
    pub fn read_thread_schedstat(&mut self, pid: u32, tid: u32) -> Result<Option<u64>, ProcError> {
        self.read_parsed(
            RelPath::new(format_args!("{pid}/task/{tid}/schedstat")),
            parse_schedstat,
        )
    }

    /// The values of `names` in the process's environment (the /proc source uses them to
    /// find the allocation of a process outside any task cgroup). `None` when the
    /// environment cannot be read: the process has gone, or belongs to another user and
    /// the daemon lacks `CAP_SYS_PTRACE`.
    pub fn read_environ_vars(&mut self, pid: u32, names: &[&str]) -> Option<Vec<Option<String>>> {
        let rel = RelPath::new(format_args!("{pid}/environ"));
        match self.tree.read_bytes_into(rel.as_path(), &mut self.buf) {
            Ok(()) => Some(parse_environ_vars(&self.buf, names)),
            Err(err) => {
                if !is_gone(&err) {
                    trace!(pid, error = %err, "environment not readable");
                }
                None
            }
        }
    }

    /// Every process (thread group) under the proc root: its numeric directories. A proc
    /// root that cannot be listed yields no processes, with a warning.
    pub fn list_pids(&self) -> Vec<u32> {
        match self.tree.subdirs(Path::new("")) {
            Ok(names) => numeric(&names),
            Err(err) => {
                warn!(root = %self.tree.path().display(), error = %err, "cannot list processes");
                Vec::new()
            }
        }
    }

    /// The thread ids of `pid` (`/proc/<pid>/task`), `Ok(None)` when the process has gone.
    pub fn list_threads(&self, pid: u32) -> Result<Option<Vec<u32>>, ProcError> {
        let rel = RelPath::new(format_args!("{pid}/task"));
        match self.tree.subdirs(rel.as_path()) {
            Ok(names) => Ok(Some(numeric(&names))),
            Err(err) if is_gone(&err) => Ok(None),
            Err(source) => Err(ProcError::Io {
                path: self.tree.path().join(rel.as_path()),
                source,
            }),
        }
    }

    /// One process as Nomad's executor measures it: `utime + stime` of `/proc/<pid>/stat`
    /// as the CPU time and, `with_memory`, resident pages of `statm` × page size as RSS and
    /// `VmSwap` of `status` as swap (Nomad leaves per-PID swap 0; reporting it costs one
    /// more read of a file the kernel already has). `start` is the start time in clock
    /// ticks. `Ok(None)` when the process has gone, including between two of its files.
    pub fn sample(
        &mut self,
        pid: u32,
        with_memory: bool,
    ) -> Result<Option<ProcessSample>, ProcError> {
        let Some(stat) = self.read_stat(pid)? else {
            return Ok(None);
        };
        let memory = if with_memory {
            let Some(statm) = self.read_statm(pid)? else {
                return Ok(None);
            };
            let Some(swap_bytes) = self.read_vmswap(pid)? else {
                return Ok(None);
            };
            Some(ProcessMemory {
                rss_bytes: statm.resident.saturating_mul(self.page_size),
                swap_bytes,
            })
        } else {
            None
        };
        let hz = self.clock_ticks;
        Ok(Some(ProcessSample {
            pid,
            start: stat.starttime,
            cpu: CpuTimes {
                run_ns: ticks_to_ns(stat.utime.saturating_add(stat.stime), hz),
                user_ns: ticks_to_ns(stat.utime, hz),
                system_ns: ticks_to_ns(stat.stime, hz),
            },
            memory,
        }))
    }
}

/// The names that are pids, sorted.
fn numeric(names: &[std::ffi::OsString]) -> Vec<u32> {
    let mut pids: Vec<u32> = names
        .iter()
        .filter_map(|name| name.to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf, process::Command};

    use super::*;

    const SHELL_STAT: &str = "19444 (cat) R 19439 19439 15055 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 172365 3133440 383 18446744073709551615 94146529153024 94146529172905 140720667616560 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94146529188912 94146529190528 94147341410304 140720667622113 140720667622133 140720667622133 140720667623403 0\n";
    const KTHREAD_STAT: &str = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 14 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_of_an_ordinary_process() {
        let stat = parse_stat(SHELL_STAT).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 19444,
                state: 'R',
                ppid: 19439,
                utime: 7,
                stime: 3,
                num_threads: 1,
                starttime: 172365,
                rss: 383,
            }
        );
    }

    #[test]
    fn stat_of_a_kernel_thread() {
        let stat = parse_stat(KTHREAD_STAT).unwrap();
        assert_eq!((stat.pid, stat.state, stat.ppid), (2, 'S', 0));
        assert_eq!((stat.utime, stat.stime, stat.rss), (0, 0, 0));
        assert_eq!(stat.starttime, 14);
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        let line = "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 12 0 99999 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.state, 'S');
        assert_eq!((stat.utime, stat.stime), (1234, 567));
        assert_eq!(
            (stat.num_threads, stat.starttime, stat.rss),
            (12, 99999, 2048)
        );

        // A comm that itself ends in ") R 1 2 3" must not shift the fields.
        let tricky = "77 (x) R 1 2 3) Z 5 77 77 0 -1 0 0 0 0 0 9 8 0 0 20 0 3 0 555 0 10 0\n";
        let stat = parse_stat(tricky).unwrap();
        assert_eq!(
            (stat.state, stat.ppid, stat.utime, stat.stime),
            ('Z', 5, 9, 8)
        );
        assert_eq!((stat.num_threads, stat.starttime, stat.rss), (3, 555, 10));
    }

    #[test]
    fn stat_garbage_is_an_error() {
        for bad in [
            "",
            "\n",
            "123",
            "123 (sh",
            "123 sh) S 1",
            ") 12 (",
            "abc (sh) S 1 2 3",
            "123 (sh) S",
            "123 (sh) S 1 1 1 0 -1 0 0 0 0 0 5",
            "123 (sh) SS 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 9 0 1",
            "123 (sh) S 1 1 1 0 -1 0 0 0 0 0 -5 6 0 0 20 0 1 0 9 0 1",
            "123 (sh) S 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 9 0",
        ] {
            assert!(parse_stat(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            parse_stat("123 (sh) S 1 1 1 0 -1 0 0 0 0 0 x 6"),
            Err(ParseError::Invalid {
                file: "stat",
                field: "utime"
            })
        );
    }

    #[test]
    fn statm_fields() {
        assert_eq!(
            parse_statm("765 414 386 5 0 123 0\n").unwrap(),
            Statm {
                size: 765,
                resident: 414,
                shared: 386,
                text: 5,
                data: 123
            }
        );
        assert_eq!(parse_statm("0 0 0 0 0 0 0\n").unwrap(), Statm::default());
        assert!(parse_statm("").is_err());
        assert!(parse_statm("765 414").is_err());
        assert!(parse_statm("765 x 386 5 0 123 0").is_err());
    }

    #[test]
    fn vmswap_from_status() {
        let status = "Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nVmRSS:\t    5112 kB\nVmSwap:\t     128 kB\nHugetlbPages:\t       0 kB\n";
        assert_eq!(parse_status_vmswap(status), Some(128 * 1024));
        assert_eq!(parse_status_vmswap("VmSwap:\t0 kB\n"), Some(0));
        // Kernel threads have no Vm* lines.
        assert_eq!(
            parse_status_vmswap("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
        assert_eq!(parse_status_vmswap("VmSwap:\tlots kB\n"), None);
        assert_eq!(parse_status_vmswap("VmSwap:\t12\n"), None);
        assert_eq!(parse_status_vmswap(""), None);
    }

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat("123456789 4567 89\n"), Ok(123456789));
        assert!(parse_schedstat("").is_err());
        assert!(parse_schedstat("-1 0 0").is_err());
    }

    #[test]
    fn environ_lookup() {
        let environ = b"PATH=/bin\0NOMAD_ALLOC_ID=abc\0EMPTY=\0NOMAD_TASK_NAME=web=1\0NOMAD_ALLOC_ID=second\0junk\0";
        assert_eq!(
            parse_environ_vars(
                environ,
                &["NOMAD_ALLOC_ID", "NOMAD_TASK_NAME", "EMPTY", "MISSING"]
            ),
            vec![
                Some("abc".to_string()),
                Some("web=1".to_string()),
                Some(String::new()),
                None
            ]
        );
        assert_eq!(parse_environ_vars(b"", &["A"]), vec![None]);
        assert_eq!(
            parse_environ_vars(b"A=\xff\0", &["A"]),
            vec![Some("\u{fffd}".to_string())]
        );
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_ns(7, 100), 70_000_000);
        assert_eq!(ticks_to_ns(3, 300), 10_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 100), u64::MAX);
    }

    fn fake_proc() -> (tempfile::TempDir, ProcReader) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let write = |rel: &str, text: &[u8]| {
            let path: PathBuf = p.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write(
            "123/stat",
            b"123 (my (weird) proc) S 1 123 123 0 -1 0 0 0 0 0 250 50 0 0 20 0 2 0 4242 0 99 0\n",
        );
        write("123/statm", b"1000 300 20 5 0 100 0\n");
        write(
            "123/status",
            b"Name:\tweird\nVmRSS:\t1200 kB\nVmSwap:\t64 kB\n",
        );
        write("123/schedstat", b"5000000 10 3\n");
        write("123/environ", b"NOMAD_ALLOC_ID=a1\0NOMAD_TASK_NAME=t\0");
        write(
            "123/task/123/stat",
            b"123 (my (weird) proc) S 1 123 123 0 -1 0 0 0 0 0 200 40 0 0 20 0 2 0 4242 0 99 0\n",
        );
        write("123/task/123/schedstat", b"4000000 10 3\n");
        write(
            "123/task/124/stat",
            b"124 (worker) S 1 123 123 0 -1 0 0 0 0 0 50 10 0 0 20 0 2 0 4300 0 99 0\n",
        );
        write("123/task/124/schedstat", b"1000000 10 3\n");
        // A process whose comm is not UTF-8.
        write(
            "77/stat",
            b"77 (\xff\xfe) R 1 77 77 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 10 0 3 0\n",
        );
        // A kernel thread: no VmSwap line.
        write("2/stat", KTHREAD_STAT.as_bytes());
        write("2/statm", b"0 0 0 0 0 0 0\n");
        write("2/status", b"Name:\tkthreadd\nState:\tS (sleeping)\n");
        // A broken file.
        write("9/stat", b"9 (x) S\n");
        fs::create_dir_all(p.join("sys/kernel")).unwrap();
        fs::create_dir_all(p.join("12abc")).unwrap();
        fs::write(p.join("1000"), b"a file, not a process").unwrap();
        std::os::unix::fs::symlink("123", p.join("self")).unwrap();
        std::os::unix::fs::symlink("123", p.join("555")).unwrap();
        let reader = ProcReader::open(p).unwrap();
        (dir, reader)
    }

    #[test]
    fn reads_a_fake_proc_tree() {
        let (_dir, mut reader) = fake_proc();
        assert_eq!(reader.list_pids(), vec![2, 9, 77, 123]);
        assert_eq!(reader.list_threads(123).unwrap(), Some(vec![123, 124]));
        assert_eq!(reader.list_threads(456).unwrap(), None);

        let stat = reader.read_stat(123).unwrap().unwrap();
        assert_eq!((stat.utime, stat.stime, stat.num_threads), (250, 50, 2));
        assert_eq!(
            reader.read_thread_stat(123, 124).unwrap().unwrap().utime,
            50
        );
        assert_eq!(reader.read_statm(123).unwrap().unwrap().resident, 300);
        assert_eq!(reader.read_vmswap(123).unwrap(), Some(64 * 1024));
        assert_eq!(reader.read_vmswap(2).unwrap(), Some(0));
        assert_eq!(reader.read_schedstat(123).unwrap(), Some(5_000_000));
        assert_eq!(
            reader.read_thread_schedstat(123, 124).unwrap(),
            Some(1_000_000)
        );
        assert_eq!(
            reader.read_environ_vars(123, &["NOMAD_TASK_NAME", "NOMAD_ALLOC_ID", "X"]),
            Some(vec![Some("t".into()), Some("a1".into()), None])
        );
        assert_eq!(reader.read_environ_vars(456, &["X"]), None);
        assert_eq!(reader.read_stat(77).unwrap().unwrap().utime, 1);

        // Gone processes are Ok(None), a malformed file is an error naming it.
        assert!(reader.read_stat(456).unwrap().is_none());
        assert!(reader.read_statm(456).unwrap().is_none());
        assert!(reader.read_schedstat(2).unwrap().is_none());
        assert!(reader.sample(456, true).unwrap().is_none());
        let err = reader.read_stat(9).unwrap_err();
        assert!(matches!(err, ProcError::Parse { .. }));
        assert!(err.to_string().contains("9/stat"), "{err}");
        // Symlinks under the root are not followed.
        assert!(reader.read_stat(555).is_err());
    }

    #[test]
    fn samples_a_fake_process() {
        let (dir, mut reader) = fake_proc();
        let hz = clock_ticks_per_sec();
        let sample = reader.sample(123, true).unwrap().unwrap();
        assert_eq!(sample.pid, 123);
        assert_eq!(sample.start, 4242);
        assert_eq!(
            sample.cpu,
            CpuTimes {
                run_ns: 300 * 1_000_000_000 / hz,
                user_ns: 250 * 1_000_000_000 / hz,
                system_ns: 50 * 1_000_000_000 / hz,
            }
        );
        assert_eq!(
            sample.memory,
            Some(ProcessMemory {
                rss_bytes: 300 * page_size(),
                swap_bytes: 64 * 1024
            })
        );
        assert_eq!(reader.sample(123, false).unwrap().unwrap().memory, None);
        assert_eq!(
            reader.sample(2, true).unwrap().unwrap().memory,
            Some(ProcessMemory::default())
        );

        // Exits between stat and statm: gone, not an error.
        fs::remove_file(dir.path().join("123/statm")).unwrap();
        assert!(reader.sample(123, true).unwrap().is_none());
        assert!(reader.sample(123, false).unwrap().is_some());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let mut reader = ProcReader::open(Path::new("/proc")).unwrap();
        assert!(reader.list_pids().contains(&pid));
        let stat = reader.read_stat(pid).unwrap().unwrap();
        assert_eq!(stat.pid, pid);
        assert!(
            matches!(stat.state, 'R' | 'S' | 'D'),
            "state {}",
            stat.state
        );
        assert!(stat.num_threads >= 1);
        assert!(stat.rss > 0);
        assert!(stat.starttime > 0);
        let threads = reader.list_threads(pid).unwrap().unwrap();
        assert!(threads.contains(&pid));

        let statm = reader.read_statm(pid).unwrap().unwrap();
        assert!(statm.resident > 0 && statm.resident <= statm.size);
        let rss_bytes = statm.resident * page_size();
        assert!((1 << 20..1 << 40).contains(&rss_bytes), "rss {rss_bytes}");

        // Burn a little CPU so that the figures are not all zero.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        let mut spin = 0u64;
        while std::time::Instant::now() < until {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let sample = reader.sample(pid, true).unwrap().unwrap();
        assert_eq!(sample.start, stat.starttime);
        assert_eq!(sample.cpu.run_ns, sample.cpu.user_ns + sample.cpu.system_ns);
        let memory = sample.memory.unwrap();
        assert!(memory.rss_bytes > 0);
        if let Some(ns) = reader.read_schedstat(pid).unwrap() {
            assert!(ns > 0);
        }
        let path = std::env::var("PATH").ok();
        assert_eq!(reader.read_environ_vars(pid, &["PATH"]), Some(vec![path]));
    }

    #[test]
    fn exited_child_is_none() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut reader = ProcReader::open(Path::new("/proc")).unwrap();
        assert!(reader.read_stat(pid).unwrap().is_none());
        assert!(reader.read_statm(pid).unwrap().is_none());
        assert!(reader.read_vmswap(pid).unwrap().is_none());
        assert!(reader.list_threads(pid).unwrap().is_none());
        assert!(reader.sample(pid, true).unwrap().is_none());
        assert!(reader.read_environ_vars(pid, &["PATH"]).is_none());
    }
}
