//! Open handles: opening a file for reading (pinned to its object version), reads, release, and whether the
//! kernel keeps a file's pages across opens.

use super::*;

impl Filesystem {
    /// Opens a file for reading, pinned to the object version it has now (or, while the file is being written
    /// in this mount, to the staged bytes).
    pub async fn open_read(&self, ino: Ino) -> FsResult<u64> {
        let attr = self.getattr(ino, None).await?;
        if let Some(staged) = self.uploads.open_read(&self.path_of(ino)?.0) {
            return Ok(self.add_handle(
                ino,
                Handle::Write {
                    staged,
                    writable: false,
                    opener: 0,
                },
            ));
        }
        if attr.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        let (path, entry, _) = self.path_of(ino)?;
        let (_, resolved, primary) = self.storage.resolve(&path)?;
        let holder = entry
            .source
            .as_deref()
            .and_then(|name| self.storage.provider(name))
            .unwrap_or(primary)
            .clone();
        let others = self
            .storage
            .read_order(&path, resolved.route)
            .into_iter()
            .filter(|p| p.name != holder.name)
            .cloned()
            .collect();
        let version_tag = entry.etag.clone().unwrap_or_else(|| {
            let mtime = entry
                .mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-{}", entry.size, mtime.as_nanos())
        });
        tracing::debug!("open {path}: reading the copy on `{}`", holder.name);
        let object = ObjectVersion::new(path, entry.size, holder, entry.etag, version_tag, others);
        Ok(self.add_handle(
            ino,
            Handle::File {
                object,
                state: Mutex::new(ReadState::default()),
            },
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<bytes::Bytes> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::File { object, state } => {
                Ok(self.reader.read(object, state, offset, size).await?)
            }
            Handle::Write { staged, .. } => Ok(staged.read(offset, size).await?),
            Handle::Dir { .. } => Err(FsError::IsADirectory),
        }
    }

    /// [`Filesystem::read`] when it can be answered at once, without waiting (a random read of a cached block,
    /// see [`crate::read::Reader::read_on_disk_now`]); None: call `read`.
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<bytes::Bytes> {
        match &*self.handle(fh).ok()? {
            Handle::File { object, state } => {
                self.reader.read_on_disk_now(object, state, offset, size)
            }
            _ => None,
        }
    }

    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().unwrap().remove(&fh).map(|(_, h)| h);
        if let Some(Handle::Write { staged, .. }) = handle.as_deref() {
            self.uploads.release(staged);
        }
    }

    pub(super) fn add_handle(&self, ino: Ino, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(fh, (ino, Arc::new(handle)));
        fh
    }

    /// Whether the kernel may keep the pages it cached of the file `fh` was just opened on (FOPEN_KEEP_CACHE), so
    /// a second read of a file, by the next program, comes from memory: only when the handle reads an object
    /// version, and the pages were filled from that same version alone. Any other open of the inode (another
    /// version, a file being written, a staged copy) makes the next open drop them. Called once per open.
    pub fn keep_pages(&self, fh: u64) -> bool {
        let handles = self.handles.lock().unwrap();
        let Some((ino, handle)) = handles.get(&fh) else {
            return false;
        };
        let version_of = |handle: &Handle| match handle {
            Handle::File { object, .. } => {
                let copy = object.current();
                Some(format!("{}\n{}", copy.provider.name, copy.version_tag))
            }
            _ => None,
        };
        let version = version_of(handle);
        let alone = handles
            .iter()
            .filter(|(other, (i, _))| **other != fh && i == ino)
            .all(|(_, (_, h))| version.is_some() && version_of(h) == version);
        let mut pages = self.page_versions.lock().unwrap();
        let keep = version.is_some() && pages.get(ino) == version.as_ref();
        match version {
            Some(version) if alone => pages.insert(*ino, version),
            _ => pages.remove(ino),
        };
        keep
    }

    /// A handle still open on `ino` (a file whose name is gone is reached through its handles only); one on the
    /// file written here when there is one, as that is the truth.
    pub(super) fn open_on(&self, ino: Ino) -> Option<Arc<Handle>> {
        let handles = self.handles.lock().unwrap();
        handles
            .values()
            .filter(|(i, _)| *i == ino)
            .map(|(_, h)| h)
            .max_by_key(|h| matches!(&***h, Handle::Write { .. }))
            .cloned()
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .map(|(_, h)| h.clone())
            .ok_or(FsError::StaleHandle)
    }
}
