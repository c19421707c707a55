//! A signed S3 PUT of any key, byte for byte: object_store (rightly) refuses keys with control characters, so
//! objects that other tools can write — and that listings must survive — are made here with a hand-signed request
//! (AWS Signature Version 4, `UNSIGNED-PAYLOAD`).

use ring::{digest, hmac};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sign(key: &[u8], text: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text.as_bytes())
        .as_ref()
        .to_vec()
}

/// PUTs `body` at `key` (raw, prefix included) in the test bucket.
pub async fn put(key: &str, body: &[u8]) {
    put_with(key, body, &[]).await
}

/// [`put`] with user metadata (`x-amz-meta-<name>` headers).
pub async fn put_with(key: &str, body: &[u8], metadata: &[(&str, &str)]) {
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
    let uri = format!("/{bucket}/{}", zmount::providers::encode_s3_key(key));
    let payload = "UNSIGNED-PAYLOAD";
    let mut all: Vec<(String, String)> = vec![
        ("host".into(), host.to_string()),
        ("x-amz-content-sha256".into(), payload.to_string()),
        ("x-amz-date".into(), stamp.clone()),
    ];
    all.extend(metadata.iter().map(|(k, v)| {
        (
            format!("x-amz-meta-{}", k.to_ascii_lowercase()),
            v.to_string(),
        )
    }));
    all.sort();
    let headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = all
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
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
    let mut request = super::http().put(format!("http://{host}{uri}"));
    for (k, v) in all.iter().filter(|(k, _)| k != "host") {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request
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
