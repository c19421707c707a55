//! `s3` and `wasabi`: AWS S3 and every S3-compatible store (MinIO, R2, SeaweedFS, Wasabi...).
//!
//! Wasabi is S3 with its endpoint derived from the region (`https://s3.<region>.wasabisys.com`); an explicit
//! `endpoint` overrides that, which is also how tests point a "wasabi" provider at a local S3 server.

use super::{BuiltStore, ClientTuning};
use crate::config::{Redactor, S3Config};
use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
use std::sync::Arc;

pub fn wasabi_endpoint(region: &str) -> String {
    format!("https://s3.{region}.wasabisys.com")
}

pub fn build(config: &S3Config, wasabi: bool, tuning: &ClientTuning) -> Result<BuiltStore, String> {
    let endpoint = match (&config.endpoint, wasabi) {
        (Some(e), _) => Some(e.trim_end_matches('/').to_string()),
        (None, true) => Some(wasabi_endpoint(&config.region)),
        (None, false) => None,
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(config.virtual_hosted)
        // Rename/create-if-absent without a lock service: S3 conditional multipart completion.
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .with_retry(tuning.retry.clone())
        .with_client_options(tuning.client(endpoint.as_deref()));
    let mut redactor = Redactor::default();
    if let Some(endpoint) = &endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &config.access_key {
        builder = builder.with_access_key_id(key.expose());
        redactor.add(key);
    }
    if let Some(secret) = &config.secret_key {
        builder = builder.with_secret_access_key(secret.expose());
        redactor.add(secret);
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token.expose());
        redactor.add(token);
    }
    let store = Arc::new(
        builder
            .build()
            .map_err(|e| redactor.redact(&e.to_string()))?,
    );
    let endpoint =
        endpoint.unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
    Ok(BuiltStore {
        store: store.clone(),
        multipart: Some(store.clone()),
        paginated: Some(store.clone()),
        signer: Some(store),
        location: format!("{endpoint} (bucket {})", config.bucket),
        redactor,
    })
}
