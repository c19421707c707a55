//! `zmount explain CONFIG PATH...`: which rule routes each path, to which provider and fallbacks, under which
//! object key. Makes routing precedence inspectable without touching any provider (so without the secrets).

use std::path::Path;
use std::process::ExitCode;

pub fn run(config_path: &Path, paths: &[String]) -> ExitCode {
    // No requests are made: secrets whose environment variables are not set are not needed.
    let loaded = super::printed(crate::Config::load_without_secrets(config_path));
    let Some((_config, storage)) = loaded.and_then(super::storage_of) else {
        return ExitCode::FAILURE;
    };
    let mut status = ExitCode::SUCCESS;
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match storage.resolve(path) {
            Ok((clean, resolved, provider)) => {
                let route = resolved.route;
                println!("path:     {clean}");
                println!("rule:     {}", resolved.rule);
                println!(
                    "provider: {} ({} at {})",
                    provider.name, provider.kind, provider.location
                );
                let fallback = if route.fallback.is_empty() {
                    "none".to_string()
                } else {
                    route.fallback.join(", ")
                };
                println!("fallback: {fallback}");
                println!("write:    {}", format!("{:?}", route.write).to_lowercase());
                for name in route.providers() {
                    if let Some(p) = storage.provider(name) {
                        println!("key:      {} on {}", p.key_for(&clean), p.name);
                    }
                }
            }
            Err(e) => {
                eprintln!("zmount: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
