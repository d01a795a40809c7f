//! `nomad-collector top` as a person uses it: in a real terminal (tmux, 80×24), typing
//! keys and reading the screen, against the daemon and a busy Nomad-style task.
//! (Issue 11, item 4.)

use std::{
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::Duration,
};

use integration_tests::{
    burner, daemon_binary, eventually, favoured, free_port, privileged, uuid, Cgroup, ConfigFile,
    Daemon,
};

const PROMPT: &str = "top-test$ ";

/// A tmux server of this test's own (its own socket, no user configuration) with one
/// 80×24 window running `sh`; the whole server is killed and its socket removed on drop,
/// whatever happened.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// `None` (a skip) where tmux is missing, except in CI, where that fails the test.
    fn start(test: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            assert!(
                !ci,
                "{test}: CI is set and tmux is not installed (cargo xtask setup installs it)"
            );
            eprintln!("SKIPPED {test}: tmux is not installed");
            return None;
        }
        let tmux = Tmux {
            socket: std::env::temp_dir()
                .join(format!("nomad-collector-test-tmux-{}", &uuid()[..8])),
        };
        let out = tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "80",
            "-y",
            "24",
            "env",
            &format!("PS1={PROMPT}"),
            "sh",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        eventually(Duration::from_secs(5), || {
            tmux.screen().contains(PROMPT.trim_end()).then_some(())
        })
        .expect("the shell prompt appears");
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Types `keys` (tmux key names: `Enter`, `Escape`, or literal text).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys {keys:?}: {out:?}");
    }

    /// Types a command line and runs it; `[tag] exit=<status>` is printed after it. (The
    /// typed line reads `exit""=`, so only the output matches `[tag] exit=`.)
    fn type_command(&self, tag: &str, line: &str) {
        self.keys(&["-l", &format!("{line}; echo \"[{tag}] exit\"\"=$?\"")]);
        self.keys(&["Enter"]);
    }

    /// Waits for the command tagged `tag` to end; the screen then.
    fn wait_exit(&self, tag: &str, timeout: Duration) -> String {
        let marker = format!("[{tag}] exit=");
        self.wait_for(&format!("{tag} to exit"), timeout, |s| s.contains(&marker))
    }

    /// The screen's text, lines the terminal wrapped joined again (`-J`).
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-J", "-t", "top"]).stdout)
            .into_owned()
    }

    /// Whether the pane shows the alternate screen (a full-screen program is in it).
    fn alternate_screen(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// The screen once `want` holds for it, or a panic showing the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        eventually(timeout, || {
            let screen = self.screen();
            want(&screen).then_some(screen)
        })
        .unwrap_or_else(|| panic!("waited for {what}; the screen is:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- tmux screen ----\n{}", self.screen());
        }
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The first screen line whose name column is `name`, split into its columns.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
}

fn top_command(daemon_addr: &str, extra: &str) -> String {
    format!(
        "{} top --addr {daemon_addr} --interval 500ms {extra}",
        daemon_binary().display()
    )
}

#[test]
fn top_shows_the_busy_task_sorts_expands_and_quits_cleanly() {
    const TEST: &str = "top_shows_the_busy_task_sorts_expands_and_quits_cleanly";
    if !privileged(TEST) {
        return;
    }
    let Some(tmux) = Tmux::start(TEST) else {
        return;
    };
    let alloc = uuid();
    let busy = Cgroup::task(&alloc, "busy");
    let idle = Cgroup::task(&alloc, "idle");
    let spin = busy.spawn(favoured(burner!().args(["spin", "1", "120"])));
    let _sleep = idle.spawn(burner!().args(["sleep", "120"]));
    let daemon = Daemon::start(&["--interval", "500ms", "--no-pin"]);

    tmux.type_command("view", &top_command(&daemon.addr, ""));
    tmux.wait_for("the view", Duration::from_secs(15), |s| {
        s.contains("ALLOC/TASK")
    });
    assert!(tmux.alternate_screen(), "top runs on the alternate screen");
    // Only this test's allocation: other allocations on a shared host stay out of it.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &alloc[..8]]);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the filtered view", Duration::from_secs(5), |s| {
        s.contains(&format!("filter:{}", &alloc[..8])) && s.contains("1 allocs 2 tasks")
    });
    assert!(
        screen.contains("*CPU%"),
        "sorted by CPU at first:\n{screen}"
    );

    // A busy loop reads about one core (once past the first sample, which reads 0). On
    // a machine loaded beyond its cores (a shared developer's) it cannot have one, even
    // favoured; it is runnable all the time though, so what it did not run it waited on
    // the run queue: where the view has the wait figure, CPU + wait is one core.
    let screen = tmux.wait_for("the busy task near 100%", Duration::from_secs(15), |s| {
        let Some(cols) = row(s, "busy") else {
            return false;
        };
        let cpu = cols.get(1).and_then(|c| c.parse::<f64>().ok());
        let wait = cols.get(2).and_then(|c| c.parse::<f64>().ok());
        match (cpu, wait) {
            (Some(cpu), _) if cpu >= 85.0 => true,
            (Some(cpu), Some(wait)) => cpu >= 20.0 && (90.0..=110.0).contains(&(cpu + wait)),
            _ => false,
        }
    });
    let line_of = |s: &str, name: &str| s.lines().position(|l| l.trim_start().starts_with(name));
    assert!(
        line_of(&screen, "busy") < line_of(&screen, "idle"),
        "the busy task is above the idle one when sorted by CPU:\n{screen}"
    );
    let idle_cpu: f64 = row(&screen, "idle").unwrap()[1].parse().unwrap();
    assert!(
        idle_cpu < 5.0,
        "the sleeping task reads {idle_cpu}%:\n{screen}"
    );

    // `w` sorts by wait: the mark moves to that column and the title says so.
    tmux.keys(&["w"]);
    let screen = tmux.wait_for("the sort by wait", Duration::from_secs(5), |s| {
        s.contains("*WAIT%") && s.contains("sort:wait")
    });
    assert!(!screen.contains("*CPU%"), "{screen}");
    if let (Some(busy_wait), Some(idle_wait)) = (
        row(&screen, "busy").and_then(|c| c[2].parse::<f64>().ok()),
        row(&screen, "idle").and_then(|c| c[2].parse::<f64>().ok()),
    ) {
        // Where the kernel gives the figure: rows follow it.
        let (busy_line, idle_line) = (line_of(&screen, "busy"), line_of(&screen, "idle"));
        assert_eq!(
            busy_line < idle_line,
            busy_wait >= idle_wait,
            "rows follow the wait column:\n{screen}"
        );
    }

    // Back to CPU, select the busy task (the first under the allocation) and expand it:
    // its process appears with its CPU.
    tmux.keys(&["c", "j", "Enter"]);
    let pid_line = format!("pid {}", spin.pid());
    let screen = tmux.wait_for("the busy PID", Duration::from_secs(5), |s| {
        s.contains(&pid_line)
    });
    let cols = screen
        .lines()
        .find(|l| l.contains(&pid_line))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert!(
        cols.get(2).and_then(|c| c.parse::<f64>().ok()).is_some(),
        "the process line has its CPU: {cols:?}"
    );

    // `p` freezes the view, `p` again resumes it.
    // (A busy task's figures change at every refresh, so an unchanged screen over three
    // intervals is a frozen one.)
    tmux.keys(&["p"]);
    let paused = tmux.wait_for("the pause", Duration::from_secs(5), |s| {
        s.contains("PAUSED")
    });
    thread::sleep(Duration::from_millis(1600));
    assert_eq!(tmux.screen(), paused, "the paused view does not change");
    tmux.keys(&["p"]);
    tmux.wait_for("the resume", Duration::from_secs(5), |s| {
        !s.contains("PAUSED")
    });

    // `q`: back at the shell, off the alternate screen, exit status 0.
    tmux.keys(&["q"]);
    let screen = tmux.wait_exit("view", Duration::from_secs(5));
    assert!(screen.contains("[view] exit=0"), "{screen}");
    assert!(
        !screen.contains("ALLOC/TASK"),
        "the view is gone:\n{screen}"
    );
    assert!(
        screen.trim_end().ends_with(PROMPT.trim_end()),
        "back at the prompt:\n{screen}"
    );
    assert!(!tmux.alternate_screen(), "the alternate screen was left");
    assert!(!screen.contains("panicked"), "{screen}");
}

#[test]
fn top_says_in_one_line_when_the_token_is_refused_or_the_daemon_is_gone() {
    const TEST: &str = "top_says_in_one_line_when_the_token_is_refused_or_the_daemon_is_gone";
    let Some(tmux) = Tmux::start(TEST) else {
        return;
    };
    let config = ConfigFile::new("[acl]\ntokens = [\"the-right-token-1234\"]\n");
    let mut daemon = Daemon::start(&["--interval", "500ms", "--no-pin", "--config", config.arg()]);

    // A wrong token: one clear line, a failure status, the terminal untouched.
    tmux.type_command(
        "wrong",
        &top_command(&daemon.addr, "--token wrong-token-5678"),
    );
    let screen = tmux.wait_exit("wrong", Duration::from_secs(10));
    let refused = format!(
        "nomad-collector top: {}: 403: the ACL token was refused (ACL token not found)",
        daemon.addr
    );
    assert!(screen.contains(&refused), "{screen}");
    assert!(screen.contains("[wrong] exit=1"), "{screen}");
    assert!(!tmux.alternate_screen());
    tmux.type_command("clear1", "clear");

    // The token from the daemon's own configuration file (`-c`) is accepted; then the
    // daemon goes away under the running view: it leaves the terminal and says so.
    tmux.type_command(
        "gone",
        &top_command(&daemon.addr, &format!("-c {}", config.arg())),
    );
    tmux.wait_for("the view", Duration::from_secs(15), |s| {
        s.contains("ALLOC/TASK")
    });
    daemon.kill();
    let screen = tmux.wait_exit("gone", Duration::from_secs(10));
    assert!(
        screen.contains(&format!(
            "nomad-collector top: {}: connection refused — is the daemon running?",
            daemon.addr
        )),
        "{screen}"
    );
    assert!(screen.contains("[gone] exit=1"), "{screen}");
    assert!(
        !screen.contains("ALLOC/TASK") && !screen.contains("panicked"),
        "{screen}"
    );
    assert!(!tmux.alternate_screen(), "the alternate screen was left");

    // Nothing listening at all: the same line, before the terminal is touched.
    let nowhere = format!("127.0.0.1:{}", free_port());
    tmux.type_command("clear2", "clear");
    tmux.type_command("nowhere", &top_command(&nowhere, ""));
    let screen = tmux.wait_exit("nowhere", Duration::from_secs(10));
    assert!(
        screen.contains(&format!(
            "nomad-collector top: {nowhere}: connection refused — is the daemon running?"
        )),
        "{screen}"
    );
    assert!(screen.contains("[nowhere] exit=1"), "{screen}");
}

/// PIDs of `nomad-collector top` processes pointed at `addr`.
fn tops_of(addr: &str) -> Vec<u32> {
    let needle = format!("top--addr{addr}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', "")
                    .contains(&needle)
            })
        })
        .collect()
}

#[test]
fn top_ends_when_its_terminal_goes_away() {
    const TEST: &str = "top_ends_when_its_terminal_goes_away";
    let Some(tmux) = Tmux::start(TEST) else {
        return;
    };
    let daemon = Daemon::start(&["--interval", "500ms", "--no-pin"]);
    tmux.type_command("view", &top_command(&daemon.addr, ""));
    tmux.wait_for("the view", Duration::from_secs(15), |s| {
        s.contains("ALLOC/TASK")
    });
    assert_eq!(tops_of(&daemon.addr).len(), 1, "one view runs");
    // The SSH session (here: the tmux server) goes away under the running view.
    drop(tmux);
    let gone = eventually(Duration::from_secs(10), || {
        tops_of(&daemon.addr).is_empty().then_some(())
    });
    let left = tops_of(&daemon.addr);
    for pid in &left {
        // SAFETY: kill has no memory-safety preconditions; the test's own leftover.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(
        gone.is_some(),
        "top kept running (spinning on the dead terminal) after its terminal hung up: {left:?}"
    );
}
