//! Configuration: command-line flags over an optional TOML file over defaults.
//!
//! Every setting can live in the file; the flags cover the ones an operator changes at
//! start-up. `load()` validates the result so that a bad file is rejected as a whole
//! (at start-up, and on SIGHUP where the previous configuration then stays in force).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where per-process CPU time comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceChoice {
    /// eBPF when it loads, else /proc (with a loud warning).
    #[default]
    Auto,
    /// eBPF or fail to start.
    Ebpf,
    /// Nomad's own method: /proc/<pid>/stat and statm for every process, every interval.
    Procfs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Command-line flags. Flags left unset fall back to the file, then to the defaults.
#[derive(Debug, Default, Parser)]
#[command(
    name = "nomad-collector",
    version,
    about = "Per-allocation CPU and memory usage for Nomad client hosts, served on \
             Nomad's /v1/client/allocation/<ID>/stats API"
)]
pub struct Flags {
    /// Without a command: run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file.
    // Global so that `nomad-collector top -c FILE` reads the daemon's own file.
    #[arg(long, short = 'c', env = "NOMAD_COLLECTOR_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to serve the HTTP API on [default: 127.0.0.1:4649].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Collection interval, e.g. `1s`, `500ms` [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// CPU source [default: auto].
    #[arg(long, value_enum)]
    pub source: Option<SourceChoice>,
    /// Root under which cgroup hierarchies are mounted [default: from /proc/self/mountinfo].
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// procfs mount [default: /proc].
    #[arg(long)]
    pub proc_root: Option<PathBuf>,
    /// Folder on bpffs for the eBPF pins [default: /sys/fs/bpf/nomad-collector].
    #[arg(long)]
    pub pin_root: Option<PathBuf>,
    /// Keep no eBPF pins: nothing survives the daemon (counters restart from zero).
    #[arg(long, conflicts_with = "pin_root")]
    pub no_pin: bool,
    /// Remove every eBPF pin this collector left (detaching its programs) and exit.
    #[arg(long)]
    pub uninstall: bool,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Retired: every allocation is collected in full every interval. Accepted so that
    /// existing command lines keep working (with a warning).
    #[arg(long, hide = true)]
    pub detail_all: bool,
    /// Attach only an empty sched_switch program and wait for SIGTERM: what the
    /// tracepoint itself costs (used by `cargo xtask bench`).
    #[arg(long, hide = true)]
    pub empty_probe: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live view of a running daemon: allocations and tasks by CPU, wait, throttling,
    /// memory and OOM kills (address, token and TLS from the configuration or flags).
    Top(TopArgs),
}

/// Options of `nomad-collector top`; unset ones come from the configuration (`-c`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TopArgs {
    /// The daemon: host:port, http://host:port or https://host:port [default: the
    /// configuration's http.listen, https when it sets http.tls_cert].
    #[arg(long, env = "NOMAD_COLLECTOR_ADDR")]
    pub addr: Option<String>,
    /// ACL token [default: the first of the configuration's acl.tokens / tokens_file].
    #[arg(long, env = "NOMAD_COLLECTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate to trust for https: the daemon's CA, or its own self-signed
    /// certificate [default: the configuration's http.tls_cert].
    #[arg(long, conflicts_with = "insecure")]
    pub ca_cert: Option<PathBuf>,
    /// Connect over https without checking the daemon's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Refresh interval, e.g. `2s` [default: the configuration's interval].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Folder on bpffs for pins; empty disables pinning.
    pub pin_root: PathBuf,
    /// Capacity of the kernel map of tracked cgroups (task cgroups and their children).
    pub max_tracked_cgroups: u32,
    /// Hierarchy used to attribute threads to tasks: `auto`, `v2`, or a cgroup v1
    /// controller name such as `cpuacct`.
    pub attribution: String,
    /// Where the context-switch program keeps each thread's state: `auto` (task storage
    /// where the kernel has it, 5.11+), `task_storage`, or `hash` (a hash map keyed by
    /// task, what 5.10 gets).
    pub thread_state: String,
    /// Capacity of that hash map: user threads on the whole host (kernels without task
    /// storage only; each entry is about 120 bytes of kernel memory, preallocated).
    pub max_threads: u32,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from("/sys/fs/bpf/nomad-collector"),
            max_tracked_cgroups: 16384,
            attribution: "auto".to_owned(),
            thread_state: "auto".to_owned(),
            max_threads: 65536,
        }
    }
}

/// Where Nomad puts task cgroups (its `client.cgroup_parent`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NomadConfig {
    /// Parent of task cgroups under each cgroup v1 controller.
    pub cgroup_parent_v1: String,
    /// Parent slice of task scopes in the unified (v2) hierarchy.
    pub cgroup_parent_v2: String,
}

impl Default for NomadConfig {
    fn default() -> Self {
        Self {
            cgroup_parent_v1: "nomad".to_owned(),
            cgroup_parent_v2: "nomad.slice".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (request line + headers) in bytes.
    pub max_header_bytes: usize,
    /// Longest request target (path + query) in bytes.
    pub max_uri_bytes: usize,
    /// PEM certificate chain and private key: both set enables TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4649)),
            max_connections: 1024,
            max_header_bytes: 8192,
            max_uri_bytes: 2048,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Tokens accepted in `X-Nomad-Token` or `Authorization: Bearer`. Empty: ACLs off.
    pub tokens: Vec<String>,
    /// A file with one token per line, read in addition to `tokens`.
    pub tokens_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Switch to this user after the programs are attached (capabilities are dropped
    /// either way).
    pub user: Option<String>,
}

/// A task of a statically configured allocation: its cgroup, or its processes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTask {
    pub name: String,
    /// The task's cgroup directory (absolute, under a cgroup mount).
    pub cgroup: Option<PathBuf>,
    /// Or its processes, when it has no cgroup of its own.
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// An allocation declared in the configuration, for hosts that do not run Nomad.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAllocation {
    pub id: String,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub task_group: Option<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<StaticTask>,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub source: SourceChoice,
    /// Where cgroup hierarchies are looked for; `None`: as /proc/self/mountinfo says.
    pub cgroup_root: Option<PathBuf>,
    pub proc_root: PathBuf,
    /// Sum of all cores' MHz, overriding what is read from the host (Nomad's
    /// `cpu_total_compute`); 0 = detect.
    pub cpu_total_compute: u64,
    /// Directories whose disks `/v1/client/stats` reports (Nomad's data_dir).
    pub data_dirs: Vec<PathBuf>,
    /// Retired settings of the on-demand detail that every-interval collection of every
    /// allocation replaced: still accepted, so that existing files load, and named in a
    /// warning at start-up (see [`Config::retired_settings`]).
    pub cgroup_refresh: Option<serde::de::IgnoredAny>,
    pub detail_for: Option<serde::de::IgnoredAny>,
    pub detail_all: Option<serde::de::IgnoredAny>,
    pub log_format: LogFormat,
    pub nomad: NomadConfig,
    pub ebpf: EbpfConfig,
    pub http: HttpConfig,
    pub acl: AclConfig,
    pub security: SecurityConfig,
    #[serde(rename = "allocation")]
    pub allocations: Vec<StaticAllocation>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            source: SourceChoice::Auto,
            cgroup_root: None,
            proc_root: PathBuf::from("/proc"),
            cpu_total_compute: 0,
            data_dirs: Vec::new(),
            cgroup_refresh: None,
            detail_for: None,
            detail_all: None,
            log_format: LogFormat::Text,
            nomad: NomadConfig::default(),
            ebpf: EbpfConfig::default(),
            http: HttpConfig::default(),
            acl: AclConfig::default(),
            security: SecurityConfig::default(),
            allocations: Vec::new(),
        }
    }
}

/// True for a Nomad allocation ID: a 36-character UUID (8-4-4-4-12 hex).
pub fn is_alloc_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads the file named by the flags (if any), applies the flags, and validates.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let mut config = match &flags.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_flags(flags);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn apply_flags(&mut self, flags: &Flags) {
        if let Some(listen) = flags.listen {
            self.http.listen = listen;
        }
        if let Some(interval) = flags.interval {
            self.interval = interval;
        }
        if let Some(source) = flags.source {
            self.source = source;
        }
        if let Some(root) = &flags.cgroup_root {
            self.cgroup_root = Some(root.clone());
        }
        if let Some(root) = &flags.proc_root {
            self.proc_root = root.clone();
        }
        if let Some(root) = &flags.pin_root {
            self.ebpf.pin_root = root.clone();
        }
        if flags.no_pin {
            self.ebpf.pin_root = PathBuf::new();
        }
        if let Some(format) = flags.log_format {
            self.log_format = format;
        }
        if flags.detail_all {
            self.detail_all = Some(serde::de::IgnoredAny);
        }
    }

    /// The retired settings this configuration still sets: they change nothing, since
    /// every allocation's processes and cgroup files are read every interval.
    pub fn retired_settings(&self) -> Vec<&'static str> {
        [
            ("cgroup_refresh", self.cgroup_refresh.is_some()),
            ("detail_for", self.detail_for.is_some()),
            ("detail_all (--detail-all)", self.detail_all.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Every token the API accepts: `acl.tokens` plus the lines of `acl.tokens_file`.
    pub fn acl_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.acl.tokens.clone();
        if let Some(path) = &self.acl.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Ok(tokens)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(3600) {
            return invalid(format!(
                "interval must be between 100ms and 1h, got {}",
                humantime::format_duration(self.interval)
            ));
        }
        if self.ebpf.max_tracked_cgroups == 0 {
            return invalid("ebpf.max_tracked_cgroups must be at least 1".to_owned());
        }
        if !matches!(
            self.ebpf.thread_state.as_str(),
            "auto" | "task_storage" | "hash"
        ) {
            return invalid(format!(
                "ebpf.thread_state: `{}` is not one of auto, task_storage, hash",
                self.ebpf.thread_state
            ));
        }
        if !(1024..=4_194_304).contains(&self.ebpf.max_threads) {
            return invalid(format!(
                "ebpf.max_threads must be between 1024 and 4194304, got {}",
                self.ebpf.max_threads
            ));
        }
        let attribution = self.ebpf.attribution.as_str();
        if !matches!(attribution, "auto" | "v2" | "cpu" | "cpuacct" | "memory") {
            return invalid(format!(
                "ebpf.attribution: `{attribution}` is not one of auto, v2, cpu, cpuacct, memory"
            ));
        }
        for (key, parent) in [
            ("nomad.cgroup_parent_v1", &self.nomad.cgroup_parent_v1),
            ("nomad.cgroup_parent_v2", &self.nomad.cgroup_parent_v2),
        ] {
            let path = Path::new(parent.trim_start_matches('/'));
            if parent.is_empty()
                || !path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return invalid(format!("{key}: `{parent}` is not a relative cgroup path"));
            }
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections must be at least 1".to_owned());
        }
        if self.http.max_header_bytes < 1024 || self.http.max_uri_bytes < 64 {
            return invalid(
                "http.max_header_bytes must be >= 1024 and http.max_uri_bytes >= 64".to_owned(),
            );
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return invalid("http.tls_cert and http.tls_key go together".to_owned());
        }
        let tokens = self.acl_tokens()?;
        if let Some(bad) = tokens
            .iter()
            .find(|t| t.len() < 8 || t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            let _ = bad;
            return invalid(
                "acl tokens must be at least 8 printable ASCII characters without spaces"
                    .to_owned(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for alloc in &self.allocations {
            if !is_alloc_id(&alloc.id) {
                return invalid(format!(
                    "allocation id `{}` is not a 36-character UUID",
                    alloc.id
                ));
            }
            if !ids.insert(alloc.id.to_ascii_lowercase()) {
                return invalid(format!("allocation `{}` is declared twice", alloc.id));
            }
            if alloc.tasks.is_empty() {
                return invalid(format!("allocation `{}` has no task", alloc.id));
            }
            let mut names = std::collections::HashSet::new();
            for task in &alloc.tasks {
                if task.name.is_empty() || !names.insert(task.name.as_str()) {
                    return invalid(format!(
                        "allocation `{}`: task names must be non-empty and unique",
                        alloc.id
                    ));
                }
                match (&task.cgroup, task.pids.is_empty()) {
                    (Some(path), true) if path.is_absolute() => {}
                    (Some(_), true) => {
                        return invalid(format!(
                            "allocation `{}` task `{}`: cgroup must be an absolute path",
                            alloc.id, task.name
                        ))
                    }
                    (None, false) => {}
                    _ => {
                        return invalid(format!(
                            "allocation `{}` task `{}`: give exactly one of cgroup or pids",
                            alloc.id, task.name
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The pin folder, if pinning is on.
    pub fn pin_root(&self) -> Option<&Path> {
        (!self.ebpf.pin_root.as_os_str().is_empty()).then_some(self.ebpf.pin_root.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";

    #[test]
    fn defaults_are_valid_and_listen_on_loopback_4649() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:4649");
        assert_eq!(config.interval, Duration::from_secs(1));
    }

    #[test]
    fn file_then_flags() {
        let config = Config::from_toml(
            r#"
            interval = "2s"
            source = "procfs"
            [http]
            listen = "127.0.0.1:5000"
            [[allocation]]
            id = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10"
            [[allocation.task]]
            name = "web.frontend"
            cgroup = "/sys/fs/cgroup/unified/web"
            [[allocation.task]]
            name = "sidecar"
            pids = [1, 2]
            "#,
            "test",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(config.source, SourceChoice::Procfs);
        assert_eq!(config.allocations[0].tasks[0].name, "web.frontend");
        let mut config = config;
        config.apply_flags(&Flags {
            interval: Some(Duration::from_millis(500)),
            no_pin: true,
            ..Flags::default()
        });
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(config.pin_root(), None);
        assert_eq!(config.http.listen.port(), 5000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_with_a_message() {
        let err = Config::from_toml("intervall = \"1s\"", "f.toml").unwrap_err();
        assert!(err.to_string().contains("intervall"), "{err}");
        let err = Config::from_toml("interval = \"1 fortnight\"", "f.toml").unwrap_err();
        assert!(err.to_string().starts_with("f.toml:"), "{err}");
        let bad = Config::from_toml("interval = \"10ms\"", "f").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn static_allocations_are_checked() {
        let check = |toml: &str| Config::from_toml(toml, "t").unwrap().validate();
        assert!(check(
            "[[allocation]]\nid = \"nope\"\n[[allocation.task]]\nname = \"a\"\npids = [1]"
        )
        .is_err());
        let both = format!(
            "[[allocation]]\nid = \"{UUID}\"\n[[allocation.task]]\nname = \"a\"\npids = [1]\ncgroup = \"/x\""
        );
        assert!(check(&both).is_err());
        let relative = format!(
            "[[allocation]]\nid = \"{UUID}\"\n[[allocation.task]]\nname = \"a\"\ncgroup = \"x\""
        );
        assert!(check(&relative).is_err());
        let ok = format!(
            "[[allocation]]\nid = \"{UUID}\"\n[[allocation.task]]\nname = \"a\"\ncgroup = \"/x\""
        );
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn alloc_ids() {
        assert!(is_alloc_id(UUID));
        assert!(is_alloc_id(&UUID.to_uppercase()));
        assert!(!is_alloc_id(&UUID[1..]));
        assert!(!is_alloc_id("8d3c5bd8x6b2a-4f1e-9a53-6f0b2c7d9e10"));
        assert!(!is_alloc_id("../../../../../etc/passwd-aaaaaaaaaaaa"));
    }

    #[test]
    fn attribution_and_nomad_parents_are_checked() {
        let check = |toml: &str| Config::from_toml(toml, "t").unwrap().validate();
        assert!(check("[ebpf]\nattribution = \"cpuacct\"").is_ok());
        assert!(check("[ebpf]\nattribution = \"blkio\"").is_err());
        assert!(check("[ebpf]\nthread_state = \"hash\"").is_ok());
        assert!(check("[ebpf]\nthread_state = \"lru\"").is_err());
        assert!(check("[ebpf]\nmax_threads = 10").is_err());
        assert!(check("[nomad]\ncgroup_parent_v1 = \"/custom/nomad\"").is_ok());
        assert!(check("[nomad]\ncgroup_parent_v1 = \"../escape\"").is_err());
        assert!(check("[nomad]\ncgroup_parent_v2 = \"\"").is_err());
    }

    #[test]
    fn top_is_a_subcommand_and_the_daemon_flags_still_parse() {
        let flags =
            Flags::try_parse_from(["nomad-collector", "--check-config", "--no-pin"]).unwrap();
        assert!(flags.check_config && flags.no_pin && flags.command.is_none());
        let flags = Flags::try_parse_from([
            "nomad-collector",
            "top",
            "-c",
            "/etc/nomad-collector/config.toml",
            "--addr",
            "127.0.0.1:5000",
            "--interval",
            "2s",
        ])
        .unwrap();
        assert_eq!(
            flags.config.as_deref(),
            Some(Path::new("/etc/nomad-collector/config.toml")),
            "-c after the subcommand is the configuration file"
        );
        let Some(Command::Top(top)) = flags.command else {
            panic!("top parsed as {:?}", flags.command);
        };
        assert_eq!(top.addr.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(top.interval, Some(Duration::from_secs(2)));
        assert!(
            Flags::try_parse_from(["nomad-collector", "top", "--ca-cert", "x", "--insecure"])
                .is_err()
        );
    }

    #[test]
    fn short_tokens_are_rejected() {
        let mut config = Config::default();
        config.acl.tokens = vec!["short".into()];
        assert!(config.validate().is_err());
        config.acl.tokens = vec!["a-long-enough-token".into()];
        assert!(config.validate().is_ok());
    }
}
