//! The Debian kernels of the matrix: found in the private package lists, downloaded with
//! `apt-get download`, unpacked with `dpkg -x` (nothing is installed) and cached.

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::apt::Apt;
use crate::shell::{announce, step};

/// A kernel of the matrix.
pub struct Spec {
    /// What `--kernel` names: `5.10`, `6.1`, `6.12`.
    pub version: &'static str,
    /// The distribution it stands for, for the report.
    pub stands_for: &'static str,
    /// Package names of this kernel series (apt's extended regular expression); the
    /// newest one the lists have is used, since Debian drops superseded ABI versions.
    pattern: &'static str,
}

pub const MATRIX: &[Spec] = &[
    Spec {
        version: "5.10",
        stands_for: "Debian 11 (bullseye); below RHEL 9's 5.14 and Ubuntu 22.04's 5.15",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
    },
    Spec {
        version: "6.1",
        stands_for: "Debian 12 (bookworm), Amazon Linux 2023",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
    Spec {
        version: "6.12",
        stands_for: "Debian 13; bookworm-security/backports",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12(\.[0-9]+)?-amd64$",
    },
];

/// Where the kernel packages are found.
const SUITES: &[&str] = &[
    "bullseye",
    "bullseye-security",
    "bookworm",
    "bookworm-security",
    "bookworm-backports",
];

pub fn spec(version: &str) -> Result<&'static Spec> {
    MATRIX
        .iter()
        .find(|s| s.version == version)
        .with_context(|| {
            let known: Vec<&str> = MATRIX.iter().map(|s| s.version).collect();
            format!(
                "no kernel {version} in the matrix (known: {})",
                known.join(", ")
            )
        })
}

/// An unpacked kernel: its image and its modules tree (with `modules.dep`).
pub struct Kernel {
    pub spec: &'static Spec,
    /// The package it came from.
    pub package: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
}

/// The kernel packages, through a private apt configuration under `cache`.
pub struct Kernels {
    apt: Apt,
    root: PathBuf,
    updated: bool,
}

impl Kernels {
    pub fn new(cache: &Path) -> Result<Kernels> {
        Ok(Kernels {
            apt: Apt::new(&cache.join("apt-kernels"), SUITES)?,
            root: cache.join("kernels"),
            updated: false,
        })
    }

    /// The newest package of `spec`'s series, unpacked (from the cache when it is there).
    pub fn get(&mut self, spec: &'static Spec) -> Result<Kernel> {
        if !self.updated {
            // Fresh lists say which ABI version is current; without the network the
            // lists (and kernels) already cached still do.
            if let Err(e) = self.apt.update() {
                if !self.apt.has_lists() {
                    return Err(e);
                }
                announce(&format!("{e:#}: using the package lists cached before"));
            }
            self.updated = true;
        }
        let package = self
            .apt
            .search_names(spec.pattern)?
            .into_iter()
            .max_by(|a, b| natural_cmp(a, b))
            .with_context(|| format!("no package matches {} in the lists", spec.pattern))?;
        let dir = self.root.join(&package);
        let ready = dir.join(".unpacked");
        if !ready.exists() {
            self.unpack(&package, &dir)?;
            fs::write(&ready, "")?;
        }
        let modules_root = dir.join("lib/modules");
        let release = fs::read_dir(&modules_root)
            .with_context(|| format!("reading {}", modules_root.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .with_context(|| format!("{package} has no lib/modules"))?;
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.exists() {
            bail!("{package} has no {}", vmlinuz.display());
        }
        Ok(Kernel {
            spec,
            package,
            modules: modules_root.join(&release),
            release,
            vmlinuz,
        })
    }

    fn unpack(&self, package: &str, dir: &Path) -> Result<()> {
        let downloads = self.root.join("debs");
        let deb = self.apt.download(package, &downloads)?;
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        step(
            &format!("unpacking {} (dpkg -x)", deb.display()),
            Command::new("dpkg").arg("-x").arg(&deb).arg(dir),
        )?;
        let release = fs::read_dir(dir.join("lib/modules"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .with_context(|| format!("{package} has no lib/modules"))?;
        // The package ships no modules.dep: the installer's depmod makes it.
        step(
            &format!("depmod for {release}"),
            Command::new("depmod").arg("-b").arg(dir).arg(&release),
        )?;
        // The unpacked tree is all that is used from now on.
        fs::remove_file(&deb)?;
        Ok(())
    }
}

/// Compares names with their digit runs as numbers, so `6.12.117` is newer than
/// `6.12.95` and `-57` newer than `-9`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in runs(a).into_iter().zip(runs(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => x
                .parse::<u64>()
                .unwrap_or(0)
                .cmp(&y.parse::<u64>().unwrap_or(0)),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;
    use std::cmp::Ordering::*;

    #[test]
    fn newer_abi_versions_sort_last() {
        assert_eq!(
            natural_cmp(
                "linux-image-6.12.117+deb12-amd64",
                "linux-image-6.12.95+deb12-amd64"
            ),
            Greater
        );
        assert_eq!(
            natural_cmp(
                "linux-image-6.12.90+deb12.1-amd64",
                "linux-image-6.12.90+deb12-amd64"
            ),
            Greater
        );
        assert_eq!(
            natural_cmp("linux-image-5.10.0-9-amd64", "linux-image-5.10.0-46-amd64"),
            Less
        );
    }
}
