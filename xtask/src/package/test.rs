//! The package test, run by `cargo xtask test` as root: builds the .deb, installs it
//! with `dpkg -i`, checks the unit with `systemd-analyze verify`, runs the installed
//! binary (`--check-config`, then as the daemon with the unit's capabilities against a
//! busy task in a real Nomad-layout cgroup, whose CPU the stats API must report), and
//! purges the package, checking that no file, pin or process is left.
//!
//! A daemon already running on this machine is left alone: the test's daemon listens on
//! a free port and pins under its own folder, set in the installed conffile (so that
//! the purge's `--uninstall` removes those pins and no other), and the default pin
//! folder must be as it was.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::unit::Privileges;
use crate::{
    bench::{
        cgroups::{uuid, NomadParents, TaskCgroup, TASK_PREFIX},
        cleanup,
        daemon::Metrics,
        http,
        process::ChildGuard,
        workload::in_cgroup,
    },
    shell::{announce, output, step},
};

const PACKAGE: &str = "nomad-collector";
const BINARY: &str = "/usr/bin/nomad-collector";
const CONFIG: &str = "/etc/nomad-collector/config.toml";
const DEFAULT_PINS: &str = "/sys/fs/bpf/nomad-collector";
/// Written into the conffile by the test, so that a package a killed test left installed
/// is recognised as the test's and purged, and an operator's never is.
const MARKER: &str = "# written by cargo xtask test (package test)";

fn dpkg_status() -> Option<String> {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))
}

fn installed() -> bool {
    dpkg_status().is_some_and(|s| s.ends_with(" installed") || s.contains("config-files"))
}

fn purge() -> Result<()> {
    step(
        "dpkg --purge nomad-collector",
        Command::new("dpkg").args(["--purge", PACKAGE]),
    )
}

/// Purges the package when dropped (a failing test leaves nothing installed).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if installed() {
            let _ = purge();
        }
    }
}

/// Where systemd runs (not on CI machines), `dpkg -i` would start the service with the
/// default configuration, beside any daemon already there; a `policy-rc.d` that
/// refuses starts prevents it, as in Debian's own chroots. Removed on drop.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn new() -> Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if !Path::new("/run/systemd/system").exists() || path.exists() {
            return Ok(Self(None));
        }
        fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask test: no service starts\nexit 101\n",
        )?;
        let guard = Self(Some(path.clone()));
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// bpffs on /sys/fs/bpf (systemd mounts it at boot; a bare machine may not have it, and
/// the unit does not grant the CAP_SYS_ADMIN the daemon would need to mount it). Unmounted
/// on drop if this mounted it and nothing else pinned there meanwhile.
struct Bpffs {
    mounted: bool,
}

impl Bpffs {
    fn ensure() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts")?;
        if mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
        {
            return Ok(Self { mounted: false });
        }
        step(
            "mounting bpffs on /sys/fs/bpf (as systemd does at boot)",
            Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf", "-o", "mode=0700"]),
        )?;
        Ok(Self { mounted: true })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // The kernel's own iterators (bpf_preload) are in every bpffs mount.
        let empty = fs::read_dir("/sys/fs/bpf").is_ok_and(|d| {
            d.flatten()
                .all(|e| matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug")))
        });
        if self.mounted && empty {
            let _ = Command::new("umount").arg("/sys/fs/bpf").status();
        }
    }
}

/// Processes running the installed binary (also once it is deleted).
fn installed_processes() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = fs::read_link(e.path().join("exe")).ok()?;
            exe.to_string_lossy().starts_with(BINARY).then_some(pid)
        })
        .collect()
}

fn run_checked(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

pub fn run() -> Result<()> {
    if installed() {
        let config = fs::read_to_string(CONFIG).unwrap_or_default();
        if !config.contains(MARKER) {
            bail!(
                "the nomad-collector package is installed on this machine: the package test \
                 would replace and purge it. Remove it first (`apt purge nomad-collector`)."
            );
        }
        announce("purging the nomad-collector package a killed package test left");
        purge()?;
    }
    let deb = super::build()?;
    crate::bench::take_over_host()?;
    let default_pins_before = Path::new(DEFAULT_PINS).exists();
    let others_before = installed_processes();

    let result = install_run_purge(&deb);
    // Whatever happened, nothing of the test may stay.
    cleanup::teardown_all();
    result?;

    ensure!(
        Path::new(DEFAULT_PINS).exists() == default_pins_before,
        "the default pin folder {DEFAULT_PINS} changed (existed before: {default_pins_before})"
    );
    let left: Vec<u32> = installed_processes()
        .into_iter()
        .filter(|p| !others_before.contains(p))
        .collect();
    ensure!(left.is_empty(), "processes of {BINARY} left: {left:?}");
    announce("package test passed: installed, verified, ran, purged; nothing left");
    Ok(())
}

fn install_run_purge(deb: &Path) -> Result<()> {
    let _purge_on_failure = Installed;
    {
        let _no_starts = NoServiceStarts::new()?;
        step(
            "dpkg -i nomad-collector.deb",
            Command::new("dpkg").arg("-i").arg(deb),
        )?;
    }
    let files: Vec<PathBuf> = output(Command::new("dpkg").args(["-L", PACKAGE]))
        .context("dpkg -L")?
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    let unit_path = files
        .iter()
        .find(|p| p.ends_with("systemd/system/nomad-collector.service"))
        .context("the package installs no nomad-collector.service")?
        .clone();
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))
        .unwrap_or_default();
    ensure!(
        conffiles.contains(CONFIG),
        "{CONFIG} is not a conffile: {conffiles:?}"
    );

    check_unit(&unit_path)?;
    check_man_page(&files)?;

    announce("installed binary: --check-config on the shipped configuration");
    let shipped = run_checked(
        "nomad-collector --check-config",
        Command::new(BINARY).args(["--config", CONFIG, "--check-config"]),
    )?;
    ensure!(
        shipped.contains(DEFAULT_PINS),
        "--check-config does not show the default pin root:\n{shipped}"
    );

    // The test's own port and pins, in the conffile as an operator would set them.
    let port = http::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/nomad-collector-pkgtest-{port}"));
    let config = fs::read_to_string(CONFIG)?
        .replace(
            &format!("pin_root = \"{DEFAULT_PINS}\""),
            &format!("pin_root = \"{}\"", pin_root.display()),
        )
        .replace(
            "listen = \"127.0.0.1:4649\"",
            &format!("listen = \"{addr}\""),
        );
    ensure!(
        config.contains(&pin_root.display().to_string()) && config.contains(&addr.to_string()),
        "the shipped config.toml no longer has `pin_root = \"{DEFAULT_PINS}\"` and \
         `listen = \"127.0.0.1:4649\"` lines for the test to change"
    );
    fs::write(CONFIG, format!("{MARKER}\n{config}"))?;
    let changed = run_checked(
        "nomad-collector --check-config",
        Command::new(BINARY).args(["--config", CONFIG, "--check-config"]),
    )?;
    ensure!(
        changed.contains(&addr.to_string()),
        "--check-config does not show the changed listen address:\n{changed}"
    );

    {
        let _bpffs = Bpffs::ensure()?;
        // Should the purge not remove them, the build's own binary still can.
        let workspace_binary = crate::bench::target_dir().join("release/nomad-collector");
        cleanup::add_pin_root(&workspace_binary, &pin_root);
        run_daemon(&unit_path, addr)?;
        ensure!(
            pin_root.exists(),
            "the daemon left no pins under {} (they keep counting across restarts)",
            pin_root.display()
        );
        purge()?;
        ensure!(
            !pin_root.exists(),
            "the purge left the pins under {}",
            pin_root.display()
        );
        cleanup::remove_pin_root(&pin_root);
    }

    ensure!(
        !installed(),
        "still known to dpkg after the purge: {:?}",
        dpkg_status()
    );
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    ensure!(left.is_empty(), "the purge left files: {left:?}");
    for path in [
        "/etc/nomad-collector",
        "/etc/systemd/system/multi-user.target.wants/nomad-collector.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/nomad-collector.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/nomad-collector.service",
    ] {
        ensure!(!Path::new(path).exists(), "the purge left {path}");
    }
    Ok(())
}

/// `systemd-analyze verify` on the installed unit (its ExecStart binary now exists):
/// any complaint fails, not only a non-zero exit.
fn check_unit(unit: &Path) -> Result<()> {
    announce(&format!("systemd-analyze verify {}", unit.display()));
    let text = run_checked(
        "systemd-analyze verify",
        Command::new("systemd-analyze").arg("verify").arg(unit),
    )?;
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("nomad-collector"))
        .collect();
    ensure!(
        complaints.is_empty(),
        "systemd-analyze verify complains about the unit:\n{}",
        complaints.join("\n")
    );
    // systemd's own score of the sandbox (0 = locked down, 10 = none); the unit scores
    // 2.3, and a change that weakens it past 3.0 fails here.
    let score = run_checked(
        "systemd-analyze security",
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(unit),
    )?;
    if let Some(line) = score.lines().find(|l| l.contains("Overall exposure level")) {
        announce(line.trim());
    }
    Ok(())
}

/// The installed man page documents every flag `--help` lists.
fn check_man_page(files: &[PathBuf]) -> Result<()> {
    let page = files
        .iter()
        .find(|p| p.to_string_lossy().contains("/man1/nomad-collector.1"))
        .context("the package installs no man page")?;
    let raw = fs::read(page)?;
    let roff = if page.extension().is_some_and(|e| e == "gz") {
        run_checked("zcat", Command::new("zcat").arg(page))?
    } else {
        String::from_utf8(raw)?
    };
    // roff escapes each '-' of a flag as "\-".
    let roff = roff.replace("\\-", "-");
    let help = run_checked("nomad-collector --help", Command::new(BINARY).arg("--help"))?;
    let flags: Vec<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    ensure!(!flags.is_empty(), "no flag in --help:\n{help}");
    let missing: Vec<&&str> = flags.iter().filter(|f| !roff.contains(**f)).collect();
    ensure!(
        missing.is_empty(),
        "the man page misses flags --help lists: {missing:?}"
    );
    Ok(())
}

/// Runs the unit's ExecStart with the unit's privileges, with a busy task in a Nomad
/// cgroup, and checks the stats API reports that task's CPU; stops the daemon.
fn run_daemon(unit: &Path, addr: SocketAddr) -> Result<()> {
    let privileges = Privileges::read(unit)?;
    let _parents = NomadParents::ensure()?;
    let alloc = uuid();
    let task = TaskCgroup::create(&alloc, &format!("{TASK_PREFIX}pkgtest"))?;

    let log = std::env::temp_dir().join(format!("nomad-collector-pkgtest-{}.log", addr.port()));
    let file = fs::File::create(&log)?;
    let mut cmd = privileges.command();
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    announce(&format!(
        "starting the installed daemon as its unit would: {:?}",
        cmd
    ));
    let mut daemon = ChildGuard::spawn(&mut cmd)?;
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http::get_ok(addr, "/v1/agent/health").is_err() {
        if let Some(status) = daemon.try_wait() {
            bail!("the installed daemon exited ({status}):\n{}", log_text());
        }
        ensure!(
            Instant::now() < deadline,
            "the installed daemon did not serve within 60 s:\n{}",
            log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let metrics = Metrics::parse(&http::get_ok(addr, "/v1/metrics?format=prometheus")?);
    ensure!(
        metrics.source.as_deref() == Some("ebpf"),
        "with the unit's capabilities the daemon measures with {:?}, not eBPF:\n{}",
        metrics.source,
        log_text()
    );

    // Started after the daemon, so that all its CPU time is in the daemon's counters.
    let mut busy = Command::new("sh");
    busy.args(["-c", "while :; do :; done"])
        .stdout(Stdio::null());
    in_cgroup(&mut busy, &task.procs_files())?;
    let _busy = ChildGuard::spawn_raw(&mut busy)?;
    let accuracy = reported_against_cgroup(addr, &task)?;
    announce(&format!(
        "the stats API reports {:.1}% of the task cgroup's cpuacct.usage ({:.0} ms)",
        accuracy.0 / accuracy.1 * 100.0,
        accuracy.1 / 1e6
    ));
    ensure!(
        (0.8..=1.2).contains(&(accuracy.0 / accuracy.1)),
        "the stats API reports {:.0} ms of CPU where the task's cgroup counted {:.0} ms:\n{}",
        accuracy.0 / 1e6,
        accuracy.1 / 1e6,
        log_text()
    );

    ensure!(
        daemon.stop(Duration::from_secs(15)),
        "the installed daemon did not exit cleanly on SIGTERM:\n{}",
        log_text()
    );
    let _ = fs::remove_file(&log);
    Ok(())
}

/// (CPU the stats API reported, CPU the cgroup counted) over 5 snapshots, in ns: each
/// new snapshot's Percent × the time since the previous one, against the growth of
/// `cpuacct.usage` read when each snapshot is first seen.
fn reported_against_cgroup(addr: SocketAddr, task: &TaskCgroup) -> Result<(f64, f64)> {
    let path = format!("/v1/client/allocation/{}/stats", task.alloc);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<(i64, f64, u64)> = Vec::new();
    while seen.len() <= 5 {
        ensure!(
            Instant::now() < deadline,
            "the stats of the task did not advance: {seen:?}"
        );
        // 404 until the daemon's first cycle that sees the task.
        let (status, body) = http::get(addr, &path)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == 404 {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        ensure!(status == 200, "GET {path}: {status}: {body}");
        let usage = task.cpuacct_usage()?;
        let v: serde_json::Value = serde_json::from_str(&body).context("stats JSON")?;
        let ts = v["Timestamp"].as_i64().context("Timestamp")?;
        let percent = v["Tasks"][&task.task]["ResourceUsage"]["CpuStats"]["Percent"]
            .as_f64()
            .with_context(|| format!("no Percent for task {}: {body}", task.task))?;
        if seen.last().is_none_or(|last| last.0 != ts) {
            seen.push((ts, percent, usage));
        }
        thread::sleep(Duration::from_millis(20));
    }
    // The first snapshot may predate the busy process; start from the second.
    let seen = &seen[1..];
    let reported: f64 = seen
        .windows(2)
        .map(|w| w[1].1 / 100.0 * (w[1].0 - w[0].0) as f64)
        .sum();
    let counted = (seen[seen.len() - 1].2 - seen[0].2) as f64;
    ensure!(counted > 0.0, "the busy task used no CPU: {seen:?}");
    Ok((reported, counted))
}
