//! Journaled multipart uploads: the parts of a file streamed to a provider's low-level multipart API, recorded in
//! [`OpenUploads`] (see [`super::open_uploads`]) before the first part is sent, so one cut short is aborted
//! later instead of left open (and billed) on the provider.

use super::{OpenUploads, Provider, Result, StorageError};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::PutPayload;
use std::sync::Arc;

/// Streams `chunks` into a journaled multipart upload of `key` through the provider's low-level API: parts of at
/// least `part_size` bytes, `concurrency` in flight, refusing to grow past `limit`. Any failure aborts the upload
/// (and keeps its record when the abort fails too).
#[allow(clippy::too_many_arguments)]
pub(super) async fn put_journaled<S>(
    provider: &Provider,
    multipart: &Arc<dyn MultipartStore>,
    journal: &OpenUploads,
    path: &str,
    opts: object_store::PutMultipartOptions,
    mut chunks: S,
    limit: Option<u64>,
    (part_size, concurrency): (usize, usize),
) -> Result<(u64, Option<String>)>
where
    S: futures::Stream<Item = Result<Bytes>> + Unpin,
{
    let fail = |e| StorageError::from_store(provider, path, e);
    // Once the upload exists, "not found" means the upload itself is gone (aborted by another client, a lifecycle
    // rule, or a cleanup of this cache dir's records), never the file: the write failed for now and is worth
    // another try (a new upload), and a program must not hear ENOENT for the file it is writing.
    let vanished = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => StorageError::Unavailable {
            provider: provider.name.clone(),
            location: provider.location.clone(),
            path: path.to_string(),
            message: "the multipart upload was aborted on the provider before it completed".into(),
        },
        e => fail(e),
    };
    let key = provider.key_for(path);
    // The record comes first: a process killed while the server creates the upload leaves a record (without
    // the id) that the next start settles by listing the key's uploads.
    let invalid = |e: std::io::Error| StorageError::Invalid {
        path: path.to_string(),
        what: "multipart upload record",
        reason: e.to_string(),
    };
    let record = journal.starting(&provider.name, &key).map_err(invalid)?;
    let id = match multipart.create_multipart_opts(&key, opts).await {
        Ok(id) => id,
        Err(e) => {
            // The create may have reached the server with its answer lost: the record stays for the next pass.
            journal.ended(&record, false);
            return Err(fail(e));
        }
    };
    if let Err(e) = journal.started(&record, &id) {
        let aborted = multipart.abort_multipart(&key, &id).await.is_ok();
        journal.ended(&record, aborted);
        return Err(invalid(e));
    }
    let mut size = 0u64;
    let outcome: Result<object_store::PutResult> = async {
        let mut parts: Vec<PartId> = Vec::new();
        let mut in_flight = FuturesOrdered::new();
        let mut buffer: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut index = 0usize;
        let mut ended = false;
        while !ended {
            match chunks.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    size += chunk.len() as u64;
                    if let Some(limit) = limit.filter(|l| size > *l) {
                        let path = path.to_string();
                        return Err(StorageError::TooLarge { path, size, limit });
                    }
                    buffered += chunk.len();
                    buffer.push(chunk);
                }
                None => ended = true,
            }
            let last = ended && (buffered > 0 || index == 0);
            if buffered >= part_size || last {
                let payload: PutPayload = std::mem::take(&mut buffer).into_iter().collect();
                buffered = 0;
                let (key, id, multipart) = (key.clone(), id.clone(), multipart.clone());
                let part = index;
                index += 1;
                in_flight
                    .push_back(async move { multipart.put_part(&key, &id, part, payload).await });
                while in_flight.len() >= concurrency {
                    let done = in_flight.next().await.expect("not empty");
                    parts.push(done.map_err(vanished)?);
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done.map_err(vanished)?);
        }
        multipart
            .complete_multipart(&key, &id, parts)
            .await
            .map_err(vanished)
    }
    .await;
    match outcome {
        Ok(result) => {
            journal.ended(&record, true);
            Ok((size, result.e_tag))
        }
        Err(e) => {
            let aborted = match multipart.abort_multipart(&key, &id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
                Err(abort) => {
                    tracing::warn!(
                        "{path}: cannot abort the failed multipart upload on `{}` now (tried again later): {abort}",
                        provider.name
                    );
                    false
                }
            };
            journal.ended(&record, aborted);
            Err(e)
        }
    }
}
