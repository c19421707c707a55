//! The `zmount` command itself: `check` against real servers (and a dead endpoint), `explain` on every rule form,
//! and no secret in anything it prints.

mod common;

use common::{provider_toml, scratch, server, unique, zmount, Case};
use std::process::Output;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port on 127.0.0.1 with nothing listening.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn check_passes_on_live_providers() {
    let dir = scratch();
    let prefix = unique("check");
    let config = [
        (Case::S3, "s3"),
        (Case::Azure, "azure"),
        (Case::Local, "local"),
        (Case::Wasabi, "wasabi"),
    ]
    .map(|(case, name)| provider_toml(case, name, &prefix, dir.path()))
    .join("");
    let path = dir.path().join("mount.toml");
    std::fs::write(&path, config).unwrap();
    let out = zmount(&["check", path.to_str().unwrap()]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    for name in ["s3", "azure", "local", "wasabi"] {
        let line = output
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{output}"));
        assert!(line.starts_with("OK "), "{line}");
        assert!(
            line.contains("write") && line.contains("read") && line.contains("delete"),
            "{line}"
        );
    }
    assert!(
        !output.contains(&server("ZMOUNT_TEST_S3_SECRET_KEY")),
        "secret in output:\n{output}"
    );
}

#[test]
fn check_names_the_failing_provider_and_endpoint() {
    let dir = scratch();
    let port = dead_port();
    let config = format!(
        "{}[providers.backups]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{port}\"\naccess_key = \"AKIDEXAMPLE\"\nsecret_key = \"super-secret-value-123\"\n",
        provider_toml(Case::Local, "local", "p", dir.path())
    );
    let path = dir.path().join("mount.toml");
    std::fs::write(&path, config).unwrap();
    let out = zmount(&["check", path.to_str().unwrap()]);
    let output = text(&out);
    assert!(
        !out.status.success(),
        "a dead provider must fail the check:\n{output}"
    );
    let line = output
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line:\n{output}"));
    assert!(
        line.contains("backups") && line.contains(&format!("http://127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.starts_with("OK") && l.contains("local")),
        "{output}"
    );
    assert!(
        !output.contains("super-secret-value-123"),
        "secret in output:\n{output}"
    );
}

#[test]
fn check_with_a_wrong_secret_reports_without_leaking_it() {
    let dir = scratch();
    let config = format!(
        "[providers.s3]\nkind = \"s3\"\nbucket = {:?}\nendpoint = {:?}\naccess_key = {:?}\nsecret_key = \"wrong-secret-value-456\"\n",
        server("ZMOUNT_TEST_S3_BUCKET"),
        server("ZMOUNT_TEST_S3_ENDPOINT"),
        server("ZMOUNT_TEST_S3_ACCESS_KEY"),
    );
    let path = dir.path().join("mount.toml");
    std::fs::write(&path, config).unwrap();
    let out = zmount(&["check", path.to_str().unwrap(), "-vvv"]);
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains("FAIL") && output.contains(&server("ZMOUNT_TEST_S3_ENDPOINT")),
        "{output}"
    );
    assert!(
        !output.contains("wrong-secret-value-456"),
        "secret in output (even at trace level):\n{output}"
    );
}

#[test]
fn explain_shows_rule_provider_fallbacks_and_key() {
    let dir = scratch();
    let config = format!(
        "{}{}{}
[[routes]]
prefix = \"temp_files\"
provider = \"local\"

[[routes]]
pattern = \"*.jpg|*.png|*.gif\"
provider = \"media\"
fallback = [\"s3\"]

[default]
provider = \"s3\"
",
        provider_toml(Case::Local, "local", "", dir.path()),
        provider_toml(Case::S3, "s3", "main", dir.path()),
        provider_toml(Case::Azure, "media", "img", dir.path()),
    );
    let path = dir.path().join("mount.toml");
    std::fs::write(&path, config).unwrap();
    let out = zmount(&[
        "explain",
        path.to_str().unwrap(),
        "temp_files/a.jpg",
        "/photos/2024/cat.png",
        "notes/todo.txt",
    ]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    let blocks: Vec<&str> = output.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{output}");
    assert!(
        blocks[0].contains("rule:     routes[0] (prefix = \"temp_files\")"),
        "{}",
        blocks[0]
    );
    assert!(
        blocks[0].contains("provider: local (local at")
            && blocks[0].contains("key:      temp_files/a.jpg on local")
    );
    assert!(
        blocks[1].contains("path:     photos/2024/cat.png"),
        "{}",
        blocks[1]
    );
    assert!(
        blocks[1].contains("rule:     routes[1] (pattern = \"*.jpg|*.png|*.gif\")"),
        "{}",
        blocks[1]
    );
    assert!(blocks[1].contains("fallback: s3"), "{}", blocks[1]);
    assert!(
        blocks[1].contains("key:      img/photos/2024/cat.png on media"),
        "{}",
        blocks[1]
    );
    assert!(
        blocks[1].contains("key:      main/photos/2024/cat.png on s3"),
        "{}",
        blocks[1]
    );
    assert!(
        blocks[2].contains("rule:     default")
            && blocks[2].contains("key:      main/notes/todo.txt on s3"),
        "{}",
        blocks[2]
    );
}

#[test]
fn help_lists_every_command() {
    let out = zmount(&["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for command in [
        "check", "explain", "url", "search", "migrate", "sync", "variants",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from --help:\n{help}"
        );
    }
    assert!(help.contains("--metrics-addr"), "{help}");
}
