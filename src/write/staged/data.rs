//! The working copy's bytes: written, read and truncated under the file's state lock, copied first when the
//! pending version shares them, with cache space freed when the disk is full; a change that fails fails the file.

use super::{blocking, Space, Staged, State, Work};
use crate::storage::Storage;
use crate::write::{WriteError, WriteResult};
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

impl Staged {
    /// The bytes changed: mtime and ctime are now (an earlier explicit mtime no longer stands), image markers go.
    fn bytes_changed(&self, st: &mut State) {
        st.unclosed = true;
        let now = SystemTime::now();
        *self.modified.lock().unwrap() = now;
        let mut attrs = self.attrs.lock().unwrap();
        // The new bytes' time is the last write's, to the nanosecond, and it is stored with them: the provider's
        // Last-Modified (whole seconds, taken at upload) would make the file's mtime jump after close, and make
        // the file look older than one written a moment later (`make` would then not rebuild).
        (attrs.posix.mtime, attrs.posix.ctime) = (Some(now), Some(now));
        drop(attrs);
        if !st.bytes_changed {
            st.bytes_changed = true;
            self.drop_markers();
        }
    }

    /// Gives the working copy a data file of its own before its bytes change, when it still is the pending
    /// version's (which must stay as acknowledged). `keep`: copy the bytes (false for a truncation to 0).
    async fn unshare(&self, st: &mut State, keep: bool, space: &Option<Space>) -> WriteResult<()> {
        if !st.shares_work() {
            return Ok(());
        }
        let work = st
            .work
            .as_ref()
            .expect("shares_work implies a working copy");
        let (local, file) = self.journal.new_file()?;
        let (from, to, size) = (work.local.clone(), local.clone(), work.size);
        let copied = retry_on_full(space, size, || {
            let (from, to) = (from.clone(), to.clone());
            async move {
                match keep {
                    true => blocking(move || std::fs::copy(&from, &to).map(|_| ())).await,
                    false => Ok(()),
                }
            }
        })
        .await;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&local);
            return Err(e);
        }
        let size = if keep { size } else { 0 };
        st.work = Some(Work {
            local,
            file: Arc::new(file),
            size,
        });
        Ok(())
    }

    /// Writes `data` at `offset`; `limit` is the route's largest file size (EFBIG past it). A failure fails the
    /// file (see the module note).
    pub async fn write(
        &self,
        offset: u64,
        data: Bytes,
        limit: Option<u64>,
        storage: &Arc<Storage>,
        space: &Option<Space>,
    ) -> WriteResult<u32> {
        let mut st = self.state.lock().await;
        st.check_failed()?;
        let end = offset + data.len() as u64;
        if limit.is_some_and(|l| end > l) {
            return Err(self.fail(&mut st, WriteError::TooLarge));
        }
        if let Err(e) = self.unshare(&mut st, true, space).await {
            return Err(self.fail(&mut st, e));
        }
        let file = st.work.as_ref().expect("not failed").file.clone();
        let len = data.len() as u32;
        let written = retry_on_full(space, data.len() as u64, || {
            let (file, data) = (file.clone(), data.clone());
            async move { blocking(move || file.write_all_at(&data, offset)).await }
        })
        .await;
        if let Err(e) = written {
            return Err(self.fail(&mut st, e));
        }
        self.bytes_changed(&mut st);
        let work = st.work.as_mut().expect("not failed");
        let sequential = offset == work.size;
        work.size = work.size.max(end);
        self.size.swap(work.size, Ordering::SeqCst);
        st.dirty = true;
        match (sequential, self.path()) {
            (true, Some(path)) => {
                let options = self.attrs.lock().unwrap().upload_options();
                st.sequential.push(data, storage, &path, options).await
            }
            _ => st.sequential.abandon(),
        }
        Ok(len)
    }

    pub async fn read(&self, offset: u64, len: u32) -> WriteResult<Bytes> {
        let st = self.state.lock().await;
        st.check_failed()?;
        let work = st.work.as_ref().expect("not failed");
        let end = (offset + u64::from(len)).min(work.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let file = work.file.clone();
        let mut buf = vec![0u8; (end - offset) as usize];
        blocking(move || file.read_exact_at(&mut buf, offset).map(|_| buf))
            .await
            .map(Bytes::from)
    }

    pub async fn truncate(
        &self,
        size: u64,
        limit: Option<u64>,
        space: &Option<Space>,
    ) -> WriteResult<()> {
        let mut st = self.state.lock().await;
        st.check_failed()?;
        if limit.is_some_and(|l| size > l) {
            return Err(self.fail(&mut st, WriteError::TooLarge));
        }
        if let Err(e) = self.unshare(&mut st, size > 0, space).await {
            return Err(self.fail(&mut st, e));
        }
        let file = st.work.as_ref().expect("not failed").file.clone();
        let cut = retry_on_full(space, size, || {
            let file = file.clone();
            async move { blocking(move || file.set_len(size)).await }
        })
        .await;
        if let Err(e) = cut {
            return Err(self.fail(&mut st, e));
        }
        self.bytes_changed(&mut st);
        st.sequential.abandon();
        st.work.as_mut().expect("not failed").size = size;
        self.size.swap(size, Ordering::SeqCst);
        st.dirty = true;
        Ok(())
    }

    /// Fails the file with `error`: its working copy (not an acknowledged pending version) is released now, and
    /// nothing it holds is uploaded. Returns the error for the caller.
    pub(in crate::write) fn fail(&self, st: &mut State, error: WriteError) -> WriteError {
        tracing::warn!(
            "{}: a write failed ({error}); the file is not uploaded, and its provider keeps its previous version",
            self.path().unwrap_or_else(|| "(unlinked file)".into())
        );
        let failure = Arc::new(error);
        st.failed = Some(failure.clone());
        st.sequential.abandon();
        st.dirty = false;
        let shares = st.shares_work();
        if let Some(work) = st.work.take() {
            if !shares {
                let _ = work.file.set_len(0);
                let _ = std::fs::remove_file(&work.local);
            }
        }
        self.size.swap(0, Ordering::SeqCst);
        WriteError::Failed(failure)
    }
}

/// Runs a local disk operation; when it finds the disk full, frees cache space for `need` bytes and tries once
/// more, so cached blocks are evicted before a write is refused.
async fn retry_on_full<F, Fut>(space: &Option<Space>, need: u64, op: F) -> WriteResult<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = WriteResult<()>>,
{
    match op().await {
        Err(WriteError::Local(e)) if e.raw_os_error() == Some(libc::ENOSPC) => {
            let freed = space.as_ref().map_or(0, |free| free(need.max(64 << 20)));
            if freed == 0 {
                return Err(WriteError::Local(e));
            }
            tracing::info!("staging: disk full; evicted {freed} bytes of cached blocks");
            op().await
        }
        other => other,
    }
}
