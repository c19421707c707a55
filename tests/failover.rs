//! Failover and retry against real servers and a real mount: the primary is killed, stalled, taken down or made
//! flaky (a private Azurite, or the fault-injecting proxy in front of SeaweedFS), and every byte must survive.

mod common;

use common::killable::Azurite;
use common::mount::{run, sha256, Mount};
use common::proxy::{Fault, Proxy};
use common::{pattern, scratch, unique, Case, ObjectStoreExt, ProviderTable, TestConfig};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::providers::Provider;

/// How long a test waits for something the mount does in the background (a heal, a breaker closing).
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(90);

/// Settings for these tests: few retries, short timeouts and cool-down, frequent heal passes, small read-ahead
/// (so that most of a file is fetched after the fault, not before).
fn settings(config: ConfigBuilder) -> ConfigBuilder {
    config
        .retry(2, 0.05)
        .setting("timeouts.connect", 1)
        .setting("timeouts.read", 2)
        .setting("timeouts.first_byte", 2)
        .setting("failover.failure_threshold", 2)
        .setting("failover.cooldown", 1)
        .setting("failover.heal_interval", 0.3)
        .setting("mount.read_ahead", "2MiB")
        .setting("mount.memory_cache_size", "4MiB")
}

/// The config of a mount whose default route is `primary` with fallback `backup` (and `route`'s keys), given both
/// provider tables, with `settings`.
fn fallback_config(
    dir: &Path,
    primary: &ProviderTable,
    backup: &ProviderTable,
    route: impl FnOnce(RouteBuilder) -> RouteBuilder,
    settings: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> ConfigBuilder {
    let config = ConfigBuilder::new(&dir.join("cache"))
        .provider_table(primary)
        .provider_table(backup)
        .default_route(route(RouteBuilder::to("primary").fallback(&["backup"])));
    settings(config)
}

/// An S3 provider table named `name` under a fresh prefix, reached through a fault-injecting proxy: the proxy, the
/// table that goes through it, the table that reaches the server directly (for seeding and checking), the prefix.
fn s3_behind_proxy(
    dir: &Path,
    test: &str,
    name: &str,
) -> (Proxy, ProviderTable, ProviderTable, String) {
    let prefix = unique(test);
    let real = ProviderTable::new(Case::S3, name, &prefix, dir);
    let (proxy, proxied) = real.behind_proxy();
    (proxy, proxied, real, prefix)
}

async fn put(provider: &Provider, path: &str, data: &[u8]) {
    provider
        .object_store()
        .put(
            &provider.key_for(path),
            bytes::Bytes::copy_from_slice(data).into(),
        )
        .await
        .unwrap();
}

fn sha_of(data: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    sha256(file.path())
}

/// Reads `len` bytes of `file` from where it is.
fn read_exactly(file: &mut std::fs::File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf).unwrap();
    buf
}

/// Polls `done` until it holds or the deadline passes (then fails with `what` and the mount log).
fn wait_for(mount: &Mount, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < BACKGROUND_DEADLINE,
            "{what}: not after {BACKGROUND_DEADLINE:?}\n{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mount's status file (provider health and counters), once written.
fn status(mount: &Mount) -> serde_json::Value {
    let file = mount.config.parent().unwrap().join("cache/status.json");
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Counter `counter` of provider `name` in the mount's status file (0 until the file is written).
fn counter(mount: &Mount, name: &str, counter: &str) -> u64 {
    status(mount)["providers"][name]["counters"][counter]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the status file counts a read of `backup` standing in for the primary (an open file moved on).
fn wait_for_switch(mount: &Mount) {
    wait_for(mount, "the switch to backup, in the status file", || {
        counter(mount, "backup", "served_as_fallback") > 0
    });
}

fn provider_state(mount: &Mount, name: &str) -> String {
    status(mount)["providers"][name]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_completes_from_the_fallback_when_the_primary_is_killed_mid_file() {
    let dir = scratch();
    let mut azurite = Azurite::start();
    let prefix = unique("kill");
    let primary =
        ProviderTable::new(Case::Azure, "primary", &prefix, dir.path()).at(&azurite.endpoint());
    let backup = ProviderTable::new(Case::S3, "backup", &prefix, dir.path());
    let data = pattern(24 << 20, 7);
    put(&primary.direct(dir.path()), "big.bin", &data).await;
    put(&backup.direct(dir.path()), "big.bin", &data).await;
    let config = fallback_config(dir.path(), &primary, &backup, |r| r, settings);
    let mnt = Mount::start(dir.path(), &config);

    let mut file = std::fs::File::open(mnt.path("big.bin")).unwrap();
    let mut read = read_exactly(&mut file, 4 << 20);
    azurite.kill(); // SIGKILL with the reader mid-file
    file.read_to_end(&mut read)
        .expect("the read completes from the fallback");

    assert_eq!(read.len(), data.len());
    assert_eq!(
        sha_of(&read),
        sha_of(&data),
        "bytes from the fallback match"
    );
    wait_for_switch(&mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_completes_from_the_fallback_when_the_primary_stalls() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "stall", "primary");
    let backup = ProviderTable::new(Case::Azure, "backup", &prefix, dir.path());
    let data = pattern(16 << 20, 3);
    put(&real.direct(dir.path()), "f.bin", &data).await;
    put(&backup.direct(dir.path()), "f.bin", &data).await;
    // The idle-read timeout is long: the stall is caught by the hedge delay (long before the first-byte timeout).
    let long_read = |c| settings(c).setting("timeouts.read", 30);
    let config = fallback_config(dir.path(), &primary, &backup, |r| r, long_read);
    let mnt = Mount::start(dir.path(), &config);

    let mut file = std::fs::File::open(mnt.path("f.bin")).unwrap();
    let mut read = read_exactly(&mut file, 3 << 20);
    proxy.set(Fault::Stall); // accepts connections, never answers
    file.read_to_end(&mut read)
        .expect("the read completes from the fallback");

    assert_eq!(sha_of(&read), sha_of(&data));
    wait_for(
        &mnt,
        "the stalled primary's hedge, in the status file",
        || counter(&mnt, "primary", "hedges") > 0,
    );
    wait_for_switch(&mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_completes_from_the_fallback_when_primary_responses_are_cut_short() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "cut", "primary");
    let backup = ProviderTable::new(Case::Azure, "backup", &prefix, dir.path());
    let data = pattern(12 << 20, 5);
    put(&real.direct(dir.path()), "f.bin", &data).await;
    put(&backup.direct(dir.path()), "f.bin", &data).await;
    let config = fallback_config(dir.path(), &primary, &backup, |r| r, settings);
    let mnt = Mount::start(dir.path(), &config);

    let mut file = std::fs::File::open(mnt.path("f.bin")).unwrap();
    let mut read = read_exactly(&mut file, 3 << 20);
    proxy.set(Fault::CutResponseAfter(64 * 1024)); // every response ends mid-body
    file.read_to_end(&mut read)
        .expect("the read completes from the fallback");

    assert_eq!(
        sha_of(&read),
        sha_of(&data),
        "no truncated block reached the reader"
    );
    wait_for_switch(&mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_writes_land_on_the_fallback_then_heal_to_the_primary() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "heal", "primary");
    let backup = ProviderTable::new(Case::Azure, "backup", &prefix, dir.path());
    let (on_primary, on_backup) = (real.direct(dir.path()), backup.direct(dir.path()));
    let route = RouteBuilder::write_failover;
    let config = fallback_config(dir.path(), &primary, &backup, route, settings);
    let mnt = Mount::start(dir.path(), &config);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files = [
        ("small.txt", pattern(3 << 20, 1)),
        ("large.bin", pattern(20 << 20, 2)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }

    proxy.set_down(true);
    for (name, _) in &files {
        run(
            "cp",
            &[
                src.join(name).to_str().unwrap(),
                mnt.path(name).to_str().unwrap(),
            ],
        );
    }
    for (name, data) in &files {
        let stored = common::read_direct(&on_backup, name).await;
        assert_eq!(
            stored.as_deref(),
            Some(&data[..]),
            "{name} is on the fallback"
        );
        assert_eq!(
            sha256(&mnt.path(name)),
            sha_of(data),
            "{name} reads back during the outage"
        );
    }
    let listed = run("ls", &[mnt.dir.to_str().unwrap()]);
    assert!(
        listed.contains("small.txt") && listed.contains("large.bin"),
        "{listed}"
    );
    wait_for(&mnt, "primary marked down", || {
        provider_state(&mnt, "primary") == "down"
    });

    proxy.set_down(false);
    for (name, data) in &files {
        let name = *name;
        let mut healed = false;
        wait_for(&mnt, &format!("{name} healed to the primary"), || {
            let rt = tokio::runtime::Handle::current();
            let (p, b) = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    (
                        common::read_direct(&on_primary, name).await,
                        common::read_direct(&on_backup, name).await,
                    )
                })
            });
            healed = p.as_deref() == Some(&data[..]);
            healed && b.is_none()
        });
        assert!(healed);
    }
    wait_for(&mnt, "primary back up", || {
        provider_state(&mnt, "primary") == "up"
    });
    let heals = status(&mnt)["providers"]["primary"]["counters"]["heals"].as_u64();
    assert_eq!(heals, Some(2), "{}", status(&mnt));

    let mut after = std::fs::File::create(mnt.path("after.txt")).unwrap();
    after
        .write_all(b"written once the primary is back")
        .unwrap();
    drop(after);
    let stored = common::read_direct(&on_primary, "after.txt").await;
    assert_eq!(
        stored.as_deref(),
        Some(&b"written once the primary is back"[..])
    );
    assert!(common::read_direct(&on_backup, "after.txt").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_copied_through_a_flaky_provider_arrives_intact() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "flaky", "primary");
    let backup = ProviderTable::new(Case::Local, "backup", &prefix, dir.path());
    // Enough attempts that a request failing six times in a row (1 in 10^6) is not expected in this workload.
    let settings = |c: ConfigBuilder| c.retry(6, 0.02).setting("failover.failure_threshold", 5);
    let config = fallback_config(dir.path(), &primary, &backup, |r| r, settings);
    let mnt = Mount::start(dir.path(), &config);
    let src = dir.path().join("tree");
    let sizes = [0usize, 1, 4096, 100_000, 1 << 20, 3 << 20];
    let mut expected = Vec::new();
    for (i, size) in sizes.iter().cycle().take(36).enumerate() {
        let rel = format!("d{}/sub{}/f{i}.bin", i % 3, i % 2);
        std::fs::create_dir_all(src.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(src.join(&rel), pattern(*size, i as u8)).unwrap();
        expected.push(rel);
    }
    std::fs::write(src.join("large.bin"), pattern(20 << 20, 9)).unwrap();
    expected.push("large.bin".into());
    proxy.set(Fault::Fail503Every(5));

    run(
        "cp",
        &[
            "-r",
            src.to_str().unwrap(),
            mnt.path("tree").to_str().unwrap(),
        ],
    );
    let listing = run("ls", &["-lR", mnt.path("tree").to_str().unwrap()]);
    let on_primary = real.direct(dir.path());
    for rel in &expected {
        let name = rel.rsplit('/').next().unwrap();
        assert!(listing.contains(name), "{name} listed:\n{listing}");
        let want = sha256(&src.join(rel));
        assert_eq!(
            sha256(&mnt.path(&format!("tree/{rel}"))),
            want,
            "{rel} through the mount"
        );
        let stored = common::read_direct(&on_primary, &format!("tree/{rel}"))
            .await
            .unwrap();
        assert_eq!(sha_of(&stored), want, "{rel} as stored");
    }
    let injected = proxy.injected.load(std::sync::atomic::Ordering::SeqCst);
    let requests = proxy.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        injected >= requests / 5 - 1 && injected > 20,
        "{injected} 503s in {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_fails_rather_than_silently_miss_a_down_provider() {
    let dir = scratch();
    let (proxy, remote, real, prefix) = s3_behind_proxy(dir.path(), "partial", "remote");
    let local = ProviderTable::new(Case::Local, "local", &prefix, dir.path());
    put(&real.direct(dir.path()), "solo/x.txt", b"remote").await;
    put(&local.direct(dir.path()), "y.txt", b"local").await;
    let config = settings(ConfigBuilder::new(&dir.path().join("cache")))
        .provider_table(&remote)
        .provider_table(&local)
        .route(RouteBuilder::prefix("solo", "remote"))
        .default_route(RouteBuilder::to("local"));
    let mnt = Mount::start(dir.path(), &config);
    proxy.set_down(true);

    let ls = std::process::Command::new("ls")
        .arg(&mnt.dir)
        .output()
        .unwrap();
    assert!(
        !ls.status.success(),
        "ls must not show the tree without `remote`'s files"
    );
    assert!(
        String::from_utf8_lossy(&ls.stderr).contains("Input/output error"),
        "{ls:?}"
    );
    assert_eq!(
        std::fs::read(mnt.path("y.txt")).unwrap(),
        b"local",
        "other routes still work"
    );

    proxy.set_down(false);
    let listed = run("ls", &[mnt.dir.to_str().unwrap()]);
    assert!(
        listed.contains("solo") && listed.contains("y.txt"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_write_is_read_from_its_fallback_until_healed_even_after_a_remount() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "pending", "primary");
    let backup = ProviderTable::new(Case::Azure, "backup", &prefix, dir.path());
    let on_primary = real.direct(dir.path());
    put(&on_primary, "doc.txt", b"old version on the primary").await;
    // No heal pass during the test: the failover write stays pending.
    let no_heal = |c| settings(c).setting("failover.heal_interval", 3600);
    let route = RouteBuilder::write_failover;
    let config = fallback_config(dir.path(), &primary, &backup, route, no_heal);
    let mut mnt = Mount::start(dir.path(), &config);
    proxy.set_down(true);
    std::fs::write(
        mnt.path("doc.txt"),
        b"new version, written during the outage",
    )
    .unwrap();
    proxy.set_down(false);
    assert!(mnt.stop_with(libc::SIGTERM).success(), "{}", mnt.log());

    let mnt = Mount::start(dir.path(), &config);
    assert_eq!(
        std::fs::read(mnt.path("doc.txt")).unwrap(),
        b"new version, written during the outage",
        "the primary answers, but its copy is older than the pending failover write"
    );
    let stored = common::read_direct(&on_primary, "doc.txt").await;
    assert_eq!(
        stored.as_deref(),
        Some(&b"old version on the primary"[..]),
        "not healed yet"
    );
    let listed = run("ls", &["-l", mnt.dir.to_str().unwrap()]);
    assert!(
        listed.contains(" 38 "),
        "size of the new version listed: {listed}"
    );
}

/// The chaos s3fs tests with, on the default retry schedule: the provider answers 503 to one request in ten, at
/// random, while `cp -r` copies a tree of 2,000 files in, `ls -lR` lists it, `tar c` archives it from the mount and
/// the archive is unpacked and compared with the source. No fallback: retries alone must ride it out. Zero errors,
/// every byte identical; the request and fault counts are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_burst_on_every_tenth_request_loses_nothing_on_the_default_schedule() {
    let dir = scratch();
    let (proxy, primary, _real, _prefix) = s3_behind_proxy(dir.path(), "chaos", "primary");
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .provider_table(&primary)
        .default_route(RouteBuilder::to("primary"));
    let mnt = Mount::start(dir.path(), &config);
    let src = dir.path().join("tree");
    let files = 2_000;
    for i in 0..files {
        let rel = format!("d{:02}/e{}/f{i}.txt", i % 25, i % 4);
        std::fs::create_dir_all(src.join(&rel).parent().unwrap()).unwrap();
        let size = [10, 700, 4096, 30_000][i % 4];
        std::fs::write(src.join(&rel), pattern(size, i as u8)).unwrap();
    }
    std::fs::write(src.join("large.bin"), pattern(12 << 20, 3)).unwrap();
    proxy.set(Fault::Fail503Random(10));

    let tree = mnt.path("tree");
    run("cp", &["-r", src.to_str().unwrap(), tree.to_str().unwrap()]);
    let listing = run("ls", &["-lR", tree.to_str().unwrap()]);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with('-')).count(),
        files + 1,
        "every file listed by ls -lR"
    );
    let archive = dir.path().join("tree.tar");
    run(
        "tar",
        &[
            "-cf",
            archive.to_str().unwrap(),
            "-C",
            mnt.dir.to_str().unwrap(),
            "tree",
        ],
    );
    let back = dir.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    run(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            back.to_str().unwrap(),
        ],
    );
    run(
        "diff",
        &[
            "-r",
            src.to_str().unwrap(),
            back.join("tree").to_str().unwrap(),
        ],
    );
    run(
        "diff",
        &["-r", src.to_str().unwrap(), tree.to_str().unwrap()],
    );

    let injected = proxy.injected.load(std::sync::atomic::Ordering::SeqCst);
    let requests = proxy.requests.load(std::sync::atomic::Ordering::SeqCst);
    println!("chaos: {requests} requests, {injected} answered 503");
    assert!(
        injected * 20 > requests && injected > 500,
        "about one request in ten got a 503: {injected} of {requests}"
    );
}

/// Files on both providers of a hedging test: a folder with a small file and a 64 MiB one.
async fn seed_both(
    dir: &Path,
    primary: &ProviderTable,
    backup: &ProviderTable,
    folder: &str,
) -> Vec<u8> {
    let big = pattern(64 << 20, 11);
    for table in [primary, backup] {
        let provider = table.direct(dir);
        put(&provider, &format!("{folder}/small.txt"), b"small\n").await;
        put(&provider, &format!("{folder}/big.bin"), &big).await;
    }
    big
}

/// `stat` of a path not seen yet, `ls` of its folder, the first byte of a cold read and a whole 64 MiB read; how
/// long each took (for the benchmark: the tests assert behaviour only).
fn stat_list_read(mnt: &Mount, folder: &str, big: &[u8]) -> [Duration; 4] {
    let started = Instant::now();
    let meta = std::fs::metadata(mnt.path(&format!("{folder}/small.txt"))).unwrap();
    assert_eq!(meta.len(), 6, "stat of {folder}/small.txt");
    let stat = started.elapsed();
    let started = Instant::now();
    let listed = run("ls", &[mnt.path(folder).to_str().unwrap()]);
    assert!(
        listed.contains("big.bin") && listed.contains("small.txt"),
        "{listed}"
    );
    let list = started.elapsed();
    let started = Instant::now();
    let mut file = std::fs::File::open(mnt.path(&format!("{folder}/big.bin"))).unwrap();
    let mut first = [0u8; 1];
    file.read_exact(&mut first).unwrap();
    assert_eq!(first[0], big[0]);
    let first_byte = started.elapsed();
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).unwrap();
    assert!(rest == big[1..], "{folder}/big.bin read back intact");
    [stat, list, first_byte, started.elapsed()]
}

/// Failover when the primary stalls (accepts requests and never answers): on the default settings, `stat` of an
/// uncached path, `ls` of a folder, a cold read and a whole 64 MiB read are answered by the fallback after the
/// hedge delay, not after the timeouts — the stalled primary's requests are cancelled, none times out (counted
/// through the metrics) — with the bytes intact. With the primary healthy the same work sends next to no hedged
/// request (hedging must not double a healthy provider's load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_is_answered_by_the_fallback_after_the_hedge_delay() {
    let dir = scratch();
    let (proxy, primary, real, prefix) = s3_behind_proxy(dir.path(), "hedge", "primary");
    let backup = ProviderTable::new(Case::Local, "backup", &prefix, dir.path());
    let big = seed_both(dir.path(), &real, &backup, "healthy").await;
    seed_both(dir.path(), &real, &backup, "stalled").await;
    let addr = common::free_local_addr();
    let config = fallback_config(dir.path(), &primary, &backup, |r| r, |c| c);
    let mnt = Mount::start_with(dir.path(), &config, &["--metrics-addr", &addr]);

    let took = stat_list_read(&mnt, "healthy", &big);
    println!("healthy primary: stat, ls, first byte, 64 MiB read: {took:?}");
    let requests = common::metric(&addr, "zmount_provider_requests_total", "primary").await;
    let hedges = common::metric(&addr, "zmount_hedged_requests_total", "primary").await;
    let read = common::metric(&addr, "zmount_provider_read_bytes_total", "primary").await;
    println!("healthy primary: {requests} requests, {hedges} hedged, {read} bytes read");
    assert!(
        read >= big.len() as f64,
        "the read went to the primary: {read} bytes"
    );
    assert!(
        hedges * 10.0 <= requests,
        "a healthy primary is seldom hedged: {hedges} of {requests}"
    );

    proxy.set(Fault::Stall);
    let waited = || async {
        let errors = common::metric(&addr, "zmount_provider_errors_total", "primary").await;
        errors + common::metric(&addr, "zmount_provider_retries_total", "primary").await
    };
    let failures = waited().await;
    let took = stat_list_read(&mnt, "stalled", &big);
    println!("stalled primary: stat, ls, first byte, 64 MiB read: {took:?}");
    let won = common::metric(&addr, "zmount_hedge_wins_total", "primary").await;
    println!("stalled primary: {won} hedges won by the fallback");
    assert!(
        won >= 3.0,
        "stat, ls and the read went to the fallback: {won}"
    );
    assert_eq!(
        waited().await,
        failures,
        "no request waited out a timeout on the stalled primary (errors and retries)"
    );
    proxy.set(Fault::None);
}
