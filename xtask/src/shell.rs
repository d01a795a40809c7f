//! Running commands with visible progress.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` from the toolchain running xtask, in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn announce(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

/// Runs `cmd` with inherited output after announcing it; fails on a non-zero exit.
pub fn step(what: &str, cmd: &mut Command) -> Result<()> {
    announce(what);
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout, or None when it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Replaces this process with `binary args…`, through `sudo` when not already root.
pub fn exec_as_root(binary: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = if is_root() {
        Command::new(binary)
    } else {
        announce("the daemon loads eBPF programs and reads every cgroup: running it with sudo");
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(binary);
        cmd
    };
    cmd.args(args);
    announce(&format!("starting {}", binary.display()));
    let err = cmd.exec();
    Err(err).with_context(|| format!("executing {}", binary.display()))
}
