//! The storage API's conformance suite: every body below runs against every provider case (local, S3 on
//! SeaweedFS, Wasabi-style S3, Azure on Azurite, GCS on fake-gcs-server). Read tests seed objects directly on the
//! provider, so they also run on the GCS emulator, whose write API object_store cannot use; write tests on GCS
//! are ignored, with the reason (nextest counts them as skipped).

mod common;

use bytes::Bytes;
use common::{pattern, Case, Ctx};
use std::collections::BTreeMap;
use std::time::Duration;
use zmount::{StorageError, UploadOptions};

for_each_provider!(
    download_range_returns_exact_bytes,
    list_returns_everything_below_a_prefix,
    get_info_describes_the_object,
    signed_url_serves_the_bytes,
    errors_name_provider_and_path;
    writes:
    upload_lands_on_the_routed_provider,
    exists_and_idempotent_delete,
    metadata_round_trips_with_lowercase_keys,
    streamed_upload_spans_several_parts,
);

async fn upload_lands_on_the_routed_provider(case: Case) {
    let ctx = Ctx::new(case, "upload");
    let data = pattern(100_000, 1);
    let info = ctx
        .storage
        .upload(
            "docs/report.pdf",
            Bytes::from(data.clone()),
            UploadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.provider, ctx.provider.name);
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(
        ctx.read_direct("docs/report.pdf").await.as_deref(),
        Some(&data[..]),
        "bytes on the provider"
    );
    assert_eq!(
        ctx.storage.download("/docs/report.pdf").await.unwrap(),
        data,
        "download through zmount"
    );
    let replaced = pattern(10, 2);
    ctx.storage
        .upload(
            "docs/report.pdf",
            Bytes::from(replaced.clone()),
            UploadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        ctx.storage.download("docs/report.pdf").await.unwrap(),
        replaced,
        "upload replaces"
    );
}

async fn download_range_returns_exact_bytes(case: Case) {
    let ctx = Ctx::new(case, "range");
    let data = pattern(1 << 20, 3);
    ctx.seed("big.bin", &data).await;
    for range in [
        0..1u64,
        4096..8192,
        1000..(1 << 20),
        ((1 << 20) - 1)..(1 << 20),
    ] {
        let got = ctx
            .storage
            .download_range("big.bin", range.clone())
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &data[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }
    assert!(ctx
        .storage
        .download_range("big.bin", 10..10)
        .await
        .unwrap()
        .is_empty());
}

async fn exists_and_idempotent_delete(case: Case) {
    let ctx = Ctx::new(case, "delete");
    ctx.seed("a/file.txt", b"hello").await;
    assert!(ctx.storage.exists("a/file.txt").await.unwrap());
    assert!(!ctx.storage.exists("a/other.txt").await.unwrap());
    assert!(
        !ctx.storage.exists("a").await.unwrap(),
        "a directory prefix is not an object"
    );
    ctx.storage.delete("a/file.txt").await.unwrap();
    assert!(!ctx.storage.exists("a/file.txt").await.unwrap());
    assert_eq!(
        ctx.read_direct("a/file.txt").await,
        None,
        "gone from the provider"
    );
    ctx.storage
        .delete("a/file.txt")
        .await
        .expect("deleting a missing object succeeds on every provider");
}

async fn list_returns_everything_below_a_prefix(case: Case) {
    let ctx = Ctx::new(case, "list");
    for path in ["a/1.txt", "a/2.txt", "a/b/3.txt", "ab/4.txt", "c.txt"] {
        ctx.seed(path, path.as_bytes()).await;
    }
    let paths =
        |infos: Vec<zmount::FileInfo>| infos.into_iter().map(|i| i.path).collect::<Vec<_>>();
    assert_eq!(
        paths(ctx.storage.list("a", None).await.unwrap()),
        ["a/1.txt", "a/2.txt", "a/b/3.txt"]
    );
    assert_eq!(
        paths(ctx.storage.list("a/", Some(2)).await.unwrap()),
        ["a/1.txt", "a/2.txt"]
    );
    assert_eq!(paths(ctx.storage.list("", None).await.unwrap()).len(), 5);
    let listed = ctx.storage.list("a/b", None).await.unwrap();
    assert_eq!(listed[0].size, "a/b/3.txt".len() as u64);
    assert_eq!(listed[0].provider, ctx.provider.name);
    assert!(ctx
        .storage
        .list("nothing-here", None)
        .await
        .unwrap()
        .is_empty());
}

async fn get_info_describes_the_object(case: Case) {
    let ctx = Ctx::new(case, "info");
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    ctx.seed("photos/cat.png", &pattern(1234, 4)).await;
    let info = ctx.storage.get_info("photos/cat.png").await.unwrap();
    assert_eq!(info.path, "photos/cat.png");
    assert_eq!(info.size, 1234);
    assert_eq!(info.provider, ctx.provider.name);
    assert!(
        info.last_modified > before,
        "last_modified {} is recent",
        info.last_modified
    );
    assert!(
        info.etag.as_deref().is_some_and(|e| !e.is_empty()),
        "etag present"
    );
    if case == Case::Local {
        assert_eq!(
            info.url.as_deref(),
            Some("http://files.example.test/media/photos/cat.png")
        );
    }
    // Seeded without a content type: zmount reports the stored one, or one guessed from the name.
    assert!(
        info.content_type == "image/png" || info.content_type == "application/octet-stream",
        "{}",
        info.content_type
    );
}

async fn metadata_round_trips_with_lowercase_keys(case: Case) {
    let ctx = Ctx::new(case, "metadata");
    let mut metadata = BTreeMap::new();
    metadata.insert("Author".to_string(), "Jane Doe".to_string());
    metadata.insert("department".to_string(), "Finance".to_string());
    let options = UploadOptions {
        content_type: Some("application/x-report".into()),
        metadata,
        ..Default::default()
    };
    ctx.storage
        .upload("q4.report", Bytes::from_static(b"%PDF"), options)
        .await
        .unwrap();
    let info = ctx.storage.get_info("q4.report").await.unwrap();
    let expected: BTreeMap<String, String> = [("author", "Jane Doe"), ("department", "Finance")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    assert_eq!(info.metadata, expected);
    assert_eq!(info.content_type, "application/x-report");
    ctx.storage
        .upload(
            "auto.json",
            Bytes::from_static(b"{}"),
            UploadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        ctx.storage
            .get_info("auto.json")
            .await
            .unwrap()
            .content_type,
        "application/json",
        "detected type"
    );
    let mut bad = BTreeMap::new();
    bad.insert("x-dash".to_string(), "v".to_string());
    let err = ctx
        .storage
        .upload(
            "bad",
            Bytes::new(),
            UploadOptions {
                metadata: bad,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not portable"), "{err}");
}

async fn streamed_upload_spans_several_parts(case: Case) {
    let ctx = Ctx::new(case, "stream");
    let data = pattern(2 * zmount::storage::UPLOAD_PART_SIZE + 12345, 5);
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let info = ctx
        .storage
        .upload_stream(
            "video/big.mp4",
            futures::stream::iter(chunks),
            UploadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    let stored = ctx
        .read_direct("video/big.mp4")
        .await
        .expect("object exists");
    assert!(
        stored == data,
        "streamed object differs from the source ({} vs {} bytes)",
        stored.len(),
        data.len()
    );
    assert_eq!(
        ctx.storage
            .get_info("video/big.mp4")
            .await
            .unwrap()
            .content_type,
        "video/mp4"
    );
}

async fn signed_url_serves_the_bytes(case: Case) {
    let ctx = Ctx::new(case, "url");
    let data = pattern(5000, 6);
    ctx.seed("share/file_name.bin", &data).await;
    let url = ctx
        .storage
        .get_url("share/file_name.bin", Duration::from_secs(600))
        .await
        .unwrap();
    if case == Case::Local {
        assert_eq!(
            url, "http://files.example.test/media/share/file_name.bin",
            "local URLs are base_url + path"
        );
        return;
    }
    let resp = common::get(&url).await;
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    assert_eq!(resp.bytes().await.unwrap(), data);
}

async fn errors_name_provider_and_path(case: Case) {
    let ctx = Ctx::new(case, "errors");
    let err = ctx.storage.download("missing/file.txt").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&ctx.provider.name) && text.contains("missing/file.txt"),
        "{text}"
    );
    let err = ctx.storage.get_info("missing/file.txt").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.provider(), Some(ctx.provider.name.as_str()));
    let err = ctx
        .storage
        .download("a/../../etc/passwd")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
}
