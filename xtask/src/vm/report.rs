//! Reading each test's result out of the results folder, and the kernel × test table.

use std::{fs, path::Path, time::Duration};

/// What became of one test in one guest.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    /// Passed by skipping (only possible without CI set); the reason it gave.
    Skip(String),
    /// The first line of the reason.
    Fail(String),
}

pub struct Row {
    pub kernel: String,
    pub test: String,
    pub outcome: Outcome,
    pub seconds: Option<u64>,
}

/// The outcome of case `index` from its `<index>.rc` and `<index>.log`.
pub fn read(results: &Path, index: usize, timeout_s: u64) -> (Outcome, Option<u64>) {
    let rc = fs::read_to_string(results.join(format!("{index}.rc"))).ok();
    let log = fs::read_to_string(results.join(format!("{index}.log"))).unwrap_or_default();
    let Some(rc) = rc else {
        return (
            Outcome::Fail(
                "did not run: the guest stopped first (see console.log, kernel.log)".to_owned(),
            ),
            None,
        );
    };
    let mut fields = rc.split_whitespace();
    let code: i32 = fields.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
    let seconds = fields.next().and_then(|s| s.parse().ok());
    (judge(code, &log, timeout_s), seconds)
}

/// A test binary's exit code and output → outcome. A run that matched no test is a
/// failure (a renamed test must not pass silently).
fn judge(code: i32, log: &str, timeout_s: u64) -> Outcome {
    match code {
        0 if !log.contains("test result: ok. 1 passed") => {
            Outcome::Fail("no test of that name ran".to_owned())
        }
        0 => match log.lines().find(|l| l.contains("SKIPPED")) {
            Some(line) => Outcome::Skip(line.trim().to_owned()),
            None => Outcome::Pass,
        },
        // timeout(1): 124 after TERM, 137 when KILL was needed.
        124 | 137 => Outcome::Fail(format!("timed out after {timeout_s} s")),
        _ => Outcome::Fail(first_reason(log)),
    }
}

/// The first line of the panic message, else the last line of output.
fn first_reason(log: &str) -> String {
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            // `thread 'x' panicked at file:line:col:` then the message on the next line.
            if let Some(message) = lines.next().filter(|m| !m.trim().is_empty()) {
                // assert_eq! says what differed on the next two lines.
                let mut reason = message.trim().to_owned();
                if reason.starts_with("assertion `left") {
                    for side in lines.by_ref().take(2) {
                        reason.push_str(", ");
                        reason.push_str(side.trim());
                    }
                }
                return reason;
            }
            return line.trim().to_owned();
        }
    }
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_owned()
}

/// The table, one line per kernel and test, then the wall-clock time of each kernel.
pub fn print(rows: &[Row], times: &[(String, String, Duration)]) {
    let test_width = rows.iter().map(|r| r.test.len()).max().unwrap_or(4).max(4);
    println!();
    println!(
        "| kernel | {:test_width$} | result | time | reason |",
        "test"
    );
    println!("|---|{}|---|---|---|", "-".repeat(test_width + 2));
    for row in rows {
        let (result, reason) = match &row.outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Skip(why) => ("skip", why.clone()),
            Outcome::Fail(why) => ("FAIL", why.clone()),
        };
        let time = row.seconds.map(|s| format!("{s} s")).unwrap_or_default();
        let mut reason = reason.replace('|', "\\|");
        if reason.len() > 160 {
            let mut cut = 160;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        println!(
            "| {} | {:test_width$} | {result} | {time} | {reason} |",
            row.kernel, row.test
        );
    }
    println!();
    for (kernel, package, took) in times {
        println!(
            "{kernel}: {package}, {}m{:02}s wall clock (boot, daemon start-up check, tests)",
            took.as_secs() / 60,
            took.as_secs() % 60
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{judge, Outcome};

    #[test]
    fn outcomes_from_exit_code_and_output() {
        let ok = "running 1 test\ntest x ... ok\n\ntest result: ok. 1 passed; 0 failed;";
        assert_eq!(judge(0, ok, 60), Outcome::Pass);
        let none = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed;";
        assert!(matches!(judge(0, none, 60), Outcome::Fail(_)));
        let skipped = format!("SKIPPED x: needs root\n{ok}");
        assert!(matches!(judge(0, &skipped, 60), Outcome::Skip(_)));
        let failed = "---- x stdout ----\n\nthread 'x' panicked at tests/tests/d.rs:1:2:\nbusy loop reads 3%\nnote: …\n";
        assert_eq!(
            judge(101, failed, 60),
            Outcome::Fail("busy loop reads 3%".to_owned())
        );
        let unequal = "thread 'x' panicked at a.rs:1:2:\nassertion `left == right` failed\n  left: None\n right: Some(1.0)\n";
        assert_eq!(
            judge(101, unequal, 60),
            Outcome::Fail(
                "assertion `left == right` failed, left: None, right: Some(1.0)".to_owned()
            )
        );
        assert_eq!(
            judge(124, "", 60),
            Outcome::Fail("timed out after 60 s".to_owned())
        );
    }
}
