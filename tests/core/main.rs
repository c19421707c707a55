//! The filesystem core without FUSE and without servers: a `Filesystem` driven by its own calls (the ones
//! `src/fuse/` translates), in this process, over a local folder and over object_store's `InMemory` — each test body
//! written once and run on both (`on_every_store!`). Lifecycles of open files (rename, unlink, refused writes), a
//! random sequence of whole-file writes, renames and unlinks checked against a model after every step, write-back
//! timing (`write_back.rs`), failover and heals with a provider that can be switched off (`failover.rs`), and
//! object_store's own integration suite run against the wrapped stores (`store_suite.rs`). Facts about providers
//! are read from the status the mount publishes (counters, pending heals), never from log text. Runs in seconds;
//! the mount tests cover the same behaviour through the kernel.

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::fs::inode::ROOT;
use zmount::fs::Filesystem;
use zmount::providers::{ClientTuning, Provider};
use zmount::Storage;

/// The process every call claims to come from (writers publish at the close of the process that opened them).
const ME: u32 = 4242;

/// What the provider named `disk` is: the configured local folder, or a store handed to the core in its place.
#[derive(Debug, Clone, Copy)]
enum Store {
    Local,
    Memory,
}

/// Runs the test body `$name(store)` once per kind of store, as `$name::local` and `$name::memory`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name(super::Store::Local).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::Store::Memory).await
            }
        }
    )*};
}

// Declared after the macro, which they use.
mod failover;
mod store_suite;
mod write_back;

on_every_store!(
    data_follows_an_open_file_through_a_rename,
    an_unlinked_open_file_is_never_published,
    a_write_past_the_size_limit_fails_and_the_provider_keeps_its_version,
    random_sequences_agree_with_a_model,
    a_renamed_file_reads_back_after_its_staged_copy_is_gone,
    a_name_renamed_onto_itself_is_kept,
);

struct Core {
    fs: Arc<Filesystem>,
    /// The provider behind every path (`disk`), read directly.
    provider: Arc<Provider>,
    _dir: tempfile::TempDir,
}

/// A filesystem whose every path goes to provider `disk` (a local folder, or `InMemory` in its place); `tune` adds
/// settings and routes to the config.
fn core(store: Store, tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let built = ConfigBuilder::new(&dir.path().join("cache"))
        .local("disk", &root)
        .default_route(RouteBuilder::to("disk"));
    let config = tune(built).build(&dir.path().join("mount.toml")).unwrap();
    let tuning = ClientTuning::from_settings(&config.settings);
    let given = match store {
        Store::Local => vec![],
        Store::Memory => vec![Provider::from_store(
            "disk",
            Arc::new(InMemory::new()),
            &tuning,
        )],
    };
    let storage = Arc::new(Storage::from_parts(&config, &tuning, given).unwrap());
    match store {
        Store::Local => Core::over(storage, &config, dir),
        // In memory all the way down but staging: a block cache without a disk tier.
        Store::Memory => {
            let cache = Arc::new(zmount::cache::BlockCache::new(8 << 20, None));
            let fs = Filesystem::with_parts(&config, storage, cache, false);
            Core::with(Arc::new(fs), dir)
        }
    }
}

impl Core {
    fn over(storage: Arc<Storage>, config: &zmount::Config, dir: tempfile::TempDir) -> Core {
        Core::with(
            Arc::new(Filesystem::new(config, storage, false).unwrap()),
            dir,
        )
    }

    fn with(fs: Arc<Filesystem>, dir: tempfile::TempDir) -> Core {
        let provider = fs
            .storage()
            .provider("disk")
            .expect("a provider named disk")
            .clone();
        fs.connect();
        Core {
            fs,
            provider,
            _dir: dir,
        }
    }

    /// What the provider holds at `name` (None: no such object).
    async fn stored(&self, name: &str) -> Option<Vec<u8>> {
        stored_on(&self.provider, name).await
    }

    /// `name`'s bytes as read through the filesystem (an errno when it cannot be read).
    async fn read(&self, name: &str) -> Result<Vec<u8>, i32> {
        let attr = self.fs.lookup(ROOT, name).await.map_err(|e| e.errno())?;
        let fh = self
            .fs
            .open(attr.ino, false, false, ME)
            .await
            .map_err(|e| e.errno())?;
        let mut out = Vec::new();
        loop {
            let chunk = self.fs.read(fh, out.len() as u64, 1 << 20).await;
            match chunk {
                Ok(bytes) if bytes.is_empty() => break,
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => {
                    self.fs.release(fh);
                    return Err(e.errno());
                }
            }
        }
        self.fs.release(fh);
        Ok(out)
    }

    /// Creates (or truncates) `name` with `data`, closed: what `cp` does.
    async fn write_file(&self, name: &str, data: &[u8]) -> Result<(), i32> {
        let fh = match self.fs.lookup(ROOT, name).await {
            Ok(attr) => self.fs.open(attr.ino, true, true, ME).await,
            Err(_) => self
                .fs
                .create(ROOT, name, 0o644, 0, 0, ME)
                .await
                .map(|(_, fh)| fh),
        }
        .map_err(|e| e.errno())?;
        let written = self
            .fs
            .write(fh, 0, Bytes::copy_from_slice(data))
            .await
            .map_err(|e| e.errno());
        let closed = self.fs.flush(fh, ME).await.map_err(|e| e.errno());
        self.fs.release(fh);
        written.and(closed)
    }

    /// Provider `name`'s counter `counter`, as the mount's status reports it.
    fn counter(&self, name: &str, counter: &str) -> u64 {
        let status = self.fs.storage().status();
        status["providers"][name]["counters"][counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {counter} of {name} in {status}"))
    }

    /// The paths whose failover writes wait to be copied back, as the mount's status reports them.
    fn pending_heals(&self) -> Vec<String> {
        let status = self.fs.storage().status();
        serde_json::from_value(status["pending_heals"].clone()).unwrap()
    }
}

/// What `provider` holds at `path`, read with its own client (None: no such object).
async fn stored_on(provider: &Provider, path: &str) -> Option<Vec<u8>> {
    let store = provider.object_store();
    match store.get(&provider.key_for(path)).await {
        Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading {path} from {}: {e}", provider.name),
    }
}

fn errno(result: Result<impl std::fmt::Debug, zmount::fs::error::FsError>) -> i32 {
    result.expect_err("an error").errno()
}

async fn data_follows_an_open_file_through_a_rename(store: Store) {
    let c = core(store, |b| b);
    let (_, fh) = c.fs.create(ROOT, "draft", 0o644, 0, 0, ME).await.unwrap();
    c.fs.write(fh, 0, Bytes::from_static(b"first "))
        .await
        .unwrap();
    c.fs.rename(ROOT, "draft", ROOT, "final").await.unwrap();
    c.fs.write(fh, 6, Bytes::from_static(b"second"))
        .await
        .unwrap();
    c.fs.flush(fh, ME).await.unwrap();
    c.fs.release(fh);
    assert_eq!(
        c.stored("final").await.as_deref(),
        Some(&b"first second"[..])
    );
    assert_eq!(
        c.stored("draft").await,
        None,
        "nothing under the name the file had"
    );
    assert_eq!(c.read("final").await.unwrap(), b"first second");
    assert_eq!(errno(c.fs.lookup(ROOT, "draft").await), libc::ENOENT);
}

async fn an_unlinked_open_file_is_never_published(store: Store) {
    let c = core(store, |b| b);
    c.write_file("keep", b"kept").await.unwrap();
    let (_, fh) = c.fs.create(ROOT, "scratch", 0o644, 0, 0, ME).await.unwrap();
    c.fs.write(fh, 0, Bytes::from_static(b"temporary"))
        .await
        .unwrap();
    c.fs.unlink(ROOT, "scratch").await.unwrap();
    assert_eq!(
        &c.fs.read(fh, 0, 100).await.unwrap()[..],
        b"temporary",
        "the open handle still reads it"
    );
    c.fs.flush(fh, ME).await.unwrap();
    c.fs.release(fh);
    assert_eq!(c.stored("scratch").await, None);
    assert_eq!(c.stored("keep").await.as_deref(), Some(&b"kept"[..]));
}

async fn a_write_past_the_size_limit_fails_and_the_provider_keeps_its_version(store: Store) {
    let c = core(store, |b| b.setting("max_file_size", 4096));
    c.write_file("f", b"old version").await.unwrap();
    let attr = c.fs.lookup(ROOT, "f").await.unwrap();
    let fh = c.fs.open(attr.ino, true, true, ME).await.unwrap();
    c.fs.write(fh, 0, Bytes::from(vec![7u8; 4096]))
        .await
        .unwrap();
    let err = errno(c.fs.write(fh, 4096, Bytes::from_static(b"x")).await);
    assert_eq!(err, libc::EFBIG);
    // The file failed: every later call on it says so, and nothing is published.
    assert_eq!(
        errno(c.fs.write(fh, 0, Bytes::from_static(b"y")).await),
        libc::EFBIG
    );
    assert_eq!(errno(c.fs.flush(fh, ME).await), libc::EFBIG);
    c.fs.release(fh);
    assert_eq!(c.stored("f").await.as_deref(), Some(&b"old version"[..]));
    assert_eq!(c.read("f").await.unwrap(), b"old version");
}

/// One step of the random sequence.
enum Step {
    Write(String, Vec<u8>),
    Rename(String, String),
    Unlink(String),
    /// Nothing changes: every name is read back, as after every step.
    Check,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write(n, data) => write!(f, "write {n} ({} bytes)", data.len()),
            Step::Rename(from, to) => write!(f, "rename {from} {to}"),
            Step::Unlink(n) => write!(f, "unlink {n}"),
            Step::Check => write!(f, "check"),
        }
    }
}

/// Whole-file writes, renames (also over an existing name) and unlinks of a few names, at random, against a model
/// (name → bytes): after every step each name reads as the model says, through the filesystem and on the provider.
async fn random_sequences_agree_with_a_model(store: Store) {
    for seed in 1..=5u64 {
        let c = core(store, |b| b);
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let names = ["a", "b", "c", "d"];
        for step_no in 0..120 {
            let name = |i: u64| names[i as usize].to_string();
            let step = match next(4) {
                0 => {
                    let len = next(3000) as usize;
                    let fill = next(250) as u8;
                    Step::Write(
                        name(next(4)),
                        (0..len).map(|i| fill.wrapping_add(i as u8)).collect(),
                    )
                }
                1 => Step::Rename(name(next(4)), name(next(4))),
                2 => Step::Unlink(name(next(4))),
                _ => Step::Check,
            };
            let context = format!("seed {seed} step {step_no}: {step:?}");
            if std::env::var_os("ZMOUNT_TEST_TRACE").is_some() {
                eprintln!("{context}");
            }
            match &step {
                Step::Write(n, data) => {
                    c.write_file(n, data)
                        .await
                        .unwrap_or_else(|e| panic!("{context}: errno {e}"));
                    model.insert(n.clone(), data.clone());
                }
                Step::Rename(from, to) => {
                    let got =
                        c.fs.rename(ROOT, from, ROOT, to)
                            .await
                            .map_err(|e| e.errno());
                    match model.remove(from) {
                        Some(data) => {
                            assert_eq!(got, Ok(()), "{context}");
                            model.insert(to.clone(), data);
                        }
                        None => assert_eq!(got, Err(libc::ENOENT), "{context}"),
                    }
                }
                Step::Unlink(n) => {
                    let got = c.fs.unlink(ROOT, n).await.map_err(|e| e.errno());
                    let want = match model.remove(n) {
                        Some(_) => Ok(()),
                        None => Err(libc::ENOENT),
                    };
                    assert_eq!(got, want, "{context}");
                }
                Step::Check => {}
            }
            for n in names {
                let want = model.get(n).cloned();
                let read = c.read(n).await;
                let got = read.as_ref().map(Vec::len).map_err(|e| *e);
                assert_eq!(read.ok(), want, "{context}: read {n} ({got:?})");
                assert_eq!(c.stored(n).await, want, "{context}: stored {n}");
            }
        }
    }
}

/// A renamed file reads back from the provider once its staged copy is let go. (A rename on an object store is a
/// copy, which may get a new ETag: InMemory, Azure, GCS, S3 for objects uploaded in parts. Reads pinned to the old
/// name's ETag then failed with ESTALE; `random_sequences_agree_with_a_model::memory` is the test that catches it —
/// this sequence of the model's did not reproduce it on its own, the release of the staged copy being timing-bound.)
async fn a_renamed_file_reads_back_after_its_staged_copy_is_gone(store: Store) {
    let c = core(store, |b| b);
    c.write_file("d", &[1u8; 100]).await.unwrap();
    c.write_file("b", &[2u8; 50]).await.unwrap();
    c.fs.rename(ROOT, "d", ROOT, "b").await.unwrap();
    assert_eq!(c.read("b").await.unwrap(), [1u8; 100]);
    c.write_file("b", &[3u8; 444]).await.unwrap();
    c.fs.rename(ROOT, "b", ROOT, "c").await.unwrap();
    assert_eq!(c.read("c").await.unwrap(), [3u8; 444]);
    c.fs.wait_for_uploads().await; // the staged copy is let go: reads go to the provider now
    for _ in 0..3 {
        assert_eq!(c.read("c").await.unwrap(), [3u8; 444]);
    }
    assert_eq!(c.stored("c").await.unwrap(), [3u8; 444]);
}

/// rename(2) of a name onto itself leaves it as it is (on an object store, a copy and a delete would lose it).
async fn a_name_renamed_onto_itself_is_kept(store: Store) {
    let c = core(store, |b| b);
    c.write_file("same", b"kept").await.unwrap();
    c.fs.rename(ROOT, "same", ROOT, "same").await.unwrap();
    assert_eq!(c.read("same").await.unwrap(), b"kept");
    assert_eq!(c.stored("same").await.as_deref(), Some(&b"kept"[..]));
}
