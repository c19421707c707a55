//! `gcs`: Google Cloud Storage, authenticated by a service-account JSON (a path, or the JSON itself).
//!
//! The service-account JSON may carry `gcs_base_url` (object_store's key for a non-Google endpoint, used for
//! emulators); the location shown in messages follows it.

use super::{BuiltStore, ClientTuning};
use crate::config::{GcsConfig, Redactor};
use object_store::gcp::{
    GcpSigningCredential, GcpSigningCredentialProvider, GoogleCloudStorageBuilder,
    ServiceAccountKey,
};
use object_store::StaticCredentialProvider;
use std::sync::Arc;

const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

pub fn build(config: &GcsConfig, tuning: &ClientTuning) -> Result<BuiltStore, String> {
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_bucket_name(&config.bucket)
        .with_retry(tuning.retry.clone());
    let mut redactor = Redactor::default();
    let mut endpoint = GOOGLE_ENDPOINT.to_string();
    if let Some(credentials) = &config.credentials {
        let text = credentials.expose().trim();
        let json = if text.starts_with('{') {
            builder = builder.with_service_account_key(text);
            text.to_string()
        } else {
            builder = builder.with_service_account_path(text);
            std::fs::read_to_string(text)
                .map_err(|e| format!("cannot read credentials file {text}: {e}"))?
        };
        let parsed: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| format!("credentials are not valid service-account JSON: {e}"))?;
        if let Some(key) = parsed.get("private_key").and_then(|v| v.as_str()) {
            redactor.add_str(key);
        }
        if let Some(url) = parsed.get("gcs_base_url").and_then(|v| v.as_str()) {
            endpoint = url.trim_end_matches('/').to_string();
        }
        if parsed.get("disable_oauth").and_then(|v| v.as_bool()) == Some(true) {
            // object_store ignores the private key when OAuth is off; sign URLs with it locally anyway, so an
            // emulator setup can still hand out URLs instead of calling Google's signBlob API.
            if let Some(signing) = local_signing_credentials(&parsed)? {
                builder = builder.with_signing_credentials(signing);
            }
        }
    }
    builder = builder.with_client_options(tuning.client(Some(&endpoint)));
    let store = Arc::new(
        builder
            .build()
            .map_err(|e| redactor.redact(&e.to_string()))?,
    );
    Ok(BuiltStore {
        multipart: None,
        store: store.clone(),
        paginated: Some(store.clone()),
        s3_direct: None,
        signer: Some(store),
        location: format!("{endpoint} (bucket {})", config.bucket),
        redactor,
    })
}

fn local_signing_credentials(
    json: &serde_json::Value,
) -> Result<Option<GcpSigningCredentialProvider>, String> {
    let pem = json
        .get("private_key")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if pem.trim().is_empty() {
        return Ok(None);
    }
    let key = ServiceAccountKey::from_pem(pem.as_bytes())
        .map_err(|e| format!("credentials: private_key is not a usable RSA key: {e}"))?;
    let email = json
        .get("client_email")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Some(Arc::new(StaticCredentialProvider::new(
        GcpSigningCredential {
            email,
            private_key: Some(key),
        },
    ))))
}
