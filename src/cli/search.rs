//! `zmount search CONFIG [--tag K=V]... [--meta K=V]... [--prefix P]`: the files whose tags and metadata match
//! every condition, across all providers of the config, one `path<TAB>provider` line each, sorted. Listing gives
//! no metadata, so each candidate gets a HEAD, at most [`IN_FLIGHT`] at once; progress goes to stderr.

use super::progress::Progress;
use crate::storage::FileInfo;
use futures::StreamExt;
use std::path::Path;
use std::process::ExitCode;

/// HEAD requests in flight at once: enough to hide latency, few enough not to flood a provider.
const IN_FLIGHT: usize = 32;

pub async fn run(config_path: &Path, tags: &[String], meta: &[String], prefix: &str) -> ExitCode {
    let (tags, meta) = match (pairs(tags, "--tag"), pairs(meta, "--meta")) {
        (Ok(t), Ok(m)) => (t, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("zmount: {e}");
            return ExitCode::from(2);
        }
    };
    let meta: Vec<(String, String)> = meta
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let Some((_, storage)) = super::load_storage(config_path) else {
        return ExitCode::FAILURE;
    };
    let candidates = match storage.list(prefix, None).await {
        Ok(list) => list,
        Err(e) => {
            eprintln!("zmount: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = Progress::new("searched", candidates.len() as u64, 0);
    let checks = futures::stream::iter(candidates).map(|c| {
        let (storage, progress) = (&storage, &progress);
        async move {
            let info = storage.get_info(&c.path).await;
            progress.done(0, None);
            info
        }
    });
    let results: Vec<Result<FileInfo, _>> = checks.buffer_unordered(IN_FLIGHT).collect().await;
    progress.finish();
    let mut found = Vec::new();
    let mut failed = false;
    for result in results {
        match result {
            Ok(info) if matches(&info, &tags, &meta) => found.push(info),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {} // deleted since it was listed
            Err(e) => {
                eprintln!("zmount: {e}");
                failed = true;
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    for info in found {
        println!("{}\t{}", info.path, info.provider);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn matches(info: &FileInfo, tags: &[(String, String)], meta: &[(String, String)]) -> bool {
    tags.iter().all(|(k, v)| info.tags.get(k) == Some(v))
        && meta.iter().all(|(k, v)| info.metadata.get(k) == Some(v))
}

/// `K=V` arguments.
fn pairs(args: &[String], flag: &str) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("{flag} {a:?}: expected KEY=VALUE"))
        })
        .collect()
}
