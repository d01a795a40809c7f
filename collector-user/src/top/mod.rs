//! `nomad-collector top`: a live terminal view of a running daemon, through its own API.
//!
//! `client` fetches (on a thread of its own, so keys are answered while a request
//! waits), `model` turns the answers into sorted, filtered rows, `app` holds the view's
//! state and what keys do, `view` draws. This module reads the options and runs the
//! loop; the terminal is restored however the loop ends (return, error or panic).

pub mod app;
pub mod client;
pub mod model;
pub mod view;

use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, SystemTime},
};

use ratatui::crossterm::event::{self, Event, KeyEventKind};
use thiserror::Error;
use tokio::sync::Notify;

use crate::config::{Config, ConfigError, TopArgs};
use app::{Action, App};
use client::{Client, Endpoint, FetchError, SetupError, Trust};
use model::AllocRow;

#[derive(Debug, Error)]
pub enum TopError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("needs a terminal (standard input and output must be a tty)")]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("the fetching thread stopped")]
    FetcherGone,
}

/// Where to connect, with what token and trust, and how often, from the flags over the
/// configuration.
fn resolve(args: &TopArgs, config: &Config) -> Result<(Endpoint, Duration), TopError> {
    let tls = config.http.tls_cert.is_some();
    let addr = match &args.addr {
        Some(addr) if addr.contains("://") => addr.clone(),
        Some(addr) if tls => format!("https://{addr}"),
        Some(addr) => addr.clone(),
        None if tls => format!("https://{}", config.http.listen),
        None => config.http.listen.to_string(),
    };
    let token = match &args.token {
        Some(token) => Some(token.clone()),
        None => config.acl_tokens()?.into_iter().next(),
    };
    let trust = if args.insecure {
        Some(Trust::Anything)
    } else {
        args.ca_cert
            .as_deref()
            .or(config.http.tls_cert.as_deref())
            .map(Trust::CaFile)
    };
    let interval = args
        .interval
        .unwrap_or(config.interval)
        .max(Duration::from_millis(100));
    Ok((Endpoint::new(&addr, token, trust)?, interval))
}

enum Message {
    Data(Result<Vec<AllocRow>, FetchError>),
    /// SIGTERM, SIGINT or SIGHUP: leave as from `q`.
    Signal,
}

/// The fetching thread: one fetch per interval while not paused, or at once when woken.
struct Fetcher {
    messages: mpsc::Receiver<Message>,
    wake: Arc<Notify>,
    paused: Arc<AtomicBool>,
}

impl Fetcher {
    fn spawn(mut client: Client, interval: Duration) -> Result<Fetcher, TopError> {
        let (tx, messages) = mpsc::channel();
        let wake = Arc::new(Notify::new());
        let paused = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (thread_wake, thread_paused) = (Arc::clone(&wake), Arc::clone(&paused));
        std::thread::Builder::new()
            .name("top-fetch".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    // Signals are taken here, not left to their default action, so
                    // that the terminal is restored before the process ends.
                    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::hangup()),
                    ) else {
                        let _ = tx.send(Message::Signal);
                        return;
                    };
                    loop {
                        if terminal_hung_up() {
                            leave_hung_up_terminal();
                        }
                        let next = tokio::time::Instant::now() + interval;
                        if !thread_paused.load(Ordering::Relaxed) {
                            let result = client.fetch().await;
                            let failed = result.is_err();
                            if tx.send(Message::Data(result)).is_err() || failed {
                                return;
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep_until(next) => {}
                            _ = thread_wake.notified() => {}
                            _ = term.recv() => break,
                            _ = int.recv() => break,
                            _ = hup.recv() => {
                                if terminal_hung_up() {
                                    leave_hung_up_terminal();
                                }
                                break;
                            }
                        }
                    }
                    let _ = tx.send(Message::Signal);
                })
            })?;
        Ok(Fetcher {
            messages,
            wake,
            paused,
        })
    }
}

/// The terminal in raw mode on the alternate screen; put back on drop. ratatui's
/// `try_init` also installs a panic hook that puts it back before the panic is printed.
struct Screen {
    terminal: ratatui::DefaultTerminal,
}

impl Screen {
    fn enter() -> Result<Screen, TopError> {
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            return Err(TopError::NotATerminal);
        }
        match ratatui::try_init() {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                // Raw mode may be on even though the alternate screen failed.
                ratatui::restore();
                Err(e.into())
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Local wall-clock time `HH:MM:SS`.
fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: `tm` is plain data (integers and a pointer) for which all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `secs` and `tm` are valid for the call; localtime_r writes only `tm`.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return String::new();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// Whether the terminal on standard input has hung up (its SSH session or tmux server is
/// gone). crossterm's event poll then reads end-of-file in a loop that never returns, so
/// the fetching thread checks this each interval and on SIGHUP.
fn terminal_hung_up() -> bool {
    let mut fd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, and a zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Ends the process from the fetching thread: the main thread is stuck in crossterm's
/// poll on the dead terminal, and there is no terminal left to restore or print to.
fn leave_hung_up_terminal() -> ! {
    std::process::exit(1)
}

/// Runs the view until `q`, a signal, or a failure to reach the daemon (returned, to be
/// printed after the terminal is restored).
pub fn run(args: &TopArgs, config: &Config) -> Result<(), TopError> {
    let (endpoint, interval) = resolve(args, config)?;
    let client = Client::new(endpoint);
    let addr = client.authority().to_owned();
    let fetcher = Fetcher::spawn(client, interval)?;
    let mut app = App::default();
    // The first answer comes before the terminal is touched: the usual failures (no
    // daemon, a refused token) then print on a normal terminal.
    match fetcher.messages.recv() {
        Ok(Message::Data(rows)) => app.set_data(rows?),
        Ok(Message::Signal) => return Ok(()),
        Err(_) => return Err(TopError::FetcherGone),
    }
    let mut updated = clock(SystemTime::now());
    let mut screen = Screen::enter()?;
    let mut dirty = true;
    loop {
        if dirty {
            let status = view::Status {
                addr: &addr,
                interval,
                updated: &updated,
            };
            screen
                .terminal
                .draw(|frame| view::draw(frame, &app, &status))?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(50))? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    match app.key(key) {
                        Action::Quit => return Ok(()),
                        Action::Refresh => fetcher.wake.notify_one(),
                        Action::None => {}
                    }
                    fetcher.paused.store(app.paused, Ordering::Relaxed);
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        loop {
            match fetcher.messages.try_recv() {
                Ok(Message::Data(rows)) => {
                    let rows = rows?;
                    // A fetch already under way when `p` was pressed does not change
                    // the frozen view.
                    if !app.paused {
                        app.set_data(rows);
                        updated = clock(SystemTime::now());
                        dirty = true;
                    }
                }
                Ok(Message::Signal) => return Ok(()),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(TopError::FetcherGone),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_configuration() {
        let mut config = Config {
            interval: Duration::from_secs(2),
            ..Config::default()
        };
        config.acl.tokens = vec!["token-from-config".into()];
        let (endpoint, interval) = resolve(&TopArgs::default(), &config).unwrap();
        assert_eq!(endpoint.authority, "127.0.0.1:4649");
        assert_eq!(interval, Duration::from_secs(2), "the daemon's interval");
        assert!(format!("{endpoint:?}").contains("<redacted>"));
        let args = TopArgs {
            addr: Some("localhost:5000".into()),
            interval: Some(Duration::from_millis(10)),
            ..TopArgs::default()
        };
        let (endpoint, interval) = resolve(&args, &config).unwrap();
        assert_eq!(endpoint.authority, "localhost:5000");
        assert_eq!(
            interval,
            Duration::from_millis(100),
            "never faster than the daemon's floor"
        );
        // A configuration with TLS: https, and its own certificate is not readable here.
        config.http.tls_cert = Some("/nonexistent/cert.pem".into());
        config.http.tls_key = Some("/nonexistent/key.pem".into());
        let err = resolve(&TopArgs::default(), &config).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
        let insecure = TopArgs {
            insecure: true,
            ..TopArgs::default()
        };
        assert!(resolve(&insecure, &config).is_ok());
    }
}
