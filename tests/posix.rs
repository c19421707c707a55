//! POSIX fidelity that legacy programs rely on, on every writable provider (local, S3, Azure): directory modes,
//! owners and times stored and read back (also through a listing after a remount), a parent directory's mtime
//! moving with its entries, and calls that cannot do what they were asked failing instead of reporting success.

mod common;

use common::mount::{config_for, mount_for, mount_for_with, mount_tuned, run, Mount};
use common::Case;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};
use zmount::config::{ConfigBuilder, RouteBuilder};

/// One `#[tokio::test]` in a `local`, an `s3` and an `azure` module for each listed body `async fn body(case)`.
macro_rules! writable_providers {
    ($($body:ident),* $(,)?) => {
        writable_providers!(@case local, Local, $($body),*);
        writable_providers!(@case s3, S3, $($body),*);
        writable_providers!(@case azure, Azure, $($body),*);
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

writable_providers!(
    directory_mode_owner_and_times_are_stored,
    a_directory_mtime_moves_with_its_entries,
    the_root_directory_refuses_what_it_cannot_store,
    fifos_sockets_and_device_nodes_are_kept,
    names_too_long_are_refused_before_anything_is_written,
    any_user_extended_attribute_is_stored,
    symlinks_are_stored_and_read_back,
    times_are_kept_to_the_nanosecond,
    directory_objects_of_other_tools_are_directories,
    rename_moves_ctime_and_a_derived_content_type,
    directory_times_survive_a_refresh,
    an_unlinked_open_file_has_no_links,
    a_directory_made_again_takes_files_while_one_from_the_old_is_open,
);

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A new empty file, open for reading and writing.
fn create_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Unmounts cleanly and mounts the same config again.
fn remount(mut mount: Mount) -> Mount {
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    assert!(mount.stop_with(libc::SIGTERM).success(), "{}", mount.log());
    Mount::start_at(&config, &dir, &[])
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

async fn directory_mode_owner_and_times_are_stored(case: Case) {
    let (_ctx, mount) = mount_for(case, "dir-attrs");
    let (made, changed) = (mount.path("made"), mount.path("changed"));
    run("mkdir", &["-m", "0700", p(&made)]);
    assert_eq!(mode_owner(&made).0, 0o700, "mkdir -m 0700");
    run("mkdir", &[p(&changed)]);
    run("chmod", &["0777", p(&changed)]);
    run("chown", &["65534:65534", p(&changed)]);
    run("touch", &["-m", "-d", "2020-02-02 02:02:02", p(&changed)]);
    assert_eq!(mode_owner(&changed), (0o777, 65534, 65534), "chmod + chown");
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_580_608_922);
    let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(mtime(&changed), stamp, "touch -d of a directory");

    let mount = remount(mount);
    // First through a listing (what `ls -l` shows without a lookup of its own), then by name.
    let listed = run("ls", &["-ln", p(&mount.dir)]);
    let line = listed
        .lines()
        .find(|l| l.ends_with(" changed"))
        .unwrap_or_else(|| panic!("no `changed` in:\n{listed}"));
    assert!(
        line.starts_with("drwxrwxrwx") && line.contains(" 65534 65534 "),
        "ls -ln after a remount: {line}"
    );
    let (made, changed) = (mount.path("made"), mount.path("changed"));
    assert_eq!(mode_owner(&made).0, 0o700, "mkdir -m after a remount");
    assert_eq!(
        mode_owner(&changed),
        (0o777, 65534, 65534),
        "after a remount"
    );
    assert_eq!(mtime(&changed), stamp, "directory mtime after a remount");
    // A directory moved with its contents keeps what it carries.
    run("mv", &[p(&changed), p(&mount.path("moved"))]);
    assert_eq!(
        mode_owner(&mount.path("moved")),
        (0o777, 65534, 65534),
        "after mv"
    );
}

async fn a_directory_mtime_moves_with_its_entries(case: Case) {
    let (_ctx, mount) = mount_for(case, "dir-mtime");
    let dir = mount.path("d");
    std::fs::create_dir(&dir).unwrap();
    let old = "2001-01-01 00:00:00";
    let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let recent = |what: &str| {
        let age = SystemTime::now()
            .duration_since(mtime(&dir))
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(60),
            "{what}: d's mtime {:?} did not move",
            mtime(&dir)
        );
    };
    let steps: [(&str, &dyn Fn()); 5] = [
        ("create", &|| std::fs::write(dir.join("f"), b"x").unwrap()),
        ("rename", &|| {
            std::fs::rename(dir.join("f"), dir.join("g")).unwrap()
        }),
        ("unlink", &|| std::fs::remove_file(dir.join("g")).unwrap()),
        ("mkdir", &|| std::fs::create_dir(dir.join("sub")).unwrap()),
        ("rmdir", &|| std::fs::remove_dir(dir.join("sub")).unwrap()),
    ];
    for (what, step) in steps {
        run("touch", &["-m", "-d", old, p(&dir)]);
        assert!(
            SystemTime::now().duration_since(mtime(&dir)).unwrap() > Duration::from_secs(3600),
            "touch -d before {what}"
        );
        step();
        recent(what);
    }
}

async fn the_root_directory_refuses_what_it_cannot_store(case: Case) {
    // With a default route, the root's attributes live on its `.zmount-dir` there (`tar x -C MNT` sets them).
    let (_ctx, mount) = mount_for(case, "root-attrs");
    run("chmod", &["0711", p(&mount.dir)]);
    run("touch", &["-m", "-d", "2019-09-09 09:09:09", p(&mount.dir)]);
    let mount = remount(mount);
    assert_eq!(
        mode_owner(&mount.dir).0,
        0o711,
        "the root's mode after a remount"
    );
    let listed = run("ls", &["-A", p(&mount.dir)]);
    assert!(
        !listed.contains(".zmount-dir"),
        "the marker is hidden: {listed}"
    );
    drop(mount);

    // Routes that send nothing at the top anywhere: the root's attributes cannot be stored, and chmod says so.
    let ctx = common::Ctx::new(case, "root-unrouted");
    let docs_only = config_for(&ctx).route(RouteBuilder::prefix("docs", &ctx.provider.name));
    let mount = Mount::start(ctx.dir.path(), &docs_only);
    let before = mode_owner(&mount.dir);
    let err = std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o700))
        .expect_err("chmod of a root nothing can store");
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");
    assert_eq!(mode_owner(&mount.dir), before, "nothing changed");
}

async fn fifos_sockets_and_device_nodes_are_kept(case: Case) {
    let (ctx, mount) = mount_for(case, "special");
    run("mkfifo", &["-m", "0640", p(&mount.path("fifo"))]);
    run("mknod", &[p(&mount.path("null")), "c", "1", "3"]);
    let socket = mount.path("sock");
    let listener =
        std::os::unix::net::UnixListener::bind(&socket).expect("bind a socket in the mount");
    drop(listener);
    // tar x of an archive that holds a fifo (made on a local folder).
    let source = ctx.dir.path().join("tree");
    std::fs::create_dir_all(&source).unwrap();
    run("mkfifo", &[p(&source.join("queue"))]);
    let archive = ctx.dir.path().join("tree.tar");
    run("tar", &["-cf", p(&archive), "-C", p(&source), "."]);
    let extracted = mount.path("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run("tar", &["-xpf", p(&archive), "-C", p(&extracted)]);

    let check = |mount: &Mount, when: &str| {
        let kind = |name: &str| std::fs::symlink_metadata(mount.path(name)).unwrap();
        assert!(kind("fifo").file_type().is_fifo(), "fifo {when}");
        assert_eq!(
            kind("fifo").permissions().mode() & 0o7777,
            0o640,
            "fifo mode {when}"
        );
        assert!(kind("null").file_type().is_char_device(), "device {when}");
        assert_eq!(
            kind("null").rdev(),
            libc::makedev(1, 3),
            "device number {when}"
        );
        assert!(kind("sock").file_type().is_socket(), "socket {when}");
        assert!(
            kind("extracted/queue").file_type().is_fifo(),
            "fifo from tar {when}"
        );
        let listed = run("ls", &["-l", p(&mount.dir)]);
        for (name, letter) in [("fifo", 'p'), ("null", 'c'), ("sock", 's')] {
            let line = listed.lines().find(|l| l.ends_with(&format!(" {name}")));
            assert!(
                line.is_some_and(|l| l.starts_with(letter)),
                "ls -l shows {name} as `{letter}` {when}:\n{listed}"
            );
        }
    };
    check(&mount, "at once");
    let mount = remount(mount);
    check(&mount, "after a remount");
    // The kernel does the rest: a fifo in the mount carries data between two processes.
    let fifo = mount.path("fifo");
    let writer = std::thread::spawn(move || std::fs::write(fifo, b"through the pipe").unwrap());
    assert_eq!(
        std::fs::read(mount.path("fifo")).unwrap(),
        b"through the pipe"
    );
    writer.join().unwrap();
    std::fs::remove_file(mount.path("fifo")).unwrap();
    assert!(
        std::fs::symlink_metadata(mount.path("fifo")).is_err(),
        "rm of a fifo"
    );
}

async fn names_too_long_are_refused_before_anything_is_written(case: Case) {
    let (ctx, mount) = mount_for(case, "names");
    let namelen: usize = run("stat", &["-f", "-c", "%l", p(&mount.dir)])
        .trim()
        .parse()
        .unwrap();
    let expected = match case {
        Case::Local => 244,
        _ => 1024 - ctx.provider.prefix.len() - 2 - ".zmount-dir".len(),
    };
    assert_eq!(namelen, expected, "statfs f_namelen");
    // A name of exactly f_namelen bytes is stored, as a file and as a directory (pjdfstest's NAME_MAX cases).
    let longest = "l".repeat(namelen);
    {
        let mut file = std::fs::File::create(mount.path(&longest))
            .unwrap_or_else(|e| panic!("create of {namelen} bytes: {e}"));
        std::io::Write::write_all(&mut file, b"x").unwrap();
        file.sync_all()
            .unwrap_or_else(|e| panic!("fsync of a name of {namelen} bytes: {e}"));
    }
    assert_eq!(
        ctx.read_direct(&longest).await.as_deref(),
        Some(&b"x"[..]),
        "stored under its {namelen}-byte name"
    );
    std::fs::remove_file(mount.path(&longest)).unwrap();
    std::fs::create_dir(mount.path(&longest))
        .unwrap_or_else(|e| panic!("mkdir of {namelen} bytes: {e}"));
    std::fs::remove_dir(mount.path(&longest)).unwrap();
    let too_long = "n".repeat(namelen + 1);
    for what in ["create", "mkdir"] {
        let path = mount.path(&too_long);
        let err = match what {
            "create" => std::fs::write(&path, b"x").unwrap_err(),
            _ => std::fs::create_dir(&path).unwrap_err(),
        };
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENAMETOOLONG),
            "{what}: {err}"
        );
    }
    // A path whose components fit but whose key does not (object stores limit the whole key); a local folder
    // takes paths up to the kernel's PATH_MAX (4,095 bytes with the mount point).
    if case == Case::Local {
        let mut path = mount.dir.clone();
        while path.as_os_str().len() + 201 < 4096 {
            path.push("d".repeat(200));
            std::fs::create_dir(&path)
                .unwrap_or_else(|e| panic!("{} bytes: {e}", path.as_os_str().len()));
        }
        std::fs::write(path.join("f"), b"deep").unwrap();
        assert_eq!(std::fs::read(path.join("f")).unwrap(), b"deep");
    } else {
        let mut path = mount.dir.clone();
        let mut made = 0;
        let err = loop {
            path.push("d".repeat(200));
            match std::fs::create_dir(&path) {
                Ok(()) => made += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENAMETOOLONG),
            "after {made} levels: {err}"
        );
    }
    let stored = ctx.storage.list("", None).await.unwrap();
    assert!(
        case == Case::Local || stored.iter().all(|o| o.path.len() <= 1024),
        "nothing too long was written: {:?}",
        stored.iter().map(|o| o.path.len()).max()
    );
}

async fn any_user_extended_attribute_is_stored(case: Case) {
    let (ctx, mount) = mount_for(case, "user-xattrs");
    let file = mount.path("f.txt");
    std::fs::write(&file, b"content").unwrap();
    run(
        "setfattr",
        &[
            "-n",
            "user.xdg.origin.url",
            "-v",
            "https://example.com/a?b=c",
            p(&file),
        ],
    );
    run(
        "setfattr",
        &["-n", "user.Mixed-Case.Name", "-v", "0x00ff10", p(&file)],
    ); // binary value
    run("setfattr", &["-n", "user.gone", "-v", "soon", p(&file)]);
    run("setfattr", &["-x", "user.gone", p(&file)]);
    let check = |mount: &Mount, when: &str| {
        let file = mount.path("f.txt");
        let dump = run("getfattr", &["-d", "-e", "hex", p(&file)]);
        assert!(
            dump.contains(
                "user.xdg.origin.url=0x68747470733a2f2f6578616d706c652e636f6d2f613f623d63"
            ),
            "{when}:\n{dump}"
        );
        assert!(
            dump.contains("user.Mixed-Case.Name=0x00ff10"),
            "{when}:\n{dump}"
        );
        assert!(!dump.contains("user.gone"), "removed {when}:\n{dump}");
        assert_eq!(std::fs::read(&file).unwrap(), b"content", "{when}");
    };
    check(&mount, "at once");
    let mount = remount(mount);
    check(&mount, "after a remount");
    // cp --preserve=xattr copies them out of the mount and back in.
    let outside = ctx.dir.path().join("copy.txt");
    run(
        "cp",
        &["--preserve=xattr", p(&mount.path("f.txt")), p(&outside)],
    );
    std::fs::remove_file(mount.path("f.txt")).unwrap();
    run(
        "cp",
        &["--preserve=xattr", p(&outside), p(&mount.path("f.txt"))],
    );
    check(&mount, "after a cp --preserve=xattr round trip");
    // More than the provider's metadata holds: E2BIG, and the file keeps what it had.
    let big = "x".repeat(10 * 1024);
    let out = std::process::Command::new("setfattr")
        .args(["-n", "user.big", "-v", &big, p(&mount.path("f.txt"))])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a 10 KiB value is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Argument list too long"),
        "E2BIG: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&mount, "after the refused value");
}

/// Tools tell filesystems apart by the type /proc/mounts shows (`findmnt -t fuse.zmount`, `df -T`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mount_type_is_fuse_zmount() {
    let (_ctx, mount) = mount_for(Case::Local, "fstype");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(p(&mount.dir)))
        .unwrap_or_else(|| panic!("not in /proc/self/mounts:\n{mounts}"));
    assert_eq!(line.split(' ').nth(2), Some("fuse.zmount"), "{line}");
}

/// SIGTERM while a process still holds the mount (its working directory is inside it): the daemon exits 0 and
/// leaves no dead mountpoint ("Transport endpoint is not connected") behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_mount_stops_cleanly_on_sigterm() {
    let (_ctx, mut mount) = mount_for(Case::Local, "busy");
    std::fs::create_dir(mount.path("inside")).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(mount.path("inside"))
        .spawn()
        .unwrap();
    let status = mount.stop_with(libc::SIGTERM);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(status.success(), "exit status {status}:\n{}", mount.log());
    assert!(!zmount::cli::is_mounted(&mount.dir), "still mounted");
    assert!(
        std::fs::read_dir(&mount.dir).is_ok(),
        "the mountpoint is usable again"
    );
}

async fn symlinks_are_stored_and_read_back(case: Case) {
    let (ctx, mount) = mount_for(case, "symlinks");
    std::fs::create_dir(mount.path("d")).unwrap();
    std::fs::write(mount.path("d/f"), b"through the link").unwrap();
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, mount.path(name)).unwrap();
    link("d/f", "to-file");
    link("d", "to-dir");
    link("/nonexistent/target", "dangling");
    // A tree of relative links, as `npm install` (node_modules/.bin) and virtualenvs (lib64 -> lib) make them.
    std::fs::create_dir_all(mount.path("node_modules/pkg/bin")).unwrap();
    std::fs::create_dir_all(mount.path("node_modules/.bin")).unwrap();
    std::fs::write(
        mount.path("node_modules/pkg/bin/tool"),
        b"#!/bin/sh\necho tool ran\n",
    )
    .unwrap();
    run(
        "chmod",
        &["0755", p(&mount.path("node_modules/pkg/bin/tool"))],
    );
    link("../pkg/bin/tool", "node_modules/.bin/tool");
    run("chown", &["-h", "65534:65534", p(&mount.path("to-file"))]);

    let check = |mount: &Mount, when: &str| {
        let target = |name: &str| std::fs::read_link(mount.path(name)).unwrap();
        assert_eq!(target("to-file"), Path::new("d/f"), "{when}");
        assert_eq!(
            target("dangling"),
            Path::new("/nonexistent/target"),
            "{when}"
        );
        let meta = std::fs::symlink_metadata(mount.path("to-file")).unwrap();
        assert!(meta.file_type().is_symlink(), "lstat {when}");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "chown -h {when}");
        assert_eq!(
            std::fs::read(mount.path("to-file")).unwrap(),
            b"through the link",
            "{when}"
        );
        assert!(
            mount.path("to-dir/f").exists(),
            "through a directory link {when}"
        );
        assert!(!mount.path("dangling").exists(), "a dangling link {when}");
        let out = run(p(&mount.path("node_modules/.bin/tool")), &[]);
        assert_eq!(
            out, "tool ran\n",
            "a program run through a relative link {when}"
        );
        let listed = run("ls", &["-l", p(&mount.dir)]);
        for name in ["to-file", "to-dir", "dangling"] {
            let line = listed.lines().find(|l| l.contains(&format!(" {name} -> ")));
            assert!(
                line.is_some_and(|l| l.starts_with('l')),
                "ls -l shows {name} {when}:\n{listed}"
            );
        }
    };
    check(&mount, "at once");
    let mount = remount(mount);
    check(&mount, "after a remount (learned from the listing)");

    // cp -a out and back in, and tar x of an archive with links: links stay links.
    let outside = ctx.dir.path().join("copy");
    run("cp", &["-a", p(&mount.dir), p(&outside)]);
    assert!(std::fs::symlink_metadata(outside.join("to-dir"))
        .unwrap()
        .file_type()
        .is_symlink());
    let archive = ctx.dir.path().join("links.tar");
    run("tar", &["-cf", p(&archive), "-C", p(&outside), "."]);
    std::fs::create_dir(mount.path("restored")).unwrap();
    run(
        "tar",
        &["-xpf", p(&archive), "-C", p(&mount.path("restored"))],
    );
    let restored = mount.path("restored/node_modules/.bin/tool");
    assert_eq!(
        std::fs::read_link(&restored).unwrap(),
        Path::new("../pkg/bin/tool")
    );
    assert_eq!(run(p(&restored), &[]), "tool ran\n");
    // rm of a link leaves its target; mv moves the link.
    std::fs::remove_file(mount.path("to-file")).unwrap();
    assert_eq!(
        std::fs::read(mount.path("d/f")).unwrap(),
        b"through the link"
    );
    std::fs::rename(mount.path("dangling"), mount.path("moved")).unwrap();
    assert_eq!(
        std::fs::read_link(mount.path("moved")).unwrap(),
        Path::new("/nonexistent/target")
    );
    // Stored the way s3fs stores a link: an object holding the target.
    assert_eq!(
        ctx.read_direct("moved").await.as_deref(),
        Some(&b"/nonexistent/target"[..])
    );
}

async fn times_are_kept_to_the_nanosecond(case: Case) {
    let (ctx, mount) = mount_for(case, "times");
    let (file, dir) = (mount.path("f"), mount.path("d"));
    std::fs::write(&file, b"x").unwrap();
    std::fs::create_dir(&dir).unwrap();
    for path in [&file, &dir] {
        run(
            "touch",
            &["-m", "-d", "2021-03-04 05:06:07.123456789", p(path)],
        );
        run("touch", &["-a", "-d", "2022-01-01 00:00:00.5", p(path)]);
    }
    let stamp = |s: u64, n: u32| SystemTime::UNIX_EPOCH + Duration::new(s, n);
    let before_chmod = SystemTime::now();
    run("chmod", &["0600", p(&file)]);
    let check = |mount: &Mount, when: &str| {
        for name in ["f", "d"] {
            let meta = std::fs::metadata(mount.path(name)).unwrap();
            assert_eq!(
                meta.modified().unwrap(),
                stamp(1_614_834_367, 123_456_789),
                "{name} mtime {when}"
            );
            assert_eq!(
                meta.accessed().unwrap(),
                stamp(1_640_995_200, 500_000_000),
                "{name} atime {when}"
            );
        }
        let ctime = std::fs::metadata(mount.path("f")).unwrap().ctime();
        assert!(
            ctime
                >= before_chmod
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64
                    - 1,
            "chmod moved ctime {when}: {ctime}"
        );
    };
    check(&mount, "at once");
    let mount = remount(mount);
    check(&mount, "after a remount");

    // rsync -aX into the mount, twice: the second run finds nothing to do (times, modes, directories and
    // extended attributes included).
    let source = ctx.dir.path().join("tree");
    std::fs::create_dir_all(source.join("sub/deeper")).unwrap();
    std::fs::write(source.join("a.txt"), b"alpha").unwrap();
    std::fs::write(source.join("sub/b.txt"), b"beta").unwrap();
    std::fs::write(source.join("sub/deeper/c.txt"), b"gamma").unwrap();
    run(
        "setfattr",
        &[
            "-n",
            "user.origin",
            "-v",
            "camera-7",
            p(&source.join("a.txt")),
        ],
    );
    let target = format!("{}/", p(&mount.path("copy")));
    let from = format!("{}/", p(&source));
    run("rsync", &["-aX", &from, &target]);
    let second = run("rsync", &["-aiX", &from, &target]);
    assert_eq!(
        second.trim(),
        "",
        "the second rsync -aX changes nothing:\n{second}"
    );
    assert_eq!(
        run(
            "getfattr",
            &[
                "--only-values",
                "-n",
                "user.origin",
                p(&mount.path("copy/a.txt"))
            ]
        ),
        "camera-7"
    );

    // make rebuilds a target after an append to its source (writes move mtime, to the nanosecond).
    let build = mount.path("build");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(
        build.join("Makefile"),
        "out.txt: in.txt\n\tcat in.txt in.txt > out.txt\n",
    )
    .unwrap();
    std::fs::write(build.join("in.txt"), "one\n").unwrap();
    run("make", &["-s", "-C", p(&build)]);
    assert_eq!(
        std::fs::read_to_string(build.join("out.txt")).unwrap(),
        "one\none\n"
    );
    run("make", &["-q", "-C", p(&build)]); // `make -q` exits 0 only when out.txt is up to date
    std::fs::OpenOptions::new()
        .append(true)
        .open(build.join("in.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"two\n"))
        .unwrap();
    run("make", &["-s", "-C", p(&build)]);
    assert_eq!(
        std::fs::read_to_string(build.join("out.txt")).unwrap(),
        "one\ntwo\none\ntwo\n",
        "make rebuilt out.txt after the append"
    );
}

async fn directory_objects_of_other_tools_are_directories(case: Case) {
    let (ctx, mount) = mount_for(case, "dir-objects");
    let options = zmount::storage::UploadOptions {
        content_type: Some("application/x-directory".into()),
        ..Default::default()
    };
    ctx.storage
        .upload("legacy", bytes::Bytes::new(), options)
        .await
        .unwrap();
    let meta = std::fs::symlink_metadata(mount.path("legacy")).unwrap();
    assert!(
        meta.is_dir(),
        "an object with a directory content type is a directory"
    );
    let listed = run("ls", &["-l", p(&mount.dir)]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with('d') && l.ends_with(" legacy")),
        "listed as a directory:\n{listed}"
    );
    assert_eq!(std::fs::read_dir(mount.path("legacy")).unwrap().count(), 0);
    std::fs::remove_dir(mount.path("legacy")).unwrap();
    assert!(
        ctx.read_direct("legacy").await.is_none(),
        "rmdir removes the directory object"
    );
    assert!(std::fs::symlink_metadata(mount.path("legacy")).is_err());
}

/// The stored content type, without parameters (some servers add `; charset=utf-8` to text types).
fn content_type(path: &Path) -> String {
    let value = run(
        "getfattr",
        &["--only-values", "-n", "user.zmount.content_type", p(path)],
    );
    value.split(';').next().unwrap().trim().to_string()
}

/// `mv x.txt x.md` moves x's ctime and gives it the content type of its new name; a type set explicitly stays; the
/// same after a remount. rsync's temporary names (`.x.txt.Ab12Cd`) are the everyday case.
async fn rename_moves_ctime_and_a_derived_content_type(case: Case) {
    use std::os::unix::fs::MetadataExt;
    let (_ctx, mount) = mount_for(case, "rename-type");
    std::fs::write(mount.path("x.txt"), b"# notes\n").unwrap();
    std::fs::write(mount.path(".page.html.Ab12Cd"), b"<p>hi</p>\n").unwrap();
    std::fs::write(mount.path("y.txt"), b"{}\n").unwrap();
    run(
        "setfattr",
        &[
            "-n",
            "user.zmount.content_type",
            "-v",
            "application/json",
            p(&mount.path("y.txt")),
        ],
    );
    assert_eq!(content_type(&mount.path("x.txt")), "text/plain");
    let ctime = |path: &Path| {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let before = ctime(&mount.path("x.txt"));
    run("mv", &[p(&mount.path("x.txt")), p(&mount.path("x.md"))]);
    run(
        "mv",
        &[
            p(&mount.path(".page.html.Ab12Cd")),
            p(&mount.path("page.html")),
        ],
    );
    run("mv", &[p(&mount.path("y.txt")), p(&mount.path("y.md"))]);
    assert!(ctime(&mount.path("x.md")) > before, "mv moves ctime");
    let check = |mount: &Mount, when: &str| {
        assert_eq!(content_type(&mount.path("x.md")), "text/markdown", "{when}");
        assert_eq!(
            content_type(&mount.path("page.html")),
            "text/html",
            "{when}"
        );
        assert_eq!(
            content_type(&mount.path("y.md")),
            "application/json",
            "set explicitly: {when}"
        );
        assert_eq!(
            std::fs::read(mount.path("x.md")).unwrap(),
            b"# notes\n",
            "{when}"
        );
    };
    check(&mount, "after mv");
    check(&remount(mount), "after a remount");
}

/// A directory's times shown while mounted (moved by the entries made in it) are what every later `stat` shows,
/// also once its attributes are asked of the provider again (here at every call: `attr_ttl = 0`): `tar c` of a tree
/// otherwise reports "file changed as we read it" for each directory older than the TTL.
async fn directory_times_survive_a_refresh(case: Case) {
    use std::os::unix::fs::MetadataExt;
    let no_ttl = |c: ConfigBuilder| c.setting("mount.attr_ttl", 0);
    let (_ctx, mount) = mount_tuned(case, "dir-refresh", no_ttl, |r| r, &[]);
    std::fs::create_dir_all(mount.path("a/b")).unwrap();
    for i in 0..3 {
        std::fs::write(mount.path(&format!("a/b/f{i}")), b"x").unwrap();
    }
    let times = |path: &Path| {
        let m = std::fs::metadata(path).unwrap();
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
    };
    let before = times(&mount.path("a/b"));
    let _ = std::fs::read_dir(mount.path("a/b")).unwrap().count();
    let _ = std::fs::read_dir(mount.path("a")).unwrap().count();
    assert_eq!(
        times(&mount.path("a/b")),
        before,
        "after listings and refreshes"
    );
    run("tar", &["-cf", "/dev/null", "-C", p(&mount.dir), "a"]);
}

/// `fstat` of a file whose name is gone answers through the descriptors still open on it, with no links: for a
/// file being written here and for one only read (pjdfstest unlink/14). The file written here can still be read
/// and written; the object only read is gone from the provider (see SEMANTICS.md, "Not yet").
async fn an_unlinked_open_file_has_no_links(case: Case) {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let (ctx, mount) = mount_for(case, "unlinked-fstat");
    ctx.seed("stored.txt", b"on the provider").await;
    let mut written = create_rw(&mount.path("written.txt"));
    written.write_all(b"written here").unwrap();
    let read = std::fs::File::open(mount.path("stored.txt")).unwrap();
    std::fs::remove_file(mount.path("written.txt")).unwrap();
    std::fs::remove_file(mount.path("stored.txt")).unwrap();
    for (name, file, size) in [("written", &written, 12), ("stored", &read, 15)] {
        let meta = file
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of unlinked {name}: {e}"));
        assert_eq!((meta.nlink(), meta.len()), (0, size), "{name}");
    }
    let mut back = String::new();
    written.rewind().unwrap();
    written.read_to_string(&mut back).unwrap();
    assert_eq!(back, "written here");
    drop(read);
}

/// A directory removed and made again under the same name while a file opened in the old one is still open (its
/// name unlinked): files can be created in the new directory, and the open file still reads and writes. The kernel
/// keeps the old directory's inode, dead, while that file is open; the new directory must not be given its number.
async fn a_directory_made_again_takes_files_while_one_from_the_old_is_open(case: Case) {
    use std::io::{Read, Seek, Write};
    let (_ctx, mount) = mount_for(case, "dir-again");
    std::fs::create_dir(mount.path("d")).unwrap();
    let mut open = create_rw(&mount.path("d/old.txt"));
    std::fs::remove_file(mount.path("d/old.txt")).unwrap();
    std::fs::remove_dir(mount.path("d")).unwrap();
    match std::fs::create_dir(mount.path("d")) {
        Ok(()) => {}
        // SeaweedFS keeps listing a folder whose last object is gone (SEMANTICS.md): it is there already.
        Err(e) if case == Case::S3 && e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("mkdir d again: {e}"),
    }
    open.write_all(b"still mine").unwrap();
    std::fs::write(mount.path("d/new.txt"), b"new")
        .unwrap_or_else(|e| panic!("create in the new d: {e}"));
    assert_eq!(std::fs::read(mount.path("d/new.txt")).unwrap(), b"new");
    let names: Vec<String> = std::fs::read_dir(mount.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["new.txt"], "the unlinked file is not listed");
    let mut back = String::new();
    open.rewind().unwrap();
    open.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still mine");
}

/// `chmod`, `chown` and `utimensat` of atime only change no data, so a file's mtime stays — also for a file whose
/// mtime is its object's modification time (made by another program: zmount rewrites the object to carry the new
/// attributes, and the new object's time must not show through). On a local folder, where that time can be set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_changes_keep_the_mtime() {
    use std::os::unix::fs::MetadataExt;
    let (ctx, mount) = mount_for(Case::Local, "keep-mtime");
    let folder = ctx
        .dir
        .path()
        .join(format!("{}-root", ctx.provider.name))
        .join(&ctx.provider.prefix);
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(folder.join(name), b"made elsewhere\n").unwrap();
        run(
            "touch",
            &["-d", "2001-02-03 04:05:06", p(&folder.join(name))],
        );
    }
    let mtime = |name: &str| std::fs::metadata(mount.path(name)).unwrap().mtime();
    let old = mtime("a");
    assert_eq!(old, 981_173_106, "the object's time shows as mtime");
    run("chmod", &["0600", p(&mount.path("a"))]);
    run("chown", &["65534", p(&mount.path("b"))]);
    run("touch", &["-a", "-d", "2020-01-01", p(&mount.path("c"))]);
    for name in ["a", "b", "c"] {
        assert_eq!(mtime(name), old, "{name} after an attribute change");
    }
}

/// `chmod`, `touch`, a new xattr and a rename that changes the content type, on closed files of an S3 provider made
/// elsewhere: the provider replaces what each object carries in place (a copy onto itself), so no byte of the files
/// is read or written (the byte counters of the metrics stay put), and what was asked is stored with the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_changes_of_closed_files_move_no_data() {
    use std::os::unix::fs::MetadataExt;
    let addr = common::free_local_addr();
    let (ctx, mount) = mount_for_with(Case::S3, "in-place", &["--metrics-addr", &addr]);
    let data = common::pattern(3 << 20, 5);
    ctx.seed("big.bin", &data).await;
    // rsync's temporary name, written through the mount (so stored as application/octet-stream, derived from it).
    std::fs::write(mount.path(".notes.txt.Xy12"), b"# notes\n").unwrap();
    let bytes = || async {
        let read = common::metric(&addr, "zmount_provider_read_bytes_total", "s3").await;
        let written = common::metric(&addr, "zmount_provider_written_bytes_total", "s3").await;
        (read, written)
    };
    let big = mount.path("big.bin");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), data.len() as u64);
    let before = bytes().await;
    run("chmod", &["0600", p(&big)]);
    // `-c`: by path (utimensat), as rsync and tar set times; plain `touch` opens the file for writing, and a file
    // opened for writing is copied in and published as a whole version.
    run("touch", &["-c", "-m", "-d", "2001-02-03 04:05:06", p(&big)]);
    run(
        "setfattr",
        &["-n", "user.meta.owner", "-v", "alice", p(&big)],
    );
    run(
        "mv",
        &[
            p(&mount.path(".notes.txt.Xy12")),
            p(&mount.path("notes.md")),
        ],
    );
    assert_eq!(
        bytes().await,
        before,
        "(read, written) bytes of the provider after the changes"
    );

    let info = ctx.storage.get_info("big.bin").await.unwrap();
    assert_eq!(
        info.metadata.get("owner").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        info.metadata.get("mode").map(String::as_str),
        Some("33152"),
        "{info:?}"
    ); // S_IFREG | 0600
    assert_eq!(ctx.read_direct("big.bin").await.as_deref(), Some(&data[..]));
    let retyped = ctx.storage.get_info("notes.md").await.unwrap().content_type;
    assert!(retyped.starts_with("text/markdown"), "{retyped}");
    let mount = remount(mount);
    let meta = std::fs::metadata(mount.path("big.bin")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o600, 981_173_106));
    assert_eq!(std::fs::read(mount.path("notes.md")).unwrap(), b"# notes\n");
}

/// A bucket written by s3fs: its directories are objects `dir/` (a key ending in `/`) whose metadata holds the
/// mode, owner and mtime (s3fs's keys). They show through the mount, by name and in a listing. On moto, which keeps
/// such objects as AWS does (SeaweedFS turns them into folders without metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3fs_directory_objects_show_their_modes() {
    use std::os::unix::fs::MetadataExt;
    let endpoint = common::server("ZMOUNT_TEST_MOTO_ENDPOINT");
    let bucket = common::server("ZMOUNT_TEST_MOTO_BUCKET");
    let prefix = common::unique("s3fs-dirs");
    let client = common::http();
    let put = |key: String, body: &'static [u8], meta: Vec<(&'static str, String)>| {
        let mut request = client
            .put(format!("{endpoint}/{bucket}/{prefix}/{key}"))
            .header("authorization", "AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0");
        for (name, value) in meta {
            request = request.header(format!("x-amz-meta-{name}"), value);
        }
        request.body(body).send()
    };
    let mode = (libc::S_IFDIR | 0o750).to_string();
    let dir_meta = vec![
        ("mode", mode),
        ("uid", "1234".into()),
        ("gid", "5678".into()),
        ("mtime", "1262304000".into()),
    ];
    for (key, body, meta) in [
        ("made-by-s3fs/".to_string(), &b""[..], dir_meta),
        (
            "made-by-s3fs/file.txt".to_string(),
            &b"inside\n"[..],
            vec![],
        ),
    ] {
        let status = put(key.clone(), body, meta).await.unwrap().status();
        assert!(status.is_success(), "PUT {key}: {status}");
    }
    let dir = common::scratch();
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .provider(
            "s3fs",
            "s3",
            [
                ("bucket", bucket.as_str().into()),
                ("endpoint", endpoint.as_str().into()),
                ("access_key", "k".into()),
                ("secret_key", "s".into()),
                ("prefix", prefix.as_str().into()),
            ],
        )
        .default_route(RouteBuilder::to("s3fs"));
    let mount = Mount::start(dir.path(), &config);
    let shown = |meta: std::fs::Metadata| {
        (
            meta.is_dir(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            meta.mtime(),
        )
    };
    let expected = (true, 0o750, 1234, 5678, 1_262_304_000);
    // Through a listing first (what `ls -l` shows), then by name.
    let listed = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "made-by-s3fs")
        .expect("listed");
    assert!(listed.file_type().unwrap().is_dir());
    assert_eq!(
        shown(std::fs::metadata(mount.path("made-by-s3fs")).unwrap()),
        expected,
        "s3fs's mode, owner and mtime\n{}",
        mount.log()
    );
    assert_eq!(
        std::fs::read(mount.path("made-by-s3fs/file.txt")).unwrap(),
        b"inside\n"
    );
}
