//! Booting one guest under QEMU and waiting for it, its console streamed to the terminal.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::guest::{HOST_ROOT_TAG, RESULTS_PARAM, RESULTS_TAG};

/// Guest size: the host's two cores, and room for a 200 MiB workload, the daemon and
/// the tmpfs overlay.
const VCPUS: &str = "2";
const MEMORY: &str = "3G";

pub struct Boot<'a> {
    /// Prefix of the console lines printed (the kernel version).
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Shared read-write with the guest at the same path.
    pub results: &'a Path,
    /// The guest is killed after this long.
    pub deadline: Duration,
}

/// Boots the guest and returns once QEMU has exited: `Ok(true)` when the guest powered
/// itself off, `Ok(false)` when it was killed at the deadline. The kernel's own log goes
/// to `kernel.log` in the results folder, the test script's to the terminal and
/// `console.log`.
pub fn boot(boot: &Boot) -> Result<bool> {
    let results = boot.results.display();
    let cmdline = [
        "console=ttyS0",
        "panic=-1",
        // Pure cgroup v2, as Nomad clients on current distributions run.
        "cgroup_no_v1=all",
        "systemd.unified_cgroup_hierarchy=1",
        "random.trust_cpu=on",
        &format!("{RESULTS_PARAM}={results}"),
    ]
    .join(" ");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        // /dev/kvm here is kvm_pvm, which cannot run a stock Debian kernel: TCG only.
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        VCPUS,
        "-m",
        MEMORY,
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-kernel",
    ])
    .arg(boot.vmlinuz)
    .arg("-initrd")
    .arg(boot.initramfs)
    .args(["-append", &cmdline])
    .arg("-serial")
    .arg(format!("file:{results}/kernel.log"))
    .args([
        "-virtfs",
        &format!(
            "local,path=/,mount_tag={HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
        ),
        "-virtfs",
        &format!(
            "local,path={results},mount_tag={RESULTS_TAG},security_model=none,multidevs=remap"
        ),
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "stdio,id=console,signal=off",
        "-device",
        "virtconsole,chardev=console",
        "-device",
        "virtio-rng-pci",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let label = boot.label.to_owned();
    let log_path = boot.results.join("console.log");
    let forward = thread::spawn(move || -> Result<()> {
        let mut log = fs::File::create(log_path)?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let line = line.trim_end_matches('\r');
            writeln!(log, "{line}")?;
            eprintln!("[{label}] {line}");
        }
        Ok(())
    });
    let started = Instant::now();
    let powered_off = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if started.elapsed() > boot.deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        thread::sleep(Duration::from_millis(200));
    };
    forward
        .join()
        .map_err(|_| anyhow::anyhow!("console thread panicked"))??;
    Ok(powered_off)
}
