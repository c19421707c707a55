//! Listings of the storage facade: every object below a prefix across the providers routes send there, each
//! name once, from the provider that ranks first for it.

use super::*;

impl Storage {
    /// Every object at or below `prefix` (a directory path; "" for the whole tree), across all providers that
    /// routes send there, each shown once from the provider its route names, sorted by path. `limit` caps the count.
    pub async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<FileInfo>> {
        self.list_objects(prefix, limit, false).await
    }

    /// Every object at or below `prefix`, markers included, failing unless every provider answered (for moving
    /// a whole directory, which must not leave files behind).
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<FileInfo>> {
        self.list_inner(prefix, None, true, true).await
    }

    /// Like [`Storage::list`]; `with_markers` also returns the mount's directory markers ([`DIR_MARKER`]).
    pub async fn list_objects(
        &self,
        prefix: &str,
        limit: Option<usize>,
        with_markers: bool,
    ) -> Result<Vec<FileInfo>> {
        self.list_inner(prefix, limit, with_markers, false).await
    }

    /// `complete`: fail when any provider does not answer, even one a fallback stands in for.
    pub(super) async fn list_inner(
        &self,
        prefix: &str,
        limit: Option<usize>,
        with_markers: bool,
        complete: bool,
    ) -> Result<Vec<FileInfo>> {
        let prefix = normalize(prefix).map_err(|e| StorageError::Invalid {
            path: prefix.to_string(),
            what: "path",
            reason: e.to_string(),
        })?;
        let names = self.router.providers_under(&prefix);
        let listings = futures::future::join_all(names.iter().map(|name| {
            let complete_without = self.listing_complete_without(&prefix, &[name]);
            let attempts = Attempts::unless_sole(complete_without, Attempts::Full);
            self.providers[*name]
                .client(attempts)
                .list(&prefix)
                .try_collect::<Vec<_>>()
        }))
        .await;
        // Each path once, from the provider that ranks first for it in read order.
        let mut found: BTreeMap<String, (usize, FileInfo)> = BTreeMap::new();
        let mut failed: Vec<&str> = Vec::new();
        let mut first_error = None;
        for (name, listing) in names.iter().zip(listings) {
            let provider = &self.providers[*name];
            let listing = match listing {
                Ok(listing) => listing,
                Err(e) => {
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    failed.push(name);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for meta in listing {
                let Some(path) = provider.path_of(&meta.location) else {
                    continue;
                };
                let marker = path.rsplit('/').next() == Some(DIR_MARKER);
                if !is_within(&path, &prefix) || (marker && !with_markers) {
                    continue;
                }
                let Some(rank) = self.read_rank(&path, &provider.name) else {
                    continue;
                };
                if found.get(&path).is_none_or(|(r, _)| rank < *r) {
                    let info = self.info_from(provider, path.clone(), &meta, None);
                    found.insert(path, (rank, info));
                }
            }
        }
        if let Some(e) = first_error {
            if complete || !self.listing_complete_without(&prefix, &failed) {
                return Err(e);
            }
            tracing::warn!("listing {prefix:?} without {failed:?}: {e}");
        }
        Ok(found
            .into_values()
            .map(|(_, info)| info)
            .take(limit.unwrap_or(usize::MAX))
            .collect())
    }

    /// Whether a listing of directory `dir` shows every file although the providers `failed` did not answer: a
    /// fallback answered for every route they are primary of there, and none of them holds a pending heal there
    /// (the only copy of a failover write).
    pub fn listing_complete_without(&self, dir: &str, failed: &[&str]) -> bool {
        let holders = self.heals.holders_under(dir);
        self.router.uncovered(dir, failed).is_none()
            && !failed.iter().any(|f| holders.iter().any(|h| h == f))
    }

    /// Where `provider` stands in the read order of `path` (0 = asked first), or None when no route sends
    /// `path` there (its object there is not part of the tree).
    pub fn read_rank(&self, path: &str, provider: &str) -> Option<usize> {
        let route = self.router.resolve(path)?.route;
        self.read_order(path, route)
            .iter()
            .position(|p| p.name == provider)
    }
}
