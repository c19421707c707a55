//! object_store's own integration suite, run against the stores as zmount wraps them (the guard with its retries,
//! timeouts and counters, over `InMemory` and over zmount's local folder store): a wrapper that drops or bends a
//! method fails here. The S3, Azure and GCS clients are object_store's own, tested by it; their wrapped forms are
//! driven through the mount by the provider tests.

use super::*;
use object_store::integration;

/// The wrapped store of provider `disk` over `store`, with the folder it lives in (kept for the test's length).
fn wrapped(store: Store) -> (Arc<dyn ObjectStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .local("disk", dir.path())
        .default_route(RouteBuilder::to("disk"))
        .build(&dir.path().join("mount.toml"))
        .unwrap();
    let tuning = ClientTuning::from_settings(&config.settings);
    let provider = match store {
        Store::Local => Provider::build("disk", &config.providers["disk"], &tuning).unwrap(),
        Store::Memory => Provider::from_store("disk", Arc::new(InMemory::new()), &tuning),
    };
    (provider.object_store(), dir)
}

/// Runs each named function of object_store's suite on every store (those that take only the store).
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        $(
            async fn $name(store: Store) {
                let (s, _dir) = wrapped(store);
                integration::$name(s.as_ref()).await;
            }
        )*
        on_every_store!($($name),*);
    };
}

suite!(
    put_get_delete_list,
    get_opts,
    stream_get,
    list_uses_directories_correctly,
    list_with_delimiter,
    rename_and_copy,
    copy_if_not_exists,
    copy_rename_nonexistent_object,
    list_with_offset_exclusivity,
);

on_every_store!(put_opts);

async fn put_opts(store: Store) {
    let (s, _dir) = wrapped(store);
    // Conditional updates (If-Match) are for object stores; a local folder refuses them as object_store's own
    // LocalFileSystem does (NotImplemented), which the suite checks too.
    integration::put_opts(s.as_ref(), matches!(store, Store::Memory)).await;
}
