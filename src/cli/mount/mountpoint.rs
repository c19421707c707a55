//! The mountpoint: checked before mounting (an empty directory, not mounted, a dead mount cleared), mounted
//! with the type `fuse.zmount` when running as root, and unmounted (or detached while busy) on the way out.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The mountpoint must exist, be an empty directory, and not be mounted already.
pub(super) fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
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
    mountinfo_of(path).is_some()
}

/// The /proc/self/mountinfo line of the topmost mount at `path`, if any.
fn mountinfo_of(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = path.to_string_lossy();
    info.lines()
        .rfind(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&target))
        .map(str::to_string)
}

/// The kernel's read-ahead of files in the mount at `path`, raised to `kib` KiB where it is lower. The kernel offers
/// FUSE no more than its default (128 KiB) at `init`, so a sequential reader's requests are 128 KiB each; a larger
/// window on the mount's own device (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, root only) makes them up to the
/// request size FUSE allows (1 MiB), a quarter of the requests and of the daemon's work per byte. Waits for a
/// `statfs` of the mount first: the kernel answers none before it has the `init` answer (which would lower the
/// window again). Files opened since take it. What cannot be done (not root, no sysfs) leaves the kernel's default
/// and says why in the debug log.
pub(super) fn raise_read_ahead(path: &Path, kib: u32) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid C string and a zeroed struct for the kernel to fill.
    let answered = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c_path.as_ptr(), &mut stat) == 0
    };
    if !answered {
        tracing::debug!(
            "read-ahead left as it is: {} did not answer statfs",
            path.display()
        );
        return;
    }
    let line = mountinfo_of(path);
    let Some(device) = line.as_deref().and_then(|l| l.split(' ').nth(2)) else {
        tracing::debug!(
            "read-ahead left as it is: {} is not in /proc/self/mountinfo",
            path.display()
        );
        return;
    };
    let file = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let now: Option<u32> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    if now.is_some_and(|now| now >= kib) {
        return;
    }
    match std::fs::write(&file, format!("{kib}\n")) {
        Ok(()) => tracing::debug!(
            "read-ahead of {} raised to {kib} KiB ({file})",
            path.display()
        ),
        Err(e) => tracing::debug!(
            "read-ahead of {} left at {now:?} KiB: {file}: {e}",
            path.display()
        ),
    }
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Who takes the mount down on a signal.
pub(super) enum Unmounter {
    /// Mounted here (as root).
    Own(std::path::PathBuf),
    /// Mounted by fuser (through fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    /// Whether the mount was only detached (something still holds it): its session then ends when they leave,
    /// and the daemon does not wait for that.
    pub(super) fn unmount(&mut self) -> std::io::Result<bool> {
        match self {
            Unmounter::Own(path) => unmount_own(path),
            Unmounter::Fuser(u) => u.unmount().map(|()| false),
        }
    }
}

/// Mounts /dev/fuse at `mountpoint` with the type `fuse.zmount` (what /proc/mounts, `df -T` and `findmnt` show;
/// fuser's own mount as root says only `fuse`). Returns the channel's descriptor for the session.
pub(super) fn mount_as_root(
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
pub(super) fn unmount_own(path: &Path) -> std::io::Result<bool> {
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
