//! `zmount CONFIG MOUNTPOINT`: mounts the tree and serves it until unmounted (`fusermount3 -u`, `umount`) or
//! interrupted (SIGINT/SIGTERM unmount cleanly and exit 0). `--daemon` runs the same command detached, returning
//! once the mount is up. Before serving, uploads journaled by a previous run are finished; on the way out, the
//! background upload queue is drained.

use crate::fs::Filesystem;
use crate::fuse::FuseAdapter;
use crate::storage::Storage;
use fuser::{MountOption, SessionACL};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long `--daemon` waits for the background process to mount before giving up.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The mountpoint must exist, be an empty directory, and not be mounted already.
fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            clear_dead_mount(path)?;
            std::fs::metadata(path).map_err(|e| format!("mountpoint {shown}: {e}"))?
        }
        other => other.map_err(|e| format!("mountpoint {shown}: {e}"))?,
    };
    if !meta.is_dir() {
        return Err(format!("mountpoint {shown} is not a directory"));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if is_mounted(&canonical) {
        return Err(format!("mountpoint {shown} is already a mount point (unmount it first: fusermount3 -u {shown})"));
    }
    let mut entries =
        std::fs::read_dir(&canonical).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!("mountpoint {shown} is not empty"));
    }
    Ok(canonical)
}

/// A FUSE mount whose daemon is gone ("Transport endpoint is not connected", left by a killed process) sits on
/// `path`: detach it (as `fusermount3 -uz` does) and say so, or name the exact command that would.
fn clear_dead_mount(path: &Path) -> Result<(), String> {
    use std::ffi::CString;
    let shown = path.display();
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("mountpoint {shown}: not a valid path"))?;
    // SAFETY: a valid C string.
    let detached = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0
        || std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if detached {
        tracing::warn!(
            "mountpoint {shown} held a dead mount (its zmount did not exit cleanly): detached it"
        );
        Ok(())
    } else {
        Err(format!(
            "mountpoint {shown} holds a dead mount (\"Transport endpoint is not connected\": its process is gone); remove it with `fusermount3 -uz {shown}` (or `umount -l {shown}` as root) and mount again"
        ))
    }
}

/// Whether `path` is the mount point of a mounted filesystem, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == target)
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
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
    let storage = Arc::new(Storage::new(config).map_err(|e| e.to_string())?);
    let fs = {
        let _guard = runtime.enter();
        Arc::new(
            Filesystem::new(config, storage, args.read_only)
                .map_err(|e| format!("cannot open the cache: {e}"))?,
        )
    };
    fs.connect();
    if let Some(images) = &fs.images {
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
    tracing::info!("mounted at {}", mountpoint.display());
    let external = runtime.block_on(wait_for_stop(done_rx, signals));
    let mut detached = false;
    if !external {
        tracing::info!("signal received: unmounting {}", mountpoint.display());
        detached = unmounter
            .unmount()
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()))?;
    }
    runtime.block_on(fs_for_shutdown.uploads.wait());
    let pending = runtime.block_on(fs_for_shutdown.retry_pending_uploads());
    // Last: uploads finishing above queue image work too.
    if let Some(images) = &fs_for_shutdown.images {
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
            fs.heal().await;
            if let Some(images) = &fs.images {
                images.resubmit_pending(); // jobs that failed on an outage
            }
            if let Err(e) = fs.storage().write_status(&status_file) {
                tracing::debug!("cannot write {}: {e}", status_file.display());
            }
            let outcome = fs.retry_pending_uploads().await;
            if !outcome.uploaded.is_empty() {
                tracing::warn!(
                    "journal: {} pending uploads finished: {:?}",
                    outcome.uploaded.len(),
                    outcome.uploaded
                );
            }
        }
    });
}

/// Waits for SIGINT/SIGTERM (false) or for the session to end by itself, e.g. `fusermount3 -u` (true).
/// Who takes the mount down on a signal.
enum Unmounter {
    /// Mounted here (as root).
    Own(std::path::PathBuf),
    /// Mounted by fuser (through fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    /// Whether the mount was only detached (something still holds it): its session then ends when they leave,
    /// and the daemon does not wait for that.
    fn unmount(&mut self) -> std::io::Result<bool> {
        match self {
            Unmounter::Own(path) => unmount_own(path),
            Unmounter::Fuser(u) => u.unmount().map(|()| false),
        }
    }
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

/// Mounts /dev/fuse at `mountpoint` with the type `fuse.zmount` (what /proc/mounts, `df -T` and `findmnt` show;
/// fuser's own mount as root says only `fuse`). Returns the channel's descriptor for the session.
fn mount_as_root(
    mountpoint: &Path,
    read_only: bool,
    allow_other: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::ffi::CString;
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let rootmode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id=0,group_id=0,default_permissions",
        device.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let target = CString::new(mountpoint.as_os_str().as_encoded_bytes()).map_err(invalid)?;
    let (source, kind) = (c"zmount", c"fuse.zmount");
    let data = CString::new(data).map_err(invalid)?;
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(device.into())
}

/// Unmounts what [`mount_as_root`] mounted; while something still holds the mount (a shell inside it), detaches
/// it instead, so no dead mountpoint is left.
fn unmount_own(path: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        return Ok(false);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EBUSY) {
        return Err(error);
    }
    tracing::warn!(
        "{} is busy (a program or shell is inside it): detached; it disappears once they leave",
        path.display()
    );
    // SAFETY: as above.
    match unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } {
        0 => Ok(true),
        _ => Err(std::io::Error::last_os_error()),
    }
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

/// One daemon per cache dir: two would evict each other's blocks and, later, replay each other's uploads. The lock
/// file names the holder (its PID and mountpoint), so a refused start can say who holds the cache dir.
fn lock_cache_dir(dir: &Path, mountpoint: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("zmount.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // the holder's name stays readable until the lock is ours
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let mut lines = holder.lines();
        let held_by = match (lines.next(), lines.next()) {
            (Some(pid), Some(mnt)) => format!("zmount process {pid}, mounted at {mnt}"),
            _ => "another zmount process".to_string(),
        };
        return Err(format!(
            "cache dir {} is in use by {held_by}; give this mount its own `cache_dir` in [settings], or unmount that one first",
            dir.display()
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}\n{}", std::process::id(), mountpoint.display());
    Ok(file)
}

/// Re-runs this command without `--daemon`, detached, and returns once the mount is up (or the child failed).
fn daemonize(cache_dir: &Path, mountpoint: &Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(cache_dir) {
        eprintln!(
            "zmount: cannot create cache dir {}: {e}",
            cache_dir.display()
        );
        return ExitCode::FAILURE;
    }
    // A busy cache dir is said here, not in the log of the process holding it.
    if let Err(e) = lock_cache_dir(cache_dir, mountpoint) {
        eprintln!("zmount: {e}");
        return ExitCode::FAILURE;
    }
    let log_path = cache_dir.join("zmount.log");
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("zmount: cannot open log {}: {e}", log_path.display());
            return ExitCode::FAILURE;
        }
    };
    // What the child writes from here on is its own: printed if it fails to start.
    let start = log.metadata().map_or(0, |m| m.len());
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut command = std::process::Command::new(std::env::current_exe().expect("own executable"));
    command
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    // SAFETY: setsid in the child before exec only detaches it from our session and terminal.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zmount: cannot start the background process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    while started.elapsed() < DAEMON_START_TIMEOUT {
        if is_mounted(mountpoint) {
            println!(
                "zmount: mounted at {} (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = read_from(&log_path, start);
            let said = said.trim_end();
            if said.is_empty() {
                eprintln!(
                    "zmount: the background process exited ({status}); see {}",
                    log_path.display()
                );
            } else {
                eprintln!("{said}");
                eprintln!(
                    "zmount: the background process exited ({status}); its log: {}",
                    log_path.display()
                );
            }
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "zmount: the mount did not come up within {DAEMON_START_TIMEOUT:?}; see {}",
        log_path.display()
    );
    ExitCode::FAILURE
}

/// The text of `path` from byte `offset` on (empty when unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}
