//! The host tools the VM matrix needs, installed from Debian through the private apt
//! configuration when missing.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use super::apt::Apt;
use crate::shell::{announce, is_root, output};

/// Suites the tools come from. QEMU comes from bookworm-backports (10.0): this image
/// already has backports' `qemu-utils` 10.0, which bookworm's own QEMU 7.2 would remove.
const SUITES: &[&str] = &[
    "bookworm",
    "bookworm-updates",
    "bookworm-security",
    "bookworm-backports",
];

/// (what must exist, package that provides it).
const NEEDED: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    // A static busybox runs in the initramfs with no libraries beside it.
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/sbin/depmod", "kmod"),
];

pub fn ensure(cache: &Path) -> Result<()> {
    let mut missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    // A dynamically linked busybox (Debian's `busybox`) cannot run alone in the
    // initramfs; `busybox-static` replaces it.
    if Path::new("/bin/busybox").exists() && !busybox_is_static() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the VM matrix needs Debian packages {}: run as root to install them",
            missing.join(", ")
        );
    }
    let codename =
        output(Command::new("sh").args(["-c", ". /etc/os-release; echo $VERSION_CODENAME"]))
            .unwrap_or_default();
    if codename.trim() != "bookworm" {
        bail!(
            "installing {} is set up for Debian bookworm hosts, this one is {:?}: install them by hand",
            missing.join(", "),
            codename.trim()
        );
    }
    announce(&format!(
        "installing the VM matrix's host tools: {} (about 17 MB)",
        missing.join(" ")
    ));
    let apt = Apt::new(&cache.join("apt-tools"), SUITES)?;
    apt.update()?;
    apt.install("bookworm-backports", &missing)
}

fn busybox_is_static() -> bool {
    // `ldd` says "not a dynamic executable" (and fails) for a static binary.
    output(Command::new("ldd").arg("/bin/busybox")).is_none()
}
