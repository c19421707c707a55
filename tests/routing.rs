//! One tree, several providers: each path lands on the provider its rule names (checked by reading every provider
//! directly), and listings merge what the providers hold, each entry once.

mod common;

use bytes::Bytes;
use common::{read_direct, scratch, set_secret_env, unique, Case, ObjectStoreExt, TestConfig};
use zmount::config::{ConfigBuilder, RouteBuilder};
use zmount::{Storage, UploadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_land_on_the_provider_their_rule_names() {
    set_secret_env();
    let dir = scratch();
    let prefix = unique("mixed");
    let config = ConfigBuilder::default()
        .fast_retries()
        .case(Case::Local, "local", &prefix, dir.path())
        .case(Case::S3, "s3", &prefix, dir.path())
        .case(Case::Azure, "azure", &prefix, dir.path())
        .route(RouteBuilder::prefix("docs", "azure"))
        .route(RouteBuilder::pattern("*.jpg|*.png", "s3"))
        .default_route(RouteBuilder::to("local"))
        .build(&dir.path().join("mount.toml"))
        .unwrap();
    let storage = Storage::new(&config).unwrap();
    let expected = [
        ("docs/a.txt", "azure"),
        ("docs/b.jpg", "azure"), // the prefix rule comes first
        ("pics/x.png", "s3"),
        ("top.jpg", "s3"),
        ("notes/n.txt", "local"),
        ("docs2/c.txt", "local"), // `docs` matches whole components only
    ];
    for (path, _) in expected {
        storage
            .upload(
                path,
                Bytes::from(path.as_bytes().to_vec()),
                UploadOptions::default(),
            )
            .await
            .unwrap();
    }
    for (path, owner) in expected {
        for name in ["local", "s3", "azure"] {
            let held = read_direct(storage.provider(name).unwrap(), path).await;
            if name == owner {
                assert_eq!(
                    held.as_deref(),
                    Some(path.as_bytes()),
                    "{path} must be on {owner}"
                );
            } else {
                assert_eq!(held, None, "{path} must not be on {name}");
            }
        }
    }
    let all: Vec<(String, String)> = storage
        .list("", None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.path, i.provider))
        .collect();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(p, o)| (p.to_string(), o.to_string()))
        .collect();
    want.sort();
    assert_eq!(
        all, want,
        "the root lists every object once, from its own provider"
    );
    let docs: Vec<String> = storage
        .list("docs", None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(docs, ["docs/a.txt", "docs/b.jpg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_their_route_are_not_listed_twice() {
    set_secret_env();
    let dir = scratch();
    let prefix = unique("shadow");
    let config = ConfigBuilder::default()
        .fast_retries()
        .case(Case::Local, "local", &prefix, dir.path())
        .case(Case::S3, "s3", &prefix, dir.path())
        .route(RouteBuilder::pattern("*.log", "local"))
        .default_route(RouteBuilder::to("s3"))
        .build(&dir.path().join("mount.toml"))
        .unwrap();
    let storage = Storage::new(&config).unwrap();
    // Another tool put an object on the provider the route does not name: the routed provider's copy is the one
    // the tree shows, and the stray copy does not appear as a duplicate.
    let s3 = storage.provider("s3").unwrap();
    s3.object_store()
        .put(&s3.key_for("app.log"), Bytes::from_static(b"stray").into())
        .await
        .unwrap();
    storage
        .upload(
            "app.log",
            Bytes::from_static(b"routed"),
            UploadOptions::default(),
        )
        .await
        .unwrap();
    let listed = storage.list("", None).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].provider.as_str(), listed[0].size), ("local", 6));
    assert_eq!(storage.download("app.log").await.unwrap(), "routed");
}
