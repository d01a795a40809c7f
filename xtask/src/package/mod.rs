//! `cargo xtask deb`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in collector-user/Cargo.toml, and ([`test`]) the check that
//! installs it on this machine, runs it as its unit would and purges it.

mod test;
mod unit;

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{
    setup,
    shell::{announce, cargo, step},
};

pub use test::run as test;

/// Where `cargo xtask deb` writes the package.
pub fn deb_path() -> PathBuf {
    crate::bench::target_dir()
        .join("debian")
        .join("nomad-collector.deb")
}

/// Builds the package (release build of the daemon included) and returns its path.
pub fn build() -> Result<PathBuf> {
    setup::ensure(&setup::Needs::package())?;
    setup::ensure_cargo_deb()?;
    let path = deb_path();
    step(
        "building the Debian package (cargo deb: release build, unit, config, man page)",
        cargo()
            .args(["deb", "--package", "collector-user", "--output"])
            .arg(&path),
    )?;
    if !path.exists() {
        bail!("cargo deb succeeded but {} is missing", path.display());
    }
    announce(&format!(
        "built {} (install: dpkg -i {})",
        path.display(),
        path.display()
    ));
    Ok(path)
}
