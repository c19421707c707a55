//! Writing through the mount with real programs, on every provider that accepts writes: `cp`, `>>`, `truncate`,
//! editor-style saves, `mkdir -p`, `mv`, `rm -rf`, `tar x`, `rsync`, `git`, `sqlite3` — each result checked on
//! the provider directly. Plus the failure paths: EIO at fsync/close when the provider is down, EFBIG past the
//! size limit, EXDEV between providers.

mod common;

use common::mount::{mount_for, run, Mount};
use common::{pattern, scratch, unique, Case, ProviderTable, TestConfig};
use std::io::Write;
use std::path::Path;
use zmount::config::{ConfigBuilder, RouteBuilder};

for_each_provider!(
    ;
    writes:
    cp_in_lands_on_the_provider,
    appends_truncates_and_readers_of_open_files,
    editor_style_save_replaces_the_original,
    directories_can_be_made_moved_and_removed,
    tar_extracts_nested_trees_with_odd_names,
    rsync_tree_then_checksum_run_finds_nothing,
    git_repository_passes_fsck,
    sqlite_database_passes_integrity_check,
    modes_owners_and_times_survive_a_remount,
);

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn cp_in_lands_on_the_provider(case: Case) {
    let (ctx, mount) = mount_for(case, "cp");
    let data = pattern(20 << 20, 9); // several upload parts
    let source = ctx.dir.path().join("source.bin");
    std::fs::write(&source, &data).unwrap();
    run("cp", &[p(&source), p(&mount.path("copied.bin"))]);
    assert!(
        ctx.read_direct("copied.bin").await.as_deref() == Some(&data[..]),
        "provider holds every byte"
    );
    assert_eq!(
        std::fs::metadata(mount.path("copied.bin")).unwrap().len(),
        data.len() as u64
    );
    run("cmp", &[p(&source), p(&mount.path("copied.bin"))]);
    std::fs::write(mount.path("small.txt"), b"tiny").unwrap();
    assert_eq!(
        ctx.read_direct("small.txt").await.as_deref(),
        Some(&b"tiny"[..])
    );
    std::fs::File::create(mount.path("empty")).unwrap();
    assert_eq!(
        ctx.read_direct("empty").await.as_deref(),
        Some(&b""[..]),
        "an empty file is an empty object"
    );
}

async fn appends_truncates_and_readers_of_open_files(case: Case) {
    let (ctx, mount) = mount_for(case, "append");
    let file = mount.path("log.txt");
    run(
        "sh",
        &[
            "-c",
            &format!(
                "echo one > '{0}' && echo two >> '{0}' && echo three >> '{0}'",
                p(&file)
            ),
        ],
    );
    assert_eq!(
        ctx.read_direct("log.txt").await.as_deref(),
        Some(&b"one\ntwo\nthree\n"[..])
    );
    run("truncate", &["-s", "4", p(&file)]);
    assert_eq!(
        ctx.read_direct("log.txt").await.as_deref(),
        Some(&b"one\n"[..]),
        "truncate down"
    );
    run("truncate", &["-s", "8", p(&file)]);
    assert_eq!(
        ctx.read_direct("log.txt").await.as_deref(),
        Some(&b"one\n\0\0\0\0"[..]),
        "truncate up"
    );
    run("truncate", &["-s", "0", p(&file)]);
    assert_eq!(
        ctx.read_direct("log.txt").await.as_deref(),
        Some(&b""[..]),
        "truncate to zero"
    );
    let mut writer = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    writer.write_all(b"visible before close").unwrap();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"visible before close",
        "a reader sees bytes not yet uploaded"
    );
    writer.set_len(7).unwrap();
    drop(writer);
    assert_eq!(
        ctx.read_direct("log.txt").await.as_deref(),
        Some(&b"visible"[..]),
        "ftruncate on the open file"
    );
}

async fn editor_style_save_replaces_the_original(case: Case) {
    let (ctx, mount) = mount_for(case, "editor");
    std::fs::write(mount.path("notes.md"), b"first draft").unwrap();
    let temp = mount.path(".notes.md.swp");
    let mut f = std::fs::File::create(&temp).unwrap();
    f.write_all(b"second draft").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&temp, mount.path("notes.md")).unwrap();
    assert_eq!(
        std::fs::read(mount.path("notes.md")).unwrap(),
        b"second draft"
    );
    assert_eq!(
        ctx.read_direct("notes.md").await.as_deref(),
        Some(&b"second draft"[..])
    );
    assert_eq!(
        ctx.read_direct(".notes.md.swp").await,
        None,
        "the temp file is gone"
    );
}

async fn directories_can_be_made_moved_and_removed(case: Case) {
    let (ctx, mut mount) = mount_for(case, "dirs");
    run(
        "mkdir",
        &["-p", p(&mount.path("a/b/c")), p(&mount.path("empty"))],
    );
    std::fs::write(mount.path("a/b/c/file.txt"), b"deep").unwrap();
    std::fs::write(mount.path("a/top.txt"), b"top").unwrap();
    let err = std::fs::remove_dir(mount.path("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    run("mv", &[p(&mount.path("a")), p(&mount.path("moved"))]);
    assert!(!mount.path("a").exists());
    assert_eq!(
        std::fs::read(mount.path("moved/b/c/file.txt")).unwrap(),
        b"deep"
    );
    assert_eq!(
        ctx.read_direct("moved/top.txt").await.as_deref(),
        Some(&b"top"[..])
    );
    assert_eq!(
        ctx.read_direct("a/top.txt").await,
        None,
        "moved, not copied"
    );
    // Empty directories survive a remount.
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    assert!(mount.stop_with(libc::SIGTERM).success());
    let mount = Mount::start_at(&config, &dir, &[]);
    assert!(
        mount.path("empty").is_dir(),
        "mkdir'd directory survives a remount"
    );
    assert!(mount.path("moved/b/c").is_dir());
    run(
        "rm",
        &["-rf", p(&mount.path("moved")), p(&mount.path("empty"))],
    );
    // SeaweedFS keeps listing emptied folders as prefixes, so count files, and ask the provider itself.
    assert_eq!(
        run("find", &[p(&mount.dir), "-type", "f"]).trim(),
        "",
        "rm -rf leaves no file"
    );
    assert!(
        ctx.storage.list("", None).await.unwrap().is_empty(),
        "nothing left on the provider"
    );
}

async fn tar_extracts_nested_trees_with_odd_names(case: Case) {
    let (ctx, mount) = mount_for(case, "tar");
    let src = ctx.dir.path().join("src");
    for (name, data) in [
        ("plain.txt", pattern(100, 1)),
        ("with space/file name.txt", pattern(2000, 2)),
        ("ünïcødé/日本語.bin", pattern(70_000, 3)),
        ("deep/er/and/deeper/x", pattern(9_000_000, 4)),
    ] {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let archive = ctx.dir.path().join("tree.tar");
    run("tar", &["-cf", p(&archive), "-C", p(&src), "."]);
    run(
        "tar",
        &["-xf", p(&archive), "-C", p(&mount.dir), "--no-same-owner"],
    );
    run("diff", &["-r", p(&src), p(&mount.dir)]);
    assert_eq!(
        ctx.read_direct("ünïcødé/日本語.bin").await.as_deref(),
        Some(&pattern(70_000, 3)[..])
    );
}

async fn rsync_tree_then_checksum_run_finds_nothing(case: Case) {
    let (ctx, mount) = mount_for(case, "rsync");
    let src = ctx.dir.path().join("tree");
    let count = if matches!(case, Case::S3 | Case::Local) {
        2000
    } else {
        300
    };
    for i in 0..count {
        let path = src.join(format!("d{}/f{i}.txt", i % 20));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("file {i}\n").repeat(i % 7 + 1)).unwrap();
    }
    let target = format!("{}/", p(&mount.path("backup")));
    run("rsync", &["-a", &format!("{}/", p(&src)), &target]);
    let changes = run(
        "rsync",
        &[
            "-acO",
            "--dry-run",
            "--itemize-changes",
            &format!("{}/", p(&src)),
            &target,
        ],
    );
    assert_eq!(
        changes.trim(),
        "",
        "a checksum run finds nothing to transfer"
    );
    assert_eq!(
        ctx.storage.list("backup", None).await.unwrap().len(),
        count,
        "every file is on the provider"
    );
    let listed = run("find", &[p(&mount.path("backup")), "-type", "f"]);
    assert_eq!(
        listed.lines().count(),
        count,
        "and in the tree, with no marker objects showing"
    );
}

async fn git_repository_passes_fsck(case: Case) {
    let (_ctx, mount) = mount_for(case, "git");
    let repo = mount.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut all = vec![
            "-C",
            p(&repo),
            "-c",
            "user.name=zmount",
            "-c",
            "user.email=z@example.test",
        ];
        all.extend_from_slice(args);
        run("git", &all)
    };
    git(&["init", "-q"]);
    for i in 0..20 {
        std::fs::write(repo.join(format!("file{i}.txt")), format!("content {i}\n")).unwrap();
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("file0.txt"), "changed\n").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "2");
    assert_eq!(
        git(&["status", "--porcelain"]).trim(),
        "",
        "clean work tree"
    );
}

async fn sqlite_database_passes_integrity_check(case: Case) {
    let (ctx, mount) = mount_for(case, "sqlite");
    let db = mount.path("app.db");
    let mut sql = String::from("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\nBEGIN;\n");
    for i in 0..10_000 {
        sql.push_str(&format!("INSERT INTO t (v) VALUES ('value {i}');\n"));
    }
    sql.push_str("COMMIT;\n");
    let script = ctx.dir.path().join("inserts.sql");
    std::fs::write(&script, sql).unwrap();
    run(
        "sh",
        &["-c", &format!("sqlite3 '{}' < '{}'", p(&db), p(&script))],
    );
    assert_eq!(
        run("sqlite3", &[p(&db), "PRAGMA integrity_check;"]).trim(),
        "ok"
    );
    assert_eq!(
        run("sqlite3", &[p(&db), "SELECT count(*) FROM t;"]).trim(),
        "10000"
    );
    let stored = ctx
        .read_direct("app.db")
        .await
        .expect("database on the provider");
    let copy = ctx.dir.path().join("copy.db");
    std::fs::write(&copy, stored).unwrap();
    assert_eq!(
        run("sqlite3", &[p(&copy), "SELECT count(*) FROM t;"]).trim(),
        "10000",
        "the provider's copy is whole"
    );
}

/// A mount of one S3 provider reached through a [`common::proxy::Proxy`] the test can take down; one attempt per
/// request so failures surface at once.
fn mount_behind_proxy(dir: &Path, test: &str, write_back: bool) -> (common::proxy::Proxy, Mount) {
    common::set_secret_env();
    let real = ProviderTable::new(Case::S3, "s3", &unique(test), dir);
    let (proxy, via_proxy) = real.behind_proxy();
    let config = ConfigBuilder::new(&dir.join("c"))
        .setting("retry.attempts", 1)
        .provider_table(&via_proxy)
        .default_route(RouteBuilder::to("s3").set("write_back", write_back));
    let mount = Mount::start(dir, &config);
    (proxy, mount)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_failure_is_an_error_at_fsync_and_close() {
    let dir = scratch();
    let (proxy, mount) = mount_behind_proxy(dir.path(), "down", false);
    // Large enough that a multipart upload is already streaming when the provider goes away.
    let data = pattern(20 << 20, 12);
    let mut file = std::fs::File::create(mount.path("data.bin")).unwrap();
    file.write_all(&data).unwrap();
    proxy.set_down(true); // the provider goes away after the program was told its writes succeeded
    let err = file.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "fsync: {err}");
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: closing the descriptor we own, to see close's own result.
    let rc = unsafe { libc::close(fd) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EIO)),
        "close reports it"
    );
    let (records, staged): (Vec<_>, Vec<_>) = std::fs::read_dir(dir.path().join("c/staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .partition(|p| p.extension().is_some_and(|e| e == "json"));
    assert_eq!(
        (staged.len(), records.len()),
        (1, 1),
        "the data is kept on local disk, with its journal record"
    );
    assert!(
        std::fs::read(&staged[0]).unwrap() == data,
        "every written byte is in the staged copy"
    );
    proxy.set_down(false);
    let ctx_storage = zmount::Storage::new(&zmount::Config::load(&mount.config).unwrap()).unwrap();
    assert!(
        !ctx_storage.exists("data.bin").await.unwrap(),
        "no partial object appeared"
    );
    assert!(
        !mount.log().contains("zmount-test-secret"),
        "no secret in the log"
    );
}

#[test]
fn writes_past_the_size_limit_fail_with_efbig() {
    let dir = scratch();
    let config = ConfigBuilder::new(&dir.path().join("c"))
        .case(Case::Local, "local", "", dir.path())
        .default_route(RouteBuilder::to("local").set("max_file_size", "1 MiB"));
    let mount = Mount::start(dir.path(), &config);
    let mut file = std::fs::File::create(mount.path("big")).unwrap();
    file.write_all(&vec![0u8; 1 << 20]).unwrap();
    let err = file.write_all(&[1u8; 4096]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_across_providers_is_exdev_and_mv_copies() {
    let dir = scratch();
    let prefix = unique("exdev");
    common::set_secret_env();
    let config = ConfigBuilder::new(&dir.path().join("c"))
        .case(Case::S3, "s3", &prefix, dir.path())
        .case(Case::Azure, "azure", &prefix, dir.path())
        .route(RouteBuilder::prefix("archive", "azure"))
        .default_route(RouteBuilder::to("s3"));
    let mount = Mount::start(dir.path(), &config);
    std::fs::write(mount.path("report.txt"), b"quarterly").unwrap();
    std::fs::create_dir(mount.path("archive")).unwrap();
    let err =
        std::fs::rename(mount.path("report.txt"), mount.path("archive/report.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    run(
        "mv",
        &[
            p(&mount.path("report.txt")),
            p(&mount.path("archive/report.txt")),
        ],
    );
    let config = zmount::Config::load(&mount.config).unwrap();
    let storage = zmount::Storage::new(&config).unwrap();
    let azure = storage.provider("azure").unwrap();
    assert_eq!(
        common::read_direct(azure, "archive/report.txt")
            .await
            .as_deref(),
        Some(&b"quarterly"[..])
    );
    assert_eq!(
        common::read_direct(storage.provider("s3").unwrap(), "report.txt").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_are_stored_byte_for_byte() {
    for case in [Case::Local, Case::S3, Case::Azure] {
        let (ctx, mount) = mount_for(case, "names");
        for name in [
            "50% off.txt",
            "file[1] (copy).txt",
            "ünïcødé 日本語.txt",
            "a#b?c*d.txt",
            "~tilde^caret`.txt",
        ] {
            std::fs::write(mount.path(name), name.as_bytes()).unwrap();
            assert_eq!(
                ctx.read_direct(name).await.as_deref(),
                Some(name.as_bytes()),
                "{case:?}: key {name:?}"
            );
            assert_eq!(
                std::fs::read(mount.path(name)).unwrap(),
                name.as_bytes(),
                "{case:?}: read back {name:?}"
            );
        }
        let mut listed: Vec<String> = std::fs::read_dir(&mount.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed.len(), 5, "{case:?}: {listed:?}");
        assert!(
            listed.contains(&"50% off.txt".to_string()),
            "{case:?}: {listed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_kill_9_and_is_uploaded_at_the_next_mount() {
    let dir = scratch();
    let (proxy, mut mount) = mount_behind_proxy(dir.path(), "crash", false);
    let data = pattern(3 << 20, 11);
    let mut file = std::fs::File::create(mount.path("journaled.bin")).unwrap();
    file.write_all(&data).unwrap();
    let mut unfinished = std::fs::File::create(mount.path("never-closed.bin")).unwrap();
    unfinished.write_all(b"not acknowledged").unwrap();
    proxy.set_down(true);
    assert!(
        file.sync_all().is_err(),
        "the upload fails while the provider is down"
    );
    let status = mount.stop_with(libc::SIGKILL);
    assert!(!status.success());
    let _ = std::process::Command::new("fusermount3")
        .args(["-uz", p(&mount.dir)])
        .status();
    drop((file, unfinished));
    proxy.set_down(false);
    let (config, mnt) = (mount.config.clone(), mount.dir.clone());
    let mount = Mount::start_at(&config, &mnt, &[]);
    let storage = zmount::Storage::new(&zmount::Config::load(&config).unwrap()).unwrap();
    let stored = common::read_direct(storage.provider("s3").unwrap(), "journaled.bin").await;
    assert!(
        stored.as_deref() == Some(&data[..]),
        "every fsynced byte reached the provider after the restart"
    );
    assert_eq!(
        common::read_direct(storage.provider("s3").unwrap(), "never-closed.bin").await,
        None
    );
    assert_eq!(std::fs::read(mount.path("journaled.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_close_returns_once_durable_and_unmount_waits_for_the_queue() {
    let dir = scratch();
    let (proxy, mut mount) = mount_behind_proxy(dir.path(), "writeback", true);
    let mut open: Vec<std::fs::File> = (0..50)
        .map(|i| std::fs::File::create(mount.path(&format!("offline-{i}.txt"))).unwrap())
        .collect();
    proxy.set_down(true);
    for (i, mut file) in open.drain(..).enumerate() {
        file.write_all(format!("offline {i}").as_bytes()).unwrap();
        // close succeeds although the provider is down: the data is fsynced and journaled locally
        use std::os::fd::IntoRawFd;
        // SAFETY: closing the descriptor we own, to see close's own result.
        assert_eq!(
            unsafe { libc::close(file.into_raw_fd()) },
            0,
            "close of offline-{i}.txt"
        );
    }
    proxy.set_down(false);
    for i in 0..50 {
        std::fs::write(
            mount.path(&format!("online-{i}.txt")),
            format!("online {i}"),
        )
        .unwrap();
    }
    let mut synced = std::fs::File::create(mount.path("synced.txt")).unwrap();
    synced.write_all(b"fsync waits").unwrap();
    synced.sync_all().unwrap();
    let storage = zmount::Storage::new(&zmount::Config::load(&mount.config).unwrap()).unwrap();
    let s3 = storage.provider("s3").unwrap();
    assert_eq!(
        common::read_direct(s3, "synced.txt").await.as_deref(),
        Some(&b"fsync waits"[..]),
        "fsync uploads"
    );
    drop(synced);
    assert!(mount.stop_with(libc::SIGTERM).success(), "{}", mount.log());
    for i in 0..50 {
        for name in [format!("offline-{i}.txt"), format!("online-{i}.txt")] {
            let expected = name.trim_end_matches(".txt").replace('-', " ");
            assert_eq!(
                common::read_direct(s3, &name).await.as_deref(),
                Some(expected.as_bytes()),
                "{name} uploaded by unmount"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_of_one_gib_reaches_the_provider_intact() {
    for case in [Case::S3, Case::Local, Case::Azure] {
        let (ctx, mount) = mount_for(case, "gib-in");
        let source = ctx.dir.path().join("source.bin");
        run(
            "sh",
            &[
                "-c",
                &format!("head -c 1073741824 /dev/urandom > '{}'", p(&source)),
            ],
        );
        run("cp", &[p(&source), p(&mount.path("gib.bin"))]);
        let direct = ctx.dir.path().join("direct.bin");
        {
            use futures::StreamExt;
            use object_store::ObjectStoreExt;
            let mut out = std::fs::File::create(&direct).unwrap();
            let key = ctx.provider.key_for("gib.bin");
            let mut stream = ctx
                .provider
                .object_store()
                .get(&key)
                .await
                .unwrap()
                .into_stream();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.unwrap()).unwrap();
            }
        }
        let sha = |f: &Path| {
            run("sha256sum", &[p(f)])
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            sha(&direct),
            sha(&source),
            "{case:?}: the provider's object equals the source"
        );
        assert_eq!(
            std::fs::metadata(mount.path("gib.bin")).unwrap().len(),
            1 << 30
        );
        ctx.storage.delete("gib.bin").await.unwrap(); // in-memory emulators: give the space back
        drop(mount);
        drop(ctx); // frees this case's 3 GiB of scratch files before the next
    }
}

async fn modes_owners_and_times_survive_a_remount(case: Case) {
    let (ctx, mut mount) = mount_for(case, "posix");
    let file = mount.path("script.sh");
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    run("chmod", &["750", p(&file)]);
    run("chown", &["1234:5678", p(&file)]);
    run("touch", &["-m", "-d", "2001-02-03 04:05:06 UTC", p(&file)]);
    let source = ctx.dir.path().join("kept.txt");
    std::fs::write(&source, b"keep my attributes").unwrap();
    run("chmod", &["600", p(&source)]);
    run(
        "touch",
        &["-m", "-d", "1999-12-31 23:59:59 UTC", p(&source)],
    );
    run("cp", &["-p", p(&source), p(&mount.path("kept.txt"))]);
    let stat = |path: &Path| {
        run("stat", &["-c", "%a %u %g %Y", p(path)])
            .trim()
            .to_string()
    };
    assert_eq!(stat(&file), "750 1234 5678 981173106");
    assert_eq!(stat(&mount.path("kept.txt")), "600 0 0 946684799", "cp -p");
    let info = ctx.storage.get_info("script.sh").await.unwrap();
    assert_eq!(
        info.metadata.get("mode").map(String::as_str),
        Some("33256"),
        "s3fs-style st_mode on the provider"
    );
    assert_eq!(
        info.metadata.get("mtime").map(String::as_str),
        Some("981173106")
    );
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    assert!(mount.stop_with(libc::SIGTERM).success());
    let mount = Mount::start_at(&config, &dir, &[]);
    assert_eq!(
        stat(&mount.path("script.sh")),
        "750 1234 5678 981173106",
        "after a remount"
    );
    assert_eq!(
        stat(&mount.path("kept.txt")),
        "600 0 0 946684799",
        "after a remount"
    );
    assert_eq!(
        std::fs::read(mount.path("script.sh")).unwrap(),
        b"#!/bin/sh\n",
        "content unchanged"
    );
}
