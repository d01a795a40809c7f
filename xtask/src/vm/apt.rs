//! A private apt configuration: its own sources list, package lists and download cache
//! under the VM cache directory, passed to every apt command with `-o Dir::...`, so the
//! host's apt configuration and lists are never changed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::shell::{output, step};

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One private apt configuration rooted at `dir`.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Writes the sources list for `suites` (Debian's `main`, from the security archive
    /// for `*-security` suites) under `dir`, and makes the state and cache folders.
    pub fn new(dir: &Path, suites: &[&str]) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let list: String = suites
            .iter()
            .map(|suite| {
                let base = if suite.ends_with("-security") {
                    SECURITY
                } else {
                    MIRROR
                };
                format!("deb [signed-by={KEYRING}] {base} {suite} main\n")
            })
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&path, list).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Apt {
            dir: dir.to_path_buf(),
        })
    }

    /// The `-o` options that point apt at this configuration only. `SourceParts` at an
    /// empty folder keeps the host's sources.list.d out; the sandbox user is root because
    /// `_apt` cannot write into a root-owned cache.
    fn options(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            format!(
                "-oDir::Etc::SourceList={}",
                d.join("sources.list").display()
            ),
            format!("-oDir::Etc::SourceParts={}", d.join("no-parts").display()),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
            "-oAPT::Sandbox::User=root".to_owned(),
            // Another apt may be running on a shared machine: wait for it.
            "-oDPkg::Lock::Timeout=600".to_owned(),
            // Only package lists are needed, not the app-store metadata some hosts add.
            "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
        ]
    }

    fn command(&self, program: &str) -> Result<Command> {
        fs::create_dir_all(self.dir.join("no-parts"))?;
        let mut cmd = Command::new(program);
        cmd.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        Ok(cmd)
    }

    /// `apt-get update` of this configuration's lists.
    pub fn update(&self) -> Result<()> {
        step(
            &format!("apt-get update (private lists in {})", self.dir.display()),
            self.command("apt-get")?.args(["update", "-q"]),
        )
    }

    /// Whether the lists have been fetched at least once.
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_InRelease"))
        })
    }

    /// `apt-get install` of `packages`, preferring `target_release`.
    pub fn install(&self, target_release: &str, packages: &[&str]) -> Result<()> {
        step(
            &format!(
                "apt-get install {} (from {target_release} where it has them)",
                packages.join(" ")
            ),
            self.command("apt-get")?
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "-t",
                    target_release,
                ])
                .args(packages),
        )
    }

    /// Package names matching the extended regular expression `pattern`.
    pub fn search_names(&self, pattern: &str) -> Result<Vec<String>> {
        let Some(found) =
            output(
                self.command("apt-cache")?
                    .args(["search", "--names-only", pattern]),
            )
        else {
            bail!("apt-cache search {pattern} failed");
        };
        Ok(found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    /// Downloads `package`'s .deb into `dest` (nothing is installed) and returns its path.
    pub fn download(&self, package: &str, dest: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dest)?;
        step(
            &format!("apt-get download {package}"),
            self.command("apt-get")?
                .current_dir(dest)
                .args(["download", "-q", package]),
        )?;
        let prefix = format!("{}_", package);
        fs::read_dir(dest)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                    && p.extension().is_some_and(|e| e == "deb")
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {package} .deb in {}",
                    dest.display()
                )
            })
    }
}
