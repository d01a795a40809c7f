//! `nomad-collector`: the daemon. Start-up order matters for least privilege: everything
//! that needs root (loading eBPF, pinning, binding the listener, reading the TLS key)
//! happens on the main thread before any other thread exists; then every capability is
//! dropped and only then the collector thread and the HTTP runtime start.

use std::{process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Parser;
use collector_user::{
    api::{self, Acl, ApiState},
    collect::{runner::Runner, Collector},
    config::{Command, Config, Flags, LogFormat},
    kernel::pins::PinDir,
    security,
    snapshot::SnapshotStore,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: under journald or in a log file they are noise (and
    // they hide " ERROR " from anyone grepping for it).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nomad-collector: {e}");
            return ExitCode::from(2);
        }
    };
    // Before tracing is set up: the view owns the terminal, and its one line of failure
    // is the whole message.
    if let Some(Command::Top(args)) = &flags.command {
        return match collector_user::top::run(args, &config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nomad-collector top: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(config.log_format);
    if flags.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    let result = if flags.uninstall {
        uninstall(&config)
    } else if flags.empty_probe {
        empty_probe()
    } else {
        run(&flags, config)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--empty-probe`: holds the empty sched_switch program attached until SIGTERM/SIGINT.
fn empty_probe() -> Result<()> {
    let probe = collector_user::kernel::attach_empty_probe()?;
    info!("empty sched_switch program attached; SIGTERM detaches it");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            anyhow::Ok(())
        })?;
    drop(probe);
    Ok(())
}

fn uninstall(config: &Config) -> Result<()> {
    let root = config
        .pin_root()
        .context("ebpf.pin_root is empty: nothing is pinned")?;
    if PinDir::new(root).uninstall()? {
        info!(path = %root.display(), "removed every pin: the programs are detached and the maps freed");
    } else {
        info!(path = %root.display(), "nothing pinned");
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (no privilege needed): the daemon
/// keeps a descriptor per task cgroup directory and per control file it reads, which
/// outgrows the usual soft limit of 1024 on a dense host. Three quarters of the limit
/// (less a reserve for connections and everything else) may go to kept control files.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            limit = wanted;
        } else {
            warn!(
                soft = limit.rlim_cur,
                "could not raise the open files limit; on a dense host some cgroup files \
                 will be opened for each read instead of kept open"
            );
        }
    }
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    collector_user::cgroup::control_files::set_budget(
        (soft / 4 * 3).saturating_sub(256).min(1 << 20),
    );
}

fn run(flags: &Flags, config: Config) -> Result<()> {
    let retired = config.retired_settings();
    if !retired.is_empty() {
        warn!(
            settings = ?retired,
            "retired settings are ignored: every allocation's processes and cgroup figures \
             are collected every interval"
        );
    }
    raise_open_files_limit();
    let collector = Collector::new(&config)?;
    let listener = std::net::TcpListener::bind(config.http.listen)
        .with_context(|| format!("binding {}", config.http.listen))?;
    listener.set_nonblocking(true)?;
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => {
            Some(api::load_tls(cert, key).context("loading TLS certificate")?)
        }
        _ => None,
    };
    let acl = Acl::new(config.acl_tokens()?);
    // Only a kernel-side source reads bpf maps after start-up.
    let keep: &[u32] = if collector.ebpf().is_some() && security::bpf_needs_capability() {
        &[security::CAP_BPF]
    } else {
        &[]
    };
    security::drop_privileges(config.security.user.as_deref(), keep)
        .context("dropping privileges")?;

    let store = Arc::new(SnapshotStore::new(collector.startup_snapshot()));
    let runner = Runner::spawn(collector, Arc::clone(&store), config.interval);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()?;
    let state = ApiState::new(store, acl);
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http = config.http.clone();
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            api::serve(listener, &http, tls, server_state, async {
                let _ = stop_rx.await;
            })
            .await
        });
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut current = config;
        loop {
            tokio::select! {
                _ = terminate.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = interrupt.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hangup.recv() => reload(flags, &mut current, &state, &runner),
            }
        }
        let _ = stop_tx.send(());
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")
    });
    let collector = runner.stop();
    if let Some(source) = collector.as_ref().and_then(Collector::ebpf) {
        if source.programs().reused_pinned_link || source.pinned() {
            info!(
                "eBPF programs stay attached through their pins so that a restart loses nothing; \
                   `nomad-collector --uninstall` removes them"
            );
        }
    }
    drop(collector);
    served
}

/// SIGHUP: re-reads the configuration. An invalid one is rejected as a whole and the
/// running one stays in force; settings that need a restart are reported, not applied.
fn reload(flags: &Flags, current: &mut Config, state: &ApiState, runner: &Runner) {
    let new = match Config::load(flags) {
        Ok(new) => new,
        Err(e) => {
            error!("configuration reload rejected, the previous configuration stays in force: {e}");
            return;
        }
    };
    let tokens = match new.acl_tokens() {
        Ok(tokens) => tokens,
        Err(e) => {
            error!("configuration reload rejected, the previous configuration stays in force: {e}");
            return;
        }
    };
    for (what, changed) in [
        ("http", new.http != current.http),
        ("source", new.source != current.source),
        ("ebpf", new.ebpf != current.ebpf),
        ("security", new.security != current.security),
        (
            "cgroup_root/proc_root",
            new.cgroup_root != current.cgroup_root || new.proc_root != current.proc_root,
        ),
    ] {
        if changed {
            warn!(
                section = what,
                "changed in the configuration but only applied at restart"
            );
        }
    }
    state.set_acl(Acl::new(tokens));
    runner.reload(new.clone());
    info!(
        allocations = new.allocations.len(),
        interval = %humantime::format_duration(new.interval),
        acl = !new.acl.tokens.is_empty() || new.acl.tokens_file.is_some(),
        "configuration reloaded"
    );
    *current = new;
}
