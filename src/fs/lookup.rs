//! Names to attributes: `lookup` and `getattr`, what is at a path (a file, a directory, or nothing), the
//! attributes a directory's marker stores, and lookups answered from a listing of their directory.

use super::*;

impl Filesystem {
    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if name == DIR_MARKER {
            return Err(FsError::NotFound);
        }
        if let Some(staged) = self.uploads.get(&path) {
            let known = self.inodes.find(&path).map(|(_, e, _)| e);
            let entry = Self::staged_entry(&staged, known);
            return Ok(self.recorded(&path, entry));
        }
        if let Some((ino, entry, age)) = self.inodes.find(&path) {
            if age < self.attr_ttl() {
                return Ok(self.attr(ino, &entry));
            }
        }
        if self.negative.contains_key(&path) {
            return Err(FsError::NotFound);
        }
        if let Some(answer) = self.lookup_listed(&path, name).await {
            return answer;
        }
        self.refresh(&path).await
    }

    /// A lookup answered from a listing of its directory, taken on the second lookup of an unknown name there
    /// within the TTL: a run of lookups (`stat` of every file, `git status`, `ls` of files one by one, a `cp` loop
    /// creating files) then costs one listing, which asks each file it shows for its attributes (at most
    /// [`LISTED_HEADS`]), instead of a HEAD and a LIST per name. A name the listing lacks does not exist, as a
    /// name asked for and not found would not for the negative TTL (the listing is trusted no longer than that):
    /// unless it changed here since the listing was asked, then it is asked for. None: ask the providers.
    pub(super) async fn lookup_listed(&self, path: &str, name: &str) -> Option<FsResult<Attr>> {
        if self.settings.attr_ttl.min(self.settings.negative_ttl) <= 0.0 {
            return None; // nothing is trusted for any time: every lookup asks
        }
        let dir = parent_of(path);
        let misses = self
            .lookup_misses
            .get_with(dir.to_string(), Default::default)
            .fetch_add(1, Ordering::Relaxed);
        if (misses == 0 && !self.looked_up.contains_key(dir)) || self.unlistable.contains_key(dir) {
            return None;
        }
        let listed = self
            .looked_up
            .get_with(dir.to_string(), async {
                let asked = self.inodes.clock();
                match self.list_dir(dir, Heads::All).await {
                    Ok((entries, None, unasked)) if entries.len() <= LISTED_MAX => {
                        let names = entries.iter().map(|e| e.name.clone()).collect();
                        // Files whose attributes could not be asked are looked up by name.
                        let unasked = unasked
                            .iter()
                            .filter_map(|child| child.rsplit('/').next())
                            .map(str::to_string)
                            .collect();
                        let entries = Arc::new(entries);
                        let listings = &self.listings;
                        self.inodes.if_unchanged(dir, asked, || {
                            listings.insert(dir.to_string(), entries.clone());
                        });
                        Some(Arc::new(Listed {
                            names,
                            unasked,
                            asked,
                        }))
                    }
                    Ok((entries, None, _)) if entries.len() > LISTED_MAX => {
                        self.unlistable.insert(dir.to_string(), ());
                        None
                    }
                    _ => None,
                }
            })
            .await?;
        if listed.unasked.contains(name) {
            return None;
        }
        if !listed.names.contains(name) {
            // A listing shows a name no key holds as it is only encoded: a lookup by name finds it.
            if !Provider::key_is_verbatim(name) {
                return None;
            }
            let negative = &self.negative;
            let gone = self.inodes.observed_gone(path, listed.asked, || {
                negative.insert(path.to_string(), ());
            });
            return gone.then_some(Err(FsError::NotFound));
        }
        // Recorded by the listing (or newer, when changed here since); a name unlinked since is asked for.
        let (ino, entry, _) = self.inodes.find(path)?;
        Some(Ok(self.attr(ino, &entry)))
    }

    /// Asks the providers what is at `path` and records the answer. An answer older than a change made here
    /// meanwhile (a background upload finishing, a rename, a create) is not recorded and the question is asked
    /// again; after a few such rounds the tree's own entry, the newest, is the answer.
    pub(super) async fn refresh(&self, path: &str) -> FsResult<Attr> {
        for _ in 0..3 {
            let asked = self.inodes.clock();
            match self.stat_path(path).await {
                Ok(entry) => {
                    if let Some((ino, shown)) = self.inodes.observed(path, entry, asked) {
                        return Ok(self.attr(ino, &shown));
                    }
                }
                Err(FsError::NotFound) => {
                    let negative = &self.negative;
                    let gone = self.inodes.observed_gone(path, asked, || {
                        negative.insert(path.to_string(), ());
                    });
                    if gone {
                        return Err(FsError::NotFound);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let (ino, entry) = self.current(path).ok_or(FsError::NotFound)?;
        Ok(self.attr(ino, &entry))
    }

    /// The path of `name` in directory `parent`.
    pub(super) fn child_path(&self, parent: Ino, name: &str) -> FsResult<String> {
        let (dir, entry, _) = self.path_of(parent)?;
        if entry.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        if name.contains('/') || name == "." || name == ".." || name.is_empty() {
            return Err(FsError::Invalid(format!("name {name:?}")));
        }
        let path = child_of(&dir, name);
        self.check_name_length(&path, name)?;
        Ok(path)
    }

    /// ENAMETOOLONG before anything is asked or written: a component or a whole key (with the provider's prefix
    /// and room for a directory marker below it) longer than the provider holding `path` stores.
    pub(super) fn check_name_length(&self, path: &str, name: &str) -> FsResult<()> {
        let Ok((_, _, provider)) = self.storage.resolve(path) else {
            return Ok(()); // unrouted: answered elsewhere
        };
        let key = provider.prefix.len() + 1 + path.len() + 1 + DIR_MARKER.len();
        if name.len() > provider.name_max() || key > provider.key_max() {
            return Err(FsError::NameTooLong(format!(
                "{path}: provider `{}` ({}) stores names up to {} bytes and keys up to {} bytes",
                provider.name,
                provider.kind,
                provider.name_max(),
                provider.key_max()
            )));
        }
        Ok(())
    }

    /// The longest name component every provider of the mount stores (`statfs`'s f_namelen).
    pub fn name_max(&self) -> usize {
        self.storage
            .providers()
            // A name may become a directory: its marker's key (`prefix/name/.zmount-dir`) must fit too, as
            // `check_name_length` requires.
            .map(|p| {
                p.name_max()
                    .min(p.key_max() - p.prefix.len() - 2 - DIR_MARKER.len())
            })
            .min()
            .unwrap_or(255)
    }

    /// Attributes of `ino` (through the open handle `fh` when given: an unlinked open file still has them, with
    /// no links), asking the provider again once they are older than the TTL.
    pub async fn getattr(&self, ino: Ino, fh: Option<u64>) -> FsResult<Attr> {
        if let Some(handle) = fh.and_then(|fh| self.handle(fh).ok()) {
            if let Handle::Write { staged, .. } = &*handle {
                let known = self.inodes.get(ino).map(|(_, e, _)| e);
                let mut attr = self.attr(ino, &Self::staged_entry(staged, known));
                if staged.path().is_none() {
                    attr.nlink = 0;
                }
                return Ok(attr);
            }
        }
        let (path, entry, age) = self.path_of(ino)?;
        if !self.inodes.is_linked(ino) {
            // `fstat` of a file whose name is gone (some kernels ask without the handle): its open handles still
            // reach it; it has no links.
            if let Some(handle) = self.open_on(ino) {
                let mut attr = match &*handle {
                    Handle::Write { staged, .. } => {
                        self.attr(ino, &Self::staged_entry(staged, Some(entry)))
                    }
                    _ => self.attr(ino, &entry),
                };
                attr.nlink = 0;
                return Ok(attr);
            }
        }
        if let Some(staged) = self.uploads.get(&path) {
            // the staged copy is the truth
            return Ok(self.attr(ino, &Self::staged_entry(&staged, Some(entry))));
        }
        if ino == ROOT || age < self.attr_ttl() {
            return Ok(self.attr(ino, &entry));
        }
        self.refresh(&path).await
    }

    /// What is at `path` now: a directory if any provider holds objects below it, else the routed object.
    pub(super) async fn stat_path(&self, path: &str) -> FsResult<Entry> {
        if let Some(staged) = self.uploads.get(path) {
            return Ok(Self::staged_entry(&staged, None));
        }
        // A directory wins over a file of the same name: once some provider shows objects below `path`, the
        // answer does not wait for the file lookup (whose "not found" may wait on a stalled primary).
        let (file, dir) = {
            let (mut file, mut dir) = (
                std::pin::pin!(self.head(path)),
                std::pin::pin!(self.dir_below(path)),
            );
            tokio::select! {
                found = &mut dir => match found {
                    Ok(Some(seen)) => (Ok(None), Ok(Some(seen))),
                    other => ((&mut file).await, other),
                },
                head = &mut file => (head, (&mut dir).await),
            }
        };
        match (dir, file) {
            (Ok(Some(seen)), _) => {
                let posix = self.dir_posix_seen(path, &seen).await?;
                Ok(Entry {
                    posix,
                    ..Entry::dir(self.mounted_at)
                })
            }
            (_, Ok(Some(entry))) => Ok(entry),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(None), Ok(None)) => Err(FsError::NotFound),
        }
    }

    /// Mode, owner and times of directory `path`, stored on its marker object (none: the defaults).
    pub(crate) async fn dir_posix(&self, path: &str) -> FsResult<Option<posix::Posix>> {
        self.dir_posix_seen(path, &[]).await
    }

    /// [`Self::dir_posix`], without the requests that the listings below `path` ([`Self::dir_below`]) already
    /// answered. Paginated listings come in byte order and `path/` sorts first below `path`, so a provider that
    /// holds nothing below `path`, or whose first key there is not `path/`, holds no s3fs folder object; one whose
    /// first key sorts after the marker's holds no marker (a folder made by other tools: no HEAD at all).
    async fn dir_posix_seen(&self, path: &str, seen: &[Seen]) -> FsResult<Option<posix::Posix>> {
        let below = |provider: &Provider| {
            seen.iter()
                .find(|(name, _)| *name == provider.name)
                .map(|(_, below)| below)
        };
        let marker = marker_of(path);
        // Only where the marker has one place to be: with fallbacks, a provider lacking it sends the HEAD on.
        let no_marker = self
            .storage
            .resolve(&marker)
            .ok()
            .and_then(|(clean, resolved, _)| {
                let order = self.storage.read_order(&clean, resolved.route);
                let [provider] = &order[..] else {
                    return None;
                };
                let below = below(provider)?;
                let key = provider.key_for(&clean);
                Some(
                    !below.any
                        || below
                            .first
                            .as_ref()
                            .is_some_and(|f| f.as_ref() > key.as_ref()),
                )
            });
        if no_marker != Some(true) {
            match self.storage.get_info_or_defaults(&marker).await {
                Ok(info) => return Ok(posix::Posix::from_metadata(&info.metadata)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let no_s3fs_object = self
            .storage
            .resolve(path)
            .ok()
            .and_then(|(_, _, provider)| {
                let below = below(provider)?;
                let key = provider.key_for(path);
                Some(!below.any || below.first.as_ref().is_some_and(|f| *f != key))
            });
        match no_s3fs_object {
            Some(true) => Ok(None),
            _ => Ok(self.s3fs_dir_posix(path).await),
        }
    }

    /// The mode, owner and times s3fs stores on its directory object `path/` (on S3 and S3-compatible stores),
    /// for a directory without a marker of zmount's own. Best effort: no such object, or no answer, is "defaults".
    pub(super) async fn s3fs_dir_posix(&self, path: &str) -> Option<posix::Posix> {
        if path.is_empty() {
            return None;
        }
        let (_, _, provider) = self.storage.resolve(path).ok()?;
        let dirs = provider.s3_direct.as_ref()?;
        let started = std::time::Instant::now();
        let key = provider.key_for(path);
        let ask = dirs.metadata(key.as_ref());
        // Best effort: where fallbacks stand in for this provider, it gets its hedge delay, not its timeouts.
        let answer = match self.dir_attempts(path, provider) {
            Attempts::Sole => ask.await,
            _ => match tokio::time::timeout(provider.health.pace.delay(), ask).await {
                Ok(answer) => answer,
                Err(_) => {
                    crate::providers::hedge::given_up(&provider.health);
                    return None;
                }
            },
        };
        let head = crate::providers::guard::Op::Head;
        provider.health.counters.record(head, started.elapsed());
        match answer {
            Ok(metadata) => posix::Posix::from_metadata(&metadata?),
            Err(e) => {
                tracing::debug!("{path}: s3fs directory object not read: {e}");
                None
            }
        }
    }

    /// The file at `path` from the first provider in read order that holds it (primary, then fallbacks).
    pub(super) async fn head(&self, path: &str) -> FsResult<Option<Entry>> {
        let (path, resolved, _) = self.storage.resolve(path)?;
        let order = self.storage.read_order(&path, resolved.route);
        let found = first_holder(&order, &resolved.route.provider, &path, |client| {
            let path = path.clone();
            async move { head_one(&client, &path).await }
        })
        .await;
        match found {
            Ok((entry, _)) => Ok(Some(entry)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether any provider that may hold entries below `path` has at least one object there. Providers that
    /// cannot be reached are left out when an answering fallback stands in for them, else the check fails.
    pub(super) async fn dir_exists(&self, path: &str) -> FsResult<bool> {
        Ok(self.dir_below(path).await?.is_some())
    }

    /// [`Self::dir_exists`], with what each provider that answered listed below `path` (None: nothing there).
    pub(super) async fn dir_below(&self, path: &str) -> FsResult<Option<Vec<Seen>>> {
        let providers = self.providers_under(path);
        let check = |provider: &Arc<Provider>| {
            let provider = provider.clone();
            let attempts = self.dir_attempts(path, &provider);
            let path = path.to_string();
            let check = async move {
                let client = provider.client(attempts);
                crate::providers::listing::any_below(&client, &provider.key_for(&path))
                    .await
                    .map_err(|e| StorageError::from_store(&provider, &path, e))
            };
            Box::pin(check) as Asked<crate::providers::listing::Below>
        };
        let found = self
            .ask_all(
                path,
                &providers,
                check,
                |found| matches!(found, Ok(b) if b.any),
            )
            .await;
        if found.iter().any(|r| matches!(r, Ok(b) if b.any)) {
            let seen = providers.iter().zip(found);
            let seen = seen.filter_map(|(p, r)| Some((p.name.clone(), r.ok()?)));
            return Ok(Some(seen.collect()));
        }
        let mut outcome = Outcome::of(&providers, found)?;
        self.check_covered(path, &mut outcome)?;
        Ok(None)
    }
}

/// What one provider's listing below a directory showed, by provider name (see [`Filesystem::dir_below`]).
pub(super) type Seen = (String, crate::providers::listing::Below);

/// Content types that mark an object as a directory.
pub(super) const DIRECTORY_TYPES: [&str; 2] = ["application/x-directory", "httpd/unix-directory"];

/// The metadata key gcsfuse keeps a symlink's target in (its object is empty).
pub(super) const GCSFUSE_LINK: &str = "gcsfuse_symlink_target";

/// HEAD of one provider's copy of `path`, with the user metadata that carries mode, owner and mtime.
pub(super) async fn head_one(
    client: &ProviderClient<'_>,
    path: &str,
) -> Result<Entry, StorageError> {
    let options = object_store::GetOptions {
        head: true,
        ..Default::default()
    };
    let provider = client.provider();
    let head = client.get(path, options).await?;
    let (meta, attributes) = (head.meta(), head.attributes());
    let mut posix = posix::Posix::from_attributes(attributes);
    let gcsfuse_link = object_store::Attribute::Metadata(GCSFUSE_LINK.into());
    if attributes.get(&gcsfuse_link).is_some() {
        let stored = posix.get_or_insert_with(Default::default);
        stored.kind = Some(libc::S_IFLNK);
        stored.mode = stored.mode.or(Some(0o777));
    }
    // Older tools (and consoles) write a directory as an object `dir` with a directory content type.
    let directory = attributes
        .get(&object_store::Attribute::ContentType)
        .is_some_and(|t| DIRECTORY_TYPES.iter().any(|d| t.as_ref().starts_with(d)));
    Ok(Entry {
        kind: match directory {
            true => Kind::Dir,
            false => Kind::of_file(posix.as_ref()),
        },
        size: meta.size,
        mtime: meta.last_modified.into(),
        etag: meta.e_tag.clone().or(meta.version.clone()),
        posix,
        source: Some(provider.name.clone()),
    })
}

/// What a listing taken for lookups says of its directory (see [`Filesystem::lookup_listed`]).
pub(super) struct Listed {
    /// Every name listed.
    names: HashSet<String>,
    /// Listed names whose attributes could not be asked: looked up by name.
    unasked: HashSet<String>,
    /// When the listing was asked: a name changed here since is not answered from it.
    asked: inode::Asked,
}
