//! A mount is a privilege boundary: what it serves, to whom, and what it leaves on the machine. The local provider
//! never leaves its folder; files under `cache_dir` are private to the user running zmount.

mod common;

use common::mount::{mount_for, mount_for_with, run};
use common::{Case, TestConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use zmount::config::{ConfigBuilder, RouteBuilder};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The links of the confinement report, made in a local provider's folder by someone with access to it: each shows
/// on the mount as a symlink with its target verbatim; zmount follows none of them, so a listing never walks out of
/// the folder, removing a link removes only the link, and another user resolving a link gets that user's own
/// rights on the target (not the daemon's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_never_leaves_its_folder() {
    let (ctx, mount) = mount_for_with(Case::Local, "confine", &["--allow-other"]);
    let folder = ctx
        .dir
        .path()
        .join(format!("{}-root", ctx.provider.name))
        .join(&ctx.provider.prefix);
    let outside = ctx.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(outside.join("secret.txt"), b"outside the folder\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", folder.join("shadow_link")).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("out")).unwrap();
    std::os::unix::fs::symlink("../../..", folder.join("up")).unwrap();

    for (name, target) in [
        ("shadow_link", Path::new("/etc/shadow")),
        ("out", outside.as_path()),
        ("up", Path::new("../../..")),
    ] {
        let meta = std::fs::symlink_metadata(mount.path(name))
            .unwrap_or_else(|e| panic!("lstat {name} on the mount: {e}"));
        assert!(
            meta.file_type().is_symlink(),
            "{name} is a symlink on the mount"
        );
        assert_eq!(
            std::fs::read_link(mount.path(name)).unwrap(),
            target,
            "{name}'s target, verbatim"
        );
    }
    let listed = run("find", &[p(&mount.dir)]);
    assert!(
        !listed.contains("secret.txt") && !listed.contains("passwd"),
        "a listing walked through a link:\n{listed}"
    );

    // Another user resolves the link with that user's rights: /etc/shadow stays unreadable to nobody.
    let mut up = mount.dir.clone();
    while up.pop() {
        if up.starts_with(ctx.dir.path()) {
            std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(mount.path("shadow_link"))
        .output()
        .unwrap();
    assert!(
        !as_nobody.status.success()
            && String::from_utf8_lossy(&as_nobody.stderr).contains("Permission denied"),
        "cat shadow_link as nobody: {:?} {}",
        as_nobody.status,
        String::from_utf8_lossy(&as_nobody.stdout)
    );

    // Removing a link removes the link, never what it points at.
    std::fs::remove_file(mount.path("out")).unwrap();
    assert!(
        std::fs::symlink_metadata(folder.join("out")).is_err(),
        "the link is gone"
    );
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"outside the folder\n"
    );
    // A link made through the mount is a link in the folder.
    std::os::unix::fs::symlink("some/where", mount.path("made")).unwrap();
    assert_eq!(
        std::fs::read_link(folder.join("made")).unwrap(),
        Path::new("some/where")
    );
}

/// Everything zmount keeps under `cache_dir` (blocks, staging copies, journals, status, lock, log) is private to
/// the user running it, whatever the umask: folders 0700, files 0600. What an older version left open is tightened
/// at start (one warning), and `zmount check` warns about an open `cache_dir`. Files of a local provider keep the
/// modes the user's umask gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_files_are_private_to_the_user_running_zmount() {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // SAFETY: umask swaps the mask of this test process, which the spawned zmount inherits.
    unsafe { libc::umask(0o022) };
    let dir = common::scratch();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("blocks/old")).unwrap();
    std::fs::write(
        cache.join("blocks/old/leftover"),
        b"an older version's block",
    )
    .unwrap();
    for path in [
        cache.clone(),
        cache.join("blocks"),
        cache.join("blocks/old"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("seeded.bin"), common::pattern(3 << 20, 7)).unwrap();
    let config = ConfigBuilder::new(&cache)
        .local("loc", &folder)
        .route(RouteBuilder::prefix("wb", "loc").write_back())
        .default_route(RouteBuilder::to("loc"));
    std::fs::write(dir.path().join("mount.toml"), config.text()).unwrap();

    let check = common::zmount(&["check", p(&dir.path().join("mount.toml"))]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && said.contains("WARN  cache_dir") && said.contains("mode 755"),
        "zmount check of an open cache dir:\n{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mount = common::mount::Mount::start(dir.path(), &config);
    std::fs::create_dir_all(mount.path("wb")).unwrap();
    for name in ["private.txt", "wb/private.txt"] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(mount.path(name))
            .unwrap();
        std::io::Write::write_all(&mut file, b"for my eyes only\n").unwrap();
        file.sync_all().unwrap();
    }
    assert_eq!(
        common::mount::sha256(&mount.path("seeded.bin")),
        common::mount::sha256(&folder.join("seeded.bin")),
        "a read through the block cache"
    );
    let mut open = Vec::new();
    let mut files = 0;
    let mut pending = vec![cache.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.mode() & 0o077 != 0 {
            open.push(format!("{:o} {}", meta.mode() & 0o7777, path.display()));
        }
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
        }
    }
    assert!(
        files >= 4,
        "blocks, lock, status and log files were written: {files}"
    );
    assert!(open.is_empty(), "open to other users:\n{}", open.join("\n"));
    assert!(
        mount
            .log()
            .contains("readable by other users; they are now private"),
        "{}",
        mount.log()
    );
    assert_eq!(
        std::fs::metadata(folder.join("private.txt"))
            .unwrap()
            .mode()
            & 0o777,
        0o600,
        "a local provider's file made 0600 through the mount is 0600 in the folder"
    );
    std::fs::write(mount.path("plain.txt"), b"made with the usual umask\n").unwrap();
    assert_eq!(
        std::fs::metadata(folder.join("plain.txt")).unwrap().mode() & 0o777,
        0o644,
        "a local provider's file gets the modes the user's umask gives"
    );
}

/// An object whose key holds a newline or a tab (anyone with write access to the bucket can make one), or a
/// folder name holding one, is left out of its directory's listing with one log line naming it; every other entry
/// of the directory lists as before. On S3 (written with a hand-signed request: object_store refuses such keys)
/// and on a local folder (a file name with a newline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_odd_key_never_hides_a_directory() {
    for case in [Case::S3, Case::Local] {
        let (ctx, mount) = mount_for(case, "odd-keys");
        let mut expected: Vec<String> = (0..40).map(|i| format!("f{i:02}.txt")).collect();
        for name in &expected {
            ctx.seed(&format!("d/{name}"), name.as_bytes()).await;
        }
        ctx.seed("d/sub/inner.txt", b"inner").await;
        expected.push("sub".into());
        expected.sort();
        match case {
            Case::S3 => {
                let key = |rest: &str| format!("{}/d/{rest}", ctx.provider.prefix);
                common::raw_s3::put(&key("bad\nname.txt"), b"odd").await;
                common::raw_s3::put(&key("f10.txt\tcopy"), b"odd").await;
                common::raw_s3::put(&key("tab\tdir/inner.txt"), b"odd").await;
            }
            _ => {
                let folder = ctx
                    .dir
                    .path()
                    .join(format!("{}-root", ctx.provider.name))
                    .join(&ctx.provider.prefix)
                    .join("d");
                std::fs::write(folder.join("bad\nname.txt"), b"odd").unwrap();
            }
        }
        let listed = std::fs::read_dir(mount.path("d"))
            .unwrap_or_else(|e| panic!("{case:?}: ls d: {e}\n{}", mount.log()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        let mut listed = listed;
        listed.sort();
        assert_eq!(listed, expected, "{case:?}: the listing of d");
        assert_eq!(
            std::fs::read(mount.path("d/f39.txt")).unwrap(),
            b"f39.txt",
            "{case:?}"
        );
        assert!(
            mount.log().contains("bad\\nname.txt") && mount.log().contains("left out of listings"),
            "{case:?}: the odd key is named in the log:\n{}",
            mount.log()
        );
    }
}

/// Requests of `provider` so far, summed over operations, from the mount's metrics endpoint.
async fn requests_of(metrics: &str, provider: &str) -> f64 {
    let text = common::get(metrics).await.text().await.unwrap();
    let wanted = format!("zmount_provider_requests_total{{provider=\"{provider}\",");
    text.lines()
        .filter(|l| l.starts_with(&wanted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Failure isolation: with `local/` routed to a local folder (first rule) and everything else to an S3 provider
/// that is down (a closed port), everything under `local/` works — listings, lookups, reads, writes — and the S3
/// provider is never asked for it (counted through the metrics), since no path under `local/` can go there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_hold_a_subtree_is_never_asked_for_it() {
    let dir = common::scratch();
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(folder.join("local/sub")).unwrap();
    std::fs::write(folder.join("local/existing.txt"), b"kept locally\n").unwrap();
    std::fs::write(folder.join("local/sub/deep.txt"), b"deep\n").unwrap();
    let addr = common::free_local_addr();
    let dead = common::free_local_addr();
    let dead_s3 = [
        ("bucket", "nowhere".into()),
        ("endpoint", format!("http://{dead}").into()),
        ("access_key", "k".into()),
        ("secret_key", "s".into()),
    ];
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .fast_retries()
        .local("loc", &folder)
        .provider("s3", "s3", dead_s3)
        .route(RouteBuilder::prefix("local", "loc"))
        .default_route(RouteBuilder::to("s3"));
    let args = ["--metrics-addr", addr.as_str()];
    let mount = common::mount::Mount::start_with(dir.path(), &config, &args);
    assert!(
        mount.log().contains("provider `s3`") && mount.log().contains("does not answer"),
        "the dead provider is named at start, and the mount goes on:\n{}",
        mount.log()
    );
    let metrics = format!("http://{addr}/metrics");
    let before = requests_of(&metrics, "s3").await;
    let listed = run(
        "ls",
        &["-la", p(&mount.path("local")), p(&mount.path("local/sub"))],
    );
    assert!(
        listed.contains("existing.txt") && listed.contains("deep.txt"),
        "{listed}"
    );
    assert_eq!(
        std::fs::read(mount.path("local/existing.txt")).unwrap(),
        b"kept locally\n"
    );
    std::fs::write(mount.path("local/new.txt"), b"new\n").unwrap();
    std::fs::create_dir(mount.path("local/made")).unwrap();
    run("find", &[p(&mount.path("local"))]);
    assert_eq!(
        std::fs::read(folder.join("local/new.txt")).unwrap(),
        b"new\n"
    );
    assert_eq!(
        requests_of(&metrics, "s3").await - before,
        0.0,
        "requests to the provider that can hold nothing under local/"
    );
    // The rest of the tree is the dead provider's, and says so (which also shows the count is live).
    assert!(std::fs::read(mount.path("elsewhere.txt")).is_err());
    assert!(
        requests_of(&metrics, "s3").await > before,
        "the dead provider was asked for elsewhere.txt"
    );
}

/// A provider that answers "no" at start — refused credentials, a missing bucket — is named on the terminal and
/// the mount is refused (exit status 1, nothing mounted); `--allow-degraded` mounts anyway, with that provider's
/// paths answering EACCES (refused credentials) instead of EIO. A provider that does not answer at all (a closed
/// port) may come back: the mount goes on, with a warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refusing_the_mount_is_named_and_the_mount_refused() {
    common::set_secret_env();
    let dir = common::scratch();
    let good_bucket = common::server("ZMOUNT_TEST_S3_BUCKET");
    let good_secret = common::server("ZMOUNT_TEST_S3_SECRET_KEY");
    let cases = [
        (
            "wrong-secret",
            common::s3_keys(&good_bucket, "not-the-secret"),
            "SignatureDoesNotMatch",
        ),
        (
            "wrong-bucket",
            common::s3_keys("no-such-bucket-here", &good_secret),
            "does not exist",
        ),
    ];
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for (what, keys, cause) in &cases {
        let config = dir.path().join(format!("{what}.toml"));
        let built = ConfigBuilder::new(&dir.path().join(format!("cache-{what}")))
            .fast_retries()
            .provider("s3", "s3", keys.clone())
            .default_route(RouteBuilder::to("s3"));
        std::fs::write(&config, built.text()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_zmount"))
            .arg(&config)
            .arg(&mnt)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {said}");
        assert!(
            said.contains("provider `s3`")
                && said.contains(cause)
                && said.contains("--allow-degraded"),
            "{what}: {said}"
        );
        assert!(!zmount::cli::is_mounted(&mnt), "{what}: nothing is mounted");
        assert!(
            !said.contains("not-the-secret"),
            "{what}: the secret leaked: {said}"
        );
    }
    // Mounted anyway on request: refused credentials answer EACCES.
    let config = dir.path().join("wrong-secret.toml");
    let mount = common::mount::Mount::start_at(&config, &mnt, &["--allow-degraded"]);
    let err = std::fs::read_dir(&mnt).map(|d| d.count()).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EACCES),
        "ls of a refusing provider: {err}\n{}",
        mount.log()
    );
    assert!(
        mount.log().contains("mounted anyway (--allow-degraded)"),
        "{}",
        mount.log()
    );
}

/// A mount whose process was killed leaves a dead mount point ("Transport endpoint is not connected"); the next
/// `zmount` on it detaches it, says so, and mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_mount_point_is_cleared_at_start() {
    let (ctx, mut mount) = mount_for(Case::Local, "dead-mount");
    ctx.seed("kept.txt", b"still here\n").await;
    mount.stop_with(libc::SIGKILL);
    let err = std::fs::metadata(&mount.dir).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "a dead mount point: {err}"
    );
    // (The dead mount is still listed as mounted, so wait for the new process to say it took over.)
    let again = common::mount::Mount::start_at(&mount.config, &mount.dir, &[]);
    again.wait_for_log("held a dead mount");
    again.wait_for_log("mounted at");
    assert_eq!(
        std::fs::read(again.path("kept.txt")).unwrap(),
        b"still here\n"
    );
}
