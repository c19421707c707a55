//! A signed S3 PUT of any key, byte for byte: object_store (rightly) refuses keys with control characters, so
//! objects that other tools can write — and that listings must survive — are made here with a hand-signed request
//! (AWS Signature Version 4, `UNSIGNED-PAYLOAD`).

use ring::{digest, hmac};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding of a key, `/` kept.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sign(key: &[u8], text: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text.as_bytes())
        .as_ref()
        .to_vec()
}

/// PUTs `body` at `key` (raw, prefix included) in the test bucket.
pub async fn put(key: &str, body: &[u8]) {
    let endpoint = super::server("ZMOUNT_TEST_S3_ENDPOINT");
    let bucket = super::server("ZMOUNT_TEST_S3_BUCKET");
    let access = super::server("ZMOUNT_TEST_S3_ACCESS_KEY");
    let secret = super::server("ZMOUNT_TEST_S3_SECRET_KEY");
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let now = chrono::Utc::now();
    let (stamp, day) = (
        now.format("%Y%m%dT%H%M%SZ").to_string(),
        now.format("%Y%m%d").to_string(),
    );
    let uri = format!("/{bucket}/{}", encode(key));
    let payload = "UNSIGNED-PAYLOAD";
    let headers = format!("host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n");
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let request = format!("PUT\n{uri}\n\n{headers}\n{signed}\n{payload}");
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, request.as_bytes()).as_ref())
    );
    let mut signing = sign(format!("AWS4{secret}").as_bytes(), &day);
    for part in ["us-east-1", "s3", "aws4_request"] {
        signing = sign(&signing, part);
    }
    let signature = hex(&sign(&signing, &to_sign));
    let response = reqwest::Client::new()
        .put(format!("http://{host}{uri}"))
        .header("x-amz-content-sha256", payload)
        .header("x-amz-date", &stamp)
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}"),
        )
        .body(body.to_vec())
        .send()
        .await
        .expect("raw PUT");
    let status = response.status();
    assert!(
        status.is_success(),
        "raw PUT of {key:?}: {status} {}",
        response.text().await.unwrap_or_default()
    );
}
