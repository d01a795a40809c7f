//! Tests of the host readers: each parser on text as kernels write it, and [`HostReader`]
//! on a fake tree and on this machine.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{cpufreq::SYS_CPU, *};
use crate::{fsutil::Tree, model::host::HostMemoryStats, procfs::ParseError};

const MEMINFO: &str = "MemTotal:       24683656 kB\nMemFree:        21457200 kB\nMemAvailable:   23714340 kB\nBuffers:            6496 kB\nCached:          2419184 kB\nSwapCached:            0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

#[test]
fn meminfo_as_nomad() {
    let m = parse_meminfo(MEMINFO).unwrap();
    assert_eq!(m.total, 24683656 * 1024);
    assert_eq!(m.available, 23714340 * 1024);
    assert_eq!(m.free, 21457200 * 1024);
    assert_eq!(m.used, (24683656 - 23714340) * 1024);
}

#[test]
fn meminfo_without_memavailable_estimates_it() {
    let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
    let m = parse_meminfo(old).unwrap();
    assert_eq!(m.available, 400 * 1024);
    assert_eq!(m.used, 600 * 1024);
}

#[test]
fn meminfo_garbage_is_an_error() {
    assert!(parse_meminfo("").is_err());
    assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    assert_eq!(
        parse_meminfo("MemTotal: lots kB\nMemFree: 1 kB\n"),
        Err(ParseError::Invalid {
            file: "meminfo",
            field: "MemTotal"
        })
    );
    assert!(parse_meminfo("MemTotal: 1 MB\nMemFree: 1 kB\n").is_err());
}

#[test]
fn uptime_seconds() {
    assert_eq!(parse_uptime("1636.08 2402.78\n"), Ok(1636.08));
    assert!(parse_uptime("").is_err());
    assert!(parse_uptime("abc 1").is_err());
    assert!(parse_uptime("-1 1").is_err());
    assert!(parse_uptime("inf 1").is_err());
}

const STAT: &str = "cpu  69052 0 15634 240278 837 0 173 180 0 0\ncpu0 33816 10 5485 123398 180 5 91 84 7 0\ncpu1 35236 0 10148 116879 657 0 81 95 0 0\nintr 1234 0 9\nctxt 99\nbtime 1700000000\n";

#[test]
fn cpu_ticks_per_cpu() {
    let cpus = parse_cpu_ticks(STAT).unwrap();
    assert_eq!(cpus.len(), 2, "the aggregate line is not a CPU");
    assert_eq!(
        cpus[0],
        CpuTicks {
            cpu: 0,
            user: 33826,
            system: 5485 + 5 + 91,
            idle: 123398 + 180,
            steal: 84,
            total: 33816 + 10 + 5485 + 123398 + 180 + 5 + 91 + 84,
        }
    );
    assert_eq!(cpus[1].cpu, 1);
    // A kernel with only four columns.
    let old = parse_cpu_ticks("cpu 2 0 2 8\ncpu3 1 0 1 4\n").unwrap();
    assert_eq!(
        old,
        vec![CpuTicks {
            cpu: 3,
            user: 1,
            system: 1,
            idle: 4,
            steal: 0,
            total: 6
        }]
    );
}

#[test]
fn cpu_ticks_garbage_is_an_error() {
    for bad in [
        "",
        "cpu  1 2 3 4\nintr 1\n",
        "cpu0 1 2 3\n",
        "cpu0 1 x 3 4\n",
        "cpux 1 2 3 4\n",
        "cpu0a 1 2 3 4\n",
    ] {
        assert!(parse_cpu_ticks(bad).is_err(), "accepted {bad:?}");
    }
}

fn ticks(cpu: u32, user: u64, system: u64, idle: u64, steal: u64) -> CpuTicks {
    CpuTicks {
        cpu,
        user,
        system,
        idle,
        steal,
        total: user + system + idle + steal,
    }
}

#[test]
fn tracker_percentages() {
    let mut tracker = CpuTimesTracker::new();
    let first = tracker.update(vec![ticks(0, 100, 100, 100, 0), ticks(1, 0, 0, 0, 0)]);
    assert_eq!(
        first,
        vec![
            CpuPercent {
                cpu: 0,
                ..Default::default()
            },
            CpuPercent {
                cpu: 1,
                ..Default::default()
            }
        ]
    );
    let second = tracker.update(vec![ticks(0, 130, 110, 150, 10), ticks(1, 0, 0, 100, 0)]);
    let c0 = second[0];
    assert_eq!(c0.cpu, 0);
    assert!((c0.user - 30.0).abs() < 1e-9);
    assert!((c0.system - 10.0).abs() < 1e-9);
    assert!((c0.idle - 50.0).abs() < 1e-9);
    assert!(
        (c0.total_percent - 50.0).abs() < 1e-9,
        "steal counts as busy"
    );
    assert_eq!(second[1].idle, 100.0);
    assert_eq!(second[1].total_percent, 0.0);
}

#[test]
fn tracker_guards_backwards_and_new_cpus() {
    let mut tracker = CpuTimesTracker::new();
    tracker.update(vec![ticks(0, 100, 100, 100, 0), ticks(1, 50, 50, 50, 0)]);
    // cpu1 went offline and came back with smaller idle; cpu2 is new; cpu0 unchanged.
    let out = tracker.update(vec![
        ticks(2, 5, 5, 5, 0),
        ticks(0, 100, 100, 100, 0),
        ticks(1, 60, 60, 10, 0),
    ]);
    assert_eq!(out.iter().map(|p| p.cpu).collect::<Vec<_>>(), vec![0, 1, 2]);
    for p in &out {
        assert_eq!(
            *p,
            CpuPercent {
                cpu: p.cpu,
                ..Default::default()
            }
        );
    }
    // The next interval measures from the reading that went backwards.
    let out = tracker.update(vec![ticks(1, 70, 60, 20, 0)]);
    assert!((out[0].user - 50.0).abs() < 1e-9);
    assert!((out[0].total_percent - 50.0).abs() < 1e-9);
}

#[test]
fn frequency_file_parsers() {
    assert_eq!(parse_khz("2400000\n"), Ok(2_400_000));
    assert!(parse_khz("").is_err());
    assert!(parse_khz("<unknown>\n").is_err());
    assert_eq!(parse_cpu_list("0 1 2 3 \n"), vec![0, 1, 2, 3]);
    assert_eq!(parse_cpu_list("0-2,8\n"), vec![0, 1, 2, 8]);
    assert_eq!(parse_cpu_list("x 5 3-1 0-4294967295\n"), vec![5]);
    assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
}

const CPUINFO_X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.406\ncache size\t: 512 KB\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2445.500\n\nprocessor\t: 2\ncpu MHz\t\t: bogus\n\n";
const CPUINFO_ARM: &str = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\n";

#[test]
fn cpuinfo_mhz() {
    assert_eq!(
        parse_cpuinfo_mhz(CPUINFO_X86),
        vec![(0, 2445.406), (1, 2445.5)]
    );
    assert_eq!(parse_cpuinfo_mhz(CPUINFO_ARM), vec![]);
    assert_eq!(parse_cpuinfo_mhz(""), vec![]);
}

#[test]
fn mhz_fallback_order() {
    let sys = tempfile::tempdir().unwrap();
    let proc_ = tempfile::tempdir().unwrap();
    let cpu = sys.path().join(SYS_CPU);
    let write = |path: PathBuf, text: &str| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    // cpu0, cpu1: a policy with a base frequency; cpuN/cpufreq are symlinks to it.
    write(cpu.join("cpufreq/policy0/related_cpus"), "0 1\n");
    write(cpu.join("cpufreq/policy0/base_frequency"), "2100000\n");
    write(cpu.join("cpufreq/policy0/cpuinfo_max_freq"), "3900000\n");
    fs::create_dir_all(cpu.join("cpu0")).unwrap();
    std::os::unix::fs::symlink("../cpufreq/policy0", cpu.join("cpu0/cpufreq")).unwrap();
    // cpu2: a policy with only a maximum frequency (base_frequency 0 means unknown).
    write(cpu.join("cpufreq/policy2/related_cpus"), "2\n");
    write(cpu.join("cpufreq/policy2/base_frequency"), "0\n");
    write(cpu.join("cpufreq/policy2/cpuinfo_max_freq"), "3000000\n");
    // cpu3: an old kernel's real cpu3/cpufreq directory.
    write(cpu.join("cpu3/cpufreq/cpuinfo_max_freq"), "1800000\n");
    // cpu4: only /proc/cpuinfo; cpu5: nothing at all.
    write(
        proc_.path().join("cpuinfo"),
        "processor\t: 0\ncpu MHz\t\t: 999.0\n\nprocessor\t: 4\ncpu MHz\t\t: 2445.406\n\nprocessor\t: 5\n",
    );
    let sys = Tree::open(sys.path()).unwrap();
    let proc_ = Tree::open(proc_.path()).unwrap();
    let freqs = read_cpu_frequencies(&sys, &proc_, &[5, 4, 3, 2, 1, 0]);
    let got: Vec<(u32, f64, FrequencySource)> =
        freqs.iter().map(|f| (f.cpu, f.mhz, f.source)).collect();
    use FrequencySource::*;
    assert_eq!(
        got,
        vec![
            (0, 2100.0, BaseFrequency),
            (1, 2100.0, BaseFrequency),
            (2, 3000.0, MaxFrequency),
            (3, 1800.0, MaxFrequency),
            (4, 2445.406, CpuInfo),
            (5, 0.0, Unknown),
        ]
    );
    assert_eq!(total_compute_mhz(&freqs), 11445);

    // No cpufreq directory at all (this VM): /proc/cpuinfo decides.
    let empty = tempfile::tempdir().unwrap();
    let freqs = read_cpu_frequencies(&Tree::open(empty.path()).unwrap(), &proc_, &[0, 4]);
    assert_eq!(freqs[0].source, CpuInfo);
    assert_eq!(total_compute_mhz(&freqs), 3444);
}

#[test]
fn disk_figures_as_gopsutil() {
    let usage = FsUsage {
        block_size: 4096,
        blocks: 1000,
        blocks_free: 300,
        blocks_available: 250,
        files: 200,
        files_free: 150,
    };
    let mount = Mount {
        device: "/dev/sda1".into(),
        mountpoint: "/".into(),
    };
    let d = usage.disk_stats(mount);
    assert_eq!(
        (d.size, d.used, d.available),
        (4_096_000, 700 * 4096, 250 * 4096)
    );
    assert!((d.used_percent - 700.0 / 950.0 * 100.0).abs() < 1e-9);
    assert!((d.inodes_used_percent - 25.0).abs() < 1e-9);
    let zero = FsUsage::default().disk_stats(Mount {
        device: String::new(),
        mountpoint: "/".into(),
    });
    assert_eq!((zero.used_percent, zero.inodes_used_percent), (0.0, 0.0));
}

struct FakeHost {
    proc_: tempfile::TempDir,
    _sys: tempfile::TempDir,
    data: tempfile::TempDir,
    reader: HostReader,
}

fn fake_host() -> FakeHost {
    let proc_ = tempfile::tempdir().unwrap();
    let sys = tempfile::tempdir().unwrap();
    let p = proc_.path();
    fs::write(p.join("meminfo"), MEMINFO).unwrap();
    fs::write(p.join("uptime"), "1636.98 2402.78\n").unwrap();
    fs::write(p.join("cpuinfo"), CPUINFO_X86).unwrap();
    fs::write(
        p.join("stat"),
        "cpu  0 0 0 0\ncpu0 100 0 100 800\ncpu1 0 0 0 1000\nintr 1\n",
    )
    .unwrap();
    let own = p.join(std::process::id().to_string());
    fs::create_dir(&own).unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(
        own.join("mountinfo"),
        format!(
            "1 0 8:1 / / rw - ext4 /dev/root rw\n2 1 8:2 / {} rw - xfs /dev/data rw\n",
            data.path().canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    let reader = HostReader::open(p, sys.path()).unwrap();
    FakeHost {
        proc_,
        _sys: sys,
        data,
        reader,
    }
}

#[test]
fn host_reader_on_a_fake_tree() {
    let FakeHost {
        proc_,
        _sys,
        data,
        mut reader,
    } = fake_host();
    assert_eq!(reader.total_compute_mhz(), 4891);

    let dirs = vec![
        data.path().join("sub"),
        data.path().to_path_buf(),
        PathBuf::from("/"),
    ];
    fs::create_dir(data.path().join("sub")).unwrap();
    let first = reader.sample(&dirs, None);
    assert_eq!(first.memory.total, 24683656 * 1024);
    assert_eq!(first.uptime, 1636);
    assert!(first.timestamp > 1_600_000_000_000_000_000);
    assert_eq!(first.cpu.len(), 2);
    assert!(first
        .cpu
        .iter()
        .all(|c| c.total_percent == 0.0 && c.total_ticks == 0.0));
    assert_eq!(first.cpu_ticks_consumed, 0.0);
    // Two directories on one mount are one disk; "/" is another.
    assert_eq!(first.disk_stats.len(), 2, "{:?}", first.disk_stats);
    let alloc = first.alloc_dir_stats.unwrap();
    assert_eq!(alloc.device, "/dev/data");
    assert_eq!(
        alloc.mountpoint,
        data.path().canonicalize().unwrap().to_string_lossy()
    );
    assert!(alloc.size > 0);
    assert_eq!(first.disk_stats[1].device, "/dev/root");

    // cpu0: 50 of 100 ticks busy; cpu1 idle; cpu2 came online (its MHz: cpuinfo's).
    fs::write(
        proc_.path().join("stat"),
        "cpu  0 0 0 0\ncpu0 130 0 120 850\ncpu1 0 0 0 1100\ncpu2 10 0 0 10\n",
    )
    .unwrap();
    let second = reader.sample(&[], None);
    assert!(second.disk_stats.is_empty() && second.alloc_dir_stats.is_none());
    let c0 = &second.cpu[0];
    assert_eq!(c0.cpu, "cpu0");
    assert!((c0.user - 30.0).abs() < 1e-9 && (c0.system - 20.0).abs() < 1e-9);
    assert!((c0.idle - 50.0).abs() < 1e-9 && (c0.total_percent - 50.0).abs() < 1e-9);
    assert!((c0.total_ticks - 2445.406 / 2.0).abs() < 1e-9);
    assert_eq!(second.cpu[1].total_ticks, 0.0);
    assert_eq!(second.cpu[2].total_percent, 0.0, "new CPU: no interval yet");
    assert!((second.cpu_ticks_consumed - 2445.406 / 2.0).abs() < 1e-9);
    assert_eq!(reader.frequencies().len(), 3);
    assert_eq!(reader.frequencies()[2].source, FrequencySource::Unknown);

    // With cpu_total_compute = 3000 over 3 CPUs, each CPU is 1000 MHz.
    fs::write(
        proc_.path().join("stat"),
        "cpu  0 0 0 0\ncpu0 230 0 120 850\ncpu1 0 0 0 1200\ncpu2 10 0 0 20\n",
    )
    .unwrap();
    let third = reader.sample(&[], Some(3000));
    assert!((third.cpu[0].total_ticks - 1000.0).abs() < 1e-9);
    assert_eq!(third.cpu[1].total_ticks, 0.0);
    assert!((third.cpu_ticks_consumed - 1000.0).abs() < 1e-9);

    // Unreadable files: zeros, no panic.
    fs::remove_file(proc_.path().join("meminfo")).unwrap();
    fs::write(proc_.path().join("stat"), "garbage\n").unwrap();
    let broken = reader.sample(&[], None);
    assert_eq!(broken.memory, HostMemoryStats::default());
    assert!(broken.cpu.is_empty());
    assert_eq!(broken.uptime, 1636);
}

#[test]
fn host_reader_on_this_machine() {
    let mut reader = HostReader::open(Path::new("/proc"), Path::new("/sys")).unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    if cpuinfo.contains("cpu MHz") || Path::new("/sys/devices/system/cpu/cpufreq/policy0").exists()
    {
        assert!(
            reader.frequencies().iter().all(|f| f.mhz > 0.0),
            "{:?}",
            reader.frequencies()
        );
        assert!(reader.total_compute_mhz() > 0);
    }

    let here = std::env::current_dir().unwrap();
    let dirs = vec![here.clone(), PathBuf::from("/definitely/not/here")];
    reader.sample(&dirs, None);
    let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
    let mut spin = 0u64;
    while std::time::Instant::now() < until {
        spin = std::hint::black_box(spin.wrapping_add(1));
    }
    let stats = reader.sample(&dirs, None);
    assert!(stats.memory.total > 0 && stats.memory.used <= stats.memory.total);
    assert!(stats.memory.available <= stats.memory.total);
    assert!(stats.uptime > 0);
    assert!(
        stats.cpu.len() >= cpus,
        "{} CPUs in /proc/stat",
        stats.cpu.len()
    );
    for c in &stats.cpu {
        for v in [c.user, c.system, c.idle, c.total_percent] {
            assert!((0.0..=100.0).contains(&v), "{c:?}");
        }
    }
    assert!(
        stats.cpu.iter().any(|c| c.total_percent > 0.0),
        "{:?}",
        stats.cpu
    );
    assert_eq!(stats.disk_stats.len(), 1);
    let disk = stats.alloc_dir_stats.unwrap();
    assert!(disk.size > 0 && disk.used <= disk.size);
    assert!(
        here.canonicalize().unwrap().starts_with(&disk.mountpoint),
        "{disk:?}"
    );
}
