//! A private Azurite instance a test may SIGKILL, for "the primary dies mid-read" (the shared test servers must
//! stay up for every other test). Azurite starts in about a second and keeps its data in memory.

use super::{repo_root, server};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Azurite {
    pub port: u16,
    child: Option<Child>,
    _work: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite on a free port with the same container name as the shared one.
    pub fn start() -> Azurite {
        super::servers(); // the shared servers' install step also installs Azurite
        let tools = std::env::var("ZMOUNT_TOOLS").unwrap_or_else(|_| {
            format!(
                "{}/.cache/zmount-test-servers",
                std::env::var("HOME").unwrap()
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let work = tempfile::tempdir().unwrap();
        let child = Command::new(format!("{tools}/npm/node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .current_dir(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let azurite = Azurite {
            port,
            child: Some(child),
            _work: work,
        };
        azurite.wait_ready();
        azurite
    }

    /// The blob endpoint, in the form the shared Azurite's is.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        let script = repo_root().join("scripts/lib/azurite_container.py");
        let container = server("ZMOUNT_TEST_AZURE_CONTAINER");
        loop {
            let ok = Command::new("python3")
                .arg(&script)
                .args([&self.endpoint(), &container])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "private Azurite on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: the server dies with its connections open.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}
