//! The filesystem core without FUSE and without servers: a `Filesystem` over a local folder provider, driven by
//! its own calls (the ones `src/fuse/` translates), in this process. Lifecycles of open files (rename, unlink,
//! refused writes) and a random sequence of whole-file writes, renames and unlinks checked against a model of the
//! tree after every step. Runs in seconds; the mount tests cover the same behaviour through the kernel.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use zmount::fs::inode::ROOT;
use zmount::fs::Filesystem;
use zmount::{Config, Storage};

/// The process every call claims to come from (writers publish at the close of the process that opened them).
const ME: u32 = 4242;

struct Core {
    fs: Arc<Filesystem>,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A filesystem over a local folder provider, with `settings` added to `[settings]`.
fn core(settings: &str) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let text = format!(
        "[settings]\ncache_dir = {:?}\n{settings}\n[providers.disk]\nkind = \"local\"\npath = {root:?}\n\n[default]\nprovider = \"disk\"\n",
        dir.path().join("cache")
    );
    let config = Config::parse(&text, &dir.path().join("mount.toml")).unwrap();
    let storage = Arc::new(Storage::new(&config).unwrap());
    let fs = Arc::new(Filesystem::new(&config, storage, false).unwrap());
    fs.connect();
    Core {
        fs,
        root,
        _dir: dir,
    }
}

impl Core {
    /// What the provider holds at `name` (None: no such object).
    fn stored(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(name)).ok()
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
}

fn errno(result: Result<impl std::fmt::Debug, zmount::fs::error::FsError>) -> i32 {
    result.expect_err("an error").errno()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_follows_an_open_file_through_a_rename() {
    let c = core("");
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
    assert_eq!(c.stored("final").as_deref(), Some(&b"first second"[..]));
    assert_eq!(
        c.stored("draft"),
        None,
        "nothing under the name the file had"
    );
    assert_eq!(c.read("final").await.unwrap(), b"first second");
    assert_eq!(errno(c.fs.lookup(ROOT, "draft").await), libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_open_file_is_never_published() {
    let c = core("");
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
    assert_eq!(c.stored("scratch"), None);
    assert_eq!(c.stored("keep").as_deref(), Some(&b"kept"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_size_limit_fails_and_the_provider_keeps_its_version() {
    let c = core("max_file_size = 4096");
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
    assert_eq!(c.stored("f").as_deref(), Some(&b"old version"[..]));
    assert_eq!(c.read("f").await.unwrap(), b"old version");
}

/// One step of the random sequence.
#[derive(Debug)]
enum Step {
    Write(String, Vec<u8>),
    Rename(String, String),
    Unlink(String),
    /// Nothing changes: every name is read back, as after every step.
    Check,
}

/// Whole-file writes, renames (also over an existing name) and unlinks of a few names, at random, against a model
/// (name → bytes): after every step each name reads as the model says, through the filesystem and on the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_agree_with_a_model() {
    for seed in 1..=5u64 {
        let c = core("");
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
                assert_eq!(read.clone().ok(), want, "{context}: read {n} ({read:?})");
                assert_eq!(c.stored(n), want, "{context}: stored {n}");
            }
        }
        assert!(Path::new(&c.root).exists());
    }
}
