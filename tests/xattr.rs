//! Metadata, tags and object facts as extended attributes, driven by the real `getfattr`/`setfattr` programs
//! through a real mount, and checked on the provider directly. One body per behaviour, run on every provider.

mod common;

use common::mount::{config_for, mount_for, run};
use common::{server, table, Case};
use std::process::Command;
use zmount::config::RouteBuilder;

fn getfattr(file: &std::path::Path) -> String {
    run(
        "getfattr",
        &[
            "-d",
            "-m",
            "^user\\.",
            "--absolute-names",
            file.to_str().unwrap(),
        ],
    )
}

/// Runs setfattr with `args` expecting failure; returns its stderr.
fn setfattr_fails(args: &[&str]) -> String {
    let out = Command::new("setfattr").args(args).output().unwrap();
    assert!(!out.status.success(), "setfattr {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The object's tags as the S3 server itself reports them (GetObjectTagging).
fn s3_tagging(bucket: &str, key: &str) -> String {
    let user = format!(
        "{}:{}",
        server("ZMOUNT_TEST_S3_ACCESS_KEY"),
        server("ZMOUNT_TEST_S3_SECRET_KEY")
    );
    let url = format!(
        "{}/{bucket}/{key}?tagging=",
        server("ZMOUNT_TEST_S3_ENDPOINT")
    );
    run(
        "curl",
        &[
            "-sf",
            "--user",
            &user,
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            &url,
        ],
    )
}

async fn metadata_and_tags_round_trip_as_xattrs(case: Case) {
    let (ctx, mnt) = mount_for(case, "xattr");
    let file = mnt.path("doc.txt");
    let f = file.to_str().unwrap();
    std::fs::write(&file, b"hello").unwrap();
    run("setfattr", &["-n", "user.meta.Owner", "-v", "alice", f]);
    run("setfattr", &["-n", "user.tag.project", "-v", "apollo", f]);
    run(
        "setfattr",
        &["-n", "user.zmount.content_type", "-v", "text/x-note", f],
    );

    let dump = getfattr(&file);
    assert!(
        dump.contains("user.meta.owner=\"alice\""),
        "keys are lowercase: {dump}"
    );
    assert!(dump.contains("user.tag.project=\"apollo\""), "{dump}");
    assert!(
        !dump.contains("user.zmount.provider") && !dump.contains("user.zmount.url"),
        "read-only facts are not listed (copies would carry them): {dump}"
    );
    let provider = run(
        "getfattr",
        &["-n", "user.zmount.provider", "--only-values", f],
    );
    assert_eq!(provider, ctx.provider.name, "answered by name");
    assert!(
        dump.contains("user.zmount.content_type=\"text/x-note\""),
        "{dump}"
    );
    let info = ctx.storage.get_info("doc.txt").await.unwrap();
    assert_eq!(
        info.metadata.get("owner").map(String::as_str),
        Some("alice"),
        "on the provider"
    );
    assert_eq!(info.tags.get("project").map(String::as_str), Some("apollo"));
    assert_eq!(info.content_type, "text/x-note");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"hello",
        "the bytes are untouched"
    );
    if matches!(case, Case::S3 | Case::Wasabi) {
        let bucket = server(if case == Case::S3 {
            "ZMOUNT_TEST_S3_BUCKET"
        } else {
            "ZMOUNT_TEST_WASABI_BUCKET"
        });
        let tagging = s3_tagging(&bucket, ctx.provider.key_for("doc.txt").as_ref());
        assert!(
            tagging.contains("<Key>project</Key>") && tagging.contains("<Value>apollo</Value>"),
            "{tagging}"
        );
    }

    // Appending keeps what the object carries.
    let mut append = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut append, b", world").unwrap();
    drop(append);
    assert!(getfattr(&file).contains("user.meta.owner=\"alice\""));

    run("setfattr", &["-x", "user.meta.owner", f]);
    assert!(!getfattr(&file).contains("user.meta.owner"));
    assert!(!ctx
        .storage
        .get_info("doc.txt")
        .await
        .unwrap()
        .metadata
        .contains_key("owner"));
    let err = setfattr_fails(&["-n", "user.zmount.etag", "-v", "x", f]);
    assert!(
        err.contains("Operation not permitted"),
        "read-only facts: {err}"
    );
    let err = setfattr_fails(&["-n", "user.meta.bad-key", "-v", "x", f]);
    assert!(err.contains("Invalid argument"), "{err}");
    let err = setfattr_fails(&["-n", "trusted.other", "-v", "x", f]);
    assert!(!err.is_empty());
}

async fn new_files_get_the_route_defaults(case: Case) {
    let (ctx, mnt) = mount_for(case, "xattrdefaults");
    drop(mnt);
    // Same provider and prefix, with defaults on the default route.
    let defaults = RouteBuilder::to(&ctx.provider.name)
        .set("metadata", table([("team", "ops".into())]))
        .set("tags", table([("tier", "hot".into())]));
    let config = config_for(&ctx).default_route(defaults);
    let mnt = common::mount::Mount::start(ctx.dir.path(), &config);
    std::fs::write(mnt.path("new.txt"), b"x").unwrap();
    let info = ctx.storage.get_info("new.txt").await.unwrap();
    assert_eq!(info.metadata.get("team").map(String::as_str), Some("ops"));
    assert_eq!(info.tags.get("tier").map(String::as_str), Some("hot"));
}

/// GCS has no object tags (every other provider stores them, see the round-trip test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_refused_on_gcs_which_has_none() {
    let (ctx, mnt) = mount_for(Case::Gcs, "xattrgcs");
    ctx.seed("seeded.txt", b"seeded").await;
    let f = mnt.path("seeded.txt");
    let err = setfattr_fails(&["-n", "user.tag.k", "-v", "v", f.to_str().unwrap()]);
    assert!(err.contains("Operation not supported"), "{err}");
    let provider = run(
        "getfattr",
        &[
            "-n",
            "user.zmount.provider",
            "--only-values",
            f.to_str().unwrap(),
        ],
    );
    assert_eq!(provider, "gcs");
    assert!(
        mnt.log().contains("has no object tags"),
        "the refusal is logged"
    );
}

for_each_provider!(
    ;
    writes:
    metadata_and_tags_round_trip_as_xattrs,
    new_files_get_the_route_defaults,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_metadata_zmount_cannot_send_back_can_still_be_rewritten() {
    let (ctx, mnt) = mount_for(Case::S3, "foreign");
    let mut attributes = object_store::Attributes::new();
    attributes.insert(
        object_store::Attribute::Metadata("original-filename".into()),
        "a.txt".into(),
    );
    attributes.insert(
        object_store::Attribute::Metadata("owner".into()),
        "ann".into(),
    );
    let opts = object_store::PutOptions {
        attributes,
        ..Default::default()
    };
    let key = ctx.provider.key_for("foreign.txt");
    ctx.provider
        .object_store()
        .put_opts(
            &key,
            bytes::Bytes::from_static(b"from another tool").into(),
            opts,
        )
        .await
        .unwrap();
    let mut append = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.path("foreign.txt"))
        .unwrap();
    std::io::Write::write_all(&mut append, b", edited").unwrap();
    drop(append); // close: the upload must succeed
    assert_eq!(
        std::fs::read(mnt.path("foreign.txt")).unwrap(),
        b"from another tool, edited"
    );
    let info = ctx.storage.get_info("foreign.txt").await.unwrap();
    assert_eq!(
        info.metadata.get("owner").map(String::as_str),
        Some("ann"),
        "portable metadata kept"
    );
    assert!(
        mnt.log().contains("original-filename"),
        "the dropped key is logged"
    );
}

/// `ls -l` asks every file for `security.selinux` and `system.posix_acl_access`; answering ENOTSUP (not ENODATA)
/// makes it stop asking for the rest of the filesystem, so a long listing costs no request per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_zmount_does_not_serve_are_unsupported_not_missing() {
    let (_ctx, mnt) = mount_for(Case::Local, "foreignns");
    std::fs::write(mnt.path("f.txt"), b"x").unwrap();
    let probe = r#"
import errno, os, sys
for name in ["security.selinux", "system.posix_acl_access", "trusted.x", "user.other"]:
    try:
        os.getxattr(sys.argv[1], name)
        print(name, "present")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
try:
    os.getxattr(sys.argv[1], "user.meta.absent")
except OSError as e:
    print("user.meta.absent", errno.errorcode[e.errno])
"#;
    let out = run(
        "python3",
        &["-c", probe, mnt.path("f.txt").to_str().unwrap()],
    );
    assert_eq!(
        out,
        "security.selinux ENOTSUP\nsystem.posix_acl_access ENOTSUP\ntrusted.x ENOTSUP\nuser.other ENODATA\nuser.meta.absent ENODATA\n"
    );
}
