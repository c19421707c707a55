//! The life of a written file, as programs see it: files unlinked or renamed while open, reads right after a
//! write-back close, a write-back route whose provider fails, a full cache disk, the size limit, multipart uploads
//! of a killed daemon or a failing provider, and modification times. Each test drives a real mount with syscalls
//! and real programs, and checks what really landed on the provider.

mod common;

use common::mount::{mount_for, mount_tuned, run, Mount};
use common::proxy::{Fault, Proxy};
use common::{pattern, scratch, server, unique, Case, Ctx, ProviderTable, TestConfig};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::providers::Provider;

/// Defines one `#[tokio::test]` in a `local` and an `s3` module for each listed body `async fn body(case: Case)`.
macro_rules! local_and_s3 {
    ($($body:ident),* $(,)?) => {
        local_and_s3!(@case local, Local, $($body),*);
        local_and_s3!(@case s3, S3, $($body),*);
    };
    (@case $module:ident, $case:ident, $($body:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::$body(super::common::Case::$case).await
                }
            )*
        }
    };
}

local_and_s3!(
    unlink_while_open_keeps_the_name_deleted,
    rename_while_open_publishes_under_the_new_name,
    reads_after_close_show_the_new_content,
    full_cache_disk_fails_the_copy_and_keeps_the_old_version,
    after_a_full_cache_disk_small_writes_work_and_the_space_returns,
    size_limit_fails_the_copy_and_publishes_nothing,
    mtime_follows_writes_and_explicit_touches,
    a_child_closing_an_inherited_descriptor_publishes_nothing,
    a_folder_renamed_while_a_file_in_it_streams_leaves_nothing_behind,
);

/// How long a test waits for something the mount does in the background (an upload, a cleanup).
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Unmounts cleanly (SIGTERM, exit 0) and mounts the same config at the same place again.
fn remount(mut mount: Mount) -> Mount {
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    let status = mount.stop_with(libc::SIGTERM);
    assert!(status.success(), "unmount: {status}\n{}", mount.log());
    Mount::start_at(&config, &dir, &[])
}

/// The errno of `stat(path)` on the mount (None: it exists).
fn stat_errno(path: &Path) -> Option<i32> {
    match std::fs::metadata(path) {
        Ok(_) => None,
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    }
}

fn listed(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .any(|e| e.unwrap().file_name() == name)
}

/// `close(2)` of a descriptor we own; its return value and errno.
fn close(file: std::fs::File) -> (i32, i32) {
    let fd = file.into_raw_fd();
    // SAFETY: closing a descriptor this test owns and never uses again.
    let rc = unsafe { libc::close(fd) };
    (
        rc,
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        },
    )
}

/// Runs `sh -c script`; (success, stderr).
fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a program; (success, stderr).
fn try_run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a file of `len` deterministic bytes (1 MiB pattern blocks with varying seeds) without holding it all.
fn write_big(path: &Path, len: usize, seed: u8) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut left = len;
    let mut i = 0u8;
    while left > 0 {
        let n = left.min(1 << 20);
        file.write_all(&pattern(n, seed.wrapping_add(i))[..])
            .unwrap();
        left -= n;
        i = i.wrapping_add(1);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Unlink while open.

async fn unlink_while_open_keeps_the_name_deleted(case: Case) {
    let (ctx, mount) = mount_for(case, "unlink-open");
    ctx.seed("old.txt", b"old content").await;

    // A new file, and an existing one, each open for writing when unlinked.
    let new = mount.path("new.txt");
    let old = mount.path("old.txt");
    let mut files = Vec::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&new)
        .unwrap();
    files.push((
        "new.txt",
        new.clone(),
        f,
        b"written after unlink".to_vec(),
        0u64,
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old)
        .unwrap();
    // Overwrites the start of the existing bytes: the fd must read "NEW content".
    files.push(("old.txt", old.clone(), f, b"NEW content".to_vec(), 0u64));

    for (name, path, file, data, offset) in &mut files {
        std::fs::remove_file(&*path).unwrap_or_else(|e| panic!("unlink {name}: {e}"));
        assert_eq!(
            stat_errno(path),
            Some(libc::ENOENT),
            "{name}: stat right after unlink"
        );
        assert!(!listed(&mount.dir, name), "{name}: listed after unlink");
        if *name == "new.txt" {
            file.write_all(data)
                .unwrap_or_else(|e| panic!("{name}: write after unlink: {e}"));
        } else {
            file.write_all_at(&data[..3], *offset)
                .unwrap_or_else(|e| panic!("{name}: write after unlink: {e}"));
        }
        assert_eq!(
            stat_errno(path),
            Some(libc::ENOENT),
            "{name}: stat after a write through the fd"
        );
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, 0)
            .unwrap_or_else(|e| panic!("{name}: read through the fd: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(data),
            "{name}: the open fd reads what was written"
        );
        file.sync_all()
            .unwrap_or_else(|e| panic!("{name}: fsync of the unlinked file: {e}"));
        assert_eq!(
            stat_errno(path),
            Some(libc::ENOENT),
            "{name}: stat after fsync"
        );
        assert!(!listed(&mount.dir, name), "{name}: listed after fsync");
    }
    for (name, path, file, _, _) in files {
        assert_eq!(close(file), (0, 0), "{name}: close of the unlinked file");
        assert_eq!(
            stat_errno(&path),
            Some(libc::ENOENT),
            "{name}: stat after close"
        );
        assert!(!listed(&mount.dir, name), "{name}: listed after close");
        assert_eq!(
            ctx.read_direct(name).await,
            None,
            "{name}: uploaded to the provider after unlink"
        );
    }
    let mount = remount(mount);
    for name in ["new.txt", "old.txt"] {
        assert_eq!(
            stat_errno(&mount.path(name)),
            Some(libc::ENOENT),
            "{name}: after a remount"
        );
        assert!(!listed(&mount.dir, name), "{name}: listed after a remount");
        assert_eq!(
            ctx.read_direct(name).await,
            None,
            "{name}: on the provider after a remount"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rename while open.

async fn rename_while_open_publishes_under_the_new_name(case: Case) {
    let (ctx, mount) = mount_for(case, "rename-open");
    let d = p(&mount.dir).to_string();

    // The shell keeps `f` open as stdout while `mv` renames it.
    let (ok, err) = sh(&format!("cd '{d}' && (echo foo; mv f f.new) > f"));
    assert!(ok, "(echo foo; mv f f.new) > f: {err}");
    // A raw fd: write, rename, write more, close.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("g"))
        .unwrap();
    file.write_all(b"before rename, ")
        .unwrap_or_else(|e| panic!("write to g: {e}"));
    std::fs::rename(mount.path("g"), mount.path("g.new"))
        .unwrap_or_else(|e| panic!("rename g -> g.new while g is open: {e}"));
    file.write_all(b"after rename")
        .unwrap_or_else(|e| panic!("write to g after the rename: {e}"));
    assert_eq!(close(file), (0, 0), "close of the renamed g");
    // An existing, already uploaded file open for writing when renamed.
    std::fs::write(mount.path("h"), b"uploaded\n").unwrap();
    assert_eq!(
        ctx.read_direct("h").await.as_deref(),
        Some(&b"uploaded\n"[..]),
        "h uploaded first"
    );
    let mut file = OpenOptions::new()
        .append(true)
        .open(mount.path("h"))
        .unwrap();
    file.write_all(b"more\n")
        .unwrap_or_else(|e| panic!("append to h: {e}"));
    std::fs::rename(mount.path("h"), mount.path("h.new"))
        .unwrap_or_else(|e| panic!("rename h -> h.new while h is open: {e}"));
    file.write_all(b"again\n")
        .unwrap_or_else(|e| panic!("write to h after the rename: {e}"));
    assert_eq!(close(file), (0, 0), "close of the renamed h");

    for (old, new, want) in [
        ("f", "f.new", &b"foo\n"[..]),
        ("g", "g.new", &b"before rename, after rename"[..]),
        ("h", "h.new", &b"uploaded\nmore\nagain\n"[..]),
    ] {
        assert_eq!(
            std::fs::read(mount.path(new))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok(),
            Some(String::from_utf8_lossy(want).into_owned()),
            "{new} on the mount"
        );
        assert_eq!(
            ctx.read_direct(new)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            Some(String::from_utf8_lossy(want).into_owned()),
            "{new} on the provider"
        );
        assert_eq!(
            stat_errno(&mount.path(old)),
            Some(libc::ENOENT),
            "{old} on the mount"
        );
        assert!(!listed(&mount.dir, old), "{old} listed");
        assert_eq!(
            ctx.read_direct(old)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            None,
            "{old} on the provider"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reads right after close, write-back and write-through.

async fn reads_after_close_show_the_new_content(case: Case) {
    let wb = |c: ConfigBuilder| c.route(RouteBuilder::prefix("wb", &case.name()).write_back());
    let (ctx, mount) = mount_tuned(case, "read-after-close", wb, |r| r, &[]);
    run("mkdir", &[p(&mount.path("wb")), p(&mount.path("wt"))]);
    let check = |rel: &str, when: &str| {
        let path = mount.path(rel);
        let cat = Command::new("cat").arg(&path).output().unwrap();
        assert!(
            cat.status.success() && cat.stdout == b"hello\n",
            "{rel} {when}: cat gave {:?} {}",
            String::from_utf8_lossy(&cat.stdout),
            String::from_utf8_lossy(&cat.stderr)
        );
        let stat = Command::new("stat")
            .args(["-c", "%s", p(&path)])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stat.stdout).trim(),
            "6",
            "{rel} {when}: stat size ({})",
            String::from_utf8_lossy(&stat.stderr)
        );
    };

    // Write-through: right after close the mount shows the new content, and the provider has it already.
    let (ok, err) = sh(&format!("echo hello > '{}'", p(&mount.path("wt/f"))));
    assert!(ok, "echo hello > wt/f: {err}");
    check("wt/f", "right after close");
    assert_eq!(
        ctx.read_direct("wt/f").await.as_deref(),
        Some(&b"hello\n"[..]),
        "wt/f on the provider at close"
    );
    for i in 0..5 {
        check("wt/f", &format!("check {i} after close"));
    }

    // Write-back: every look until the upload is done, and a few right after, shows the new content.
    let (ok, err) = sh(&format!("echo hello > '{}'", p(&mount.path("wb/f"))));
    assert!(ok, "echo hello > wb/f: {err}");
    let started = Instant::now();
    let mut polls = 0;
    loop {
        check(
            "wb/f",
            &format!("at poll {polls}, before the upload completed"),
        );
        polls += 1;
        if ctx.read_direct("wb/f").await.is_some() {
            break;
        }
        assert!(
            started.elapsed() < BACKGROUND_DEADLINE,
            "wb/f not on the provider after {BACKGROUND_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        ctx.read_direct("wb/f").await.as_deref(),
        Some(&b"hello\n"[..]),
        "wb/f on the provider"
    );
    for i in 0..5 {
        check("wb/f", &format!("check {i} after the upload completed"));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A write-back route whose provider fails after `close` acknowledged a version: on S3 the fault proxy in front of
// SeaweedFS answers 503 to uploads (reads go on); on a local provider the folder is made immutable. A write-back
// version stays journaled and pending whatever its upload's error, so both show the same lifecycle.

/// Few retries, short timeouts, frequent retry passes, so an outage is seen quickly and the mount catches up fast.
fn outage_settings(config: ConfigBuilder) -> ConfigBuilder {
    config
        .retry(1, 0.05)
        .setting("timeouts.connect", 1)
        .setting("timeouts.read", 2)
        .setting("timeouts.first_byte", 2)
        .setting("failover.failure_threshold", 2)
        .setting("failover.cooldown", 0.5)
        .setting("failover.heal_interval", 0.3)
}

/// A write-back mount of one S3 provider reached through a fault proxy, and that provider reached directly.
fn write_back_behind_proxy(dir: &Path, test: &str) -> (Proxy, Mount, Arc<Provider>) {
    behind_proxy(dir, test, outage_settings, RouteBuilder::write_back, &[])
}

/// A mount of one S3 provider reached through a fault proxy (with `settings`, keys of the `[default]` route added
/// by `route` and command-line arguments), and that provider reached directly.
fn behind_proxy(
    dir: &Path,
    test: &str,
    settings: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    route: impl FnOnce(RouteBuilder) -> RouteBuilder,
    args: &[&str],
) -> (Proxy, Mount, Arc<Provider>) {
    common::set_secret_env();
    let real = ProviderTable::new(Case::S3, "s3", &unique(test), dir);
    let (proxy, via_proxy) = real.behind_proxy();
    let config = ConfigBuilder::new(&dir.join("cache"))
        .provider_table(&via_proxy)
        .default_route(route(RouteBuilder::to("s3")));
    let mount = Mount::start_with(dir, &settings(config), args);
    (proxy, mount, real.direct(dir))
}

async fn stored(provider: &Provider, path: &str) -> Option<String> {
    common::read_direct(provider, path)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Polls until the provider holds `want` at `path` (bounded); returns every distinct value seen on the way.
async fn wait_stored(
    provider: &Provider,
    path: &str,
    want: &str,
    deadline: Duration,
) -> Vec<Option<String>> {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let now = stored(provider, path).await;
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.as_deref() == Some(want) || started.elapsed() > deadline {
            return seen;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn cat(path: &Path) -> Result<String, String> {
    let out = Command::new("cat").arg(path).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A listing the provider answered before a background upload finished, and the mount received after it (the
/// upload published meanwhile): what it says of the file is older than what the mount knows, so it must not
/// replace it. Before, the old version's size and ETag came back: `cat` right after read a truncated file or
/// failed with ESTALE (its read was pinned to a version no longer on the provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_older_than_an_upload_does_not_bring_the_old_version_back() {
    let dir = scratch();
    let addr = common::free_local_addr();
    let (proxy, mount, direct) = behind_proxy(
        dir.path(),
        "stale-listing",
        |c| c,
        RouteBuilder::write_back,
        &["--metrics-addr", &addr],
    );

    // Larger than the objects a listing asks about one by one (their type), so the listing alone speaks for f.
    let old = "old version\n".repeat(1000);
    let new = "the new version, longer than the old one\n".repeat(1000);
    // At the top: a listing of the root is the only one asked (a subfolder's lookup lists it too).
    let f = mount.path("f");
    std::fs::write(&f, &old).unwrap();
    uploaded(&direct, &addr, "f", &old).await;
    assert_eq!(cat(&f).as_deref(), Ok(old.as_str()));
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    file.write_all(new.as_bytes()).unwrap();

    // The listing is answered now, while the provider holds the old version, and reaches the mount only after the
    // new version was uploaded and published.
    proxy.set(Fault::HoldListings);
    let listing = {
        let d = mount.path("");
        std::thread::spawn(move || {
            std::fs::read_dir(&d)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        e.metadata().map(|m| m.len()),
                    )
                })
                .collect::<Vec<_>>()
        })
    };
    proxy.wait_held(1);
    drop(file); // close: the new version goes up in the background
    uploaded(&direct, &addr, "f", &new).await;
    proxy.release(); // (later listings pass at once)
    let listed = listing.join().unwrap();
    assert!(
        listed.iter().any(|(name, _)| name == "f"),
        "the listing shows f: {listed:?}"
    );

    for look in 0..3 {
        assert_eq!(
            std::fs::metadata(&f).map(|m| m.len()).ok(),
            Some(new.len() as u64),
            "stat size, look {look}"
        );
        assert_eq!(cat(&f).as_deref(), Ok(new.as_str()), "cat, look {look}");
    }
    let listed_again: Vec<_> = std::fs::read_dir(mount.path(""))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(
        listed_again,
        vec![new.len() as u64],
        "a later listing's size"
    );
    eprintln!("LOG {}", mount.log());
}

/// `rsync -a` into a write-back route: each file is written under a temporary name, closed, given its times and
/// mode, and renamed into place, within milliseconds. Those changes join the journaled version while its upload
/// waits (`write_back_delay`), so each file is uploaded once, under its final name: the provider receives exactly
/// the tree's bytes (before, the version closed under the temporary name went up too: about twice the tree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_into_a_write_back_route_uploads_each_file_once() {
    let dir = scratch();
    let addr = common::free_local_addr();
    let (_proxy, mount, direct) = behind_proxy(
        dir.path(),
        "rsync-once",
        |c| c.setting("mount.write_back_delay", 5),
        RouteBuilder::write_back,
        &["--metrics-addr", &addr],
    );
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let mut total = 0;
    for i in 0..12 {
        let data = pattern(1000 + i * 7919, i as u8);
        total += data.len();
        let name = if i % 2 == 0 {
            format!("f{i}.txt")
        } else {
            format!("sub/g{i}.bin")
        };
        std::fs::write(tree.join(&name), data).unwrap();
    }
    run("chmod", &["0600", p(&tree.join("f0.txt"))]);
    let before = common::metric(&addr, "zmount_provider_written_bytes_total", "s3").await;
    run(
        "rsync",
        &["-a", &format!("{}/", p(&tree)), p(&mount.path("t"))],
    );
    uploads_idle(&addr).await;
    for i in 0..12 {
        let name = if i % 2 == 0 {
            format!("t/f{i}.txt")
        } else {
            format!("t/sub/g{i}.bin")
        };
        let stored = common::read_direct(&direct, &name).await;
        assert_eq!(
            stored.as_deref(),
            Some(&pattern(1000 + i * 7919, i as u8)[..]),
            "{name}"
        );
    }
    let written = common::metric(&addr, "zmount_provider_written_bytes_total", "s3").await - before;
    assert_eq!(
        written as usize, total,
        "bytes uploaded for a {total}-byte tree"
    );
    run(
        "rsync",
        &["-ac", &format!("{}/", p(&tree)), p(&mount.path("t"))],
    );
    let again = common::metric(&addr, "zmount_provider_written_bytes_total", "s3").await - before;
    assert_eq!(again, written, "a second rsync -ac finds nothing to do");
    let stat = std::fs::metadata(mount.path("t/f0.txt")).unwrap();
    assert_eq!(stat.mode() & 0o777, 0o600);
}

/// Waits until the provider holds `want` at `path` and the mount (metrics at `addr`) has no upload running or
/// pending: the version is published.
async fn uploaded(provider: &Provider, addr: &str, path: &str, want: &str) {
    let seen = wait_stored(provider, path, want, BACKGROUND_DEADLINE).await;
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some(want),
        "{path} on the provider"
    );
    uploads_idle(addr).await;
}

/// Waits until the mount (metrics at `addr`) has no upload running or pending.
async fn uploads_idle(addr: &str) {
    let started = Instant::now();
    loop {
        let text = common::metrics(addr).await;
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in the metrics"))
                .trim()
                .to_string()
        };
        if gauge("zmount_uploads_running") == "0" && gauge("zmount_uploads_pending") == "0" {
            return;
        }
        assert!(
            started.elapsed() < BACKGROUND_DEADLINE,
            "uploads still running"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Row 4 on a local provider: its folder made immutable (`chattr +i`, which root cannot write through either) fails
/// every upload while reads go on, as a provider answering 503 to writes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_write_back_failure_keeps_the_newest_version() {
    let write_back = RouteBuilder::write_back;
    let (ctx, mount) = mount_tuned(Case::Local, "wb-local-fail", |c| c, write_back, &[]);
    let f = mount.path("f");
    std::fs::write(&f, b"A\n").unwrap();
    let seen = wait_stored(&ctx.provider, "f", "A\n", BACKGROUND_DEADLINE).await;
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some("A\n"),
        "version A uploaded"
    );
    let folder = ctx
        .dir
        .path()
        .join(format!("{}-root", ctx.provider.name))
        .join(&ctx.provider.prefix);
    /// Keeps the folder immutable until dropped (also when an assertion fails, so the scratch can be removed).
    struct Immutable(PathBuf);
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }
    run("chattr", &["+i", p(&folder)]);
    let held = Immutable(folder.clone());
    write_b_during_the_outage(&f);
    let (ok, err) = sh(&format!("echo C >> '{}'", p(&f)));
    assert!(ok, "echo C >> f while uploads fail: {err}");
    assert_eq!(
        cat(&f),
        Ok("B\nC\n".to_string()),
        "f on the mount while uploads fail"
    );
    assert_eq!(
        std::fs::metadata(&f).map(|m| m.len()).ok(),
        Some(4),
        "stat size"
    );
    assert_eq!(
        stored(&ctx.provider, "f").await.as_deref(),
        Some("A\n"),
        "nothing uploaded meanwhile"
    );
    drop(held);
    let mount = remount(mount); // unmount retries the pending upload, now that the folder takes it
    assert_eq!(
        stored(&ctx.provider, "f").await.as_deref(),
        Some("B\nC\n"),
        "B + C, never A + C"
    );
    assert_eq!(cat(&mount.path("f")), Ok("B\nC\n".to_string()));
}

/// Version B of `f` over the version on the provider, acknowledged by a write-back `close` while uploads fail.
fn write_b_during_the_outage(f: &Path) {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(f)
        .expect("open f during the outage");
    file.write_all(b"B\n")
        .unwrap_or_else(|e| panic!("write B to f during the outage: {e}"));
    assert_eq!(
        close(file),
        (0, 0),
        "write-back close of B during the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_outage_keeps_the_newest_version() {
    let dir = scratch();
    let (proxy, mut mount, s3) = write_back_behind_proxy(dir.path(), "wb-outage");
    let (f, g) = (mount.path("f"), mount.path("g"));
    for (path, name) in [(&f, "f"), (&g, "g")] {
        let (ok, err) = sh(&format!("echo A > '{}'", p(path)));
        assert!(ok, "echo A > {name}: {err}");
        let seen = wait_stored(&s3, name, "A\n", BACKGROUND_DEADLINE).await;
        assert_eq!(
            seen.last().cloned().flatten().as_deref(),
            Some("A\n"),
            "{name}: version A uploaded"
        );
    }

    proxy.set(Fault::Fail503Uploads); // every upload is answered 503 from now on (reads still work)
    write_b_during_the_outage(&f);
    let (ok, err) = sh(&format!("echo C >> '{}'", p(&f)));
    assert!(ok, "echo C >> f during the outage: {err}");
    assert_eq!(
        cat(&f),
        Ok("B\nC\n".to_string()),
        "f on the mount during the outage"
    );
    assert_eq!(
        std::fs::metadata(&f).map(|m| m.len()).ok(),
        Some(4),
        "stat size of f during the outage"
    );

    // Truncate and rename a file whose newest version exists only locally.
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&g)
        .expect("open g during the outage");
    file.write_all(b"B-g-content\n")
        .unwrap_or_else(|e| panic!("write to g during the outage: {e}"));
    assert_eq!(
        close(file),
        (0, 0),
        "write-back close of g during the outage"
    );
    let (ok, err) = try_run("truncate", &["-s", "3", p(&g)]);
    assert!(ok, "truncate g during the outage: {err}");
    let (ok, err) = try_run("mv", &[p(&g), p(&mount.path("g2"))]);
    assert!(ok, "mv g g2 during the outage: {err}\n{}", mount.log());
    assert_eq!(
        cat(&mount.path("g2")),
        Ok("B-g".to_string()),
        "g2 on the mount during the outage"
    );
    assert_eq!(
        stat_errno(&g),
        Some(libc::ENOENT),
        "g on the mount after mv"
    );
    assert_eq!(
        stored(&s3, "f").await.as_deref(),
        Some("A\n"),
        "the outage kept B from the provider"
    );

    proxy.set(Fault::None);
    let seen = wait_stored(&s3, "f", "B\nC\n", Duration::from_secs(15)).await;
    assert!(
        !seen.contains(&Some("A\nC\n".to_string())),
        "the provider held A+C at some point: {seen:?}"
    );
    let status = mount.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "unmount after the outage: {status}\n{}",
        mount.log()
    );
    assert_eq!(
        stored(&s3, "f").await.as_deref(),
        Some("B\nC\n"),
        "f on the provider (seen before: {seen:?})"
    );
    assert_eq!(
        stored(&s3, "g2").await.as_deref(),
        Some("B-g"),
        "g2 on the provider"
    );
    assert_eq!(stored(&s3, "g").await, None, "g on the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_pending_version_survives_a_remount_during_the_outage() {
    let dir = scratch();
    let (proxy, mut mount, s3) = write_back_behind_proxy(dir.path(), "wb-remount");
    let f = mount.path("f");
    let (ok, err) = sh(&format!("echo A > '{}'", p(&f)));
    assert!(ok, "echo A > f: {err}");
    let seen = wait_stored(&s3, "f", "A\n", BACKGROUND_DEADLINE).await;
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some("A\n"),
        "version A uploaded"
    );

    proxy.set(Fault::Fail503Uploads);
    write_b_during_the_outage(&f);
    let (config, mnt) = (mount.config.clone(), mount.dir.clone());
    // Whether an unmount that leaves uploads pending exits 0 is not part of what is checked here.
    mount.stop_with(libc::SIGTERM);
    assert_eq!(
        stored(&s3, "f").await.as_deref(),
        Some("A\n"),
        "B not uploaded during the outage"
    );

    let mount = Mount::start_at(&config, &mnt, &[]); // the provider still fails
    assert_eq!(
        cat(&mount.path("f")),
        Ok("B\n".to_string()),
        "f after a remount during the outage"
    );
    assert_eq!(
        std::fs::metadata(mount.path("f")).map(|m| m.len()).ok(),
        Some(2),
        "stat size after the remount"
    );

    proxy.set(Fault::None);
    let seen = wait_stored(&s3, "f", "B\n", BACKGROUND_DEADLINE).await;
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some("B\n"),
        "B reaches the provider once it answers: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|v| matches!(v.as_deref(), Some("A\n" | "B\n"))),
        "provider values seen: {seen:?}"
    );
    assert_eq!(
        cat(&mount.path("f")),
        Ok("B\n".to_string()),
        "f on the mount after the upload"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// A full cache disk.

/// A tmpfs mounted for the test's cache folder, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                p(&dir),
            ],
        );
        Tmpfs(dir)
    }

    /// Bytes free, by statvfs.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(p(&self.0)).unwrap();
        // SAFETY: statvfs into a zeroed struct of the right type, with a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::statvfs(path.as_ptr(), &mut s) },
            0,
            "statvfs"
        );
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const CACHE_TMPFS: &str = "64m";
const CACHE_SIZE: u64 = 16 << 20;
const BIG: usize = 100 << 20;

/// A mount whose cache folder is a 64 MiB tmpfs, an existing object `f`, and a 100 MiB source file. `f` has been
/// read through the mount once, so its blocks are already in the cache when the free space is measured.
async fn full_disk_setup(
    case: Case,
    test: &str,
    holder: &Path,
) -> (Tmpfs, Ctx, Mount, Vec<u8>, PathBuf) {
    let tmpfs = Tmpfs::mount(holder.join("cache"), CACHE_TMPFS);
    let on_tmpfs = |c: ConfigBuilder| {
        c.setting("cache_dir", tmpfs.0.display().to_string())
            .setting("cache_size", format!("{} MiB", CACHE_SIZE >> 20))
    };
    let (ctx, mount) = mount_tuned(case, test, on_tmpfs, |r| r, &[]);
    let old = pattern(300_000, 42);
    ctx.seed("f", &old).await;
    assert!(
        std::fs::read(mount.path("f")).unwrap() == old,
        "seeded f reads back"
    );
    let source = ctx.dir.path().join("big.bin");
    write_big(&source, BIG, 5);
    (tmpfs, ctx, mount, old, source)
}

async fn full_cache_disk_fails_the_copy_and_keeps_the_old_version(case: Case) {
    let holder = scratch();
    let (_tmpfs, ctx, mount, old, source) = full_disk_setup(case, "enospc", holder.path()).await;
    for name in ["f", "g"] {
        let (ok, err) = try_run("cp", &[p(&source), p(&mount.path(name))]);
        assert!(
            !ok,
            "cp of 100 MiB to {name} through a 64 MiB cache disk succeeded"
        );
        assert!(
            err.contains("No space left on device"),
            "cp to {name}: {err}"
        );
    }
    assert_nothing_published(&ctx, &mount, &old).await;
}

async fn after_a_full_cache_disk_small_writes_work_and_the_space_returns(case: Case) {
    let holder = scratch();
    let (tmpfs, ctx, mount, _old, source) =
        full_disk_setup(case, "enospc-after", holder.path()).await;
    let before = tmpfs.free();
    // The failing copies of full_cache_disk_fails_the_copy_and_keeps_the_old_version (checked there, not here).
    for name in ["f", "g"] {
        let _ = try_run("cp", &[p(&source), p(&mount.path(name))]);
    }
    let (ok, err) = sh(&format!("echo tiny > '{}'", p(&mount.path("other"))));
    assert!(ok, "echo tiny > other after the failed copies: {err}");
    assert_eq!(
        ctx.read_direct("other").await.as_deref(),
        Some(&b"tiny\n"[..]),
        "other on the provider"
    );
    // A staged copy left behind by a failed cp would hold tens of MiB of the 64; the disk cache may keep up to
    // its cap of blocks.
    let after = tmpfs.free();
    let slack = CACHE_SIZE + (1 << 20);
    assert!(
        after + slack >= before,
        "cache disk free: {} MiB before the copies, {} MiB after (allowed: {} MiB less)\n{}",
        before >> 20,
        after >> 20,
        slack >> 20,
        run("find", &[p(&tmpfs.0), "-type", "f", "-size", "+1M"])
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The global size limit.

async fn size_limit_fails_the_copy_and_publishes_nothing(case: Case) {
    let limit = |c: ConfigBuilder| c.setting("max_file_size", "10 MiB");
    let (ctx, mount) = mount_tuned(case, "efbig", limit, |r| r, &[]);
    let old = pattern(100_000, 3);
    ctx.seed("f", &old).await;
    let source = ctx.dir.path().join("twelve.bin");
    write_big(&source, 12_000_000, 8);
    for name in ["f", "g"] {
        let (ok, err) = try_run("cp", &[p(&source), p(&mount.path(name))]);
        assert!(!ok, "cp of 12 MB to {name} past a 10 MiB limit succeeded");
        assert!(err.contains("File too large"), "cp to {name}: {err}");
    }
    assert_nothing_published(&ctx, &mount, &old).await;
}

/// After a failed copy over `f` (holding `old`) and to a new `g`: the provider and the mount still show the old
/// `f`, and no `g`.
async fn assert_nothing_published(ctx: &Ctx, mount: &Mount, old: &[u8]) {
    let stored = ctx.read_direct("f").await;
    assert!(
        stored.as_deref() == Some(old),
        "the provider's f is the old version (got {:?} bytes, want {})",
        stored.map(|b| b.len()),
        old.len()
    );
    assert_eq!(
        ctx.read_direct("g").await.map(|b| b.len()),
        None,
        "g on the provider"
    );
    let shown = std::fs::read(mount.path("f")).map_err(|e| e.to_string());
    assert!(
        shown.as_ref().is_ok_and(|b| b == old),
        "f on the mount after the failed cp: {:?}",
        shown.map(|b| b.len())
    );
    assert_eq!(
        stat_errno(&mount.path("g")),
        Some(libc::ENOENT),
        "g on the mount after the failed cp"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// No orphaned multipart upload. S3 only: multipart uploads are an object-store protocol; a local provider
// writes files, and has nothing that could be left incomplete on a server.

/// SeaweedFS's filer, which `scripts/test-servers.sh` starts on this port (`-filer.port=18888`).
const FILER: &str = "http://127.0.0.1:18888";

/// Incomplete multipart uploads of `key` on the S3 test server. The filer keeps each under
/// `/buckets/<bucket>/.uploads/<sha1(key)>_<id>`, with the key base64-encoded in its `Extended.key`; completing or
/// aborting an upload removes the entry.
async fn incomplete_uploads(key: &str) -> Vec<String> {
    let bucket = server("ZMOUNT_TEST_S3_BUCKET");
    let client = common::http();
    let mut found = Vec::new();
    let mut last = String::new();
    loop {
        let url = format!(
            "{FILER}/buckets/{bucket}/.uploads/?limit=1000&lastFileName={}",
            url::form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
        );
        let resp = client
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return found; // no upload was ever started in this bucket
        }
        assert!(
            resp.status().is_success(),
            "filer listing: {}",
            resp.status()
        );
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        let entries = body["Entries"].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            let encoded = entry["Extended"]["key"].as_str().unwrap_or("");
            if base64_decode(encoded).as_deref() == Some(key.as_bytes()) {
                found.push(entry["FullPath"].as_str().unwrap_or("?").to_string());
            }
        }
        if entries.is_empty() || body["ShouldDisplayLoadMore"] != serde_json::Value::Bool(true) {
            return found;
        }
        last = body["LastFileName"].as_str().unwrap_or("").to_string();
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Polls until the server has no incomplete upload of `key` (bounded); returns what is left.
async fn wait_no_uploads(key: &str, deadline: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        let left = incomplete_uploads(key).await;
        if left.is_empty() || started.elapsed() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A folder renamed while a file in it is being written front to back, past the size where its bytes start
/// streaming to the provider: the old name is gone right after the rename and stays gone after the close and a
/// remount (a local provider's upload keeps a temporary file in the folder until it is aborted), and the file is
/// published whole under the new name only.
async fn a_folder_renamed_while_a_file_in_it_streams_leaves_nothing_behind(case: Case) {
    let (ctx, mount) = mount_for(case, "rename-streaming");
    // SeaweedFS keeps listing a folder whose last object is gone (SEMANTICS.md): on S3 `b` may stay as that.
    let names = |mount: &Mount| {
        let mut names: Vec<String> = std::fs::read_dir(&mount.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !(case == Case::S3 && name == "b"))
            .collect();
        names.sort();
        names
    };
    std::fs::create_dir(mount.path("b")).unwrap();
    let data = pattern(20 << 20, 23);
    let mut file = std::fs::File::create(mount.path("b/f")).unwrap();
    file.write_all(&data[..12 << 20]).unwrap();
    std::fs::rename(mount.path("b"), mount.path("a"))
        .unwrap_or_else(|e| panic!("rename b -> a while b/f streams: {e}"));
    assert_eq!(names(&mount), ["a"], "right after the rename");
    file.write_all(&data[12 << 20..]).unwrap();
    assert_eq!(close(file), (0, 0), "close of a/f");
    let mount = remount(mount);
    assert_eq!(names(&mount), ["a"], "after the close and a remount");
    assert!(
        ctx.read_direct("a/f").await.as_deref() == Some(&data[..]),
        "a/f on the provider, whole"
    );
    assert!(
        ctx.read_direct("b/f").await.is_none(),
        "nothing under the old name"
    );
    assert!(std::fs::read(mount.path("a/f")).unwrap() == data);
}

/// Writes `data` in 1 MiB steps until the server shows a multipart upload of `key` in progress and at least
/// `min` bytes are written; returns how many bytes were written. Fails if no upload starts.
async fn write_until_multipart(
    file: &mut std::fs::File,
    data: &[u8],
    key: &str,
    min: usize,
) -> usize {
    let mut written = 0;
    for chunk in data.chunks(1 << 20) {
        file.write_all(chunk)
            .unwrap_or_else(|e| panic!("sequential write: {e}"));
        written += chunk.len();
        if written >= min && !incomplete_uploads(key).await.is_empty() {
            return written;
        }
    }
    let started = Instant::now();
    while incomplete_uploads(key).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "precondition: no multipart upload of {key} in progress after writing {written} bytes sequentially"
        );
        tokio::time::sleep(POLL).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_of_a_killed_daemon_is_not_left_behind() {
    let (ctx, mut mount) = mount_for(Case::S3, "mpu-kill");
    let key = ctx.provider.key_for("big.bin").to_string();
    let data = pattern(64 << 20, 17);
    let mut file = std::fs::File::create(mount.path("big.bin")).unwrap();
    // The upload's record is written durably before the server is asked to create it: killing as soon as the
    // server shows the upload leaves a record, with or without the upload's id.
    write_until_multipart(&mut file, &data, &key, 9 << 20).await;

    let status = mount.stop_with(libc::SIGKILL); // with the file still open
    assert!(!status.success());
    let _ = Command::new("fusermount3")
        .args(["-uz", p(&mount.dir)])
        .status();
    drop(file);
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    let mount = Mount::start_at(&config, &dir, &[]);

    let left = wait_no_uploads(&key, Duration::from_secs(15)).await;
    assert!(
        left.is_empty(),
        "incomplete multipart uploads of {key} after the remount: {left:?}\n{}",
        mount.log()
    );
    assert_eq!(
        ctx.read_direct("big.bin").await.map(|b| b.len()),
        None,
        "never-closed file on the provider"
    );
}

/// A record without an upload id is what a process killed while the server created the upload leaves. The next
/// start lists the key's uploads and aborts the one created near the record's time; an upload of a key whose
/// record is an hour older is someone else's and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_id_was_never_recorded_is_found_and_aborted() {
    let (ctx, mount) = mount_for(Case::S3, "mpu-noid");
    let multipart = ctx
        .provider
        .multipart_store()
        .expect("S3 has multipart uploads");
    let records = ctx.dir.path().join("cache/uploads");
    std::fs::create_dir_all(&records).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut keys = Vec::new();
    // No process has an id this large: both records are of a process that no longer runs.
    for (n, (name, since)) in [("cut.bin", now), ("other.bin", now - 3600)]
        .into_iter()
        .enumerate()
    {
        let key = ctx.provider.key_for(name);
        let id = multipart.create_multipart(&key).await.unwrap();
        let record = serde_json::json!({"provider": ctx.provider.name, "key": key.to_string(), "since": since});
        std::fs::write(
            records.join(format!("4294967294-{n}.json")),
            record.to_string(),
        )
        .unwrap();
        assert_eq!(
            incomplete_uploads(key.as_ref()).await.len(),
            1,
            "precondition"
        );
        keys.push((key.to_string(), id));
    }

    let mount = remount(mount);
    let left = wait_no_uploads(&keys[0].0, Duration::from_secs(15)).await;
    assert!(
        left.is_empty(),
        "upload of {} left: {left:?}\n{}",
        keys[0].0,
        mount.log()
    );
    let started = Instant::now();
    while std::fs::read_dir(&records).unwrap().next().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "records left\n{}",
            mount.log()
        );
        tokio::time::sleep(POLL).await;
    }
    let other = incomplete_uploads(&keys[1].0).await;
    let _ = multipart
        .abort_multipart(&ctx.provider.key_for("other.bin"), &keys[1].1)
        .await;
    assert_eq!(
        other.len(),
        1,
        "the upload created long after its key's record was aborted"
    );
}

/// A record without an id stays when the create's answer is lost (an outage); the same file is then written again
/// into a new upload of the same key. The pass that settles the old record lists that key's uploads: it aborts
/// the orphan, never the upload this process is still streaming (whose completion would then fail, and a program
/// closing the file would hear ENOENT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_an_orphan_record_leaves_a_running_upload_of_the_same_key_alone() {
    use futures::StreamExt;
    let dir = scratch();
    common::set_secret_env();
    let prefix = unique("mpu-live");
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .case(Case::S3, "s3", &prefix, dir.path())
        .default_route(RouteBuilder::to("s3"))
        .build(&dir.path().join("mount.toml"))
        .unwrap();
    let storage = Arc::new(zmount::Storage::new(&config).unwrap());
    let provider = storage.provider("s3").unwrap().clone();
    let multipart = provider
        .multipart_store()
        .expect("S3 has multipart uploads");
    let key = provider.key_for("f1");

    // The orphan: an upload of the key, and a record of a process that no longer runs, without the id.
    let orphan = multipart.create_multipart(&key).await.unwrap();
    let records = dir.path().join("cache/uploads");
    std::fs::create_dir_all(&records).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let record = serde_json::json!({"provider": "s3", "key": key.to_string(), "since": now});
    std::fs::write(records.join("4294967294-0.json"), record.to_string()).unwrap();

    // The running upload, fed chunk by chunk.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok(chunk), rx))
    })
    .boxed();
    let upload = {
        let storage = storage.clone();
        tokio::spawn(async move {
            storage
                .upload_stream("f1", chunks, Default::default())
                .await
        })
    };
    let data = pattern(20 << 20, 31);
    tx.send(bytes::Bytes::copy_from_slice(&data[..9 << 20]))
        .await
        .unwrap();
    let started = Instant::now();
    while incomplete_uploads(key.as_ref()).await.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "precondition: the second upload of {key} never showed"
        );
        tokio::time::sleep(POLL).await;
    }

    // Settled while the upload runs (a pass may wait while the new upload's id is not recorded yet).
    let started = Instant::now();
    loop {
        let aborted = storage.abort_orphaned_uploads().await;
        assert!(
            aborted <= 1,
            "{aborted} uploads of {key} aborted, the running one among them"
        );
        if aborted == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the orphaned upload was never aborted"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        !incomplete_uploads(key.as_ref())
            .await
            .iter()
            .any(|u| u.ends_with(&format!("_{orphan}"))),
        "the orphan is still open"
    );
    assert!(
        std::fs::read_dir(&records)
            .unwrap()
            .flatten()
            .all(|e| e.file_name() != "4294967294-0.json"),
        "the orphan's record is kept"
    );

    tx.send(bytes::Bytes::copy_from_slice(&data[9 << 20..]))
        .await
        .unwrap();
    drop(tx);
    let done = upload.await.unwrap();
    assert!(
        done.is_ok(),
        "the running upload failed: {}",
        done.unwrap_err()
    );
    let stored = common::read_direct(&provider, "f1").await;
    assert!(
        stored.as_deref() == Some(&data[..]),
        "f1 on the provider: {:?} bytes",
        stored.map(|b| b.len())
    );
    assert_eq!(incomplete_uploads(key.as_ref()).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_failed_mid_way_is_not_left_behind() {
    let dir = scratch();
    common::set_secret_env();
    let (proxy, mut mount, direct) =
        behind_proxy(dir.path(), "mpu-fail", outage_settings, |r| r, &[]);
    let key = direct.key_for("big.bin").to_string();

    let data = pattern(24 << 20, 23);
    let mut file = std::fs::File::create(mount.path("big.bin")).unwrap();
    let written = write_until_multipart(&mut file, &data, &key, 9 << 20).await;
    proxy.set(Fault::Fail503Every(1)); // mid-upload, every request fails
    file.write_all(&data[written..]).unwrap_or_else(|e| {
        panic!("write while the provider fails (data goes to the staged copy): {e}")
    });
    let (rc, errno) = close(file);
    assert_eq!(
        rc, -1,
        "close of a file whose upload failed returned 0 (errno {errno})"
    );

    proxy.set(Fault::None);
    let right_after = common::read_direct(&direct, "big.bin")
        .await
        .map(|b| b.len());
    let (config, mnt) = (mount.config.clone(), mount.dir.clone());
    let status = mount.stop_with(libc::SIGTERM); // unmount retries the failed upload
    assert!(status.success(), "unmount: {status}\n{}", mount.log());
    let mount = Mount::start_at(&config, &mnt, &[]);
    let left = wait_no_uploads(&key, Duration::from_secs(15)).await;
    assert!(
        left.is_empty(),
        "incomplete multipart uploads of {key} once the provider is back and the mount retried: {left:?}\n{}",
        mount.log()
    );
    let stored = common::read_direct(&direct, "big.bin").await;
    assert!(
        stored.as_deref() == Some(&data[..]),
        "the staged file reached the provider after the outage (got {:?} bytes; right after healing: {right_after:?})",
        stored.map(|b| b.len())
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Modification times.

fn mtime(path: &Path) -> i64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mtime()
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn mtime_follows_writes_and_explicit_touches(case: Case) {
    let (ctx, mount) = mount_for(case, "mtime");
    let f = p(&mount.path("f")).to_string();
    let (ok, err) = sh(&format!("echo a > '{f}' && touch -d 2020-01-01 '{f}'"));
    assert!(ok, "echo a; touch -d 2020-01-01: {err}");
    let in_2020 = run("date", &["-d", "2020-01-01", "+%s"])
        .trim()
        .parse::<i64>()
        .unwrap();
    assert_eq!(
        mtime(&mount.path("f")),
        in_2020,
        "touch -d 2020-01-01 took effect"
    );
    let start = epoch_now();
    let (ok, err) = sh(&format!("echo b >> '{f}'"));
    assert!(ok, "echo b >> f: {err}");
    let end = epoch_now();
    let near = |t: i64| t >= start - 5 && t <= end + 5;
    let after_append = mtime(&mount.path("f"));
    assert!(
        near(after_append),
        "mtime after the append: {after_append}, the append ran at {start}..{end}"
    );
    let info = ctx
        .storage
        .get_info("f")
        .await
        .unwrap_or_else(|e| panic!("provider info of f: {e}"));
    let stored = info
        .metadata
        .get("mtime")
        .and_then(|v| v.parse::<i64>().ok());
    assert!(
        stored.is_none_or(near),
        "the provider's mtime metadata after the append: {stored:?}, the append ran at {start}..{end}"
    );

    let mount = remount(mount);
    let remounted = mtime(&mount.path("f"));
    assert!(
        near(remounted),
        "mtime after a remount: {remounted}, the append ran at {start}..{end}"
    );
    assert_eq!(
        std::fs::read(mount.path("f")).unwrap(),
        b"a\nb\n",
        "content after a remount"
    );

    run("touch", &["-d", "2021-05-05", p(&mount.path("f"))]);
    let in_2021 = run("date", &["-d", "2021-05-05", "+%s"])
        .trim()
        .parse::<i64>()
        .unwrap();
    assert_eq!(mtime(&mount.path("f")), in_2021, "touch -d 2021-05-05");
    let info = ctx
        .storage
        .get_info("f")
        .await
        .unwrap_or_else(|e| panic!("provider info of f: {e}"));
    assert_eq!(
        info.metadata.get("mtime").map(String::as_str),
        Some(in_2021.to_string().as_str()),
        "the provider's mtime metadata after touch"
    );
    let mount = remount(mount);
    assert_eq!(
        mtime(&mount.path("f")),
        in_2021,
        "touch -d 2021-05-05, after a remount"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Every fork + exec of a process that holds a file open closes the child's copy of the descriptor, and the kernel
// sends the mount a FLUSH for it, as if the file were closed. Only the opener's close may publish.

async fn a_child_closing_an_inherited_descriptor_publishes_nothing(case: Case) {
    let (ctx, mount) = mount_for(case, "child-close");
    let path = mount.path("f");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(b"first half, ").unwrap();
    // The child inherits the descriptor (close-on-exec closes its copy when it runs `true`).
    let status = Command::new("true").status().unwrap();
    assert!(status.success());
    assert_eq!(
        ctx.read_direct("f").await,
        None,
        "nothing is published while the opener still writes"
    );
    file.write_all(b"second half").unwrap();
    assert_eq!(close(file), (0, 0), "the opener's close");
    assert_eq!(
        ctx.read_direct("f").await.as_deref(),
        Some(&b"first half, second half"[..]),
        "the opener's close publishes the whole file"
    );
}
