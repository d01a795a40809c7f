//! Reading a Prometheus exposition back: one sample's value, and `promtool check`.

/// The value of the first sample named `name` whose labels include every `labels` pair
/// (as the exposition writes them, `key="value"`).
pub(super) fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What `promtool check metrics` (Debian's `prometheus` package, which `cargo xtask
/// test` installs) prints about `exposition`: nothing when it is clean. `None` when
/// promtool is not installed, which fails the test under CI.
pub(super) fn promtool_check(exposition: &str) -> Option<String> {
    use std::{io::Write, process::Stdio};
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            assert!(!in_ci, "CI is set but promtool is not installed");
            eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
            return None;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !printed.is_empty(),
        "promtool failed silently"
    );
    Some(printed)
}
