//! A mount is a privilege boundary: what it serves, to whom, and what it leaves on the machine. The local provider
//! never leaves its folder; files under `cache_dir` are private to the user running zmount.

mod common;

use common::mount::{mount_for_with, run};
use common::Case;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The links of the confinement report, made in a local provider's folder by someone with access to it: each shows
/// on the mount as a symlink with its target verbatim; zmount follows none of them, so a listing never walks out of
/// the folder, removing a link removes only the link, and another user resolving a link gets that user's own
/// rights on the target (not the daemon's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_never_leaves_its_folder() {
    let (ctx, mount) = mount_for_with(Case::Local, "confine", "", &["--allow-other"]);
    let folder = ctx
        .dir
        .path()
        .join(format!("{}-root", ctx.provider.name))
        .join(&ctx.provider.prefix);
    let outside = ctx.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(outside.join("secret.txt"), b"outside the folder\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", folder.join("shadow_link")).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("out")).unwrap();
    std::os::unix::fs::symlink("../../..", folder.join("up")).unwrap();

    for (name, target) in [
        ("shadow_link", Path::new("/etc/shadow")),
        ("out", outside.as_path()),
        ("up", Path::new("../../..")),
    ] {
        let meta = std::fs::symlink_metadata(mount.path(name))
            .unwrap_or_else(|e| panic!("lstat {name} on the mount: {e}"));
        assert!(
            meta.file_type().is_symlink(),
            "{name} is a symlink on the mount"
        );
        assert_eq!(
            std::fs::read_link(mount.path(name)).unwrap(),
            target,
            "{name}'s target, verbatim"
        );
    }
    let listed = run("find", &[p(&mount.dir)]);
    assert!(
        !listed.contains("secret.txt") && !listed.contains("passwd"),
        "a listing walked through a link:\n{listed}"
    );

    // Another user resolves the link with that user's rights: /etc/shadow stays unreadable to nobody.
    let mut up = mount.dir.clone();
    while up.pop() {
        if up.starts_with(ctx.dir.path()) {
            std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(mount.path("shadow_link"))
        .output()
        .unwrap();
    assert!(
        !as_nobody.status.success()
            && String::from_utf8_lossy(&as_nobody.stderr).contains("Permission denied"),
        "cat shadow_link as nobody: {:?} {}",
        as_nobody.status,
        String::from_utf8_lossy(&as_nobody.stdout)
    );

    // Removing a link removes the link, never what it points at.
    std::fs::remove_file(mount.path("out")).unwrap();
    assert!(
        std::fs::symlink_metadata(folder.join("out")).is_err(),
        "the link is gone"
    );
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"outside the folder\n"
    );
    // A link made through the mount is a link in the folder.
    std::os::unix::fs::symlink("some/where", mount.path("made")).unwrap();
    assert_eq!(
        std::fs::read_link(folder.join("made")).unwrap(),
        Path::new("some/where")
    );
}
