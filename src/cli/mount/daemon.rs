//! `--daemon`: the command run again detached, returning once its mount is up; and the lock that keeps one
//! daemon per cache dir.

use super::is_mounted;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `--daemon` waits for the background process to mount before giving up.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// One daemon per cache dir: two would evict each other's blocks and, later, replay each other's uploads. The lock
/// file names the holder (its PID and mountpoint), so a refused start can say who holds the cache dir.
pub(super) fn lock_cache_dir(dir: &Path, mountpoint: &Path) -> Result<std::fs::File, String> {
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
pub(super) fn daemonize(cache_dir: &Path, mountpoint: &Path) -> ExitCode {
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
