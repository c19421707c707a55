//! Tests of the local provider: confinement (links are objects, never followed), round trips with attributes.

use super::listing::is_temporary;
use super::*;
use object_store::{Attribute, ObjectStoreExt};

fn store(dir: &std::path::Path) -> Arc<LocalStore> {
    build(&LocalConfig {
        path: dir.to_path_buf(),
        base_url: None,
        prefix: String::new(),
        read_only: false,
    })
    .unwrap()
}

#[test]
fn temporary_names() {
    assert!(is_temporary("a.txt#zm0123abcd"));
    assert!(is_temporary("a.txt#12"));
    assert!(!is_temporary("a.txt#zm0123"));
    assert!(!is_temporary("a#b"));
    assert!(!is_temporary("a#"));
}

/// The links of the confinement case: none is followed; each is an object whose content is its target.
#[tokio::test]
async fn links_are_objects_never_followed() {
    let scratch = tempfile::tempdir().unwrap();
    let (root, outside) = (scratch.path().join("root"), scratch.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("host_link")).unwrap();
    let store = store(&root);
    let got = store.get(&Path::from("host_link")).await.unwrap();
    assert_eq!(
        got.attributes
            .get(&Attribute::Metadata("mode".into()))
            .unwrap()
            .as_ref(),
        (libc::S_IFLNK | 0o777).to_string()
    );
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"/etc/hostname");
    for key in ["out/secret.txt", "out/new.txt"] {
        assert!(
            matches!(
                store.get(&Path::from(key)).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "{key} read through the link"
        );
    }
    assert!(store.delete(&Path::from("out/secret.txt")).await.is_err());
    assert!(store
        .put(&Path::from("out/new.txt"), "x".into())
        .await
        .is_err());
    assert!(store
        .rename(&Path::from("out/secret.txt"), &Path::from("stolen"))
        .await
        .is_err());
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"secret"
    );
    assert!(!outside.join("new.txt").exists());
    let listed: Vec<_> = store
        .list(None)
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    let mut listed = listed;
    listed.sort();
    assert_eq!(
        listed,
        ["host_link", "out"],
        "links are listed as objects, not walked"
    );
    // removing the link removes the link only
    store.delete(&Path::from("out")).await.unwrap();
    assert!(outside.join("secret.txt").exists());
}

#[tokio::test]
async fn objects_round_trip_with_attributes() {
    let scratch = tempfile::tempdir().unwrap();
    let store = store(scratch.path());
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, "text/plain".into());
    attributes.insert(Attribute::Metadata("k".into()), "v".into());
    let opts = PutOptions {
        attributes: attributes.clone(),
        ..Default::default()
    };
    store
        .put_opts(&Path::from("a/b/c.txt"), "hello".into(), opts)
        .await
        .unwrap();
    let got = store.get(&Path::from("a/b/c.txt")).await.unwrap();
    assert_eq!(got.attributes, attributes);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
    let range = store
        .get_range(&Path::from("a/b/c.txt"), 1..3)
        .await
        .unwrap();
    assert_eq!(range.as_ref(), b"el");
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    assert!(matches!(
        store
            .put_opts(&Path::from("a/b/c.txt"), "x".into(), create)
            .await,
        Err(object_store::Error::AlreadyExists { .. })
    ));
    store
        .copy(&Path::from("a/b/c.txt"), &Path::from("d.txt"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&Path::from("d.txt")).await.unwrap().attributes,
        attributes
    );
    store
        .rename(&Path::from("d.txt"), &Path::from("e/f.txt"))
        .await
        .unwrap();
    store.delete(&Path::from("a/b/c.txt")).await.unwrap();
    assert!(
        !scratch.path().join("a").exists(),
        "emptied folders go with their last entry"
    );
    let mut upload = store.put_multipart(&Path::from("m/big")).await.unwrap();
    upload.put_part(vec![1u8; 10].into()).await.unwrap();
    upload.put_part(vec![2u8; 5].into()).await.unwrap();
    upload.complete().await.unwrap();
    let got = store
        .get(&Path::from("m/big"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 15);
    assert_eq!(&got[9..11], &[1, 2]);
    let listed = store.list_with_delimiter(None).await.unwrap();
    let dirs: Vec<_> = listed
        .common_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(listed.objects.is_empty());
    store
        .put(&Path::parse("ünï/日本 語.txt").unwrap(), "u".into())
        .await
        .unwrap();
    let listed: Vec<_> = store
        .list(Some(&Path::parse("ünï").unwrap()))
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    assert_eq!(
        listed,
        ["ünï/日本 語.txt"],
        "names are listed byte for byte"
    );
}
