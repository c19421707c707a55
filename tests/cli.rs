//! The `zmount` command itself: `check` against real servers (and a dead endpoint), `explain` on every rule form,
//! and no secret in anything it prints; `explain` without secrets, `url` of a missing file, help texts, what `check`
//! leaves behind, and what a `--daemon` start that fails and a clean unmount print.

mod common;

use common::{scratch, server, unique, zmount, Case, TestConfig};
use std::path::{Path, PathBuf};
use std::process::Output;
use zmount::config::{ConfigBuilder, RouteBuilder};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `config` to `<dir>/mount.toml`; its path.
fn write_config(dir: &Path, config: &ConfigBuilder) -> PathBuf {
    let path = dir.join("mount.toml");
    std::fs::write(&path, config.text()).unwrap();
    path
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
    .into_iter()
    .fold(ConfigBuilder::default(), |config, (case, name)| {
        config.case(case, name, &prefix, dir.path())
    });
    let path = write_config(dir.path(), &config);
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
    let config = ConfigBuilder::default()
        .case(Case::Local, "local", "p", dir.path())
        .provider(
            "backups",
            "s3",
            [
                ("bucket", "b".into()),
                ("endpoint", format!("http://127.0.0.1:{port}").into()),
                ("access_key", "AKIDEXAMPLE".into()),
                ("secret_key", "super-secret-value-123".into()),
            ],
        );
    let path = write_config(dir.path(), &config);
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
    let bucket = server("ZMOUNT_TEST_S3_BUCKET");
    let keys = common::s3_keys(&bucket, "wrong-secret-value-456");
    let config = ConfigBuilder::default().provider("s3", "s3", keys);
    let path = write_config(dir.path(), &config);
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
    let config = ConfigBuilder::default()
        .case(Case::Local, "local", "", dir.path())
        .case(Case::S3, "s3", "main", dir.path())
        .case(Case::Azure, "media", "img", dir.path())
        .route(RouteBuilder::prefix("temp_files", "local"))
        .route(RouteBuilder::pattern("*.jpg|*.png|*.gif", "media").fallback(&["s3"]))
        .default_route(RouteBuilder::to("s3"));
    let path = write_config(dir.path(), &config);
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

/// `explain` makes no requests: secrets whose variables are not set are not needed (every other command that talks
/// to providers still refuses, naming the variable).
#[test]
fn explain_runs_without_the_secrets() {
    let dir = scratch();
    let config = "[providers.s3]\nkind = \"s3\"\nbucket = \"media\"\naccess_key = \"${ZMOUNT_NEVER_SET_KEY}\"\nsecret_key = \"${ZMOUNT_NEVER_SET_SECRET}\"\n\
        [providers.az]\nkind = \"azure\"\ncontainer = \"docs\"\naccount = \"acct\"\nkey = \"${ZMOUNT_NEVER_SET_AZURE}\"\n\
        [[routes]]\npattern = \"*.jpg\"\nprovider = \"s3\"\n[default]\nprovider = \"az\"\n";
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let out = zmount(&["explain", path, "cat.jpg", "notes.txt"]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(output.contains("key:      cat.jpg on s3"), "{output}");
    assert!(output.contains("key:      notes.txt on az"), "{output}");
    let out = zmount(&["check", path]);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("providers.az.key: environment variable `ZMOUNT_NEVER_SET_AZURE` is not set"),
        "{}",
        text(&out)
    );
}

/// A URL of a file that does not exist is an error (exit 1, naming the path), not a URL that answers 404.
#[test]
fn url_of_a_missing_file_is_an_error() {
    let dir = scratch();
    let path = write_config(
        dir.path(),
        &local_config(ConfigBuilder::default(), dir.path()),
    );
    let root = dir.path().join("local-root");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/here.txt"), b"here").unwrap();
    let config = path.to_str().unwrap();
    let out = zmount(&["url", config, "docs/here.txt"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "http://files.example.test/media/docs/here.txt"
    );
    let out = zmount(&["url", config, "docs/missing.txt"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "no URL printed: {}", text(&out));
    assert!(text(&out).contains("docs/missing.txt"), "{}", text(&out));
}

/// Every argument of every command says what it is in `--help`.
#[test]
fn every_argument_has_a_help_text() {
    for command in [
        "check", "explain", "url", "search", "migrate", "sync", "variants",
    ] {
        let out = zmount(&[command, "--help"]);
        assert!(out.status.success());
        let help = text(&out);
        let arguments = help
            .split("Arguments:")
            .nth(1)
            .and_then(|rest| rest.split("Options:").next())
            .unwrap_or_default();
        for line in arguments
            .lines()
            .filter(|l| l.trim_start().starts_with('<'))
        {
            let words = line.split_whitespace().count();
            assert!(
                words > 1,
                "`zmount {command} --help`: no help for {line:?}:\n{help}"
            );
        }
    }
}

/// `check` writes its probe and deletes it: nothing of it is left, not even a folder (which a local provider keeps and a
/// mount shows).
#[test]
fn check_leaves_nothing_behind() {
    let dir = scratch();
    let path = write_config(
        dir.path(),
        &local_config(ConfigBuilder::default(), dir.path()),
    );
    let root = dir.path().join("local-root");
    std::fs::create_dir_all(&root).unwrap();
    let out = zmount(&["check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the provider's folder: {left:?}");
}

/// `config` with provider `local` (a folder in `dir`, no prefix) and every path routed to it.
fn local_config(config: ConfigBuilder, dir: &Path) -> ConfigBuilder {
    config
        .case(Case::Local, "local", "", dir)
        .default_route(RouteBuilder::to("local"))
}

/// A local-provider config with its own cache dir, in `dir`.
fn local_mount_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &local_config(ConfigBuilder::new(&dir.join("cache")), dir),
    )
}

/// `--daemon` says on the terminal why a start failed: a cache dir in use names the process and mountpoint holding
/// it (and the holder's log gets nothing); a mount refused by the child prints the child's reason.
#[test]
fn a_daemon_that_cannot_start_says_why() {
    let dir = scratch();
    let config = local_mount_config(dir.path());
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let config = config.to_str().unwrap();
    let out = zmount(&[config, first.to_str().unwrap(), "--daemon"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = dir.path().join("cache/zmount.log");
    let log_before = std::fs::read_to_string(&log).unwrap_or_default();

    let out = zmount(&[config, second.to_str().unwrap(), "--daemon"]);
    let said = text(&out);
    let holder = std::fs::read_to_string(dir.path().join("cache/zmount.lock")).unwrap();
    let pid = holder.lines().next().unwrap();
    let unmounted = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&first)
        .status()
        .unwrap();
    assert!(unmounted.success());
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("is in use by zmount process")
            && said.contains(pid)
            && said.contains(first.to_str().unwrap()),
        "names the holder's PID and mountpoint: {said}"
    );
    let log_after = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(log_before, log_after, "nothing written to the holder's log");

    // Refused by the child (a bucket that does not exist): its reason reaches the terminal.
    let bad = dir.path().join("bad.toml");
    let secret = server("ZMOUNT_TEST_S3_SECRET_KEY");
    let config = ConfigBuilder::new(&dir.path().join("cache-bad"))
        .provider(
            "s3",
            "s3",
            common::s3_keys("no-such-bucket-anywhere", &secret),
        )
        .default_route(RouteBuilder::to("s3"));
    std::fs::write(&bad, config.text()).unwrap();
    let out = zmount(&[bad.to_str().unwrap(), second.to_str().unwrap(), "--daemon"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no-such-bucket-anywhere") && said.contains("the mount is refused"),
        "the child's reason on the terminal: {said}"
    );
}

/// A mount unmounted from outside (`fusermount3 -u`) exits 0 with no warning in its log.
#[test]
fn a_clean_unmount_logs_no_warning() {
    let dir = scratch();
    let config = local_mount_config(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount = common::mount::Mount::start_at(&config, &mnt, &[]);
    std::fs::write(mnt.join("f"), b"x").unwrap();
    let unmounted = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(unmounted.success());
    let status = mount.wait_exit();
    let log = mount.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}
