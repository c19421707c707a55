//! Streaming of sequential writes: while a program writes a new file front to back (`cp`, `dd`, `tar x`), the
//! bytes also go straight into a multipart upload, so the upload runs alongside the writing instead of after it.
//! The staged local file stays the source of truth: any non-sequential write, truncate or `fsync` ends streaming,
//! and the file is then uploaded from the staged copy at commit as usual.
//!
//! The multipart upload only completes when [`SequentialUpload::finish`] says so. If it is dropped or abandoned
//! instead, its stream ends with an error and object_store aborts the upload, so a partial object can never
//! appear.

use crate::storage::{FileInfo, Storage, UploadOptions};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks queued between the writer and the upload task; with the upload's own buffered parts this bounds the
/// memory one streaming file uses.
const QUEUE_DEPTH: usize = 16;

pub(super) enum Message {
    Data(Bytes),
    Finish,
}

pub(super) enum SequentialUpload {
    /// Collecting the first bytes: small files are uploaded with one PUT at commit, so a multipart upload starts
    /// only once a whole part has been written.
    Buffering { chunks: Vec<Bytes>, len: usize },
    Uploading {
        tx: mpsc::Sender<Message>,
        task: tokio::task::JoinHandle<crate::storage::Result<FileInfo>>,
    },
    /// Not (or no longer) streaming: commit uploads the staged file.
    Off,
}

impl SequentialUpload {
    pub fn start() -> Self {
        SequentialUpload::Buffering {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Feeds the next sequential bytes.
    pub async fn push(
        &mut self,
        data: Bytes,
        storage: &Arc<Storage>,
        path: &str,
        options: UploadOptions,
    ) {
        match self {
            SequentialUpload::Buffering { chunks, len } => {
                *len += data.len();
                chunks.push(data);
                if *len >= crate::storage::UPLOAD_PART_SIZE {
                    if storage.heals().is_pending(path) {
                        // The upload must hold the path's lock against its heal: commit uploads the staged copy.
                        *self = SequentialUpload::Off;
                        return;
                    }
                    let chunks = std::mem::take(chunks);
                    *self = Self::begin(storage.clone(), path.to_string(), options);
                    for chunk in chunks {
                        self.send(chunk).await;
                    }
                }
            }
            SequentialUpload::Uploading { .. } => self.send(data).await,
            SequentialUpload::Off => {}
        }
    }

    fn begin(storage: Arc<Storage>, path: String, options: UploadOptions) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let chunks = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Message::Data(bytes)) => Some((Ok(bytes), Some(rx))),
                Some(Message::Finish) => None,
                // The writer went away without finishing: fail the stream so the multipart upload is aborted.
                None => Some((Err(std::io::Error::other("write abandoned")), None)),
            }
        });
        let task = tokio::spawn(async move {
            storage
                .upload_stream_as(&path, Box::pin(chunks), options, false)
                .await
        });
        SequentialUpload::Uploading { tx, task }
    }

    async fn send(&mut self, data: Bytes) {
        if let SequentialUpload::Uploading { tx, .. } = self {
            if tx.send(Message::Data(data)).await.is_err() {
                self.abandon(); // the upload failed early; commit falls back to the staged copy
            }
        }
    }

    /// Stops streaming; an upload in progress is aborted.
    pub fn abandon(&mut self) {
        *self = SequentialUpload::Off; // dropping the sender aborts (see `begin`)
    }

    /// [`SequentialUpload::abandon`], returning once the upload in progress is aborted: nothing it made (a
    /// multipart upload, a local temporary file) outlasts the caller's next step.
    pub async fn abandon_and_wait(&mut self) {
        if let SequentialUpload::Uploading { tx, task } =
            std::mem::replace(self, SequentialUpload::Off)
        {
            drop(tx);
            let _ = task.await;
        }
    }

    /// Whether a multipart upload is under way (its completion is then `finish`'s work).
    pub fn is_uploading(&self) -> bool {
        matches!(self, SequentialUpload::Uploading { .. })
    }

    /// Completes a streamed upload: Some(result) when one was running, None when commit must upload the file.
    pub async fn finish(&mut self) -> Option<crate::storage::Result<FileInfo>> {
        match std::mem::replace(self, SequentialUpload::Off) {
            SequentialUpload::Uploading { tx, task } => {
                if tx.send(Message::Finish).await.is_err() {
                    return task.await.ok().filter(|r| r.is_err());
                }
                drop(tx);
                task.await.ok()
            }
            _ => None,
        }
    }
}
