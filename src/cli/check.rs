//! `zmount check CONFIG`: the storage testing command. For every provider, concurrently: list (reachability),
//! then write, read back and delete a small probe object (skipped for `read_only` providers), with the latency of
//! each step. One line per provider; the exit code is non-zero when any provider fails, and the failing line names
//! the provider and its endpoint. Requests are made with a single attempt so a dead endpoint is reported in
//! seconds instead of after a full retry schedule.

use crate::providers::{Attempts, ClientTuning, Provider};
use crate::storage::{Storage, StorageError};
use bytes::Bytes;
use object_store::PutPayload;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name start of the probe object a check writes at the top of the provider's prefix (never in a folder of its
/// own, which a local provider would keep, and a mount would show, after the probe is deleted).
const PROBE_NAME: &str = ".zmount-check";
/// Probe object size: big enough to catch a truncating server, small enough to cost nothing.
const PROBE_SIZE: usize = 4096;

pub async fn run(config_path: &Path, only: &[String]) -> ExitCode {
    let Some(config) = super::load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = config.check_mountable() {
        // Fine for `migrate`/`sync`/`url`; a mount of it would be refused.
        println!("WARN  routes  {}: {}", e.key, e.message);
    }
    if let Some(unknown) = only.iter().find(|n| !config.providers.contains_key(*n)) {
        eprintln!(
            "zmount: no provider named `{unknown}` in {}",
            config_path.display()
        );
        return ExitCode::FAILURE;
    }
    let storage = match Storage::with_tuning(&config, &ClientTuning::probe(&config.settings)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zmount: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cache_ok = check_cache_dir(&config.settings.cache_dir);
    let selected: Vec<_> = storage
        .providers()
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .collect();
    let width = selected.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let results = futures::future::join_all(selected.iter().map(|p| check_provider(p))).await;
    let mut failed = 0;
    for (provider, result) in selected.iter().zip(results) {
        match result {
            Ok(steps) => println!(
                "OK    {:width$}  {:6}  {}  {}",
                provider.name, provider.kind, steps, provider.location
            ),
            Err((step, e)) => {
                failed += 1;
                println!(
                    "FAIL  {:width$}  {:6}  {step} failed at {}: {}",
                    provider.name,
                    provider.kind,
                    provider.location,
                    e.cause()
                );
            }
        }
    }
    if !cache_ok {
        eprintln!("zmount: the cache dir cannot be used");
        return ExitCode::FAILURE;
    }
    if failed > 0 {
        eprintln!(
            "zmount: {failed} of {} providers failed the check",
            selected.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `cache_dir` is a folder zmount can write (made if missing, as the mount would); a warning when other users can
/// read it (the mount makes it private at start). Prints one line; false when the mount could not use it.
fn check_cache_dir(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let shown = dir.display();
    let usable = std::fs::create_dir_all(dir).and_then(|()| {
        let probe = dir.join(format!(".zmount-check-{}", std::process::id()));
        std::fs::write(&probe, b"probe")?;
        std::fs::remove_file(&probe)
    });
    if let Err(e) = usable {
        println!("FAIL  cache_dir  {shown} is not a writable folder: {e}");
        return false;
    }
    let mode = std::fs::metadata(dir).map_or(0, |m| m.permissions().mode() & 0o777);
    if mode & 0o077 != 0 {
        println!(
            "WARN  cache_dir  {shown} is open to other users (mode {mode:03o}); the mount makes it and its files private (0700/0600) at start"
        );
    } else {
        println!("OK    cache_dir  {shown}");
    }
    true
}

/// Lists the provider's top level (under its prefix): the first step of `check`, and what a mount asks of every
/// provider before it starts. A missing bucket is an error here, not an empty listing.
pub(super) async fn probe_list(provider: &Arc<Provider>) -> Result<(), StorageError> {
    match provider.client(Attempts::Sole).list_level("").await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() && provider.kind != "local" => Err(StorageError::Provider {
            provider: provider.name.clone(),
            location: provider.location.clone(),
            path: "/".into(),
            message: "the bucket or container does not exist".into(),
        }),
        Err(e) => Err(e),
    }
}

/// Runs the steps against one provider; Ok is the latency summary, Err names the failing step.
async fn check_provider(provider: &Arc<Provider>) -> Result<String, (&'static str, StorageError)> {
    let client = provider.client(Attempts::Sole);
    let mut summary = Vec::new();
    let started = Instant::now();
    probe_list(provider).await.map_err(|e| ("list", e))?;
    summary.push(format!("list {}", millis(started.elapsed())));
    if provider.read_only {
        summary.push("write skipped (read_only)".to_string());
        return Ok(summary.join(" · "));
    }
    let probe_path = format!(
        "{PROBE_NAME}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let probe = probe_path.as_str();
    let fail = |step: &'static str| move |e| (step, e);
    let payload = Bytes::from((0..PROBE_SIZE).map(|i| (i % 251) as u8).collect::<Vec<_>>());

    let started = Instant::now();
    client
        .put(probe, PutPayload::from(payload.clone()), Default::default())
        .await
        .map_err(fail("write"))?;
    summary.push(format!("write {}", millis(started.elapsed())));

    let started = Instant::now();
    let read = client.get_all(probe).await;
    let read_time = started.elapsed();
    let started = Instant::now();
    let deleted = client.delete(probe).await;
    let delete_time = started.elapsed();
    let read = read.map_err(fail("read"))?;
    if read != payload {
        return Err((
            "read",
            StorageError::Provider {
                provider: provider.name.clone(),
                location: provider.location.clone(),
                path: probe_path.clone(),
                message: format!(
                    "read back {} bytes that differ from the {} written",
                    read.len(),
                    payload.len()
                ),
            },
        ));
    }
    summary.push(format!("read {}", millis(read_time)));
    deleted.map_err(fail("delete"))?;
    summary.push(format!("delete {}", millis(delete_time)));
    Ok(summary.join(" · "))
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
