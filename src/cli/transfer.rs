//! `zmount migrate` and `zmount sync`: plan, then run verified copies ([`crate::transfer`]) a few at a time with
//! progress, then print a summary; the exit code is non-zero when anything failed, and each failure is named.
//!
//! migrate: copies every matching object from A to B (skipping those already there, so a rerun resumes), and with
//! `--delete-source` deletes each source object once its copy is verified (an object skipped as already there is
//! compared byte for byte first).
//! sync: makes B match A: copies new and changed objects; `--delete` removes objects on B that A does not have.

use super::progress::{human, Progress};
use crate::providers::{Attempts, Provider};
use crate::storage::{Storage, StorageError};
use crate::transfer::{self, Item};
use futures::StreamExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Copies in flight at once: each holds up to a few upload parts in memory (see storage::UPLOAD_CONCURRENCY).
const COPIES_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub pattern: Option<String>,
    pub dry_run: bool,
    /// migrate: delete each source object after its verified copy.
    pub delete_source: bool,
    /// sync: delete target objects the source does not have.
    pub delete_extra: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Migrate,
    Sync,
}

enum Step {
    Copy(Item),
    /// Already on the target; for a migrate with --delete-source, still to be compared and deleted.
    Skip(Item),
    DeleteExtra(String),
}

#[derive(Default)]
struct Tally {
    copied: u64,
    bytes: u64,
    skipped: u64,
    deleted: u64,
    failed: Vec<String>,
}

pub async fn run(config: &Path, kind: Kind, from: &str, to: &str, options: &Options) -> ExitCode {
    match prepare(config, from, to, options).await {
        Ok((source, target, plan)) => execute(kind, &source, &target, plan, options).await,
        Err(e) => {
            eprintln!("zmount: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn prepare(
    config: &Path,
    from: &str,
    to: &str,
    options: &Options,
) -> Result<(Arc<Provider>, Arc<Provider>, Vec<Step>), String> {
    let config = super::load_config(config).ok_or("cannot load the config")?;
    let storage = Storage::new(&config).map_err(|e| e.to_string())?;
    let provider = |name: &str| {
        storage.provider(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = storage.providers().map(|p| p.name.as_str()).collect();
            format!(
                "no provider named `{name}`; defined providers: {}",
                known.join(", ")
            )
        })
    };
    let (source, target) = (provider(from)?, provider(to)?);
    if source.name == target.name || transfer::overlap(&source, &target) {
        return Err(format!(
            "`{}` and `{}` are the same storage or one contains the other; copying between them could delete what it copies",
            source.name, target.name
        ));
    }
    if target.read_only {
        return Err(format!("provider `{}` is read_only", target.name));
    }
    let glob = options
        .pattern
        .as_deref()
        .map(transfer::pattern)
        .transpose()?;
    let (have, there) = futures::try_join!(
        transfer::inventory(&source, glob.as_ref()),
        transfer::inventory(&target, glob.as_ref())
    )
    .map_err(|e| e.to_string())?;
    let mut plan: Vec<Step> = have
        .values()
        .map(
            |item| match transfer::already_there(item, there.get(&item.path)) {
                true => Step::Skip(item.clone()),
                false => Step::Copy(item.clone()),
            },
        )
        .collect();
    if options.delete_extra {
        plan.extend(
            there
                .keys()
                .filter(|p| !have.contains_key(*p))
                .map(|p| Step::DeleteExtra(p.clone())),
        );
    }
    Ok((source, target, plan))
}

async fn execute(
    kind: Kind,
    source: &Arc<Provider>,
    target: &Arc<Provider>,
    plan: Vec<Step>,
    options: &Options,
) -> ExitCode {
    let started = Instant::now();
    if options.dry_run {
        let mut tally = Tally::default();
        for step in &plan {
            match step {
                Step::Copy(i) => {
                    println!("would copy {} ({})", i.path, human(i.size));
                    tally.copied += 1;
                    tally.bytes += i.size;
                }
                Step::Skip(i) => {
                    println!("would skip {} (already on {})", i.path, target.name);
                    tally.skipped += 1;
                }
                Step::DeleteExtra(p) => {
                    println!("would delete {p} from {}", target.name);
                    tally.deleted += 1;
                }
            }
        }
        if kind == Kind::Migrate && options.delete_source {
            tally.deleted = tally.copied + tally.skipped; // each source object, once its copy is verified
        }
        summary(kind, source, target, &tally, None);
        return ExitCode::SUCCESS;
    }
    let total: u64 = plan
        .iter()
        .map(|s| match s {
            Step::Copy(i) => i.size,
            _ => 0,
        })
        .sum();
    let verb = if kind == Kind::Migrate {
        "migrated"
    } else {
        "synced"
    };
    let progress = Progress::new(verb, plan.len() as u64, total);
    let outcomes: Vec<(String, Result<Outcome, StorageError>)> = futures::stream::iter(plan)
        .map(|step| run_step(kind, source, target, step, options, &progress))
        .buffer_unordered(COPIES_IN_FLIGHT)
        .collect()
        .await;
    progress.finish();
    let mut tally = Tally::default();
    for (path, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Copied(bytes, deleted)) => {
                tally.copied += 1;
                tally.bytes += bytes;
                tally.deleted += deleted as u64;
            }
            Ok(Outcome::Skipped(deleted)) => {
                tally.skipped += 1;
                tally.deleted += deleted as u64;
            }
            Ok(Outcome::Deleted) => tally.deleted += 1,
            Err(e) => tally.failed.push(format!("{path}: {e}")),
        }
    }
    summary(kind, source, target, &tally, Some(started));
    if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

enum Outcome {
    /// Bytes copied; whether the source was deleted.
    Copied(u64, bool),
    Skipped(bool),
    Deleted,
}

async fn run_step(
    kind: Kind,
    source: &Arc<Provider>,
    target: &Arc<Provider>,
    step: Step,
    options: &Options,
    progress: &Progress,
) -> (String, Result<Outcome, StorageError>) {
    let delete_source = kind == Kind::Migrate && options.delete_source;
    let (path, outcome) = match step {
        Step::Copy(item) => {
            let copied = transfer::copy_verified(source, target, &item.path, &|_| {}).await;
            let outcome = match copied {
                Ok(version) if delete_source => {
                    transfer::delete_if_unchanged(source, &item.path, &version)
                        .await
                        .map(|_| Outcome::Copied(version.size, true))
                }
                Ok(version) => Ok(Outcome::Copied(version.size, false)),
                Err(e) => Err(e),
            };
            (item.path, outcome)
        }
        Step::Skip(item) if delete_source => {
            // Copied by an earlier run that stopped before deleting: compare, then delete.
            let outcome = match transfer::same_bytes(source, target, &item.path).await {
                Ok(true) => {
                    let listed = transfer::Version {
                        size: item.size,
                        etag: item.etag.clone(),
                        last_modified: item.last_modified,
                    };
                    transfer::delete_if_unchanged(source, &item.path, &listed)
                        .await
                        .map(|_| Outcome::Skipped(true))
                }
                Ok(false) => Err(StorageError::Invalid {
                    path: item.path.clone(),
                    what: "copy",
                    reason: format!("`{}` holds different bytes; source kept", target.name),
                }),
                Err(e) => Err(e),
            };
            (item.path, outcome)
        }
        Step::Skip(item) => (item.path, Ok(Outcome::Skipped(false))),
        Step::DeleteExtra(path) => {
            let outcome = delete(target, &path).await.map(|_| Outcome::Deleted);
            (path, outcome)
        }
    };
    let line = match &outcome {
        Ok(Outcome::Copied(bytes, deleted)) => format!(
            "copied {path} ({}){}",
            human(*bytes),
            if *deleted { ", source deleted" } else { "" }
        ),
        Ok(Outcome::Skipped(deleted)) => format!(
            "skipped {path} (already on {}){}",
            target.name,
            if *deleted { ", source deleted" } else { "" }
        ),
        Ok(Outcome::Deleted) => format!("deleted {path} from {}", target.name),
        Err(e) => format!("FAILED {path}: {e}"),
    };
    let bytes = match &outcome {
        Ok(Outcome::Copied(b, _)) => *b,
        _ => 0,
    };
    progress.done(bytes, Some(line));
    (path, outcome)
}

async fn delete(provider: &Arc<Provider>, path: &str) -> Result<(), StorageError> {
    provider.client(Attempts::Sole).delete(path).await
}

/// The closing line, in the same words for a real run and a dry run (`started` None: what a run would do).
fn summary(
    kind: Kind,
    source: &Provider,
    target: &Provider,
    tally: &Tally,
    started: Option<Instant>,
) {
    let what = if kind == Kind::Migrate {
        "migrate"
    } else {
        "sync"
    };
    let (when, end) = match started {
        Some(started) => (
            String::new(),
            format!(", in {:.1} s", started.elapsed().as_secs_f64()),
        ),
        None => (
            " (dry run: what a run would do; nothing changed)".to_string(),
            String::new(),
        ),
    };
    println!(
        "{what} {} -> {}{when}: {} copied ({}), {} skipped (already there), {} deleted, {} failed{end}",
        source.name,
        target.name,
        tally.copied,
        human(tally.bytes),
        tally.skipped,
        tally.deleted,
        tally.failed.len()
    );
    for failure in &tally.failed {
        eprintln!("FAILED {failure}");
    }
}
