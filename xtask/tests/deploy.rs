//! The deployment files agree with each other and with what the daemon needs: the Nomad
//! job parses as HCL (no `nomad` binary can be had on these machines, so `nomad job
//! validate` cannot run) and has the shape the README promises, its configuration
//! template is valid TOML with ACLs and TLS on, and the systemd unit, the package's
//! default configuration and the package metadata name the same paths.

use std::{fs, path::PathBuf};

use hcl::{Block, Body, Expression, TemplateExpr};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn blocks<'a>(body: &'a Body, name: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier.as_str() == name)
}

fn block<'a>(body: &'a Body, name: &'a str) -> &'a Block {
    blocks(body, name)
        .next()
        .unwrap_or_else(|| panic!("no `{name}` block"))
}

/// A literal string, a quoted template or a heredoc, as written.
fn text(body: &Body, key: &str) -> String {
    let attr = body
        .attributes()
        .find(|a| a.key.as_str() == key)
        .unwrap_or_else(|| panic!("no `{key}` attribute"));
    match &attr.expr {
        Expression::String(s) => s.clone(),
        Expression::TemplateExpr(t) => match t.as_ref() {
            TemplateExpr::QuotedString(s) => s.clone(),
            TemplateExpr::Heredoc(h) => h.template.clone(),
        },
        other => format!("{other:?}"),
    }
}

fn job() -> Body {
    hcl::parse(&read("deploy/nomad-collector.nomad.hcl")).expect("the job file parses as HCL")
}

#[test]
fn nomad_job_is_a_system_job_with_a_nomad_service() {
    let body = job();
    let job = block(&body, "job");
    assert_eq!(job.labels[0].as_str(), "nomad-collector");
    assert_eq!(text(&job.body, "type"), "system");
    let group = block(&job.body, "group");
    let port = block(&block(&group.body, "network").body, "port");
    assert_eq!(port.labels[0].as_str(), "http");

    let service = block(&group.body, "service");
    assert_eq!(text(&service.body, "provider"), "nomad");
    assert_eq!(text(&service.body, "port"), "http");
    assert_eq!(text(&service.body, "name"), "nomad-collector");
    let check = block(&service.body, "check");
    assert_eq!(text(&check.body, "path"), "/v1/agent/health");
    assert_eq!(text(&check.body, "protocol"), "https");

    let task = block(&group.body, "task");
    assert_eq!(text(&task.body, "driver"), "raw_exec");
    assert_eq!(text(&task.body, "kill_signal"), "SIGTERM");
}

#[test]
fn nomad_job_configuration_listens_on_the_node_with_acl_and_tls() {
    let body = job();
    let task = block(&block(&block(&body, "job").body, "group").body, "task");
    let templates: Vec<&Block> = blocks(&task.body, "template").collect();
    let config = templates
        .iter()
        .find(|t| text(&t.body, "destination").ends_with("/config.toml"))
        .expect("a template renders config.toml");
    // Consul-template actions stand in for their values: what is left must be TOML.
    let data = text(&config.body, "data");
    let mut rendered = String::new();
    let mut rest = data.as_str();
    while let Some(start) = rest.find("{{") {
        rendered.push_str(&rest[..start]);
        rendered.push_str("/x");
        let end = rest[start..].find("}}").expect("closed action") + start + 2;
        rest = &rest[end..];
    }
    rendered.push_str(rest);
    let toml: toml::Table = rendered.parse().expect("config.toml template is TOML");
    let http = toml["http"].as_table().expect("[http]");
    assert!(
        data.contains(r#"listen = "{{ env "NOMAD_ADDR_http" }}""#),
        "{data}"
    );
    assert!(
        http.contains_key("tls_cert") && http.contains_key("tls_key"),
        "{http:?}"
    );
    assert!(toml["acl"].as_table().unwrap().contains_key("tokens_file"));

    // Every file the configuration names is rendered by a template of the task.
    for key in ["tls_cert", "tls_key"] {
        let file = http[key]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            templates
                .iter()
                .any(|t| text(&t.body, "destination").ends_with(&format!("/{file}"))),
            "no template renders {file}"
        );
    }
    assert!(templates
        .iter()
        .any(|t| text(&t.body, "destination").ends_with("/tokens")));
}

#[test]
fn unit_config_and_package_name_the_same_paths() {
    let unit = read("deploy/systemd/nomad-collector.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_owned()
    };
    let config: toml::Table = read("deploy/debian/config.toml").parse().unwrap();
    let pin_root = config["ebpf"]["pin_root"].as_str().unwrap();
    assert_eq!(value("ReadWritePaths"), pin_root);
    assert!(value("ExecStartPre").ends_with(&format!("mkdir -p {pin_root}")));
    assert!(value("ExecStart").contains("--config /etc/nomad-collector/config.toml"));
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");

    let manifest: toml::Table = read("collector-user/Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let destinations: Vec<&str> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[1].as_str().unwrap())
        .collect();
    assert!(destinations.contains(&"etc/nomad-collector/config.toml"));
    assert!(destinations.contains(&"usr/share/man/man1/nomad-collector.1"));
    assert_eq!(
        deb["systemd-units"]["unit-name"].as_str(),
        Some("nomad-collector")
    );
}
