//! Image transforms and variants through a real mount (local and S3): images written with `cp` get their variants
//! in the background with the configured sizes and formats; bad images are skipped with a log line and kept as
//! written; decompression bombs are refused from their header; `zmount variants` writes deleted variants again.

mod common;

use common::mount::{mount_tuned, run, sha256, Mount};
use common::proxy::{Fault, Proxy};
use common::{table, unique, zmount, Case, Ctx, ProviderTable, TestConfig};
use image::{GenericImageView, ImageEncoder, ImageFormat};
use std::path::Path;
use std::time::{Duration, Instant};
use zmount::config::{ConfigBuilder, RouteBuilder};

/// How long background image work may take before a test fails (it takes well under a second here).
const IMAGE_DEADLINE: Duration = Duration::from_secs(30);

/// The variants most tests configure on the default route, and metadata the variants inherit.
fn variants(route: RouteBuilder) -> RouteBuilder {
    let resized =
        |size: &str, key: &str, value: &str| table([("resize", size.into()), (key, value.into())]);
    route
        .set("metadata", table([("owner", "team-a".into())]))
        .set(
            "variants",
            table([
                ("thumbnail", "150x150".into()),
                ("medium", resized("400x300", "format", "webp")),
                ("square", resized("100x100", "fit", "cover")),
            ]),
        )
}

/// A colourful test picture (a plain one would hide a wrong crop or a swapped axis less well).
fn picture(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 90])
    })
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    picture(width, height)
        .write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

/// A JPEG stored `width`×`height` whose EXIF orientation (6) says to show it rotated 90° clockwise.
fn rotated_jpeg(width: u32, height: u32) -> Vec<u8> {
    let exif: Vec<u8> = [
        &b"MM\0*"[..],
        &8u32.to_be_bytes(),
        &1u16.to_be_bytes(),
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0],
        &0u32.to_be_bytes(),
    ]
    .concat();
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    encoder.set_exif_metadata(exif).unwrap();
    let pixels = picture(width, height);
    encoder
        .write_image(
            pixels.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A PNG that is only a header announcing `width`×`height` (`color`: PNG colour type, `depth`: bits per sample)
/// and a few bytes of data: decoding it would need gigabytes.
fn png_header_only(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let body = [&kind[..], data].concat();
        [
            &(data.len() as u32).to_be_bytes()[..],
            &body,
            &crc32(&body).to_be_bytes(),
        ]
        .concat()
    }
    let ihdr = [
        &width.to_be_bytes()[..],
        &height.to_be_bytes(),
        &[depth, color, 0, 0, 0],
    ]
    .concat();
    // zlib stream of a few zero bytes: a valid start of the image data.
    let idat = [0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01];
    [
        &b"\x89PNG\r\n\x1a\n"[..],
        &chunk(b"IHDR", &ihdr),
        &chunk(b"IDAT", &idat),
        &chunk(b"IEND", &[]),
    ]
    .concat()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Copies `files` (name, bytes) into `<mount>/<dir>/` with the real `cp`, from a local folder.
fn cp_into(ctx: &Ctx, mnt: &Mount, dir: &str, files: &[(&str, &[u8])]) {
    let src = ctx.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut args = Vec::new();
    for (name, bytes) in files {
        std::fs::write(src.join(name), bytes).unwrap();
        args.push(src.join(name).to_str().unwrap().to_string());
    }
    let target = mnt.path(dir);
    std::fs::create_dir_all(&target).unwrap();
    args.push(target.to_str().unwrap().to_string());
    run("cp", &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The bytes of `path` on the provider once background work has written it.
async fn wait_for_object(ctx: &Ctx, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + IMAGE_DEADLINE;
    loop {
        if let Some(bytes) = ctx.read_direct(path).await {
            return bytes.to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not appear within {IMAGE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn format_and_size(bytes: &[u8]) -> (ImageFormat, u32, u32) {
    let format = image::guess_format(bytes).unwrap();
    let (w, h) = image::load_from_memory(bytes).unwrap().dimensions();
    (format, w, h)
}

fn xattr(file: &Path, name: &str) -> String {
    run(
        "getfattr",
        &["--only-values", "-n", name, file.to_str().unwrap()],
    )
}

/// Every variant of a PNG and of a rotated JPEG has the configured box (aspect kept, or exactly the box for
/// `cover`), the configured format and the original's metadata plus which variant it is; the originals are
/// untouched, and so is a user's file where a variant would go; a file moved into place from a hidden temporary name gets variants (the temporary name none);
/// `zmount search` finds variants by metadata; `zmount variants` writes deleted ones again, but not over a user's
/// file copied onto a variant's name.
async fn variants_have_the_configured_sizes_and_formats(case: Case) {
    let (ctx, mnt) = mount_tuned(case, "img-variants", |c| c, variants, &[]);
    let (photo, portrait) = (png(800, 600), rotated_jpeg(800, 600));
    cp_into(
        &ctx,
        &mnt,
        "pics",
        &[("photo.png", &photo), ("portrait.jpg", &portrait)],
    );
    let expected = [
        ("pics/photo.thumbnail.png", ImageFormat::Png, 150, 113),
        ("pics/photo.medium.webp", ImageFormat::WebP, 400, 300),
        ("pics/photo.square.png", ImageFormat::Png, 100, 100),
        // Shown upright (600×800) after the EXIF rotation.
        ("pics/portrait.thumbnail.jpg", ImageFormat::Jpeg, 113, 150),
        ("pics/portrait.medium.webp", ImageFormat::WebP, 225, 300),
        ("pics/portrait.square.jpg", ImageFormat::Jpeg, 100, 100),
    ];
    for (path, format, w, h) in expected {
        let bytes = wait_for_object(&ctx, path).await;
        assert_eq!(format_and_size(&bytes), (format, w, h), "{path}");
    }
    let originals = ctx.dir.path().join("src");
    for name in ["photo.png", "portrait.jpg"] {
        let through_mount = mnt.path(&format!("pics/{name}"));
        assert_eq!(
            sha256(&through_mount),
            sha256(&originals.join(name)),
            "{name} changed"
        );
    }
    let thumb = mnt.path("pics/photo.thumbnail.png");
    assert_eq!(xattr(&thumb, "user.meta.variant"), "thumbnail");
    assert_eq!(xattr(&thumb, "user.meta.variant_of"), "pics/photo.png");
    assert_eq!(xattr(&thumb, "user.meta.owner"), "team-a");
    assert_eq!(xattr(&thumb, "user.zmount.content_type"), "image/png");

    let config = mnt.config.to_str().unwrap();
    let found = zmount(&["search", config, "--meta", "variant=thumbnail"]);
    let listed: Vec<&str> = std::str::from_utf8(&found.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["pics/photo.thumbnail.png", "pics/portrait.thumbnail.jpg"]
    );

    // A user's own file where a variant would go is never written over.
    let own = b"my own thumbnail, not zmount's";
    cp_into(&ctx, &mnt, "pics", &[("own.thumbnail.png", own)]);
    cp_into(&ctx, &mnt, "pics", &[("own.png", &photo)]);
    mnt.wait_for_log("variant not written: pics/own.thumbnail.png is another file");
    assert_eq!(
        std::fs::read(mnt.path("pics/own.thumbnail.png")).unwrap(),
        own
    );
    assert!(ctx.read_direct("pics/own.medium.webp").await.is_some());

    // Written under a temporary hidden name and moved into place (as rsync and editors do).
    cp_into(&ctx, &mnt, "pics", &[(".incoming.png", &photo)]);
    let (temp, moved) = (mnt.path("pics/.incoming.png"), mnt.path("pics/moved.png"));
    run("mv", &[temp.to_str().unwrap(), moved.to_str().unwrap()]);
    let bytes = wait_for_object(&ctx, "pics/moved.thumbnail.png").await;
    assert_eq!(format_and_size(&bytes), (ImageFormat::Png, 150, 113));
    assert!(ctx
        .read_direct("pics/.incoming.thumbnail.png")
        .await
        .is_none());

    std::fs::remove_file(&thumb).unwrap();
    std::fs::remove_file(mnt.path("pics/portrait.medium.webp")).unwrap();
    assert!(ctx.read_direct("pics/photo.thumbnail.png").await.is_none());
    let out = zmount(&["variants", config, "pics/*"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pics/photo.png\t3 variant(s)"), "{stdout}");
    assert!(
        stdout.contains("pics/portrait.jpg\t3 variant(s)"),
        "{stdout}"
    );
    let processed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert!(
        processed.iter().all(|p| !p.contains(".thumbnail.")),
        "variants were taken as originals: {stdout}"
    );
    for (path, format, w, h) in [
        ("pics/photo.thumbnail.png", ImageFormat::Png, 150, 113),
        ("pics/portrait.medium.webp", ImageFormat::WebP, 225, 300),
    ] {
        let bytes = ctx.read_direct(path).await.expect(path);
        assert_eq!(format_and_size(&bytes), (format, w, h), "{path}");
    }

    // A user's file copied over a variant is the user's: the next run leaves it alone.
    let mine = png(10, 10);
    cp_into(&ctx, &mnt, "pics", &[("photo.square.png", &mine)]);
    let out = zmount(&["variants", config, "pics/photo.png"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not written over pics/photo.square.png"),
        "{stdout}"
    );
    assert_eq!(
        ctx.read_direct("pics/photo.square.png").await.unwrap(),
        mine
    );
}

/// `transforms` replace the stored file by its transformed version (here: fit in 200×200, as JPEG), marked so it
/// is not transformed twice; variants under `variants_under` take the transform's format.
async fn transforms_rewrite_the_stored_file(case: Case) {
    let route = |route: RouteBuilder| {
        let transforms = [
            ("resize", "200x200".into()),
            ("format", "jpeg".into()),
            ("quality", 80.into()),
        ];
        small_variants_under_thumbs(route).set("transforms", table(transforms))
    };
    let (ctx, mnt) = mount_tuned(case, "img-transforms", |c| c, route, &[]);
    cp_into(&ctx, &mnt, "up", &[("big.png", &png(800, 600))]);
    let small = wait_for_object(&ctx, "thumbs/up/big.small.jpg").await;
    assert_eq!(format_and_size(&small), (ImageFormat::Jpeg, 50, 38));
    let stored = ctx.read_direct("up/big.png").await.unwrap();
    assert_eq!(format_and_size(&stored), (ImageFormat::Jpeg, 200, 150));
    let file = mnt.path("up/big.png");
    assert_eq!(xattr(&file, "user.zmount.content_type"), "image/jpeg");
    assert_eq!(xattr(&file, "user.meta.zmount_transformed").len(), 64);

    let config = mnt.config.to_str().unwrap();
    let out = zmount(&["variants", config, "up/big.png"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("up/big.png\t1 variant(s)"),
        "transformed twice? {stdout}"
    );
    assert_eq!(ctx.read_direct("up/big.png").await.unwrap(), stored);
    let small = ctx.read_direct("thumbs/up/big.small.jpg").await.unwrap();
    assert_eq!(format_and_size(&small), (ImageFormat::Jpeg, 50, 38));
}

/// A corrupt JPEG, a text file named `.jpg`, a PNG announcing 100000×100000 pixels and one announcing 5000×5000
/// 16-bit RGBA (200 MB decoded, over a 64 MiB `max_memory`) are each skipped with a log line naming the file and
/// the reason; none gets a variant, all are kept byte for byte, the daemon's memory stays small, and the metrics
/// count them as skipped.
async fn bad_images_are_skipped_and_kept(case: Case) {
    let settings = |c: ConfigBuilder| c.setting("images.max_memory", "64MiB");
    let addr = common::free_local_addr();
    let args = ["--metrics-addr", addr.as_str()];
    let (ctx, mnt) = mount_tuned(case, "img-bad", settings, variants, &args);
    let mut corrupt = Vec::new();
    corrupt.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x43, 0x00]);
    corrupt.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
    let files: [(&str, Vec<u8>, &str); 4] = [
        ("broken.jpg", corrupt, "corrupt image"),
        (
            "notes.jpg",
            b"meeting notes, not a picture\n".to_vec(),
            "not an image",
        ),
        (
            "bomb.png",
            png_header_only(100_000, 100_000, 8, 2),
            "refused: 100000x100000",
        ),
        ("deep.png", png_header_only(5000, 5000, 16, 6), "max_memory"),
    ];
    let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b, _)| (*n, b.as_slice())).collect();
    cp_into(&ctx, &mnt, "pics", &named);
    for (name, _, reason) in &files {
        let line = mnt.wait_for_log(&format!("image pics/{name}: skipped"));
        assert!(
            line.contains(reason),
            "{name}: expected {reason:?} in {line}"
        );
    }
    let mut listed: Vec<String> = std::fs::read_dir(mnt.path("pics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["bomb.png", "broken.jpg", "deep.png", "notes.jpg"]);
    for (name, bytes, _) in &files {
        assert_eq!(
            &std::fs::read(mnt.path(&format!("pics/{name}"))).unwrap(),
            bytes
        );
    }
    let peak_kib = peak_rss_kib(mnt.pid());
    assert!(peak_kib < 150 * 1024, "daemon peak RSS {peak_kib} KiB");
    let metrics = common::metrics(&addr).await;
    for (outcome, n) in [("skipped", 4), ("variant", 0), ("failed", 0)] {
        let line = format!("zmount_images_total{{outcome=\"{outcome}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
}

/// On a write-back route (uploads in the background), a file written twice in a row ends with the variants of its
/// last version: a write that lands while the first job runs gets a job of its own after it.
async fn the_last_write_gets_the_variants(case: Case) {
    let route = |r: RouteBuilder| variants(r.write_back());
    let (ctx, mnt) = mount_tuned(case, "img-last", |c| c, route, &[]);
    for (w, h) in [(800, 600), (640, 640), (300, 600)] {
        cp_into(&ctx, &mnt, "pics", &[("again.png", &png(w, h))]);
    }
    let deadline = Instant::now() + IMAGE_DEADLINE;
    loop {
        let thumb = ctx.read_direct("pics/again.thumbnail.png").await;
        let size = thumb.map(|b| format_and_size(&b));
        if size == Some((ImageFormat::Png, 75, 150)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "thumbnail is {size:?}, not the last version's"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let medium = ctx.read_direct("pics/again.medium.webp").await.unwrap();
    assert_eq!(format_and_size(&medium), (ImageFormat::WebP, 150, 300));
}

/// A large image that is accepted (5000×4000, 60 MB decoded) is processed within `max_memory`: the daemon's peak
/// memory stays below its baseline plus the limit.
async fn accepted_images_stay_within_max_memory(case: Case) {
    let settings = |c: ConfigBuilder| c.setting("images.max_memory", "160MiB");
    let (ctx, mnt) = mount_tuned(case, "img-memory", settings, variants, &[]);
    cp_into(&ctx, &mnt, "pics", &[("large.png", &png(5000, 4000))]);
    let thumb = wait_for_object(&ctx, "pics/large.thumbnail.png").await;
    assert_eq!(format_and_size(&thumb), (ImageFormat::Png, 150, 120));
    mnt.wait_for_log("image pics/large.png: 3 variant(s) written");
    let peak_kib = peak_rss_kib(mnt.pid());
    assert!(
        peak_kib < (64 + 160) * 1024,
        "daemon peak RSS {peak_kib} KiB"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `route` with one variant, `small` (50×50), written under `thumbs`.
fn small_variants_under_thumbs(route: RouteBuilder) -> RouteBuilder {
    route
        .set("variants_under", "thumbs")
        .set("variants", table([("small", "50x50".into())]))
}

/// A mount whose variants go (via `variants_under = "thumbs"`) to an S3 provider `slow` reached through a fault
/// proxy, while originals go to S3 directly. Returns the proxy, the mount and the `slow` table without the proxy.
fn mount_with_slow_variants(
    dir: &Path,
    settings: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> (Proxy, Mount, ProviderTable) {
    common::set_secret_env();
    let (fast_prefix, slow_prefix) = (unique("img-slow"), unique("img-slow-thumbs"));
    let slow_real = ProviderTable::new(Case::S3, "slow", &slow_prefix, dir);
    let (proxy, slow) = slow_real.behind_proxy();
    let config = ConfigBuilder::new(&dir.join("cache"))
        .case(Case::S3, "s3", &fast_prefix, dir)
        .provider_table(&slow)
        .route(RouteBuilder::prefix("thumbs", "slow"))
        .default_route(small_variants_under_thumbs(RouteBuilder::to("s3")));
    (proxy, Mount::start(dir, &settings(config)), slow_real)
}

/// The variant of `pics/photo.png` (400×300) as the `slow` provider really stores it, checked to be 50×38 PNG.
async fn assert_slow_variant(dir: &Path, slow_real: &ProviderTable) {
    let provider = slow_real.direct(dir);
    let small = common::read_direct(&provider, "thumbs/pics/photo.small.png").await;
    let small = small.expect("the variant is on the provider");
    assert_eq!(format_and_size(&small), (ImageFormat::Png, 50, 38));
}

/// `close` does not wait for image work: with the provider the variants go to stalled (it accepts requests and
/// never answers), `cp` of an image returns while its job is still waiting, and the variant arrives once the
/// provider answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_image_work() {
    let dir = common::scratch();
    let settings = |c: ConfigBuilder| c.setting("timeouts.first_byte", 60.0);
    let (proxy, mnt, slow_real) = mount_with_slow_variants(dir.path(), settings);
    let ctx = Ctx::new(Case::S3, "img-close-src");
    proxy.set(Fault::Stall);
    cp_into(&ctx, &mnt, "pics", &[("photo.png", &png(400, 300))]);
    assert!(
        !mnt.log().contains("image pics/photo.png:"),
        "close waited for the image job:\n{}",
        mnt.log()
    );
    proxy.set(Fault::None);
    mnt.wait_for_log("image pics/photo.png: 1 variant(s) written");
    assert_slow_variant(dir.path(), &slow_real).await;
}

/// A job that fails because the variants' provider is down is run again at the next maintenance pass after the
/// provider is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_run_again_when_the_provider_answers() {
    let dir = common::scratch();
    let settings = |c: ConfigBuilder| c.fast_retries().setting("failover.heal_interval", 0.3);
    let (proxy, mnt, slow_real) = mount_with_slow_variants(dir.path(), settings);
    let ctx = Ctx::new(Case::S3, "img-retry-src");
    proxy.set_down(true);
    cp_into(&ctx, &mnt, "pics", &[("photo.png", &png(400, 300))]);
    mnt.wait_for_log("tried again at every maintenance pass");
    proxy.set_down(false);
    mnt.wait_for_log("image pics/photo.png: 1 variant(s) written");
    assert_slow_variant(dir.path(), &slow_real).await;
}

/// Jobs queued when the daemon is killed (SIGKILL) run at the next mount with the same cache folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_daemon_run_at_the_next_mount() {
    let dir = common::scratch();
    // No maintenance pass within the test: only the start of the next mount can run the job.
    let settings = |c: ConfigBuilder| {
        c.setting("timeouts.first_byte", 60.0)
            .setting("failover.heal_interval", 3600.0)
    };
    let (proxy, mut mnt, slow_real) = mount_with_slow_variants(dir.path(), settings);
    let ctx = Ctx::new(Case::S3, "img-kill-src");
    proxy.set(Fault::Stall);
    cp_into(&ctx, &mnt, "pics", &[("photo.png", &png(400, 300))]);
    assert!(!mnt.stop_with(libc::SIGKILL).success());
    let _ = std::process::Command::new("fusermount3")
        .args(["-uz", mnt.dir.to_str().unwrap()])
        .status();
    proxy.set(Fault::None);
    let again = Mount::start_at(&mnt.config, &mnt.dir, &[]);
    again.wait_for_log("image pics/photo.png: 1 variant(s) written");
    assert_slow_variant(dir.path(), &slow_real).await;
}

macro_rules! local_and_s3 {
    ($($body:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::$body(super::common::Case::Local).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::$body(super::common::Case::S3).await
                }
            )*
        }
    };
}

local_and_s3!(
    variants_have_the_configured_sizes_and_formats,
    transforms_rewrite_the_stored_file,
    bad_images_are_skipped_and_kept,
    accepted_images_stay_within_max_memory,
    the_last_write_gets_the_variants,
);
