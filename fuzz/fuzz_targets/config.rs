//! The TOML configuration: `Config::from_toml`, then `validate`. A configuration that
//! parses, written back out as TOML, must parse to the same configuration, and validate
//! the same way.
#![no_main]

use std::{path::Path, sync::OnceLock};

use collector_user::config::{Config, LogFormat, SourceChoice};
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

/// `validate` reads `acl.tokens_file`: the target points every such setting at this file
/// (valid tokens and a comment) instead of letting the input name any file on the
/// machine (`/dev/zero` would never end).
fn tokens_file() -> &'static Path {
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("collector-fuzz-tokens-{}", std::process::id()));
        std::fs::write(
            &path,
            "# tokens\nfile-token-0123456789\n\n  spaced-token-0123  \n",
        )
        .expect("writing the tokens fixture");
        path
    })
}

fn int<T: TryInto<i64>>(v: T) -> Value
where
    T::Error: std::fmt::Debug,
{
    Value::Integer(
        v.try_into()
            .expect("a value read from TOML fits in a TOML integer"),
    )
}

fn path(p: &Path) -> Value {
    Value::String(
        p.to_str()
            .expect("a path read from TOML is UTF-8")
            .to_owned(),
    )
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.to_owned()))
            .collect(),
    )
}

/// A TOML table of the entries that are set.
fn map(entries: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Table {
    entries
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect()
}

fn table(entries: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Value {
    Value::Table(map(entries))
}

/// `config` as a TOML document, field for field.
fn to_toml(c: &Config) -> String {
    let duration = |d| Value::String(humantime::format_duration(d).to_string());
    let source = match c.source {
        SourceChoice::Auto => "auto",
        SourceChoice::Ebpf => "ebpf",
        SourceChoice::Procfs => "procfs",
    };
    let log_format = match c.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let allocations = c
        .allocations
        .iter()
        .map(|a| {
            let tasks = a
                .tasks
                .iter()
                .map(|t| {
                    table([
                        ("name", Some(Value::String(t.name.clone()))),
                        ("cgroup", t.cgroup.as_deref().map(path)),
                        (
                            "pids",
                            Some(Value::Array(t.pids.iter().map(|&p| int(p)).collect())),
                        ),
                    ])
                })
                .collect();
            table([
                ("id", Some(Value::String(a.id.clone()))),
                ("job", a.job.clone().map(Value::String)),
                ("namespace", a.namespace.clone().map(Value::String)),
                ("task_group", a.task_group.clone().map(Value::String)),
                ("task", Some(Value::Array(tasks))),
            ])
        })
        .collect();
    let doc = map([
        ("interval", Some(duration(c.interval))),
        ("source", Some(Value::String(source.to_owned()))),
        ("cgroup_root", c.cgroup_root.as_deref().map(path)),
        ("proc_root", Some(path(&c.proc_root))),
        ("cpu_total_compute", Some(int(c.cpu_total_compute))),
        (
            "data_dirs",
            Some(Value::Array(c.data_dirs.iter().map(|d| path(d)).collect())),
        ),
        // Retired settings: accepted with any value and ignored; written back as set.
        (
            "cgroup_refresh",
            c.cgroup_refresh.map(|_| Value::Boolean(true)),
        ),
        ("detail_for", c.detail_for.map(|_| Value::Boolean(true))),
        ("detail_all", c.detail_all.map(|_| Value::Boolean(true))),
        ("log_format", Some(Value::String(log_format.to_owned()))),
        (
            "nomad",
            Some(table([
                (
                    "cgroup_parent_v1",
                    Some(Value::String(c.nomad.cgroup_parent_v1.clone())),
                ),
                (
                    "cgroup_parent_v2",
                    Some(Value::String(c.nomad.cgroup_parent_v2.clone())),
                ),
            ])),
        ),
        (
            "ebpf",
            Some(table([
                ("pin_root", Some(path(&c.ebpf.pin_root))),
                ("max_tracked_cgroups", Some(int(c.ebpf.max_tracked_cgroups))),
                (
                    "attribution",
                    Some(Value::String(c.ebpf.attribution.clone())),
                ),
                (
                    "thread_state",
                    Some(Value::String(c.ebpf.thread_state.clone())),
                ),
                ("max_threads", Some(int(c.ebpf.max_threads))),
            ])),
        ),
        (
            "http",
            Some(table([
                ("listen", Some(Value::String(c.http.listen.to_string()))),
                ("max_connections", Some(int(c.http.max_connections))),
                ("max_header_bytes", Some(int(c.http.max_header_bytes))),
                ("max_uri_bytes", Some(int(c.http.max_uri_bytes))),
                ("tls_cert", c.http.tls_cert.as_deref().map(path)),
                ("tls_key", c.http.tls_key.as_deref().map(path)),
            ])),
        ),
        (
            "acl",
            Some(table([
                (
                    "tokens",
                    Some(strings(c.acl.tokens.iter().map(String::as_str))),
                ),
                ("tokens_file", c.acl.tokens_file.as_deref().map(path)),
            ])),
        ),
        (
            "security",
            Some(table([(
                "user",
                c.security.user.clone().map(Value::String),
            )])),
        ),
        ("allocation", Some(Value::Array(allocations))),
    ]);
    toml::to_string(&doc).expect("a TOML table serializes")
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::from_toml(text, "fuzz.toml") else {
        return;
    };
    if config.acl.tokens_file.is_some() {
        config.acl.tokens_file = Some(tokens_file().to_path_buf());
    }
    let valid = config.validate().is_ok();
    let written = to_toml(&config);
    let reread = Config::from_toml(&written, "written.toml")
        .unwrap_or_else(|e| panic!("{e}\nwritten:\n{written}"));
    assert_eq!(reread, config, "written:\n{written}");
    assert_eq!(reread.validate().is_ok(), valid);
});
