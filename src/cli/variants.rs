//! `zmount variants CONFIG PATH|GLOB...`: runs the image work of each matching file now (transforms not yet
//! applied, every variant written again), as the mount does after an upload. A GLOB (`*`, `?`, `[`, `{`) matches
//! whole paths (`*` also crosses `/`); a PATH is one file, or every file below a folder. Files whose route has no
//! image options, and variants themselves, are left out. One line per file on stdout; progress on stderr.

use super::progress::Progress;
use crate::images::{is_variant, process, ImageError, Report};
use crate::storage::Storage;
use futures::StreamExt;
use std::path::Path;
use std::process::ExitCode;

pub async fn run(config_path: &Path, targets: &[String]) -> ExitCode {
    let Some((config, storage)) = super::load_storage(config_path) else {
        return ExitCode::FAILURE;
    };
    let mut paths = Vec::new();
    for target in targets {
        match matching(&storage, target).await {
            Ok(found) => paths.extend(found),
            Err(e) => {
                eprintln!("zmount: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths.retain(|p| wants_images(&storage, p));
    if paths.is_empty() {
        eprintln!("zmount: no file matches whose route has `transforms` or `variants`");
        return ExitCode::FAILURE;
    }
    let limits = &config.settings.images;
    let progress = Progress::new("images", paths.len() as u64, 0);
    let jobs = futures::stream::iter(&paths).map(|path| {
        let (storage, progress) = (&storage, &progress);
        async move {
            let result = process(storage, limits, path).await;
            progress.done(0, None);
            (path, result)
        }
    });
    let results: Vec<_> = jobs.buffer_unordered(limits.workers).collect().await;
    progress.finish();
    summarize(results)
}

/// The files `target` names: a glob, one file, or every file below a folder.
async fn matching(storage: &Storage, target: &str) -> Result<Vec<String>, String> {
    let target = target.trim_start_matches('/');
    if target.contains(['*', '?', '[', '{']) {
        let glob = globset::GlobBuilder::new(target)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("invalid glob {target:?}: {}", e.kind()))?
            .compile_matcher();
        let fixed = &target[..target.find(['*', '?', '[', '{']).unwrap_or(0)];
        let folder = fixed.rsplit_once('/').map_or("", |(dir, _)| dir);
        let all = storage.list_all(folder).await.map_err(|e| e.to_string())?;
        return Ok(all
            .into_iter()
            .map(|f| f.path)
            .filter(|p| glob.is_match(p))
            .collect());
    }
    match storage.get_info(target).await {
        Ok(info) => Ok(vec![info.path]),
        Err(e) if e.is_not_found() => {
            let below = storage.list_all(target).await.map_err(|e| e.to_string())?;
            Ok(below.into_iter().map(|f| f.path).collect())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn wants_images(storage: &Storage, path: &str) -> bool {
    let is_dir_marker = path.rsplit('/').next() == Some(crate::storage::DIR_MARKER);
    !is_dir_marker
        && storage
            .router()
            .resolve(path)
            .and_then(|r| r.route.images.as_ref())
            .is_some_and(|images| !is_variant(path, images))
}

/// Prints one line per file and a total; fails when a file could not be processed for a reason other than
/// its content (which is reported but is not the command's failure).
fn summarize(mut results: Vec<(&String, Result<Report, ImageError>)>) -> ExitCode {
    results.sort_by(|a, b| a.0.cmp(b.0));
    let (mut variants, mut transformed, mut skipped, mut failed) = (0, 0, 0, 0);
    for (path, result) in results {
        match result {
            Ok(report) if report.nothing_because.is_some() => {
                println!("{path}\tnothing to do: {}", report.nothing_because.unwrap());
            }
            Ok(report) => {
                variants += report.variants.len();
                transformed += report.transformed as usize;
                let what = if report.transformed {
                    "transformed, "
                } else {
                    ""
                };
                println!("{path}\t{what}{} variant(s)", report.variants.len());
                for other in &report.not_overwritten {
                    println!("{path}\tnot written over {other}: another file, not a variant of it");
                }
                if let Some(why) = report.not_transformed_because {
                    println!("{path}\tnot transformed: {why}");
                }
            }
            Err(e) if e.is_bad_input() => {
                skipped += 1;
                println!("{path}\tskipped: {e}");
            }
            Err(e) => {
                failed += 1;
                println!("{path}\tfailed: {e}");
            }
        }
    }
    eprintln!(
        "{variants} variants written, {transformed} files transformed, {skipped} skipped (not usable images), {failed} failed"
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
