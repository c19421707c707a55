//! `azure`: Azure Blob Storage, from a connection string or account + key (+ endpoint for emulators such as
//! Azurite). Connection strings are parsed here because object_store takes their parts separately.

use super::{BuiltStore, ClientTuning};
use crate::config::{AzureConfig, Redactor};
use object_store::azure::MicrosoftAzureBuilder;
use std::sync::Arc;

/// Azurite's published development account; `UseDevelopmentStorage=true` means this account on the local
/// emulator's default port.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Account, key and endpoint, from whichever keys the config uses.
struct Credentials {
    account: String,
    key: Option<String>,
    endpoint: Option<String>,
}

fn parse_connection_string(text: &str) -> Result<Credentials, String> {
    let mut creds = Credentials {
        account: String::new(),
        key: None,
        endpoint: None,
    };
    let mut protocol = "https".to_string();
    let mut suffix = "core.windows.net".to_string();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| {
            "connection_string: expected `Name=value` pairs separated by `;`".to_string()
        })?;
        match name {
            "AccountName" => creds.account = value.to_string(),
            "AccountKey" => creds.key = Some(value.to_string()),
            "BlobEndpoint" => creds.endpoint = Some(value.trim_end_matches('/').to_string()),
            "DefaultEndpointsProtocol" => protocol = value.to_string(),
            "EndpointSuffix" => suffix = value.to_string(),
            "UseDevelopmentStorage" if value.eq_ignore_ascii_case("true") => {
                creds.account = DEV_ACCOUNT.into();
                creds.key = Some(DEV_KEY.into());
                creds.endpoint = Some(DEV_ENDPOINT.into());
            }
            _ => {} // Queue/Table endpoints and the like do not concern blobs.
        }
    }
    if creds.account.is_empty() {
        return Err("connection_string has no AccountName".into());
    }
    if creds.endpoint.is_none() {
        creds.endpoint = Some(format!("{protocol}://{}.blob.{suffix}", creds.account));
    }
    Ok(creds)
}

pub fn build(config: &AzureConfig, tuning: &ClientTuning) -> Result<BuiltStore, String> {
    let mut creds = match &config.connection_string {
        Some(cs) => parse_connection_string(cs.expose())?,
        None => Credentials {
            account: config
                .account
                .clone()
                .ok_or("needs `connection_string`, or `account` and `key`")?,
            key: None,
            endpoint: None,
        },
    };
    if let Some(key) = &config.key {
        creds.key = Some(key.expose().to_string());
    }
    if let Some(endpoint) = &config.endpoint {
        creds.endpoint = Some(endpoint.trim_end_matches('/').to_string());
    }
    let endpoint = creds
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", creds.account));
    let mut redactor = Redactor::default();
    let mut builder = MicrosoftAzureBuilder::new()
        .with_account(&creds.account)
        .with_container_name(&config.container)
        .with_endpoint(endpoint.clone())
        .with_retry(tuning.retry.clone())
        .with_client_options(tuning.client(Some(&endpoint)));
    if let Some(key) = &creds.key {
        builder = builder.with_access_key(key);
        redactor.add_str(key);
    }
    if let Some(cs) = &config.connection_string {
        redactor.add(cs);
    }
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
        location: format!("{endpoint} (container {})", config.container),
        redactor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let c = parse_connection_string("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=k==;EndpointSuffix=core.windows.net").unwrap();
        assert_eq!(c.account, "acme");
        assert_eq!(c.key.as_deref(), Some("k=="));
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://acme.blob.core.windows.net")
        );
        let dev = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.endpoint.as_deref(), Some(DEV_ENDPOINT));
        assert!(parse_connection_string("AccountKey=x").is_err());
    }
}
