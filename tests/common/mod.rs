//! Test support shared by the integration tests: the local protocol servers (started once per test process by
//! `scripts/test-servers.sh`, which is idempotent), one mount.toml per provider kind, and direct access to a
//! provider so tests can check what really landed where.
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
use zmount::providers::Provider;
use zmount::{Config, Storage};

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

/// The `[providers.NAME]` table for a case, as TOML text, with `prefix` as the key prefix.
pub fn provider_toml(case: Case, name: &str, prefix: &str, dir: &Path) -> String {
    let head = format!("[providers.{name}]\nprefix = {prefix:?}\n");
    let body = match case {
        Case::Local => {
            let root = dir.join(format!("{name}-root"));
            format!("kind = \"local\"\npath = {root:?}\nbase_url = \"http://files.example.test/media\"\n")
        }
        Case::S3 | Case::Wasabi => format!(
            "kind = {:?}\nbucket = {:?}\nendpoint = {:?}\naccess_key = \"${{ZMOUNT_TEST_S3_ACCESS_KEY}}\"\nsecret_key = \"${{ZMOUNT_TEST_S3_SECRET_KEY}}\"\n",
            if case == Case::S3 { "s3" } else { "wasabi" },
            server(if case == Case::S3 { "ZMOUNT_TEST_S3_BUCKET" } else { "ZMOUNT_TEST_WASABI_BUCKET" }),
            server("ZMOUNT_TEST_S3_ENDPOINT"),
        ),
        Case::Azure => format!(
            "kind = \"azure\"\ncontainer = {:?}\naccount = \"devstoreaccount1\"\nkey = \"${{ZMOUNT_TEST_AZURE_KEY}}\"\nendpoint = {:?}\n",
            server("ZMOUNT_TEST_AZURE_CONTAINER"),
            server("ZMOUNT_TEST_AZURE_ENDPOINT"),
        ),
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
            format!("kind = \"gcs\"\nbucket = {:?}\ncredentials = {path:?}\n", server("ZMOUNT_TEST_GCS_BUCKET"))
        }
    };
    format!("{head}{body}\n")
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

/// Retry settings for tests: a failing call fails fast instead of retrying for seconds.
pub const FAST_SETTINGS: &str = "[settings.retry]\nattempts = 2\ndelay = 0.05\n\n";

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
        let name = format!("{case:?}").to_lowercase();
        let text = format!(
            "{FAST_SETTINGS}{}[default]\nprovider = {name:?}\n",
            provider_toml(case, &name, &unique(test), dir.path())
        );
        let config =
            Config::parse(&text, &dir.path().join("mount.toml")).unwrap_or_else(|e| panic!("{e}"));
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
