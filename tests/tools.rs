//! The commands around the mount, against real servers: `search`, `url`, `migrate`, `sync`.

mod common;

use bytes::Bytes;
use common::{pattern, scratch, set_secret_env, unique, zmount, Case, ObjectStoreExt, TestConfig};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::{Config, Storage, UploadOptions};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "zmount failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A config with providers `s3` and `azure` under one fresh prefix, its routes added by `routes`.
fn config(
    dir: &Path,
    test: &str,
    routes: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> (PathBuf, Storage) {
    set_secret_env();
    let prefix = unique(test);
    let config = ConfigBuilder::new(&dir.join("cache"))
        .case(Case::S3, "s3", &prefix, dir)
        .case(Case::Azure, "azure", &prefix, dir);
    let path = dir.join("mount.toml");
    std::fs::write(&path, routes(config).text()).unwrap();
    let storage = Storage::new(&Config::load(&path).unwrap()).unwrap();
    (path, storage)
}

/// `a/` on `s3`, everything else on `azure`.
fn a_on_s3(config: ConfigBuilder) -> ConfigBuilder {
    config
        .route(RouteBuilder::prefix("a", "s3"))
        .default_route(RouteBuilder::to("azure"))
}

/// Everything on `s3`.
fn all_on_s3(config: ConfigBuilder) -> ConfigBuilder {
    config.default_route(RouteBuilder::to("s3"))
}

fn with(tags: &[(&str, &str)], meta: &[(&str, &str)]) -> UploadOptions {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    UploadOptions {
        tags: map(tags),
        metadata: map(meta),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_exactly_the_tagged_files_across_providers() {
    let dir = scratch();
    let (cfg, storage) = config(dir.path(), "search", a_on_s3);
    let files = [
        ("a/x.txt", with(&[("env", "prod")], &[("owner", "ann")])),
        ("a/y.txt", with(&[("env", "dev")], &[("owner", "ann")])),
        ("b.txt", with(&[("env", "prod")], &[("owner", "bob")])),
        ("c.txt", with(&[], &[])),
    ];
    for (path, options) in files {
        storage
            .upload(path, Bytes::from_static(b"x"), options)
            .await
            .unwrap();
    }
    let cfg = cfg.to_str().unwrap();
    let found = stdout(&zmount(&["search", cfg, "--tag", "env=prod"]));
    assert_eq!(found, "a/x.txt\ts3\nb.txt\tazure\n");
    let found = stdout(&zmount(&[
        "search",
        cfg,
        "--tag",
        "env=prod",
        "--meta",
        "Owner=ann",
    ]));
    assert_eq!(
        found, "a/x.txt\ts3\n",
        "conditions combine; metadata keys are case-insensitive"
    );
    let found = stdout(&zmount(&[
        "search",
        cfg,
        "--meta",
        "owner=ann",
        "--prefix",
        "a",
    ]));
    assert_eq!(found, "a/x.txt\ts3\na/y.txt\ts3\n");
    let bad = zmount(&["search", cfg, "--tag", "novalue"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected KEY=VALUE"));
}

async fn fetch(url: &str) -> (u16, Bytes) {
    let resp = common::get(url).await;
    (resp.status().as_u16(), resp.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_serve_the_bytes_until_they_expire() {
    let dir = scratch();
    let (cfg, storage) = config(dir.path(), "url", a_on_s3);
    let cfg = cfg.to_str().unwrap();
    for path in ["a/report.pdf", "report.pdf"] {
        let data = Bytes::from(pattern(100_000, 4));
        storage
            .upload(path, data.clone(), UploadOptions::default())
            .await
            .unwrap();
        let url = stdout(&zmount(&["url", cfg, path])).trim().to_string();
        assert_eq!(fetch(&url).await, (200, data), "{path} via {url}");
        let short = stdout(&zmount(&["url", cfg, path, "--expires", "1"]))
            .trim()
            .to_string();
        // The passage of time is what is tested here: the URL is valid for one second.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let (status, _) = fetch(&short).await;
        assert!(
            status == 403 || status == 401,
            "{path}: expired URL answered {status}"
        );
    }
}

/// Files of several sizes (one multipart-sized) with metadata and tags, uploaded to provider `s3` under `tree/`.
async fn seed_tree(storage: &Storage, count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..count {
        let size = [0, 10, 70_000, 1 << 20][i % 4];
        files.insert(format!("tree/d{}/f{i}.bin", i % 3), pattern(size, i as u8));
    }
    files.insert("tree/big.bin".into(), pattern(20 << 20, 99));
    for (path, data) in &files {
        let options = with(&[("batch", "7")], &[("origin", "seed")]);
        storage
            .upload(path, Bytes::from(data.clone()), options)
            .await
            .unwrap();
    }
    files
}

async fn read(storage: &Storage, provider: &str, path: &str) -> Option<Bytes> {
    common::read_direct(storage.provider(provider).unwrap(), path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_tree_with_metadata_and_deletes_the_source() {
    let dir = scratch();
    let (cfg, storage) = config(dir.path(), "migrate", all_on_s3);
    let files = seed_tree(&storage, 12).await;
    let cfg = cfg.to_str().unwrap();
    let plan = stdout(&zmount(&[
        "migrate",
        cfg,
        "--from",
        "s3",
        "--to",
        "azure",
        "--dry-run",
    ]));
    assert_eq!(plan.matches("would copy").count(), files.len(), "{plan}");
    assert!(
        plan.lines().any(|l| l.starts_with(&format!(
            "migrate s3 -> azure (dry run: what a run would do; nothing changed): {} copied (",
            files.len()
        ))),
        "a summary line: {plan}"
    );
    assert!(
        read(&storage, "azure", "tree/big.bin").await.is_none(),
        "a dry run copies nothing"
    );

    let out = stdout(&zmount(&[
        "migrate",
        cfg,
        "--from",
        "s3",
        "--to",
        "azure",
        "--delete-source",
    ]));
    assert!(out.contains(&format!("{} copied", files.len())), "{out}");
    let azure = storage.provider("azure").unwrap();
    for (path, data) in &files {
        assert_eq!(
            read(&storage, "azure", path).await.as_deref(),
            Some(&data[..]),
            "{path}"
        );
        assert!(
            read(&storage, "s3", path).await.is_none(),
            "{path} left on the source"
        );
        let head = azure
            .object_store()
            .get_opts(
                &azure.key_for(path),
                object_store::GetOptions {
                    head: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let origin = head
            .attributes
            .get(&object_store::Attribute::Metadata("origin".into()));
        assert_eq!(
            origin.map(|v| v.as_ref()),
            Some("seed"),
            "{path}: metadata kept"
        );
        let tags = head.attributes.get(&object_store::Attribute::Metadata(
            zmount::storage::TAGS_MIRROR_KEY.into(),
        ));
        assert_eq!(
            tags.map(|v| v.as_ref()),
            Some("batch=7"),
            "{path}: tags kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_migrate_resumes_without_copying_finished_files_again() {
    let dir = scratch();
    let (cfg, storage) = config(dir.path(), "resume", all_on_s3);
    let files = seed_tree(&storage, 40).await;
    let cfg = cfg.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zmount"))
        .args(["migrate", cfg, "--from", "s3", "--to", "azure"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut copied_before_kill = 0;
    for line in lines {
        if line.unwrap().starts_with("copied ") {
            copied_before_kill += 1;
            if copied_before_kill == 10 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL midway
    child.wait().unwrap();
    assert_eq!(
        copied_before_kill, 10,
        "the first run was stopped after 10 copies"
    );

    let out = stdout(&zmount(&["migrate", cfg, "--from", "s3", "--to", "azure"]));
    let skipped: usize = out
        .split(" skipped")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(skipped >= 10, "finished copies are not redone: {out}");
    assert!(
        out.contains(&format!("{} copied", files.len() - skipped)),
        "{out}"
    );
    for (path, data) in &files {
        assert_eq!(
            read(&storage, "azure", path).await.as_deref(),
            Some(&data[..]),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_only_changes_and_deletes_extras() {
    let dir = scratch();
    let (cfg, storage) = config(dir.path(), "sync", all_on_s3);
    let cfg = cfg.to_str().unwrap();
    for (path, data) in [("a.txt", "same"), ("b.txt", "old"), ("c.txt", "gone soon")] {
        storage
            .upload(path, Bytes::from(data), UploadOptions::default())
            .await
            .unwrap();
    }
    let first = stdout(&zmount(&[
        "sync", cfg, "--source", "s3", "--target", "azure",
    ]));
    assert!(first.contains("3 copied"), "{first}");

    storage
        .upload("b.txt", Bytes::from("changed!"), UploadOptions::default())
        .await
        .unwrap();
    storage
        .upload("d.txt", Bytes::from("new"), UploadOptions::default())
        .await
        .unwrap();
    storage.delete("c.txt").await.unwrap();
    let azure = storage.provider("azure").unwrap();
    azure
        .object_store()
        .put(&azure.key_for("extra.txt"), Bytes::from("extra").into())
        .await
        .unwrap();

    let plan = stdout(&zmount(&[
        "sync",
        cfg,
        "--source",
        "s3",
        "--target",
        "azure",
        "--delete",
        "--dry-run",
    ]));
    for expected in [
        "would copy b.txt",
        "would copy d.txt",
        "would skip a.txt (already on azure)",
        "would delete c.txt",
        "would delete extra.txt",
    ] {
        assert!(plan.contains(expected), "{expected}:\n{plan}");
    }
    // The summary: the real run's words and counts, said to be a dry run.
    let counts = "2 copied (11 B), 1 skipped (already there), 2 deleted, 0 failed";
    assert!(
        plan.contains(&format!(
            "sync s3 -> azure (dry run: what a run would do; nothing changed): {counts}"
        )),
        "{plan}"
    );
    let out = stdout(&zmount(&[
        "sync", cfg, "--source", "s3", "--target", "azure", "--delete",
    ]));
    assert!(
        out.contains(&format!("sync s3 -> azure: {counts}, in ")),
        "{out}"
    );
    assert_eq!(
        read(&storage, "azure", "b.txt").await.as_deref(),
        Some(&b"changed!"[..])
    );
    assert_eq!(
        read(&storage, "azure", "d.txt").await.as_deref(),
        Some(&b"new"[..])
    );
    assert!(read(&storage, "azure", "c.txt").await.is_none());
    assert!(read(&storage, "azure", "extra.txt").await.is_none());
    assert_eq!(
        read(&storage, "azure", "a.txt").await.as_deref(),
        Some(&b"same"[..])
    );
}

/// Metric name (with labels) → value, checking that every line is valid text exposition format.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_string());
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            typed.contains(name) || typed.contains(family),
            "sample before its TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_when_files_are_read() {
    let addr = common::free_local_addr();
    let (ctx, mnt) = common::mount::mount_for_with(Case::S3, "metrics", &["--metrics-addr", &addr]);
    ctx.seed("data.bin", &pattern(3 << 20, 1)).await;
    let url = format!("http://{addr}/metrics");
    let scrape = || async { parse_metrics(&common::get(&url).await.text().await.unwrap()) };
    let before = scrape().await;
    assert_eq!(
        std::fs::read(mnt.path("data.bin")).unwrap(),
        pattern(3 << 20, 1)
    );
    let after = scrape().await;
    let gets = "zmount_provider_requests_total{provider=\"s3\",op=\"get\"}";
    assert!(
        after[gets] > before[gets],
        "GETs counted: {} -> {}",
        before[gets],
        after[gets]
    );
    let read = "zmount_provider_read_bytes_total{provider=\"s3\"}";
    assert!(
        after[read] - before[read] >= (3 << 20) as f64,
        "bytes counted"
    );
    assert!(after["zmount_cache_misses_total"] > before["zmount_cache_misses_total"]);
    let count = "zmount_provider_request_duration_seconds_count{provider=\"s3\"}";
    assert!(after[count] > before[count]);
    assert_eq!(after["zmount_provider_up{provider=\"s3\"}"], 1.0);
    assert!(after.contains_key("zmount_uploads_pending"));
    // The next read comes from the kernel's page cache or the mount's cache: no GET.
    assert_eq!(std::fs::read(mnt.path("data.bin")).unwrap().len(), 3 << 20);
    assert_eq!(
        scrape().await[gets],
        after[gets],
        "a second read is served from a cache"
    );
    assert!(after.contains_key("zmount_cache_hits_total{tier=\"memory\"}"));
}

#[test]
fn migrate_refuses_providers_that_overlap() {
    let dir = scratch();
    set_secret_env();
    let prefix = unique("overlap");
    let config = ConfigBuilder::default()
        .case(Case::S3, "outer", &prefix, dir.path())
        .case(Case::S3, "inner", &format!("{prefix}/sub"), dir.path())
        .default_route(RouteBuilder::to("outer"));
    let path = dir.path().join("mount.toml");
    std::fs::write(&path, config.text()).unwrap();
    for (from, to) in [("outer", "inner"), ("inner", "outer")] {
        let out = zmount(&[
            "sync",
            path.to_str().unwrap(),
            "--source",
            from,
            "--target",
            to,
            "--delete",
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("one contains the other"), "{err}");
    }
}
