//! Bad mount.toml files and the exact message each must produce: the file, the key, and what was expected.

use std::path::Path;
use zmount::config::Config;
use zmount::Storage;

const GOOD_PROVIDERS: &str = r#"
[providers.s3]
kind = "s3"
bucket = "main-storage"
access_key = "AKIDEXAMPLE"
secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

[providers.local]
kind = "local"
path = "/srv/zmount/temp"
"#;

/// Parses and builds (routing included), returning the error text.
fn error_of(text: &str) -> String {
    let file = Path::new("/etc/zmount/mount.toml");
    match Config::parse(text, file) {
        Err(e) => e.to_string(),
        Ok(config) => match Storage::new(&config) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("config was accepted:\n{text}"),
        },
    }
}

#[test]
fn bad_configs_get_exact_messages() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            format!("{GOOD_PROVIDERS}\n[providers.gcs]\nkind = \"gcs\"\nbukket = \"media\"\n"),
            "/etc/zmount/mount.toml:14:1: providers.gcs.bukket: unknown key; expected one of: bucket, credentials, project, prefix, read_only",
        ),
        (
            "unknown top-level key",
            format!("routez = []\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml:1:1: routez: unknown key; expected one of: settings, providers, routes, default",
        ),
        (
            "unknown provider named in a route",
            format!("{GOOD_PROVIDERS}\n[[routes]]\nprefix = \"backups\"\nprovider = \"wasabi\"\n"),
            "/etc/zmount/mount.toml: routes[0].provider: no provider named `wasabi`; defined providers: local, s3",
        ),
        (
            "unknown fallback provider",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nfallback = [\"local\", \"azure\"]\n"),
            "/etc/zmount/mount.toml: default.fallback[1]: no provider named `azure`; defined providers: local, s3",
        ),
        (
            "failover writes without a fallback",
            format!("{GOOD_PROVIDERS}\n[[routes]]\nprefix = \"a\"\nprovider = \"s3\"\nwrite = \"failover\"\n"),
            "/etc/zmount/mount.toml: routes[0].write: `failover` needs at least one provider in `fallback`",
        ),
        (
            "a provider twice in one route",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nfallback = [\"local\", \"s3\"]\n"),
            "/etc/zmount/mount.toml: default.fallback[1]: `s3` is already named earlier in this route; each provider may appear once",
        ),
        (
            "failure threshold of zero",
            format!("[settings.failover]\nfailure_threshold = 0\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.failover.failure_threshold: must be from 1 to 1000000; got 0",
        ),
        (
            "non-positive timeout",
            format!("[settings.timeouts]\nfirst_byte = 0\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.timeouts.first_byte: must be a number of seconds, more than 0 and at most 3600; got 0",
        ),
        (
            "unknown write policy",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nwrite = \"fallback\"\n"),
            "/etc/zmount/mount.toml:14:9: default.write: unknown value `fallback`; expected `primary` or `failover`",
        ),
        (
            "route metadata with a key providers cannot carry",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nmetadata = {{ \"original-name\" = \"x\" }}\n"),
            "/etc/zmount/mount.toml: default.metadata.original-name: metadata key \"original-name\" is not portable across providers: use ASCII letters, digits and `_`, starting with a letter",
        ),
        (
            "missing environment variable",
            "[providers.s3]\nkind = \"s3\"\nbucket = \"b\"\nsecret_key = \"${ZMOUNT_TEST_UNSET_SECRET}\"\n".to_string(),
            "/etc/zmount/mount.toml:4:1: providers.s3.secret_key: environment variable `ZMOUNT_TEST_UNSET_SECRET` is not set",
        ),
        (
            "invalid glob",
            format!("{GOOD_PROVIDERS}\n[[routes]]\npattern = \"*.jpg|*.{{png\"\nprovider = \"s3\"\n"),
            "/etc/zmount/mount.toml: routes[0].pattern: invalid glob \"*.{png\": unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)",
        ),
        (
            "empty glob alternative",
            format!("{GOOD_PROVIDERS}\n[[routes]]\npattern = \"*.jpg||*.png\"\nprovider = \"s3\"\n"),
            "/etc/zmount/mount.toml: routes[0].pattern: empty alternative in pattern \"*.jpg||*.png\"; expected globs separated by `|`",
        ),
        (
            "duplicate provider name",
            format!("{GOOD_PROVIDERS}\n[providers.s3]\nkind = \"local\"\npath = \"x\"\n"),
            "/etc/zmount/mount.toml:12:1: TOML syntax error: invalid table header\nduplicate key `s3` in table `providers`",
        ),
        (
            "missing bucket",
            "[providers.s3]\nkind = \"s3\"\nregion = \"eu-west-1\"\n".to_string(),
            "/etc/zmount/mount.toml:1:1: providers.s3.bucket: missing required key",
        ),
        (
            "missing kind",
            "[providers.s3]\nbucket = \"b\"\n".to_string(),
            "/etc/zmount/mount.toml:1:1: providers.s3.kind: missing required key; expected one of: s3, wasabi, gcs, azure, local",
        ),
        (
            "unknown kind",
            "[providers.x]\nkind = \"dropbox\"\n".to_string(),
            "/etc/zmount/mount.toml:2:1: providers.x.kind: unknown provider kind `dropbox`; expected one of: s3, wasabi, gcs, azure, local",
        ),
        (
            "TOML syntax error",
            "[providers.s3]\nkind = \"s3\"\nbucket = main\n".to_string(),
            "/etc/zmount/mount.toml:3:10: TOML syntax error: invalid string\nexpected `\"`, `'`",
        ),
        (
            "wrong type",
            format!("{GOOD_PROVIDERS}\n[settings.retry]\nattempts = \"three\"\n"),
            "/etc/zmount/mount.toml:13:12: settings.retry.attempts: wrong type: string \"three\", expected u32",
        ),
        (
            "bad size",
            format!("{GOOD_PROVIDERS}\n[settings]\ncache_size = \"10 parsecs\"\n"),
            "/etc/zmount/mount.toml:13:14: settings.cache_size: unknown size unit `parsecs` in `10 parsecs`; expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB",
        ),
        (
            "route with prefix and pattern",
            format!("{GOOD_PROVIDERS}\n[[routes]]\nprefix = \"a\"\npattern = \"*.b\"\nprovider = \"s3\"\n"),
            "/etc/zmount/mount.toml: routes[0]: give either `prefix` or `pattern`, not both",
        ),
        (
            "rule after a catch-all",
            format!("{GOOD_PROVIDERS}\n[[routes]]\npattern = \"*\"\nprovider = \"s3\"\n[[routes]]\nprefix = \"tmp\"\nprovider = \"local\"\n"),
            "/etc/zmount/mount.toml: routes[1]: can never match: routes[0] (pattern = \"*\") matches every path; move the catch-all last or use [default]",
        ),
        (
            "no providers",
            "[default]\nprovider = \"s3\"\n".to_string(),
            "/etc/zmount/mount.toml: providers: no providers defined; add at least one [providers.NAME] table",
        ),
        (
            "azure without credentials",
            "[providers.az]\nkind = \"azure\"\ncontainer = \"docs\"\n".to_string(),
            "/etc/zmount/mount.toml:1:1: providers.az.account: missing: Azure needs `account` (the storage account name) and `key`, or `connection_string`",
        ),
        (
            "variant size without a height",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\n[default.variants]\nthumb = \"150\"\n"),
            "/etc/zmount/mount.toml:15:9: default.variants.thumb: size \"150\": expected WIDTHxHEIGHT, like \"150x150\"",
        ),
        (
            "quality for lossless output",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nvariants.m = {{ resize = \"4x3\", format = \"webp\", quality = 80 }}\n"),
            "/etc/zmount/mount.toml: default.variants.m: `quality` applies to JPEG output only (PNG and WebP are written lossless)",
        ),
        (
            "unknown transform key",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\ntransforms = {{ size = \"10x10\" }}\n"),
            "/etc/zmount/mount.toml:14:16: default.transforms.size: unknown key; expected one of: resize, fit, format, quality",
        ),
        (
            "unknown output format",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\ntransforms = {{ format = \"gif\" }}\n"),
            "/etc/zmount/mount.toml:14:25: default.transforms.format: unknown value `gif`; expected one of `jpeg`, `jpg`, `png`, `webp`",
        ),
        (
            "variant name unfit for file names",
            format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\nvariants = {{ \"Big One\" = \"10x10\" }}\n"),
            "/etc/zmount/mount.toml: default.variants.Big One: variant name \"Big One\": use 1-32 lowercase letters, digits, `_` or `-` (it becomes part of file names)",
        ),
        // Numbers out of range, empty strings, values of the wrong kind: refused at load, naming the key.
        (
            "a TTL that is not a number",
            format!("[settings.mount]\nattr_ttl = nan\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.attr_ttl: must be a number of seconds, at least 0 and at most 86400; got NaN",
        ),
        (
            "an infinite TTL",
            format!("[settings.mount]\nnegative_ttl = inf\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.negative_ttl: must be a number of seconds, at least 0 and at most 86400; got inf",
        ),
        (
            "a negative TTL",
            format!("[settings.mount]\nattr_ttl = -1\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.attr_ttl: must be a number of seconds, at least 0 and at most 86400; got -1",
        ),
        (
            "a negative heal interval",
            format!("[settings.failover]\nheal_interval = -5\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.failover.heal_interval: must be a number of seconds, more than 0 and at most 86400; got -5",
        ),
        (
            "a negative cooldown",
            format!("[settings.failover]\ncooldown = -1\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.failover.cooldown: must be a number of seconds, more than 0 and at most 86400; got -1",
        ),
        (
            "a secret typed as a number is not echoed",
            "[providers.s3]\nkind = \"s3\"\nbucket = \"b\"\nsecret_key = 987654321\n".to_string(),
            "/etc/zmount/mount.toml:4:1: providers.s3.secret_key: expected a string in quotes (the value given is not shown: it is a secret)",
        ),
        (
            "an empty bucket",
            "[providers.s3]\nkind = \"s3\"\nbucket = \"\"\n".to_string(),
            "/etc/zmount/mount.toml:3:1: providers.s3.bucket: must not be empty",
        ),
        (
            "azure with an account and no key",
            "[providers.az]\nkind = \"azure\"\ncontainer = \"docs\"\naccount = \"acct\"\n".to_string(),
            "/etc/zmount/mount.toml:1:1: providers.az.key: missing: Azure needs `key` (the storage account key), or `connection_string`, or `managed_identity = true` to take a token from the machine's Azure identity",
        ),
        (
            "an empty container",
            "[providers.az]\nkind = \"azure\"\ncontainer = \" \"\naccount = \"a\"\nkey = \"k\"\n".to_string(),
            "/etc/zmount/mount.toml:3:1: providers.az.container: must not be empty",
        ),
        (
            "no disk cache",
            format!("[settings]\ncache_size = 0\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.cache_size: must be from 4.0 MiB to 1024.0 TiB; got 0 B",
        ),
        (
            "no memory cache",
            format!("[settings.mount]\nmemory_cache_size = 0\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.memory_cache_size: must be from 2.0 MiB to 64.0 GiB; got 0 B",
        ),
        (
            "read-ahead larger than the memory cache",
            format!("[settings.mount]\nread_ahead = \"100 TiB\"\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.read_ahead: must be from 1.0 MiB to 32.0 MiB; got 100.0 TiB",
        ),
        (
            "no thread to take requests",
            format!("[settings.mount]\nthreads = 0\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.threads: must be from 1 to 64; got 0",
        ),
        (
            "a listing page larger than providers send",
            format!("[settings.mount]\nlist_page = 5000\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.list_page: must be from 1 to 1000; got 5000",
        ),
        (
            "a mode that is not permission bits",
            format!("[settings.mount]\nfile_mode = 99999\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.mount.file_mode: must be permission bits, at most 0o7777 (4095); got 99999 (write it as 0o644)",
        ),
        (
            "an endpoint without a scheme",
            "[providers.s3]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"127.0.0.1:18333\"\n".to_string(),
            "/etc/zmount/mount.toml:4:1: providers.s3.endpoint: `127.0.0.1:18333` has no http:// or https:// scheme; expected a URL such as `https://s3.example.com` or `http://127.0.0.1:9000`",
        ),
        (
            "an endpoint with a host name and port but no scheme",
            "[providers.s3]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"minio:9000\"\n".to_string(),
            "/etc/zmount/mount.toml:4:1: providers.s3.endpoint: `minio:9000` has no http:// or https:// scheme; expected a URL such as `https://s3.example.com` or `http://127.0.0.1:9000`",
        ),
        (
            "a cache dir that is a file",
            format!("[settings]\ncache_dir = \"/etc/passwd\"\n{GOOD_PROVIDERS}"),
            "/etc/zmount/mount.toml: settings.cache_dir: /etc/passwd is a file; it must be a folder (it is created if missing)",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        let got = error_of(text);
        if got != *expected {
            failures.push(format!(
                "{name}:\n  expected: {expected}\n  got:      {got}"
            ));
        }
        assert!(
            !got.contains("wJalrXUtnFEMI") && !got.contains("987654321"),
            "{name}: secret leaked: {got}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn missing_config_file_names_it() {
    let err = Config::load(Path::new("/nonexistent/zmount.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/zmount.toml: cannot read config file:"),
        "{err}"
    );
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = Config::parse(GOOD_PROVIDERS, Path::new("m.toml")).unwrap();
    let debug = format!("{config:?}");
    assert!(
        debug.contains("main-storage"),
        "the debug output is the real thing: {debug}"
    );
    assert!(
        !debug.contains("wJalrXUtnFEMI") && !debug.contains("AKIDEXAMPLE"),
        "{debug}"
    );
    let storage = Storage::new(&config).unwrap();
    let debug = format!("{storage:?}");
    assert!(!debug.contains("wJalrXUtnFEMI"), "{debug}");
}

/// A config of providers only serves `migrate`/`sync`/`url`; a mount of it would refuse every path, so `mount` and
/// `check` refuse it, naming what to add.
#[test]
fn a_mount_needs_a_route_or_a_default() {
    let config = Config::parse(GOOD_PROVIDERS, Path::new("/etc/zmount/mount.toml")).unwrap();
    assert_eq!(
        config.check_mountable().unwrap_err().to_string(),
        "/etc/zmount/mount.toml: default: no [[routes]] and no [default]: every path of the mount would be refused; add `[default]` with `provider = \"NAME\"`"
    );
    let routed = format!("{GOOD_PROVIDERS}\n[default]\nprovider = \"s3\"\n");
    let config = Config::parse(&routed, Path::new("/etc/zmount/mount.toml")).unwrap();
    assert!(config.check_mountable().is_ok());
}

/// A path no rule matches, in a config without `[default]`: the error names the config file given, whatever its name.
#[test]
fn an_unrouted_path_names_the_config_file() {
    let text = format!("{GOOD_PROVIDERS}\n[[routes]]\nprefix = \"docs\"\nprovider = \"s3\"\n");
    let config = Config::parse(&text, Path::new("/srv/zmount/office.toml")).unwrap();
    let storage = Storage::new(&config).unwrap();
    let err = storage.resolve("photos/cat.jpg").unwrap_err().to_string();
    assert_eq!(
        err,
        "photos/cat.jpg: no route matches this path and /srv/zmount/office.toml has no [default] route"
    );
}
