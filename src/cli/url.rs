//! `zmount url CONFIG PATH [--expires SECONDS]`: a URL a browser or `curl` can fetch the file from — the CDN URL
//! when `[settings.cdn]` is on, a signed URL on S3/Wasabi/GCS/Azure, `base_url/path` on a local provider. The same
//! URL (signed for an hour) is the `user.zmount.url` extended attribute of the file in a mount. The file must exist
//! (a URL of a missing file is an error, exit 1).

use crate::storage::Storage;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(config_path: &Path, path: &str, expires: u64) -> ExitCode {
    let Some(config) = super::load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    // A URL of a file that is not there answers 404 to whoever gets it: said here instead.
    let result = match Storage::new(&config) {
        Ok(storage) => match storage.get_info(path).await {
            Ok(_) => storage.get_url(path, Duration::from_secs(expires)).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(url) => {
            println!("{url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zmount: {e}");
            ExitCode::FAILURE
        }
    }
}
