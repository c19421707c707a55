//! A real zmount mount for tests: the binary, a config file, a mountpoint, and a clean unmount on drop.

use super::{Case, Ctx, TestConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zmount::config::{ConfigBuilder, RouteBuilder};

/// How long a mount may take to appear, and an unmount to finish, before the test fails.
const MOUNT_DEADLINE: Duration = Duration::from_secs(30);

pub struct Mount {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Writes `config` to `<scratch>/mount.toml` and mounts it at `<scratch>/mnt`.
    pub fn start(scratch: &Path, config: &ConfigBuilder) -> Mount {
        Self::start_with(scratch, config, &[])
    }

    /// [`Mount::start`] with extra `zmount` arguments (e.g. `--metrics-addr ADDR`).
    pub fn start_with(scratch: &Path, config: &ConfigBuilder, extra: &[&str]) -> Mount {
        super::set_secret_env();
        let file = scratch.join("mount.toml");
        std::fs::write(&file, config.text()).unwrap();
        let dir = scratch.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_at(&file, &dir, extra)
    }

    pub fn start_at(config: &Path, dir: &Path, extra: &[&str]) -> Mount {
        let log = config.with_extension(format!("log.{}", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_zmount"))
            .arg(config)
            .arg(dir)
            .args(extra)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start zmount");
        let mut mount = Mount {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            child: Some(child),
            log,
        };
        mount.wait_until_mounted();
        mount
    }

    fn wait_until_mounted(&mut self) {
        let started = Instant::now();
        while !zmount::cli::is_mounted(&self.dir) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zmount exited ({status}) before mounting:\n{}", self.log());
            }
            assert!(
                started.elapsed() < MOUNT_DEADLINE,
                "not mounted after {MOUNT_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mounted").id()
    }

    /// Waits until the daemon's log has a line containing `needle` (the daemon is busy in the background);
    /// returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + MOUNT_DEADLINE;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {MOUNT_DEADLINE:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the daemon to exit; returns its exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("still running");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait_exit()
    }

    /// Waits for the daemon to exit (after an unmount from outside, or a signal); its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > MOUNT_DEADLINE {
                let _ = child.kill();
                panic!("zmount did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop_with(libc::SIGTERM);
            if std::thread::panicking() {
                // The test failed: the daemon's side of the story goes into the test's output.
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(200)..];
                eprintln!(
                    "zmount's log (last {} lines, exited {status}):\n{}",
                    tail.len(),
                    tail.join("\n")
                );
            } else {
                assert!(
                    status.success(),
                    "zmount exited with {status}:\n{}",
                    self.log()
                );
                assert!(
                    !zmount::cli::is_mounted(&self.dir),
                    "stale mount left at {}",
                    self.dir.display()
                );
            }
        }
    }
}

/// Runs a program, asserting success; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// sha256 of a file, by the sha256sum program.
pub fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A mount of everything routed to one provider (a fresh prefix), plus that provider for seeding.
pub fn mount_for(case: Case, test: &str) -> (Ctx, Mount) {
    mount_for_with(case, test, &[])
}

/// [`mount_for`] with extra `zmount` arguments (e.g. `--read-only`).
pub fn mount_for_with(case: Case, test: &str, args: &[&str]) -> (Ctx, Mount) {
    mount_tuned(case, test, |config| config, |route| route, args)
}

/// [`mount_for_with`] whose config goes through `tune` (settings, more routes) and whose `[default]` route goes
/// through `route` (more keys).
pub fn mount_tuned(
    case: Case,
    test: &str,
    tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    route: impl FnOnce(RouteBuilder) -> RouteBuilder,
    args: &[&str],
) -> (Ctx, Mount) {
    let ctx = Ctx::new(case, test);
    let default = route(RouteBuilder::to(&ctx.provider.name));
    let config = tune(config_for(&ctx).default_route(default));
    let mount = Mount::start_with(ctx.dir.path(), &config, args);
    (ctx, mount)
}

/// The config of a mount over `ctx`'s provider (same name and prefix), without routes: the fast retry settings and
/// the cache in the scratch's `cache`.
pub fn config_for(ctx: &Ctx) -> ConfigBuilder {
    let dir = ctx.dir.path();
    ConfigBuilder::new(&dir.join("cache")).fast_retries().case(
        ctx.case,
        &ctx.provider.name,
        &ctx.provider.prefix,
        dir,
    )
}
