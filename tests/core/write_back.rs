//! Write-back timing on the core: `close` returns with the data staged and the provider not yet written; what
//! programs do right after a close (rename into place, set times) joins that one upload; `fsync` waits for it.
//! Each waits on the upload queue itself (`Filesystem::wait_for_uploads`), never on a clock; the settle delay is
//! long (5 s) so that the provider is checked before it can run out, however slow the machine.

use super::*;

/// `disk` as a write-back route with a settle delay of 5 s.
fn write_back_core(store: Store) -> Core {
    core(store, |b| {
        b.setting("mount.write_back_delay", 5.0)
            .default_route(RouteBuilder::to("disk").write_back())
    })
}

on_every_store!(
    close_returns_before_the_upload_and_reads_see_the_new_bytes,
    a_rename_right_after_close_is_published_once_under_the_new_name,
    fsync_on_a_write_back_route_waits_for_the_upload,
);

async fn close_returns_before_the_upload_and_reads_see_the_new_bytes(store: Store) {
    let c = write_back_core(store);
    c.write_file("report.txt", b"version one").await.unwrap();
    assert_eq!(
        c.stored("report.txt").await,
        None,
        "close returned before the upload"
    );
    assert_eq!(c.read("report.txt").await.unwrap(), b"version one");
    assert_eq!(
        c.fs.stats().journaled_uploads,
        1,
        "the staged file is journaled"
    );
    c.fs.wait_for_uploads().await;
    assert_eq!(
        c.stored("report.txt").await.as_deref(),
        Some(&b"version one"[..])
    );
    assert_eq!(c.fs.stats().journaled_uploads, 0);
    assert_eq!(c.read("report.txt").await.unwrap(), b"version one");
}

async fn a_rename_right_after_close_is_published_once_under_the_new_name(store: Store) {
    let c = write_back_core(store);
    let written_before = c.counter("disk", "bytes_written");
    c.write_file(".report.txt.tmp", b"all of it").await.unwrap();
    let attr = c.fs.lookup(ROOT, ".report.txt.tmp").await.unwrap();
    let times = zmount::meta::posix::Posix {
        mtime: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000)),
        ..Default::default()
    };
    c.fs.set_attrs(attr.ino, None, times).await.unwrap();
    c.fs.rename(ROOT, ".report.txt.tmp", ROOT, "report.txt")
        .await
        .unwrap();
    c.fs.wait_for_uploads().await;
    assert_eq!(
        c.stored("report.txt").await.as_deref(),
        Some(&b"all of it"[..])
    );
    assert_eq!(c.stored(".report.txt.tmp").await, None);
    assert_eq!(
        c.counter("disk", "bytes_written") - written_before,
        b"all of it".len() as u64,
        "the bytes went to the provider once, under the final name with the final attributes"
    );
    let attr = c.fs.lookup(ROOT, "report.txt").await.unwrap();
    let mtime = attr.mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(mtime.as_secs(), 1_000_000_000);
}

async fn fsync_on_a_write_back_route_waits_for_the_upload(store: Store) {
    let c = write_back_core(store);
    let (_, fh) = c.fs.create(ROOT, "log", 0o644, 0, 0, ME).await.unwrap();
    c.fs.write(fh, 0, Bytes::from_static(b"entry 1\n"))
        .await
        .unwrap();
    c.fs.fsync(fh).await.unwrap();
    assert_eq!(c.stored("log").await.as_deref(), Some(&b"entry 1\n"[..]));
    c.fs.write(fh, 8, Bytes::from_static(b"entry 2\n"))
        .await
        .unwrap();
    c.fs.flush(fh, ME).await.unwrap();
    c.fs.release(fh);
    assert_eq!(
        c.stored("log").await.as_deref(),
        Some(&b"entry 1\n"[..]),
        "the close after it is written back later"
    );
    c.fs.wait_for_uploads().await;
    assert_eq!(
        c.stored("log").await.as_deref(),
        Some(&b"entry 1\nentry 2\n"[..])
    );
}
