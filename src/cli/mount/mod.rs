//! `zmount CONFIG MOUNTPOINT`: mounts the tree and serves it until unmounted (`fusermount3 -u`, `umount`) or
//! interrupted (SIGINT/SIGTERM unmount cleanly and exit 0). `--daemon` runs the same command detached, returning
//! once the mount is up. Before serving, uploads journaled by a previous run are finished; on the way out, the
//! background upload queue is drained.
//!
//! This file holds the command and the serving; `mountpoint` checks the mountpoint, mounts and unmounts it;
//! `daemon` runs the command detached and keeps one daemon per cache dir.

mod daemon;
mod mountpoint;

pub use mountpoint::is_mounted;

use crate::fs::Filesystem;
use crate::fuse::FuseAdapter;
use crate::storage::Storage;
use daemon::{daemonize, lock_cache_dir};
use fuser::{MountOption, SessionACL};
use mountpoint::{check_mountpoint, mount_as_root, raise_read_ahead, unmount_own, Unmounter};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct MountArgs {
    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,
    /// Let other users (root included) use the mount; needs user_allow_other in /etc/fuse.conf for non-root
    #[arg(long)]
    pub allow_other: bool,
    /// Detach and run in the background once the mount is up (logs to <cache_dir>/zmount.log)
    #[arg(long)]
    pub daemon: bool,
    /// Serve Prometheus metrics at this address, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Mount even when a provider refuses the credentials or lacks its bucket (its paths then answer EACCES or
    /// EIO); without it such a mount is refused
    #[arg(long)]
    pub allow_degraded: bool,
}

pub fn run(config_path: &Path, mountpoint: &Path, args: &MountArgs) -> ExitCode {
    let Some(config) = super::load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = config.check_mountable() {
        eprintln!("zmount: {e}");
        return ExitCode::FAILURE;
    }
    let mountpoint = match check_mountpoint(mountpoint) {
        Ok(m) => m,
        Err(message) => {
            eprintln!("zmount: {message}");
            return ExitCode::FAILURE;
        }
    };
    if args.daemon {
        return daemonize(&config.settings.cache_dir, &mountpoint);
    }
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    match serve(&config, &mountpoint, args, &runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("zmount: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    config: &crate::Config,
    mountpoint: &Path,
    args: &MountArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    std::fs::create_dir_all(&config.settings.cache_dir).map_err(|e| {
        format!(
            "cannot create cache dir {}: {e}",
            config.settings.cache_dir.display()
        )
    })?;
    let _lock = lock_cache_dir(&config.settings.cache_dir, mountpoint)?;
    match crate::cache::make_private(&config.settings.cache_dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "cache_dir {}: {n} files and folders were readable by other users; they are now private (0600/0700)",
            config.settings.cache_dir.display()
        ),
        Err(e) => {
            return Err(format!(
                "cannot make cache dir {} private: {e}",
                config.settings.cache_dir.display()
            ))
        }
    }
    runtime.block_on(probe_providers(config, args.allow_degraded))?;
    crate::cache::disk::raise_open_file_limit();
    let storage = Arc::new(Storage::new(config).map_err(|e| e.to_string())?);
    let fs = {
        let _guard = runtime.enter();
        Arc::new(
            Filesystem::new(config, storage, args.read_only)
                .map_err(|e| format!("cannot open the cache: {e}"))?,
        )
    };
    fs.connect();
    if let Some(images) = fs.images() {
        let _guard = runtime.enter();
        images.resubmit_pending(); // jobs a killed daemon left
    }
    let replay = runtime.block_on(fs.replay_journal());
    if !replay.uploaded.is_empty() || !replay.failed.is_empty() {
        tracing::warn!(
            "journal: {} uploads from before the last stop finished, {} still pending (retried in the background)",
            replay.uploaded.len(),
            replay.failed.len()
        );
    }
    spawn_maintenance(fs.clone(), config, runtime);
    if let Some(addr) = &args.metrics_addr {
        runtime
            .block_on(crate::metrics::serve(addr, fs.clone()))
            .map_err(|e| format!("cannot serve metrics at {addr}: {e}"))?;
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let fs_for_shutdown = fs.clone();
    let mut options = fuser::Config::default();
    options.n_threads = Some(config.settings.mount.threads as usize);
    options.mount_options = vec![
        MountOption::FSName("zmount".into()),
        MountOption::Subtype("zmount".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if args.read_only {
        options.mount_options.push(MountOption::RO);
    }
    if args.allow_other {
        options.acl = SessionACL::All;
    }
    let signals = {
        let _entered = runtime.enter();
        catch_signals()
    };
    let adapter = FuseAdapter::new(fs, runtime.handle().clone());
    let cannot = |e: std::io::Error| format!("cannot mount at {}: {e}", mountpoint.display());
    // SAFETY: geteuid cannot fail.
    let (mut session, mut unmounter) = if unsafe { libc::geteuid() } == 0 {
        let acl = options.acl;
        let fd = mount_as_root(mountpoint, args.read_only, args.allow_other).map_err(cannot)?;
        let session = fuser::Session::from_fd(adapter, fd, acl, options).map_err(|e| {
            let _ = unmount_own(mountpoint);
            cannot(e)
        })?;
        (session, Unmounter::Own(mountpoint.to_path_buf()))
    } else {
        let mut session = fuser::Session::new(adapter, mountpoint, &options).map_err(cannot)?;
        let unmounter = Unmounter::Fuser(session.unmount_callable());
        (session, unmounter)
    };
    // A session unmounted from outside (`fusermount3 -u`) would try again when dropped and warn that it could not;
    // the mount is gone already, which is what was asked.
    let mut gone_already =
        matches!(unmounter, Unmounter::Fuser(_)).then(|| session.unmount_callable());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let serving = std::thread::spawn(move || {
        let result = session.run();
        if let Some(Err(e)) = gone_already.as_mut().map(|u| u.unmount()) {
            tracing::debug!("the mount was gone when its session ended: {e}");
        }
        let _ = done_tx.send(());
        result
    });
    // The kernel holds requests to the mount until it has the `init` answer: once a `statfs` is answered, raising
    // the read-ahead sticks (see `raise_read_ahead`). `statfs`, not `stat`: the kernel would keep the root's
    // attributes for their TTL. On a thread of its own, so a mount that never answers cannot keep this one from
    // the signals below.
    let at = mountpoint.to_path_buf();
    std::thread::spawn(move || raise_read_ahead(&at, crate::fuse::READ_AHEAD_KIB));
    tracing::info!("mounted at {}", mountpoint.display());
    let external = runtime.block_on(wait_for_stop(done_rx, signals));
    let mut detached = false;
    if !external {
        tracing::info!("signal received: unmounting {}", mountpoint.display());
        detached = unmounter
            .unmount()
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()))?;
    }
    runtime.block_on(fs_for_shutdown.wait_for_uploads());
    let pending = runtime.block_on(fs_for_shutdown.retry_pending_uploads());
    // Last: uploads finishing above queue image work too.
    if let Some(images) = fs_for_shutdown.images() {
        runtime.block_on(images.wait());
    }
    let status_file = config.settings.cache_dir.join("status.json");
    if let Err(e) = fs_for_shutdown.storage().write_status(&status_file) {
        tracing::debug!("cannot write {}: {e}", status_file.display());
    }
    if !pending.failed.is_empty() {
        tracing::error!(
            "{} uploads are still pending; their data stays in {} and is uploaded at the next mount with this cache dir",
            pending.failed.len(),
            config.settings.cache_dir.join("staging").display()
        );
    }
    if detached {
        return Ok(()); // programs still inside get errors from now on; the mountpoint is free already
    }
    match serving.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("FUSE session ended with an error: {e}")),
        Err(_) => Err("the FUSE session thread panicked".into()),
    }
}

/// Every `heal_interval`: retries uploads that failed (their data kept in the journal), copies failover writes
/// back to primaries that answer again, and writes `<cache_dir>/status.json` (provider health and counters).
fn spawn_maintenance(
    fs: Arc<Filesystem>,
    config: &crate::Config,
    runtime: &tokio::runtime::Runtime,
) {
    let interval = config.settings.failover.heal_interval();
    let status_file = config.settings.cache_dir.join("status.json");
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            fs.maintain(&status_file).await;
        }
    });
}

/// Asks every provider a route uses for its top level, once, before mounting (as `zmount check` does). A provider
/// that does not answer (down, or unreachable) is reported and the mount goes on: it may come back, and fallbacks
/// stand in for it. A provider that answers "no" — refused credentials, a missing bucket, a malformed request — will
/// not change by waiting: it is named and the mount is refused, unless `--allow-degraded`.
async fn probe_providers(config: &crate::Config, allow_degraded: bool) -> Result<(), String> {
    let tuning = crate::providers::ClientTuning::probe(&config.settings);
    let storage = Storage::with_tuning(config, &tuning).map_err(|e| e.to_string())?;
    let routed: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .chain(config.default.as_ref())
        .flat_map(|r| std::iter::once(&r.provider).chain(r.fallback.iter()))
        .map(String::as_str)
        .collect();
    let providers: Vec<_> = storage
        .providers()
        .filter(|p| routed.contains(p.name.as_str()))
        .collect();
    let probes = futures::future::join_all(providers.iter().map(|p| super::check::probe_list(p)));
    let mut refused = Vec::new();
    for (provider, result) in providers.iter().zip(probes.await) {
        match result {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => tracing::warn!(
                "provider `{}` ({}) does not answer: {}; mounting anyway: its paths are served by their fallbacks, or fail with EIO, until it answers",
                provider.name,
                provider.location,
                e.cause()
            ),
            Err(e) => refused.push(format!(
                "provider `{}` ({}): {}",
                provider.name,
                provider.location,
                e.cause()
            )),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    if allow_degraded {
        for line in &refused {
            tracing::error!(
                "{line}; mounted anyway (--allow-degraded): its paths answer EACCES or EIO"
            );
        }
        return Ok(());
    }
    Err(format!(
        "{}
the mount is refused: fix the provider in {} (`zmount check` tells more), or mount anyway with --allow-degraded",
        refused.join("\n"),
        config.file.display()
    ))
}

/// SIGTERM and SIGINT handlers, registered before the mount appears: a signal that arrives the moment the
/// mount is visible must unmount cleanly, not kill the process.
type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

fn catch_signals() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

/// Waits for SIGINT/SIGTERM (false) or for the session to end by itself, e.g. `fusermount3 -u` (true).
async fn wait_for_stop(done: tokio::sync::oneshot::Receiver<()>, signals: Signals) -> bool {
    let Some((mut term, mut int)) = signals else {
        let _ = done.await;
        return true;
    };
    tokio::select! {
        _ = done => true,
        _ = term.recv() => false,
        _ = int.recv() => false,
    }
}
