//! `s3` and `wasabi`: AWS S3 and every S3-compatible store (MinIO, R2, SeaweedFS, Wasabi...).
//!
//! Wasabi is S3 with its endpoint derived from the region (`https://s3.<region>.wasabisys.com`); an explicit
//! `endpoint` overrides that, which is also how tests point a "wasabi" provider at a local S3 server.

use super::{BuiltStore, ClientTuning};
use crate::config::{Redactor, S3Config};
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredentialProvider, S3CopyIfNotExists};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpResponse, ReqwestConnector,
};
use std::collections::BTreeMap;
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
    let s3_direct = S3Direct::new(
        config,
        endpoint.as_deref(),
        store.credentials().clone(),
        tuning,
    );
    let endpoint =
        endpoint.unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
    Ok(BuiltStore {
        store: store.clone(),
        multipart: Some(store.clone()),
        paginated: Some(store.clone()),
        s3_direct: s3_direct.map(Arc::new),
        signer: Some(store),
        location: format!("{endpoint} (bucket {})", config.bucket),
        redactor,
    })
}

/// The two S3 requests object_store cannot make, signed and sent with object_store's own signer and HTTP client:
/// - the HEAD of a directory object as s3fs writes it: a key ending in `/` (`photos/`) whose metadata holds the
///   directory's mode, owner and times (object_store's paths never end in `/`);
/// - a copy of an object onto itself that replaces its metadata, content type and tags (`CopyObject` with
///   `x-amz-metadata-directive: REPLACE`), so `chmod`, `touch` or a new xattr on a closed file cost one request
///   and no data transfer.
#[derive(Debug)]
pub struct S3Direct {
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual-hosted).
    base: String,
    bucket: String,
    region: String,
    credentials: AwsCredentialProvider,
    client: HttpClient,
}

/// How a metadata-replacing copy ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Done; the object's ETag now, when the answer gave it.
    Done(Option<String>),
    /// Not done: the object is not the version asked for (412), or gone (404).
    Changed,
}

/// The largest object one `CopyObject` copies (AWS's limit; larger ones need a multipart copy).
pub const COPY_MAX: u64 = 5 << 30;

impl S3Direct {
    fn new(
        config: &S3Config,
        endpoint: Option<&str>,
        credentials: AwsCredentialProvider,
        tuning: &ClientTuning,
    ) -> Option<S3Direct> {
        let base = match (endpoint, config.virtual_hosted) {
            (Some(e), false) => format!("{e}/{}", config.bucket),
            (Some(e), true) => e.to_string(),
            (None, false) => format!(
                "https://s3.{}.amazonaws.com/{}",
                config.region, config.bucket
            ),
            (None, true) => format!(
                "https://{}.s3.{}.amazonaws.com",
                config.bucket, config.region
            ),
        };
        let client = ReqwestConnector::default()
            .connect(&tuning.client(endpoint))
            .ok()?;
        Some(S3Direct {
            base,
            bucket: config.bucket.clone(),
            region: config.region.clone(),
            credentials,
            client,
        })
    }

    /// Sends `request` (no body), signed with the provider's credentials.
    async fn send(&self, request: http::request::Builder) -> Result<HttpResponse, String> {
        let mut request: HttpRequest = request
            .body(bytes::Bytes::new().into())
            .map_err(|e| e.to_string())?;
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .with_sign_payload(false)
            .try_authorize(&mut request, None)
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(response)
    }

    /// Sends `request` like [`Self::send`]; the answer's status and body (as text).
    async fn send_for_text(
        &self,
        request: http::request::Builder,
    ) -> Result<(u16, String), String> {
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The user metadata (lowercase keys, without `x-amz-meta-`) of the object `key/`, or None when there is none.
    pub async fn metadata(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let url = format!("{}/{}/", self.base, encode_key(key));
        let request = http::Request::builder()
            .method(http::Method::HEAD)
            .uri(&url);
        let response = self.send(request).await?;
        match response.status().as_u16() {
            200 => Ok(Some(
                response
                    .headers()
                    .iter()
                    .filter_map(|(name, value)| {
                        let key = name.as_str().strip_prefix("x-amz-meta-")?;
                        Some((key.to_ascii_lowercase(), value.to_str().ok()?.to_string()))
                    })
                    .collect(),
            )),
            404 => Ok(None),
            status => Err(format!("HEAD {url}: status {status}")),
        }
    }
}

impl S3Direct {
    /// Copies object `key` onto itself with `headers` (`content-type`, `x-amz-meta-*`, `x-amz-tagging`) replacing
    /// what it carries, only while its ETag is `if_match` (when given). An error is an answer other than success,
    /// 404 or 412 (the caller can then write the object again the ordinary way).
    pub async fn replace_attributes(
        &self,
        key: &str,
        if_match: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<Replaced, String> {
        let url = format!("{}/{}", self.base, encode_key(key));
        let mut builder = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&url)
            .header(
                "x-amz-copy-source",
                format!("/{}/{}", self.bucket, encode_key(key)),
            )
            .header("x-amz-metadata-directive", "REPLACE")
            .header("x-amz-tagging-directive", "REPLACE");
        if let Some(etag) = if_match {
            builder = builder.header("x-amz-copy-source-if-match", etag);
        }
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let (status, body) = self.send_for_text(builder).await?;
        match status {
            // A copy can fail after its 200 has been sent: the error is then in the body.
            200 if !body.contains("<Error>") => Ok(Replaced::Done(xml_element(&body, "ETag"))),
            404 | 412 => Ok(Replaced::Changed),
            status => Err(format!(
                "PUT {url} (copy replacing metadata): status {status}: {}",
                xml_element(&body, "Code").unwrap_or_default()
            )),
        }
    }
}

/// A multipart upload in progress, as `ListMultipartUploads` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInProgress {
    pub key: String,
    pub upload_id: String,
    /// When the upload was created (the server's clock), when the answer says.
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

impl S3Direct {
    /// The multipart uploads in progress of exactly `key` (`ListMultipartUploads` with the key as prefix, every
    /// page). Used for a journaled upload whose id was never learned (see crate::providers::open_uploads).
    pub async fn uploads_of(&self, key: &str) -> Result<Vec<UploadInProgress>, String> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _page in 0..100 {
            // Query parameters in the order SigV4 signs them.
            let prefix = format!("prefix={}", encode_query(key));
            let query = match &markers {
                None => format!("{prefix}&uploads="),
                Some((key_marker, id_marker)) => format!(
                    "key-marker={}&{prefix}&upload-id-marker={}&uploads=",
                    encode_query(key_marker),
                    encode_query(id_marker)
                ),
            };
            let url = format!("{}?{query}", self.base);
            let request = http::Request::builder().method(http::Method::GET).uri(&url);
            let (status, body) = self.send_for_text(request).await?;
            if status != 200 {
                return Err(format!(
                    "GET {url} (list multipart uploads): status {status}: {}",
                    xml_element(&body, "Code").unwrap_or_default()
                ));
            }
            found.extend(
                body.split("<Upload>")
                    .skip(1)
                    .filter_map(|upload| {
                        Some(UploadInProgress {
                            key: xml_element(upload, "Key")?,
                            upload_id: xml_element(upload, "UploadId")?,
                            initiated: xml_element(upload, "Initiated").and_then(|t| {
                                chrono::DateTime::parse_from_rfc3339(&t)
                                    .ok()
                                    .map(|t| t.with_timezone(&chrono::Utc))
                            }),
                        })
                    })
                    .filter(|u| u.key == key),
            );
            let next = (
                xml_element(&body, "NextKeyMarker"),
                xml_element(&body, "NextUploadIdMarker"),
            );
            match (xml_element(&body, "IsTruncated").as_deref(), next) {
                (Some("true"), (Some(k), Some(i)))
                    if markers.as_ref() != Some(&(k.clone(), i.clone())) =>
                {
                    markers = Some((k, i))
                }
                _ => return Ok(found),
            }
        }
        Ok(found)
    }
}

/// The text of the first `<name>` element of `xml`, XML's predefined entities decoded.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// RFC 3986 encoding of a query value (`/` encoded too, as SigV4's canonical query string has it).
fn encode_query(value: &str) -> String {
    encode_key(value).replace('/', "%2F")
}

/// RFC 3986 encoding of an object key for a URL path, `/` kept (what S3 signs and expects).
pub fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
