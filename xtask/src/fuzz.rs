//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the cargo-fuzz targets of
//! `fuzz/` (nightly, libFuzzer) and runs each for N seconds, then reports executions per
//! target. Fails when a target crashed, panicked, hung or ran out of memory, naming the
//! input that did it.
//!
//! Each target starts from its checked-in seeds (`fuzz/corpus/<target>`, read only) plus
//! a working corpus kept under the target directory (`<target-dir>/corpus/<target>`),
//! so what a run learns carries over to the next run on the same machine without
//! growing the repository. Failing inputs go to `fuzz/artifacts/<target>/`.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::shell::{announce, output, step, workspace_root};

/// What `cargo xtask fuzz` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time per target, in seconds.
    pub seconds: u64,
    /// Targets to run; empty: all of them.
    pub targets: Vec<String>,
    /// cargo-fuzz sanitizer: `none` (the targets' code is safe Rust: panics, overflows,
    /// hangs and memory blow-ups are what they find, twice as fast without ASan) or
    /// `address`.
    pub sanitizer: String,
}

/// libFuzzer's per-input time limit (seconds): a slower input is reported as a hang.
const INPUT_TIMEOUT_SECS: u32 = 10;

/// Longer inputs than libFuzzer's default 4096 bytes where they reach limits: the
/// server's 8 KiB head buffer and 2 KiB request target.
fn max_len(target: &str) -> Option<usize> {
    (target == "http_raw").then_some(20_000)
}

/// What one target's run gave.
struct Outcome {
    target: String,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    corpus_files: usize,
    /// Why the run failed and the input that did it, if it failed.
    failure: Option<(String, Option<String>)>,
}

pub fn run(options: &Options) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_nightly()?;
    ensure_cargo_fuzz()?;

    let available = list_targets(&root)?;
    let targets = if options.targets.is_empty() {
        available.clone()
    } else {
        for t in &options.targets {
            if !available.contains(t) {
                bail!("no fuzz target `{t}`; there are: {}", available.join(", "));
            }
        }
        options.targets.clone()
    };
    let target_dir = target_dir(&root);

    let mut build = cargo_fuzz(&root, "build", &options.sanitizer, &target_dir);
    if let [only] = targets.as_slice() {
        build.arg(only);
    }
    step(
        &format!(
            "building the fuzz targets (nightly, sanitizer {}, into {})",
            options.sanitizer,
            target_dir.display()
        ),
        &mut build,
    )?;

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&root, &fuzz_dir, &target_dir, target, options)?);
    }

    announce(&format!(
        "fuzzing summary ({} s per target)",
        options.seconds
    ));
    eprintln!(
        "{:<16} {:>12} {:>9} {:>8}  result",
        "target", "executions", "exec/s", "corpus"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    for o in &outcomes {
        let result = match &o.failure {
            None => "ok".to_owned(),
            Some((why, Some(input))) => format!("FAILED: {why}; input: {input}"),
            Some((why, None)) => format!("FAILED: {why}"),
        };
        eprintln!(
            "{:<16} {:>12} {:>9} {:>8}  {result}",
            o.target,
            show(o.runs),
            show(o.execs_per_sec),
            o.corpus_files
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if !failed.is_empty() {
        for o in &failed {
            if let Some((_, Some(input))) = &o.failure {
                eprintln!(
                    "reproduce: AYA_BUILD_SKIP=1 cargo +nightly fuzz run -s {} --target-dir {} {} {input}",
                    options.sanitizer,
                    target_dir.display(),
                    o.target
                );
            }
        }
        bail!(
            "{} fuzz target(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `$CARGO_TARGET_DIR/fuzz`, else `target/fuzz`: apart from the main build, whose cache
/// the fuzz flags would otherwise invalidate.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("fuzz")
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]));
    if toolchains.is_some_and(|list| list.lines().any(|l| l.starts_with("nightly"))) {
        return Ok(());
    }
    step(
        "installing the nightly toolchain (cargo-fuzz builds with -Z sanitizer flags)",
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    step(
        "installing cargo-fuzz (cargo install cargo-fuzz --locked; a few minutes)",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
    )
}

/// `cargo +nightly fuzz <subcommand>` with the options every call must share (a
/// different sanitizer or target dir would rebuild everything).
fn cargo_fuzz(root: &Path, subcommand: &str, sanitizer: &str, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["+nightly", "fuzz", subcommand, "--sanitizer", sanitizer])
        .arg("--target-dir")
        .arg(target_dir)
        // The targets use collector-user as a library: no embedded eBPF object needed.
        .env("AYA_BUILD_SKIP", "1");
    cmd
}

fn list_targets(root: &Path) -> Result<Vec<String>> {
    let list = output(
        Command::new("cargo")
            .current_dir(root)
            .args(["+nightly", "fuzz", "list"]),
    )
    .context("`cargo +nightly fuzz list` failed")?;
    let targets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no fuzz target in fuzz/");
    }
    Ok(targets)
}

/// The dictionary of a target: `fuzz/dicts/<target>.dict`, else the one named after the
/// target's first word (`http_app` → `http.dict`).
fn dictionary(fuzz_dir: &Path, target: &str) -> Option<PathBuf> {
    let dicts = fuzz_dir.join("dicts");
    let family = target.split('_').next().unwrap_or(target);
    [target, family]
        .iter()
        .map(|name| dicts.join(format!("{name}.dict")))
        .find(|path| path.is_file())
}

fn run_target(
    root: &Path,
    fuzz_dir: &Path,
    target_dir: &Path,
    target: &str,
    options: &Options,
) -> Result<Outcome> {
    let work_corpus = target_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let logs = target_dir.join("logs");
    fs::create_dir_all(&work_corpus)
        .with_context(|| format!("creating {}", work_corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = cargo_fuzz(root, "run", &options.sanitizer, target_dir);
    // New inputs go to the first corpus directory: the working one.
    cmd.arg(target).arg(&work_corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={}", options.seconds))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    if let Some(dict) = dictionary(fuzz_dir, target) {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    if let Some(len) = max_len(target) {
        cmd.arg(format!("-max_len={len}"));
    }
    announce(&format!(
        "fuzzing {target} for {} s (full log: {})",
        options.seconds,
        log_path.display()
    ));

    // libFuzzer reports on stderr; its line per new input is left to the log.
    cmd.stdout(Stdio::inherit()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut runs = None;
    let mut execs_per_sec = None;
    let mut input = None;
    let mut kind = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading cargo fuzz output")?;
        writeln!(log, "{line}").with_context(|| format!("writing {}", log_path.display()))?;
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            runs = Some(n);
        }
        if let Some(n) = stat("stat::average_exec_per_sec:") {
            execs_per_sec = Some(n);
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            input = Some(path.trim().to_owned());
        }
        if kind.is_none() {
            kind = failure_kind(&line);
        }
        if !is_progress_noise(&line) {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let failure = (!status.success()).then(|| {
        let why = kind.unwrap_or_else(|| format!("cargo fuzz exited with {status}"));
        (why, input)
    });
    eprintln!(
        "{target}: {} executions in {:.0} s{}",
        runs.map_or_else(|| "?".to_owned(), |r| r.to_string()),
        started.elapsed().as_secs_f64(),
        if failure.is_some() { ", FAILED" } else { "" }
    );
    let corpus_files = fs::read_dir(&work_corpus).map_or(0, |d| d.count());
    Ok(Outcome {
        target: target.to_owned(),
        runs,
        execs_per_sec,
        corpus_files,
        failure,
    })
}

/// libFuzzer's one line per new or reduced input, and its recommended dictionary
/// entries: shown only in the log.
fn is_progress_noise(line: &str) -> bool {
    if line.starts_with('"') && line.contains("\" # Uses: ") {
        return true;
    }
    let Some(rest) = line.strip_prefix('#') else {
        return false;
    };
    let mut words = rest.split_whitespace();
    words.next().is_some_and(|n| n.parse::<u64>().is_ok())
        && matches!(words.next(), Some("NEW" | "REDUCE" | "RELOAD"))
}

/// What libFuzzer says went wrong, from its report line.
fn failure_kind(line: &str) -> Option<String> {
    if line.contains("panicked at") {
        return Some(format!("panic ({})", line.trim()));
    }
    let kinds = [
        (
            "ERROR: libFuzzer: timeout",
            "hang (input took longer than the timeout)",
        ),
        ("ERROR: libFuzzer: out-of-memory", "out of memory"),
        ("ERROR: libFuzzer: deadly signal", "crash (deadly signal)"),
        ("ERROR: libFuzzer: crash", "crash"),
        ("ERROR: AddressSanitizer", "memory error (AddressSanitizer)"),
        ("has overflowed its stack", "stack overflow"),
        // fuzz/src/lib.rs `catch_stack_overflow`.
        ("fuzz target: SIGSEGV at", "stack overflow (SIGSEGV)"),
    ];
    kinds
        .iter()
        .find(|(needle, _)| line.contains(needle))
        .map(|(_, kind)| (*kind).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_told_apart() {
        assert!(is_progress_noise(
            "#1234\tNEW    cov: 10 ft: 12 corp: 3/40b"
        ));
        assert!(is_progress_noise("#77\tREDUCE cov: 10 ft: 12"));
        assert!(!is_progress_noise("#4096\tpulse  cov: 10 ft: 12"));
        assert!(!is_progress_noise("#9000\tDONE   cov: 10 ft: 12"));
        assert!(!is_progress_noise("INFO: Seed: 123"));
        assert!(is_progress_noise(r#""/sys/fs/cgroup" # Uses: 27"#));
    }

    #[test]
    fn failures_are_named() {
        assert_eq!(
            failure_kind("==1== ERROR: libFuzzer: timeout after 10 seconds").as_deref(),
            Some("hang (input took longer than the timeout)")
        );
        assert!(failure_kind("thread '<unnamed>' panicked at src/x.rs:1:2:")
            .is_some_and(|k| k.starts_with("panic")));
        assert_eq!(failure_kind("#1 INITED cov: 3"), None);
    }

    #[test]
    fn dictionaries_fall_back_to_the_family() {
        let fuzz = workspace_root().join("fuzz");
        assert_eq!(
            dictionary(&fuzz, "http_app"),
            Some(fuzz.join("dicts/http.dict"))
        );
        assert_eq!(
            dictionary(&fuzz, "http_query"),
            Some(fuzz.join("dicts/http_query.dict"))
        );
    }
}
