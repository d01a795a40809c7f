//! What the systemd unit grants, read from the unit file itself, so that the package test
//! runs the installed daemon with exactly the unit's privileges (no systemd runs as PID 1
//! on a CI machine, so `setpriv` stands in for it).

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// The privilege settings of a `.service` file that decide what the daemon may do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// `ExecStart=`, split on whitespace (the unit quotes nothing).
    pub exec_start: Vec<String>,
    /// `CapabilityBoundingSet=`, lower case without `cap_` (setpriv's spelling).
    pub bounding: Vec<String>,
    pub ambient: Vec<String>,
    pub no_new_privileges: bool,
    /// `SecureBits=`, e.g. `noroot-locked`.
    pub secure_bits: Vec<String>,
}

fn cap_names(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

impl Privileges {
    pub fn parse(text: &str) -> Result<Self> {
        let mut p = Self::default();
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key.trim() {
                "ExecStart" => p.exec_start = value.split_whitespace().map(str::to_owned).collect(),
                "CapabilityBoundingSet" => p.bounding.extend(cap_names(value)),
                "AmbientCapabilities" => p.ambient.extend(cap_names(value)),
                "NoNewPrivileges" => p.no_new_privileges = value.trim() == "yes",
                "SecureBits" => p
                    .secure_bits
                    .extend(value.split_whitespace().map(str::to_owned)),
                _ => {}
            }
        }
        if p.exec_start.is_empty() {
            bail!("no ExecStart= in the unit's [Service] section");
        }
        Ok(p)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    /// `setpriv … <ExecStart>`: root with the unit's bounding and ambient sets, nothing
    /// inheritable beyond the ambient ones, its securebits and no_new_privs, as systemd
    /// would start it.
    pub fn command(&self) -> Command {
        let list = |caps: &[String]| {
            std::iter::once("-all".to_owned())
                .chain(caps.iter().map(|c| format!("+{c}")))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = Command::new("setpriv");
        if !self.secure_bits.is_empty() {
            let bits: Vec<String> = self
                .secure_bits
                .iter()
                .flat_map(|b| match b.as_str() {
                    // systemd's `X-locked` is the bit and its lock.
                    b if b.ends_with("-locked") => {
                        let bit = b.trim_end_matches("-locked").replace('-', "_");
                        vec![format!("+{bit}"), format!("+{bit}_locked")]
                    }
                    b => vec![format!("+{}", b.replace('-', "_"))],
                })
                .collect();
            cmd.arg("--securebits").arg(bits.join(","));
        }
        cmd.arg("--bounding-set").arg(list(&self.bounding));
        cmd.arg("--inh-caps").arg(list(&self.ambient));
        cmd.arg("--ambient-caps").arg(list(&self.ambient));
        if self.no_new_privileges {
            cmd.arg("--no-new-privs");
        }
        cmd.args(&self.exec_start);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit() {
        let path = crate::shell::workspace_root().join("deploy/systemd/nomad-collector.service");
        let p = Privileges::read(&path).unwrap();
        assert_eq!(p.exec_start[0], "/usr/bin/nomad-collector");
        assert!(p.no_new_privileges);
        // Whatever the set is, the ambient set cannot exceed the bounding set.
        assert!(p.ambient.iter().all(|c| p.bounding.contains(c)), "{p:?}");
        let cmd = p.command();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let bounding = args.iter().position(|a| a == "--bounding-set").unwrap();
        assert!(args[bounding + 1].starts_with("-all"), "{args:?}");
        assert_eq!(
            args.last().map(String::as_str),
            p.exec_start.last().map(String::as_str)
        );
    }

    #[test]
    fn parses_only_the_service_section() {
        let p = Privileges::parse(
            "[Unit]\nExecStart=/nope\n[Service]\nExecStart=/bin/x -c f\n\
             CapabilityBoundingSet=CAP_BPF CAP_PERFMON\nAmbientCapabilities=CAP_BPF\n\
             SecureBits=noroot-locked\nNoNewPrivileges=yes\n[Install]\nWantedBy=x\n",
        )
        .unwrap();
        assert_eq!(p.exec_start, ["/bin/x", "-c", "f"]);
        assert_eq!(p.bounding, ["bpf", "perfmon"]);
        assert_eq!(p.ambient, ["bpf"]);
        let args: Vec<String> = p
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--securebits",
                "+noroot,+noroot_locked",
                "--bounding-set",
                "-all,+bpf,+perfmon",
                "--inh-caps",
                "-all,+bpf",
                "--ambient-caps",
                "-all,+bpf",
                "--no-new-privs",
                "/bin/x",
                "-c",
                "f"
            ]
        );
        assert!(Privileges::parse("[Service]\nUser=x\n").is_err());
    }
}
