//! The mounted tree, driven by real programs and syscalls over every provider case: `ls`, `cat`, `cp -r`, `find`,
//! `stat`, `du`, `cmp`, `sha256sum`, random-offset reads, a merged directory over two providers, changes made
//! behind the mount's back, the disk cache cap, and clean unmounts.

mod common;

use common::mount::{mount_for, mount_for_with, mount_tuned, run, sha256, Mount};
use common::{pattern, scratch, unique, Case, ObjectStoreExt, TestConfig};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};
use zmount::config::{ConfigBuilder, RouteBuilder};

for_each_provider!(
    programs_read_the_tree,
    random_offset_reads_match_the_source,
    sequential_read_of_a_large_object_is_intact,
    changes_behind_the_mount_appear_after_the_ttl,
    writes_are_refused_read_only,
    one_gib_object_reads_back_intact,
    a_second_program_reads_from_the_kernel_cache_until_the_file_changes,
    a_file_read_at_random_is_fetched_whole_in_the_background,
    a_listing_of_many_pages_shows_each_name_once;
    writes: a_run_of_lookups_in_a_directory_costs_one_listing,
    a_directory_lookup_asks_only_what_the_listing_below_it_leaves_open,
);

async fn programs_read_the_tree(case: Case) {
    let files = [
        ("a.txt", b"hello, tree\n".to_vec()),
        ("dir/b.bin", pattern(3 << 20, 2)),
        ("dir/sub/c.txt", pattern(5000, 3)),
    ];
    let (ctx, mount) = mount_for(case, "programs");
    for (path, data) in &files {
        ctx.seed(path, data).await;
    }
    let listing = run("ls", &["-l", mount.path("dir").to_str().unwrap()]);
    assert!(
        listing.contains(" b.bin") && listing.contains(" sub"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!(" {} ", 3 << 20)),
        "ls -l shows the size: {listing}"
    );
    assert_eq!(
        run("cat", &[mount.path("a.txt").to_str().unwrap()]).as_bytes(),
        &files[0].1[..]
    );
    let found = run("find", &[mount.dir.to_str().unwrap(), "-type", "f"]);
    assert_eq!(found.lines().count(), 3, "{found}");
    let out = ctx.dir.path().join("copy");
    run(
        "cp",
        &[
            "-r",
            mount.path("dir").to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(out.join("b.bin")).unwrap(), files[1].1);
    assert_eq!(std::fs::read(out.join("sub/c.txt")).unwrap(), files[2].1);
    run(
        "cmp",
        &[
            mount.path("dir/b.bin").to_str().unwrap(),
            out.join("b.bin").to_str().unwrap(),
        ],
    );
    let stat = run(
        "stat",
        &[
            "-c",
            "%s %b %B %F",
            mount.path("dir/b.bin").to_str().unwrap(),
        ],
    );
    let fields: Vec<&str> = stat.split_whitespace().collect();
    let (size, blocks, unit): (u64, u64, u64) = (
        fields[0].parse().unwrap(),
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
    );
    assert_eq!(size, 3 << 20);
    assert_eq!(
        blocks * unit,
        size.div_ceil(512) * 512,
        "st_blocks consistent with size: {stat}"
    );
    assert!(stat.contains("regular file"), "{stat}");
    let du = run("du", &["-sk", mount.path("dir").to_str().unwrap()]);
    let kib: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(kib >= 3 * 1024, "du counts the data: {du}");
}

async fn random_offset_reads_match_the_source(case: Case) {
    let (ctx, mount) = mount_for(case, "random");
    let data = pattern(8 << 20, 4);
    ctx.seed("r.bin", &data).await;
    let mut file = std::fs::File::open(mount.path("r.bin")).unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 11) % data.len() as u64;
        let len = ((state >> 40) % 70_000 + 1) as usize;
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).unwrap();
        let n = read_fully(&mut file, &mut buf);
        let expected = &data[offset as usize..(offset as usize + len).min(data.len())];
        assert_eq!(&buf[..n], expected, "read of {len} at {offset}");
    }
}

fn read_fully(file: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// A sequential reader's read-ahead asks for large ranges, each one GET cut into cache blocks as it streams in:
/// far fewer GETs than 1 MiB blocks, every byte in place.
async fn sequential_read_of_a_large_object_is_intact(case: Case) {
    let addr = common::free_local_addr();
    let (ctx, mount) = mount_for_with(case, "sequential", &["--metrics-addr", &addr]);
    let data = pattern(48 << 20, 5);
    ctx.seed("video.mp4", &data).await;
    let original = ctx.dir.path().join("original.mp4");
    std::fs::write(&original, &data).unwrap();
    let gets = format!(
        "zmount_provider_requests_total{{provider=\"{}\",op=\"get\"",
        ctx.provider.name
    );
    let before = common::metric_sum(&addr, &gets).await;
    assert_eq!(
        sha256(&mount.path("video.mp4")),
        sha256(&original),
        "cold read"
    );
    let sent = common::metric_sum(&addr, &gets).await - before;
    assert!(
        sent <= 24.0,
        "{sent} GETs for a sequential read of 48 MiB (48 would be one per block)"
    );
    assert_eq!(
        sha256(&mount.path("video.mp4")),
        sha256(&original),
        "warm read from the cache"
    );
}

/// The kernel offers FUSE a read-ahead of 128 KiB at `init`; the mount raises its device's window (root only, in
/// sysfs) so that a sequential reader's requests reach the daemon up to 1 MiB at a time, a quarter of the requests
/// and of the daemon's work per byte. Read like `dd bs=1M`: each request is one lookup in the block cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_reach_the_daemon_in_large_requests() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the mount cannot change its read-ahead, nothing to check");
        return;
    }
    let addr = common::free_local_addr();
    let (ctx, mount) = mount_for_with(Case::Local, "read-ahead", &["--metrics-addr", &addr]);
    let data = pattern(32 << 20, 9);
    ctx.seed("big.bin", &data).await;
    let dev = std::fs::metadata(&mount.dir).unwrap().dev();
    let window = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kib: u32 = std::fs::read_to_string(&window)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kib >= 1024, "{window}: {kib} KiB");

    let before = cache_lookups(&addr).await;
    let mut file = std::fs::File::open(mount.path("big.bin")).unwrap();
    let mut read = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
    }
    assert!(read == data, "the bytes read differ from the object's");
    let lookups = cache_lookups(&addr).await - before;
    assert!(
        lookups <= 96.0,
        "{lookups} block-cache lookups for 32 MiB read sequentially (256 at 128 KiB requests)"
    );
}

/// Requests that reached the mount's block cache (hits of either tier and misses).
async fn cache_lookups(addr: &str) -> f64 {
    common::metric_sum(addr, "zmount_cache_hits_total").await
        + common::metric_sum(addr, "zmount_cache_misses_total").await
}

/// The next program to read a file gets it from the kernel's page cache (FOPEN_KEEP_CACHE: no read reaches the
/// mount), as long as the object is the version those pages came from: a new version on the provider, or a write
/// through the mount, is read afresh.
async fn a_second_program_reads_from_the_kernel_cache_until_the_file_changes(case: Case) {
    let addr = common::free_local_addr();
    let (ctx, mount) = mount_tuned(
        case,
        "keep-cache",
        |c| c.setting("mount.attr_ttl", 0),
        |r| r,
        &["--metrics-addr", &addr],
    );
    let first = pattern(3 << 20, 11);
    ctx.seed("page.bin", &first).await;
    let path = mount.path("page.bin");
    assert!(std::fs::read(&path).unwrap() == first, "first read");
    let after_first = cache_lookups(&addr).await;
    assert!(after_first > 0.0, "the first read went through the mount");
    assert!(std::fs::read(&path).unwrap() == first, "second read");
    assert_eq!(
        cache_lookups(&addr).await,
        after_first,
        "the second read came from the kernel's page cache"
    );
    let second = pattern(3 << 20, 12); // same size, new content: only the ETag tells
    ctx.seed("page.bin", &second).await;
    assert!(
        std::fs::read(&path).unwrap() == second,
        "a new version on the provider is read, not the cached pages"
    );
    if case != Case::Gcs {
        let third = pattern(3 << 20, 13);
        std::fs::write(&path, &third).unwrap();
        assert!(std::fs::read(&path).unwrap() == third, "read after a write");
        assert!(std::fs::read(&path).unwrap() == third, "read again");
    }
}

/// A file read at random is fetched whole into the disk cache in the background (with the handle open), after
/// which every block of it reads without asking the provider; it is fetched about once.
async fn a_file_read_at_random_is_fetched_whole_in_the_background(case: Case) {
    use std::os::unix::fs::FileExt;
    let addr = common::free_local_addr();
    let (ctx, mount) = mount_for_with(case, "fill", &["--metrics-addr", &addr]);
    let data = pattern(24 << 20, 21);
    ctx.seed("random.db", &data).await;
    let name = &ctx.provider.name;
    let requests = format!("zmount_provider_requests_total{{provider=\"{name}\"");
    let bytes = format!("zmount_provider_read_bytes_total{{provider=\"{name}\"");
    let file = std::fs::File::open(mount.path("random.db")).unwrap();
    for block in [17u64, 3, 11] {
        let offset = (block << 20) + 4096 * block;
        let mut page = vec![0u8; 4096];
        file.read_exact_at(&mut page, offset).unwrap();
        assert!(page == data[offset as usize..][..4096], "page at {offset}");
    }
    // Pages read while the fill runs (answered with just their bytes when their block has not arrived yet) and
    // after it (from the disk tier, on the thread that took the request): intact either way.
    let mut x = u64::from(offsets_seed());
    let mut random_page = |when: &str| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (x >> 16) % (data.len() as u64 - 4096);
        let mut page = vec![0u8; 4096];
        file.read_exact_at(&mut page, offset).unwrap();
        assert!(
            page == data[offset as usize..][..4096],
            "page at {offset} {when}"
        );
    };
    const DURING: usize = 8;
    for _ in 0..DURING {
        random_page("during the fill");
    }
    let started = Instant::now();
    while common::metric_sum(&addr, "zmount_cache_fills_total").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the file was not fetched whole: {} bytes on disk",
            common::metric_sum(&addr, "zmount_cache_disk_bytes").await
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = common::metric_sum(&addr, &requests).await;
    for _ in 0..200 {
        random_page("after the fill");
    }
    let mut all = vec![0u8; data.len()];
    for (i, chunk) in all.chunks_mut(1 << 20).enumerate() {
        file.read_exact_at(chunk, (i as u64) << 20).unwrap();
    }
    assert!(all == data, "the whole file reads back intact");
    assert_eq!(
        common::metric_sum(&addr, &requests).await,
        asked,
        "no request once the file is cached"
    );
    let read = common::metric_sum(&addr, &bytes).await;
    // The file once, plus what the reads before the fill asked for: the three first misses (a block each) and
    // the pages read during the fill (each at most the two blocks a read of the kernel's can span).
    let extra = (3 + 2 * DURING) << 20;
    assert!(
        read <= (data.len() + extra) as f64,
        "{read} bytes fetched for a {} byte file",
        data.len()
    );
}

/// A seed for the random offsets of a test run, printed so that a failure can be replayed.
fn offsets_seed() -> u32 {
    let seed = std::env::var("ZMOUNT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(std::process::id);
    eprintln!("random offsets from seed {seed} (ZMOUNT_TEST_SEED)");
    seed
}

/// `stat` of every file of a directory on a fresh mount: the second lookup lists the directory once and asks each
/// file for its attributes, instead of a HEAD and a LIST per name; stored modes show. A name the listing lacks is
/// answered "no such file" without a request (as a `cp` loop creating files asks of every name), and an object
/// another client adds after the listing shows once the listing's TTL is over.
async fn a_run_of_lookups_in_a_directory_costs_one_listing(case: Case) {
    use std::os::unix::fs::PermissionsExt;
    let (ctx, writer) = mount_for(case, "lookups");
    for i in 0..40u8 {
        ctx.seed(&format!("d/f{i:02}"), &pattern(5000, i)).await;
    }
    let script = writer.path("d/run.sh");
    std::fs::write(&script, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A name no key holds as it is (a control character): stored under a percent-encoded key.
    std::fs::write(writer.path("d/tab\there"), b"tab").unwrap();
    let (mount, addr) = remount_with_metrics(writer);
    let requests = format!(
        "zmount_provider_requests_total{{provider=\"{}\"",
        ctx.provider.name
    );
    let before = common::metric_sum(&addr, &requests).await;
    for i in 0..40 {
        let meta = std::fs::metadata(mount.path(&format!("d/f{i:02}"))).unwrap();
        assert_eq!(meta.len(), 5000, "f{i:02}");
    }
    let mode = std::fs::metadata(mount.path("d/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o755,
        "the stored mode of a file first seen through the listing"
    );
    let sent = common::metric_sum(&addr, &requests).await - before;
    // The directory itself, two lookups asked name by name, one LIST and a HEAD per file: about 50. Asked name by
    // name, the 41 lookups would take two requests each.
    assert!(
        sent <= 60.0,
        "{sent} requests for 41 lookups in one directory"
    );
    let before = common::metric_sum(&addr, &requests).await;
    let err = std::fs::metadata(mount.path("d/late")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(
        common::metric_sum(&addr, &requests).await - before,
        0.0,
        "a name the listing lacks is answered from it"
    );
    assert_eq!(
        std::fs::read(mount.path("d/tab\there")).unwrap(),
        b"tab",
        "a name stored under an encoded key is asked for by name, not answered from the listing"
    );
    ctx.seed("d/later", b"added elsewhere").await;
    let started = Instant::now();
    let read = loop {
        match std::fs::read(mount.path("d/later")) {
            Ok(read) => break read,
            Err(e) => assert!(
                e.raw_os_error() == Some(libc::ENOENT)
                    && started.elapsed() < Duration::from_secs(20),
                "an object added elsewhere never showed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(read, b"added elsewhere");
}

/// Looking a directory up lists one key below it, and its attributes are asked for only where that key leaves them
/// open (keys are listed in byte order): a folder made by another tool, whose first key sorts after where a marker
/// would be, costs no HEAD of a marker or of a folder object; a directory made here keeps its mode whether its
/// marker is the first key below it or names sort before the marker's.
async fn a_directory_lookup_asks_only_what_the_listing_below_it_leaves_open(case: Case) {
    use std::os::unix::fs::PermissionsExt;
    let (ctx, writer) = mount_for(case, "dir-lookups");
    ctx.seed("elsewhere/data.txt", b"made by another tool")
        .await;
    for (dir, names) in [("first", &["a.txt"][..]), ("after", &["!early", "zz"][..])] {
        std::fs::create_dir(writer.path(dir)).unwrap();
        for name in names {
            std::fs::write(writer.path(&format!("{dir}/{name}")), name).unwrap();
        }
        let mode = std::fs::Permissions::from_mode(0o710);
        std::fs::set_permissions(writer.path(dir), mode).unwrap();
    }
    let (mount, addr) = remount_with_metrics(writer);
    let heads = format!(
        "zmount_provider_requests_total{{provider=\"{}\",op=\"head\"",
        ctx.provider.name
    );
    let mode = |path: &str| {
        std::fs::metadata(mount.path(path))
            .unwrap()
            .permissions()
            .mode()
    };
    let before = common::metric_sum(&addr, &heads).await;
    assert_eq!(
        mode("elsewhere"),
        libc::S_IFDIR | 0o755,
        "a folder made elsewhere"
    );
    let sent = common::metric_sum(&addr, &heads).await - before;
    // A local folder lists in no set order: its marker is still asked for (a `stat` on disk).
    let most = if case == Case::Local { 2.0 } else { 1.0 };
    assert!(
        sent <= most,
        "{sent} HEADs to look up a folder made elsewhere: at most the file HEAD raced with the listing"
    );
    assert_eq!(mode("first"), libc::S_IFDIR | 0o710, "marker first below");
    assert_eq!(
        mode("after"),
        libc::S_IFDIR | 0o710,
        "a name sorting before the marker"
    );
    assert_eq!(
        std::fs::read(mount.path("elsewhere/data.txt")).unwrap(),
        b"made by another tool"
    );
}

/// `mount` unmounted and mounted again (same config and cache folder, a fresh daemon) with its metrics served;
/// returns the new mount and the metrics address.
fn remount_with_metrics(mount: Mount) -> (Mount, String) {
    let (config, dir) = (mount.config.clone(), mount.dir.clone());
    drop(mount);
    let addr = common::free_local_addr();
    let mount = Mount::start_at(&config, &dir, &["--metrics-addr", &addr]);
    (mount, addr)
}

async fn changes_behind_the_mount_appear_after_the_ttl(case: Case) {
    let ttl = |c: ConfigBuilder| {
        c.setting("mount.attr_ttl", 0.5)
            .setting("mount.negative_ttl", 0.5)
    };
    let (ctx, mount) = mount_tuned(case, "ttl", ttl, |r| r, &[]);
    let late = mount.path("late.txt");
    assert!(!late.exists(), "not there yet");
    ctx.seed("late.txt", b"arrived").await;
    let started = Instant::now();
    while !late.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "object added on the provider never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&late).unwrap(), b"arrived");
    let names: Vec<String> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["late.txt"]);
}

async fn writes_are_refused_read_only(case: Case) {
    let (ctx, mount) = mount_for_with(case, "readonly", &["--read-only"]);
    ctx.seed("keep.txt", b"keep").await;
    let err = std::fs::write(mount.path("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(mount.path("keep.txt"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(std::fs::read(mount.path("keep.txt")).unwrap(), b"keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_from_two_providers_merge_into_one_directory() {
    let dir = scratch();
    let prefix = unique("merge");
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .fast_retries()
        .case(Case::S3, "s3", &prefix, dir.path())
        .case(Case::Azure, "azure", &prefix, dir.path())
        .route(RouteBuilder::pattern("*.jpg", "s3"))
        .default_route(RouteBuilder::to("azure"));
    let mount = Mount::start(dir.path(), &config);
    let config = zmount::Config::load(&mount.config).unwrap();
    let storage = zmount::Storage::new(&config).unwrap();
    let (s3, azure) = (
        storage.provider("s3").unwrap(),
        storage.provider("azure").unwrap(),
    );
    use object_store::ObjectStoreExt;
    s3.object_store()
        .put(
            &s3.key_for("shared/photo.jpg"),
            b"jpg-bytes".to_vec().into(),
        )
        .await
        .unwrap();
    azure
        .object_store()
        .put(
            &azure.key_for("shared/notes.txt"),
            b"txt-bytes".to_vec().into(),
        )
        .await
        .unwrap();
    // Strays: each on the provider its route does not name; the tree shows only the routed copies.
    azure
        .object_store()
        .put(&azure.key_for("shared/photo.jpg"), b"stray".to_vec().into())
        .await
        .unwrap();
    s3.object_store()
        .put(&s3.key_for("shared/notes.txt"), b"stray".to_vec().into())
        .await
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(mount.path("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "photo.jpg"]);
    assert_eq!(
        std::fs::read(mount.path("shared/photo.jpg")).unwrap(),
        b"jpg-bytes"
    );
    assert_eq!(
        std::fs::read(mount.path("shared/notes.txt")).unwrap(),
        b"txt-bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_objects_list_completely() {
    for case in [Case::S3, Case::Local] {
        let (ctx, mount) = mount_for(case, "many");
        let store = ctx.provider.clone();
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        futures::stream::iter(0..10_000)
            .map(|i| {
                let store = store.clone();
                async move {
                    store
                        .object_store()
                        .put(
                            &store.key_for(&format!("many/f{i:05}.txt")),
                            vec![b'x'; 3].into(),
                        )
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let listing = run("ls", &["-l", mount.path("many").to_str().unwrap()]);
        let files = listing.lines().filter(|l| l.starts_with('-')).count();
        assert_eq!(files, 10_000, "{case:?}: ls -l lists every object");
        assert!(listing.contains("f00000.txt") && listing.contains("f09999.txt"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cache_never_exceeds_its_cap() {
    let cap = 6u64 << 20;
    let settings = |c: ConfigBuilder| {
        c.setting("cache_size", cap as i64)
            .setting("mount.memory_cache_size", "2 MiB")
            .setting("mount.read_ahead", "2 MiB")
    };
    let (ctx, mount) = mount_tuned(Case::S3, "cap", settings, |r| r, &[]);
    let blocks = ctx.dir.path().join("cache/blocks");
    for i in 0..4u8 {
        ctx.seed(&format!("f{i}.bin"), &pattern(5 << 20, i)).await;
    }
    for i in 0..4u8 {
        let data = pattern(5 << 20, i);
        let name = format!("f{i}.bin");
        let mut file = std::fs::File::open(mount.path(&name)).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut read = Vec::new();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
            let used = du_bytes(&blocks);
            assert!(used <= cap, "disk cache holds {used} bytes, cap {cap}");
        }
        assert!(read == data, "{name} read back intact");
    }
    assert!(du_bytes(&blocks) > 0, "the disk tier was used");
}

fn du_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            match e.metadata() {
                Ok(m) if m.is_dir() => du_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0, // evicted while we looked
            }
        })
        .sum()
}

/// Provider `local` (a folder in `dir`, no prefix) with every path routed to it, and the cache in `<dir>/<cache>`.
fn local_config(dir: &Path, cache: &str) -> ConfigBuilder {
    ConfigBuilder::new(&dir.join(cache))
        .case(Case::Local, "local", "", dir)
        .default_route(RouteBuilder::to("local"))
}

#[test]
fn signals_unmount_cleanly() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = scratch();
        let mut mount = Mount::start(dir.path(), &local_config(dir.path(), "c"));
        assert!(zmount::cli::is_mounted(&mount.dir));
        let status = mount.stop_with(signal);
        assert!(
            status.success(),
            "exit status after signal {signal}: {status}\n{}",
            mount.log()
        );
        assert!(
            !zmount::cli::is_mounted(&mount.dir),
            "stale mount after signal {signal}"
        );
        assert!(
            std::fs::read_dir(&mount.dir).unwrap().next().is_none(),
            "mountpoint is an empty folder again"
        );
    }
}

#[test]
fn external_unmount_ends_the_daemon() {
    let dir = scratch();
    let mut mount = Mount::start(dir.path(), &local_config(dir.path(), "c"));
    run("fusermount3", &["-u", mount.dir.to_str().unwrap()]);
    let status = mount.stop_with(0); // signal 0: just wait for the exit the unmount caused
    assert!(status.success(), "{status}\n{}", mount.log());
}

#[test]
fn bad_mountpoints_get_clear_errors() {
    let dir = scratch();
    let config = dir.path().join("mount.toml");
    std::fs::write(&config, local_config(dir.path(), "c").text()).unwrap();
    let zmount = |mnt: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zmount"))
            .arg(&config)
            .arg(mnt)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing");
    assert!(
        zmount(&missing).contains("missing: No such file or directory"),
        "{}",
        zmount(&missing)
    );
    let full = dir.path().join("full");
    std::fs::create_dir_all(full.join("x")).unwrap();
    assert!(zmount(&full).contains("is not empty"), "{}", zmount(&full));
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    let _mount = Mount::start_at(&config, &busy, &[]);
    let other = dir.path().join("other.toml");
    std::fs::write(&other, local_config(dir.path(), "c2").text()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zmount"))
        .arg(&other)
        .arg(&busy)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is already a mount point"),
        "{out:?}"
    );
    let second = dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let said = zmount(&second);
    assert!(
        said.contains("is in use by zmount process") && said.contains(busy.to_str().unwrap()),
        "names the holder: {said}"
    );
}

#[test]
fn non_utf8_names_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch();
    let mount = Mount::start(dir.path(), &local_config(dir.path(), "c"));
    let err =
        std::fs::metadata(mount.dir.join(std::ffi::OsStr::from_bytes(b"bad\xffname"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
}

async fn one_gib_object_reads_back_intact(case: Case) {
    let settings = |c: ConfigBuilder| c.setting("cache_size", "256 MiB");
    let (ctx, mount) = mount_tuned(case, "gib", settings, |r| r, &[]);
    let original = ctx.dir.path().join("gib.bin");
    let chunk = zmount::storage::UPLOAD_PART_SIZE;
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&original).unwrap());
        for i in 0..(1usize << 30) / chunk {
            file.write_all(&pattern(chunk, i as u8)).unwrap();
        }
    }
    if case == Case::Gcs {
        ctx.seed("gib.bin", &std::fs::read(&original).unwrap())
            .await; // the emulator takes JSON-API uploads only
    } else {
        let upload = ctx
            .provider
            .object_store()
            .put_multipart(&ctx.provider.key_for("gib.bin"))
            .await
            .unwrap();
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, chunk);
        let mut source = std::fs::File::open(&original).unwrap();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = read_fully(&mut source, &mut buf);
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.unwrap();
            writer.write(&buf[..n]);
        }
        writer.finish().await.unwrap();
    }
    assert_eq!(
        std::fs::metadata(mount.path("gib.bin")).unwrap().len(),
        1 << 30
    );
    assert_eq!(
        sha256(&mount.path("gib.bin")),
        sha256(&original),
        "1 GiB through the mount"
    );
    if case != Case::Gcs {
        ctx.storage.delete("gib.bin").await.unwrap(); // in-memory emulators: give the space back
    }
}

/// An open file reads one version: when its object is replaced (same size, new content, new ETag) while it is open,
/// a block it had not fetched yet is refused with ESTALE, never served from the new version.
async fn object_replaced_during_a_read_fails_instead_of_mixing_versions(case: Case) {
    let (ctx, mount) = mount_for(case, "replaced");
    let old = pattern(8 << 20, 7);
    ctx.seed("changing.bin", &old).await;
    let mut file = std::fs::File::open(mount.path("changing.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..4096]);
    ctx.seed("changing.bin", &pattern(8 << 20, 8)).await; // same size, new content, new ETag
    file.seek(SeekFrom::Start(6 << 20)).unwrap();
    let mut later = vec![0u8; 4096];
    // Block 6 was never fetched for this handle; fetching it now would return the new version's bytes.
    let err = file
        .read_exact(&mut later)
        .expect_err("a handle must not return bytes of two versions");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_during_a_read_on_s3() {
    object_replaced_during_a_read_fails_instead_of_mixing_versions(Case::S3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_during_a_read_on_azure() {
    object_replaced_during_a_read_fails_instead_of_mixing_versions(Case::Azure).await
}

/// A directory wins over a file of the same name (the file is not reachable, nor listed twice), and a path keeps its
/// inode number when its attributes are asked of the provider again (a TTL of 0: every stat asks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_hides_a_file_of_the_same_name_and_inodes_are_stable() {
    use std::os::unix::fs::MetadataExt;
    let no_ttl = |c: ConfigBuilder| c.setting("mount.attr_ttl", 0);
    let (ctx, mount) = mount_tuned(Case::S3, "shadow", no_ttl, |r| r, &[]);
    ctx.seed("both", b"a file").await;
    ctx.seed("both/inner.txt", b"inside").await;
    let meta = std::fs::metadata(mount.path("both")).unwrap();
    assert!(meta.is_dir(), "the directory wins");
    assert_eq!(
        std::fs::read(mount.path("both/inner.txt")).unwrap(),
        b"inside"
    );
    let ino = std::fs::metadata(mount.path("both/inner.txt"))
        .unwrap()
        .ino();
    let listed: Vec<_> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["both"], "the shadowed file is not listed twice");
    for _ in 0..3 {
        let again = std::fs::metadata(mount.path("both/inner.txt"))
            .unwrap()
            .ino();
        assert_eq!(again, ino, "same inode after the provider was asked again");
    }
}

/// Seeds directory `dir` with a listing of many pages (at 100 entries a page) and returns the names a listing of it
/// must show, each once, sorted: 1,100 small files (more than a listing asks for their type, so its pages are
/// handed out as they arrive), a file `x` followed by 150 names that sort between it and the folder `x/` (which
/// comes pages later and wins over the file of its name; a local folder gets the folder only), and `y`.
async fn seed_pages(ctx: &common::Ctx, dir: &str) -> Vec<String> {
    use futures::StreamExt;
    let mut names: Vec<String> = (0..1100).map(|i| format!("a{i:04}")).collect();
    names.push("x".into());
    names.extend((0..150).map(|i| format!("x-{i:03}")));
    names.push("y".into());
    let mut keys: Vec<String> = names.iter().map(|n| format!("{dir}/{n}")).collect();
    if ctx.case == Case::Local {
        keys.retain(|k| *k != format!("{dir}/x")); // a folder cannot hold a file and a folder of one name
    }
    keys.push(format!("{dir}/x/inner"));
    futures::stream::iter(&keys)
        .map(|key| ctx.seed(key, b"abc"))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    names.sort();
    names
}

/// The names `readdir` gives for `dir`, in its order, or the error that ended it.
fn read_names(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name().into_string().unwrap()))
        .collect()
}

async fn a_listing_of_many_pages_shows_each_name_once(case: Case) {
    let (ctx, mount) = mount_tuned(
        case,
        "pages",
        |c| c.setting("mount.list_page", 100),
        |r| r,
        &[],
    );
    let expected = seed_pages(&ctx, "d").await;
    let dir = mount.path("d");
    // A directory closed after its first entries: the listing stops, and what it got is not kept as the listing.
    let first: Vec<_> = std::fs::read_dir(&dir).unwrap().take(5).collect();
    assert_eq!(first.len(), 5, "{case:?}");
    for round in ["first", "kept for the TTL"] {
        let mut names = read_names(&dir).unwrap();
        names.sort();
        let twice: Vec<_> = names.windows(2).filter(|w| w[0] == w[1]).collect();
        assert!(twice.is_empty(), "{case:?} {round}: given twice: {twice:?}");
        assert_eq!(names.len(), expected.len(), "{case:?} {round}");
        assert!(names == expected, "{case:?} {round}: the names differ");
    }
    let x = std::fs::read_dir(&dir)
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.file_name() == "x")
        .unwrap();
    assert!(
        x.file_type().unwrap().is_dir(),
        "{case:?}: the folder wins over the file `x`"
    );
    assert!(
        std::fs::metadata(mount.path("d/x")).unwrap().is_dir(),
        "{case:?}"
    );
    let listing = run("ls", &["-l", dir.to_str().unwrap()]);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with('-')).count(),
        expected.len() - 1,
        "{case:?}"
    );
    assert_eq!(
        listing.lines().filter(|l| l.starts_with('d')).count(),
        1,
        "{case:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_fails_midway_is_an_error_not_a_short_listing() {
    let ctx = common::Ctx::new(Case::S3, "midway");
    let expected = seed_pages(&ctx, "d").await;
    let (name, dir) = (&ctx.provider.name, ctx.dir.path());
    let real = common::ProviderTable::new(Case::S3, name, &ctx.provider.prefix, dir);
    let (proxy, via_proxy) = real.behind_proxy();
    let config = ConfigBuilder::new(&dir.join("c"))
        .setting("retry.attempts", 1)
        .setting("mount.list_page", 100)
        .provider_table(&via_proxy)
        .default_route(RouteBuilder::to(name));
    let mount = Mount::start(dir, &config);
    let dir = mount.path("d");
    assert!(std::fs::metadata(&dir).unwrap().is_dir());
    // The twelfth page fails: the first eleven were given (the listing hands them out once it has more small
    // objects than it asks about), the rest must not look like the end of the directory.
    proxy.set(common::proxy::Fault::Fail503ListingsAfter(11));
    let mut given = 0;
    let err = std::fs::read_dir(&dir)
        .unwrap()
        .find_map(|entry| match entry {
            Ok(_) => {
                given += 1;
                None
            }
            Err(e) => Some(e),
        })
        .expect("readdir fails where the listing failed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        given > 0 && given < expected.len(),
        "{given} entries before the error"
    );
    proxy.set(common::proxy::Fault::None);
    let mut names = read_names(&dir).unwrap();
    names.sort();
    assert!(
        names == expected,
        "a failed listing is not kept: listed again, whole"
    );
}
