//! Failover and heals on the core, with a primary that can be switched off: reads served by the fallback, writes
//! landing on it and recorded for healing, the heal copying them back once the primary answers — and a heal that
//! asks nothing of a primary still marked down. Facts come from the mount's status (counters, pending heals).

use super::*;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use zmount::providers::guard::Outage;

/// `InMemory` that fails every request with a connection-level outage while `down` is set, and counts the
/// requests that reached it.
#[derive(Debug, Default)]
struct Switch {
    inner: InMemory,
    down: AtomicBool,
    asked: AtomicU64,
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Switch({})", self.inner)
    }
}

impl Switch {
    fn check(&self) -> object_store::Result<()> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        match self.down.load(Ordering::SeqCst) {
            true => Err(object_store::Error::Generic {
                store: "switch",
                source: Box::new(Outage("connection refused".into())),
            }),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for Switch {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        match self.check() {
            Ok(()) => self.inner.delete_stream(locations),
            Err(e) => Box::pin(futures::stream::iter([Err(e)])),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check() {
            Ok(()) => self.inner.list(prefix),
            Err(e) => Box::pin(futures::stream::iter([Err(e)])),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

struct Pair {
    c: Core,
    primary: Arc<Switch>,
}

/// Every path goes to `disk` (a [`Switch`]) with fallback `spare` (`InMemory`), writes failing over; one attempt
/// per request, and a breaker that opens after `threshold` failures for a minute.
fn pair(threshold: u32) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["disk", "spare"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
    }
    let config = ConfigBuilder::new(&dir.path().join("cache"))
        .setting("retry.attempts", 1)
        .setting("failover.failure_threshold", threshold as i64)
        .setting("failover.cooldown", 60.0)
        .local("disk", &dir.path().join("disk"))
        .local("spare", &dir.path().join("spare"))
        .default_route(
            RouteBuilder::to("disk")
                .fallback(&["spare"])
                .write_failover(),
        )
        .build(&dir.path().join("mount.toml"))
        .unwrap();
    let tuning = ClientTuning::from_settings(&config.settings);
    let primary = Arc::new(Switch::default());
    let given = vec![
        Provider::from_store("disk", primary.clone(), &tuning),
        Provider::from_store("spare", Arc::new(InMemory::new()), &tuning),
    ];
    let storage = Arc::new(Storage::from_parts(&config, &tuning, given).unwrap());
    Pair {
        c: Core::over(storage, &config, dir),
        primary,
    }
}

impl Pair {
    fn spare(&self) -> Arc<Provider> {
        self.c.fs.storage().provider("spare").unwrap().clone()
    }

    fn set_down(&self, down: bool) {
        self.primary.down.store(down, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_served_by_the_fallback_while_the_primary_is_down() {
    let p = pair(100);
    // The same bytes on both, as a sync or an earlier failover would have left them.
    for provider in [p.c.provider.clone(), p.spare()] {
        let key = provider.key_for("both.txt");
        let payload = PutPayload::from_static(b"on both");
        provider.object_store().put(&key, payload).await.unwrap();
    }
    assert_eq!(p.c.counter("spare", "served_as_fallback"), 0);
    p.set_down(true);
    assert_eq!(p.c.read("both.txt").await.unwrap(), b"on both");
    assert!(p.c.counter("spare", "served_as_fallback") > 0);
    assert!(p.c.counter("disk", "failures") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_the_primary_is_down_lands_on_the_fallback_and_is_healed_back() {
    let p = pair(100);
    p.set_down(true);
    p.c.write_file("new.txt", b"written during the outage")
        .await
        .unwrap();
    p.c.fs.wait_for_uploads().await; // the staged copy is let go: a file open for writing is not healed
    assert_eq!(p.c.pending_heals(), ["new.txt"]);
    assert_eq!(p.c.counter("spare", "failover_writes"), 1);
    assert_eq!(
        stored_on(&p.spare(), "new.txt").await.as_deref(),
        Some(&b"written during the outage"[..])
    );
    assert_eq!(
        p.c.read("new.txt").await.unwrap(),
        b"written during the outage"
    );
    let report = p.c.fs.heal().await;
    assert_eq!(report.waiting, ["new.txt"], "the primary is still down");
    p.set_down(false);
    let report = p.c.fs.heal().await;
    assert_eq!(report.healed, ["new.txt"]);
    assert!(p.c.pending_heals().is_empty());
    assert_eq!(p.c.counter("disk", "heals"), 1);
    assert_eq!(
        p.c.stored("new.txt").await.as_deref(),
        Some(&b"written during the outage"[..])
    );
    assert_eq!(
        stored_on(&p.spare(), "new.txt").await,
        None,
        "the fallback's copy is removed once the primary holds the file"
    );
    assert_eq!(
        p.c.read("new.txt").await.unwrap(),
        b"written during the outage"
    );
}

/// A heal has somewhere to go when the primary does not answer (the next pass), so while the primary is marked
/// down a heal pass asks nothing of it: a stalled primary costs nothing per pending file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heal_asks_nothing_of_a_primary_marked_down() {
    let p = pair(1);
    p.set_down(true);
    p.c.write_file("a.txt", b"a").await.unwrap();
    p.c.write_file("b.txt", b"b").await.unwrap();
    p.c.fs.wait_for_uploads().await; // the staged copies are let go: files open for writing are not healed
    assert_eq!(sorted(p.c.pending_heals()), ["a.txt", "b.txt"]);
    let state = &p.c.fs.storage().status()["providers"]["disk"]["state"];
    assert_eq!(state, "down", "one failure opens this breaker");
    let asked = p.primary.asked.load(Ordering::SeqCst);
    let refused = p.c.counter("disk", "refused");
    let report = p.c.fs.heal().await;
    assert_eq!(sorted(report.waiting), ["a.txt", "b.txt"]);
    assert_eq!(
        p.primary.asked.load(Ordering::SeqCst),
        asked,
        "no request reached the primary"
    );
    assert!(p.c.counter("disk", "refused") > refused);
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths
}
