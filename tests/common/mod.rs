//! Test support shared by the integration tests: the local protocol servers (started once per test process by
//! `scripts/test-servers.sh`, which is idempotent), one provider table per provider kind for the configs tests build
//! with [`ConfigBuilder`], and direct access to a provider so tests can check what really landed where.
#![allow(dead_code)]

pub mod killable;
pub mod mount;
pub mod proxy;
pub mod raw_s3;

use bytes::Bytes;
pub use object_store::ObjectStoreExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use toml::{Table, Value};
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::providers::Provider;
use zmount::Storage;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Endpoints and credentials of the running test servers (`ZMOUNT_TEST_*`).
pub fn servers() -> &'static HashMap<String, String> {
    static SERVERS: OnceLock<HashMap<String, String>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let script = repo_root().join("scripts/test-servers.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .status()
            .expect("run test-servers.sh");
        assert!(
            status.success(),
            "scripts/test-servers.sh start failed; see its logs"
        );
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .expect("test-servers.sh env");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

pub fn server(name: &str) -> String {
    servers()
        .get(name)
        .unwrap_or_else(|| panic!("test-servers.sh env has no {name}"))
        .clone()
}

/// The provider configurations every conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Local,
    S3,
    Wasabi,
    Azure,
    Gcs,
}

/// A unique prefix so tests sharing a server never see each other's objects.
pub fn unique(test: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "t-{test}-{}-{}-{n}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

/// Runs the `zmount` binary with `args` (secrets in the environment), waiting for it to end.
pub fn zmount(args: &[&str]) -> std::process::Output {
    set_secret_env();
    std::process::Command::new(env!("CARGO_BIN_EXE_zmount"))
        .args(args)
        .output()
        .expect("run zmount")
}

/// `127.0.0.1:<a port nobody listens on>`, for servers the daemon starts (the metrics endpoint).
pub fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// A throwaway folder for configs, local provider roots and credentials.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// An RSA key (PKCS#8 PEM) for signing GCS URLs locally, made once per process with openssl.
fn gcs_signing_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl genpkey");
        assert!(out.status.success(), "openssl genpkey failed");
        String::from_utf8(out.stdout).unwrap()
    })
}

impl Case {
    /// The name tests give the case's provider: `local`, `s3`, `wasabi`, `azure`, `gcs`.
    pub fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// The `[providers.NAME]` table of a case, with `prefix` as the key prefix: the test servers' buckets and endpoints,
/// secrets as `${ZMOUNT_TEST_...}` references (set by [`set_secret_env`]), a local case's folder `<dir>/NAME-root`
/// and a GCS case's credentials file `<dir>/NAME-gcs.json`.
#[derive(Clone, Debug)]
pub struct ProviderTable {
    pub name: String,
    kind: &'static str,
    keys: Table,
}

impl ProviderTable {
    pub fn new(case: Case, name: &str, prefix: &str, dir: &Path) -> ProviderTable {
        let mut keys = Table::new();
        let mut set = |key: &str, value: String| {
            keys.insert(key.to_string(), value.into());
        };
        set("prefix", prefix.to_string());
        let kind = match case {
            Case::Local => {
                set(
                    "path",
                    dir.join(format!("{name}-root")).display().to_string(),
                );
                set("base_url", "http://files.example.test/media".into());
                "local"
            }
            Case::S3 | Case::Wasabi => {
                let (kind, bucket) = match case {
                    Case::S3 => ("s3", "ZMOUNT_TEST_S3_BUCKET"),
                    _ => ("wasabi", "ZMOUNT_TEST_WASABI_BUCKET"),
                };
                set("bucket", server(bucket));
                set("endpoint", server("ZMOUNT_TEST_S3_ENDPOINT"));
                set("access_key", "${ZMOUNT_TEST_S3_ACCESS_KEY}".into());
                set("secret_key", "${ZMOUNT_TEST_S3_SECRET_KEY}".into());
                kind
            }
            Case::Azure => {
                set("container", server("ZMOUNT_TEST_AZURE_CONTAINER"));
                set("account", "devstoreaccount1".into());
                set("key", "${ZMOUNT_TEST_AZURE_KEY}".into());
                set("endpoint", server("ZMOUNT_TEST_AZURE_ENDPOINT"));
                "azure"
            }
            Case::Gcs => {
                let creds = serde_json::json!({
                    "gcs_base_url": server("ZMOUNT_TEST_GCS_ENDPOINT"),
                    "disable_oauth": true,
                    "client_email": "zmount-test@example.iam.gserviceaccount.com",
                    "private_key": gcs_signing_key(),
                    "private_key_id": "test",
                });
                let path = dir.join(format!("{name}-gcs.json"));
                std::fs::write(&path, creds.to_string()).unwrap();
                set("bucket", server("ZMOUNT_TEST_GCS_BUCKET"));
                set("credentials", path.display().to_string());
                "gcs"
            }
        };
        ProviderTable {
            name: name.to_string(),
            kind,
            keys,
        }
    }

    /// The same provider reached at `endpoint` instead of its server's (a fault proxy in front of the server, a
    /// private instance of it).
    pub fn at(mut self, endpoint: &str) -> ProviderTable {
        self.keys.insert("endpoint".into(), endpoint.into());
        self
    }

    /// A fault proxy in front of this provider's server, and the table that reaches the provider through it (for a
    /// table whose endpoint is `http://HOST:PORT`, as an S3 case's is).
    pub fn behind_proxy(&self) -> (proxy::Proxy, ProviderTable) {
        let endpoint = self.keys["endpoint"]
            .as_str()
            .expect("a table with an endpoint");
        let target = endpoint
            .strip_prefix("http://")
            .expect("an http:// endpoint");
        let proxy = proxy::Proxy::start(target);
        let via_proxy = self.clone().at(&proxy.endpoint());
        (proxy, via_proxy)
    }

    /// This provider alone, reached directly (no proxy, no mount): to seed it and to check what it really stores.
    pub fn direct(&self, dir: &Path) -> Arc<Provider> {
        set_secret_env();
        let config = ConfigBuilder::default()
            .provider_table(self)
            .default_route(RouteBuilder::to(&self.name))
            .build(&dir.join("direct.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let storage = Storage::new(&config).unwrap_or_else(|e| panic!("{e}"));
        storage.provider(&self.name).unwrap().clone()
    }
}

/// The keys of an S3 table on the S3 test server's endpoint with `bucket`, the server's access key and `secret_key`
/// written into it as they are: for tests of what a wrong bucket or secret does.
pub fn s3_keys(bucket: &str, secret_key: &str) -> [(&'static str, Value); 4] {
    [
        ("bucket", bucket.into()),
        ("endpoint", server("ZMOUNT_TEST_S3_ENDPOINT").into()),
        ("access_key", server("ZMOUNT_TEST_S3_ACCESS_KEY").into()),
        ("secret_key", secret_key.into()),
    ]
}

/// The parts of test configs, on a [`ConfigBuilder`].
pub trait TestConfig {
    /// Adds provider `name` of `case` under `prefix` (see [`ProviderTable::new`]).
    fn case(self, case: Case, name: &str, prefix: &str, dir: &Path) -> Self;
    /// Adds the provider `table` describes.
    fn provider_table(self, table: &ProviderTable) -> Self;
    /// Retry settings for tests: a failing call fails fast instead of retrying for seconds, and a slow one is waited
    /// for (the emulators share 2 cores with the whole suite and can pause for seconds; tests of stalls set their own
    /// timeouts).
    fn fast_retries(self) -> Self;
}

impl TestConfig for ConfigBuilder {
    fn case(self, case: Case, name: &str, prefix: &str, dir: &Path) -> Self {
        self.provider_table(&ProviderTable::new(case, name, prefix, dir))
    }

    fn provider_table(self, table: &ProviderTable) -> Self {
        let keys = table.keys.iter().map(|(k, v)| (k.as_str(), v.clone()));
        self.provider(&table.name, table.kind, keys)
    }

    fn fast_retries(self) -> Self {
        self.retry(2, 0.05).setting("timeouts.first_byte", 60)
    }
}

/// A TOML table value from its keys, for the tables inside a route (`variants`, `metadata`, `tags`).
pub fn table<'a>(keys: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Table(keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Secrets the test configs read from the environment, set once.
pub fn set_secret_env() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let s = servers();
        // SAFETY (edition 2021: safe fn): set before any provider reads them; same values every time.
        std::env::set_var("ZMOUNT_TEST_S3_ACCESS_KEY", &s["ZMOUNT_TEST_S3_ACCESS_KEY"]);
        std::env::set_var("ZMOUNT_TEST_S3_SECRET_KEY", &s["ZMOUNT_TEST_S3_SECRET_KEY"]);
        std::env::set_var(
            "ZMOUNT_TEST_AZURE_KEY",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        );
    });
}

/// One storage over one provider (named after the case), everything routed to it, under a unique prefix.
pub struct Ctx {
    pub case: Case,
    pub storage: Storage,
    pub provider: Arc<Provider>,
    pub dir: tempfile::TempDir,
}

impl Ctx {
    pub fn new(case: Case, test: &str) -> Ctx {
        set_secret_env();
        let dir = scratch();
        let name = case.name();
        let config = ConfigBuilder::default()
            .fast_retries()
            .case(case, &name, &unique(test), dir.path())
            .default_route(RouteBuilder::to(&name))
            .build(&dir.path().join("mount.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let storage = Storage::new(&config).unwrap_or_else(|e| panic!("{e}"));
        let provider = storage.provider(&name).unwrap().clone();
        Ctx {
            case,
            storage,
            provider,
            dir,
        }
    }

    /// Puts an object at a mount path directly on the provider, bypassing zmount's write path.
    pub async fn seed(&self, path: &str, data: &[u8]) {
        let key = self.provider.key_for(path);
        if self.case == Case::Gcs {
            seed_gcs(key.as_ref(), data).await;
        } else {
            self.provider
                .object_store()
                .put(&key, Bytes::copy_from_slice(data).into())
                .await
                .unwrap();
        }
    }

    /// Reads an object at a mount path directly from the provider.
    pub async fn read_direct(&self, path: &str) -> Option<Bytes> {
        read_direct(&self.provider, path).await
    }
}

pub async fn read_direct(provider: &Provider, path: &str) -> Option<Bytes> {
    match provider.object_store().get(&provider.key_for(path)).await {
        Ok(r) => Some(r.bytes().await.unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("direct read of {path} from {}: {e}", provider.name),
    }
}

/// Uploads through fake-gcs-server's JSON API, which it accepts (object_store's XML writes it does not).
pub async fn seed_gcs(key: &str, data: &[u8]) {
    let url = format!(
        "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
        server("ZMOUNT_TEST_GCS_ENDPOINT"),
        server("ZMOUNT_TEST_GCS_BUCKET"),
        url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
    );
    let resp = http().post(url).body(data.to_vec()).send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "seeding GCS object {key}: {}",
        resp.status()
    );
}

/// An HTTP client for tests (zmount's TLS provider made the process's first, as the library needs).
pub fn http() -> reqwest::Client {
    zmount::providers::use_ring_tls();
    reqwest::Client::new()
}

/// GET `url` (panics when the request cannot be sent).
pub async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

/// The text of a mount's metrics endpoint (`--metrics-addr addr`).
pub async fn metrics(addr: &str) -> String {
    get(&format!("http://{addr}/metrics"))
        .await
        .text()
        .await
        .unwrap()
}

/// A per-provider counter from the mount's metrics endpoint, summed over its other labels.
pub async fn metric(addr: &str, name: &str, provider: &str) -> f64 {
    metric_sum(addr, &format!("{name}{{provider=\"{provider}\"")).await
}

/// The sum of a mount's metric lines that start with `prefix` (a name, or a name with its first labels, e.g.
/// `zmount_provider_requests_total{provider="s3",op="get"`).
pub async fn metric_sum(addr: &str, prefix: &str) -> f64 {
    metrics(addr)
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Deterministic bytes that differ at every offset, so a misplaced range shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

/// Defines one `#[tokio::test]` per provider case for each listed test body `async fn body(case: Case)`. Bodies
/// after `writes:` write through zmount: on GCS they are ignored (nextest counts them as skipped, with the reason),
/// because the emulator does not take object_store's GCS writes.
#[macro_export]
macro_rules! for_each_provider {
    ($($body:ident),* $(,)? $(; writes: $($writes:ident),* $(,)?)?) => {
        $crate::for_each_provider!(@case local, Local, [$($body),*], [$($($writes),*)?]);
        $crate::for_each_provider!(@case s3, S3, [$($body),*], [$($($writes),*)?]);
        $crate::for_each_provider!(@case wasabi, Wasabi, [$($body),*], [$($($writes),*)?]);
        $crate::for_each_provider!(@case azure, Azure, [$($body),*], [$($($writes),*)?]);
        mod gcs {
            $crate::for_each_provider!(@tests Gcs, $($body),*);
            $crate::for_each_provider!(@unwritable Gcs, $($($writes),*)?);
        }
    };
    (@case $module:ident, $case:ident, [$($body:ident),*], [$($writes:ident),*]) => {
        mod $module {
            $crate::for_each_provider!(@tests $case, $($body,)* $($writes),*);
        }
    };
    (@tests $case:ident, $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                super::$body(super::common::Case::$case).await
            }
        )*
    };
    (@unwritable $case:ident, $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "fake-gcs-server rejects object_store's GCS write requests (XML API: `400 invalid uploadType`)"]
            async fn $body() {
                super::$body(super::common::Case::$case).await
            }
        )*
    };
}
