//! One directory level of a provider, listed so that one odd key cannot hide the others.
//!
//! object_store turns every key of a listing page into a `Path` and fails the whole page when one cannot be (a key
//! holding `\n` or `\t`, an empty or `..` segment): anyone with write access to a bucket could then make a whole
//! directory disappear from the mount. When that happens, [`list_dir`] lists the level again page by page from a
//! start key (the provider's `start-after`), halving the page until the page before the odd key goes through, steps
//! past the odd key (or the whole odd prefix) and goes on; each odd key is logged once, by name. Only providers with
//! paginated listings (S3, GCS, Azure) can do this; a local folder never fails this way (its listing skips such
//! names itself).

use super::guard::GuardedPages;
use super::{Provider, ProviderClient};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ListResult, ObjectMeta, ObjectStore};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};

/// Largest page asked for while stepping around odd keys (the providers' own maximum).
const PAGE: usize = 1000;
/// Pages one recovery may take before it gives up (a provider ignoring the start key would loop forever).
const MAX_PAGES: usize = 100_000;

/// The entries directly under `key` (the whole bucket for None) on the client's provider.
pub async fn list_dir(
    client: &ProviderClient<'_>,
    key: Option<&Path>,
) -> object_store::Result<ListResult> {
    let first = client.store().list_with_delimiter(key).await;
    match (&first, client.pages()) {
        (Err(object_store::Error::InvalidPath { source }), Some(paged)) => {
            report(client.provider(), &odd_key(source));
            list_around_odd_keys(client.provider(), &paged, key, None).await
        }
        _ => first,
    }
}

/// One directory level of a provider page by page, in key order, for a listing handed out as it arrives. An odd
/// key in a page turns the rest of the listing into one last page taken around odd keys (as [`list_dir`] does).
pub struct DirPages<'a> {
    client: &'a ProviderClient<'a>,
    paged: GuardedPages,
    key: Option<Path>,
    page_size: usize,
    token: Option<String>,
    /// Where the listing has got to: every later key sorts after it (what a start key would be).
    reached: Option<String>,
    done: bool,
}

/// One page of a [`DirPages`] listing.
pub struct Page {
    pub result: ListResult,
    /// The raw key every key of later pages sorts after (a folder's `KEY/`); None on the last page.
    pub through: Option<String>,
}

impl<'a> DirPages<'a> {
    /// Pages of the entries directly under `key` (the whole bucket for None), `page_size` entries each at most;
    /// None where the provider has no paginated listings (a local folder).
    pub fn new(
        client: &'a ProviderClient<'a>,
        key: Option<Path>,
        page_size: usize,
    ) -> Option<Self> {
        Some(DirPages {
            paged: client.pages()?,
            client,
            key,
            page_size: page_size.clamp(1, PAGE),
            token: None,
            reached: None,
            done: false,
        })
    }

    /// The next page; None once the listing has ended (a directory the provider does not have is empty).
    pub async fn next(&mut self) -> object_store::Result<Option<Page>> {
        if self.done {
            return Ok(None);
        }
        let prefix = self.key.as_ref().map(|k| format!("{}/", k.as_ref()));
        let opts = PaginatedListOptions {
            delimiter: Some("/".into()),
            max_keys: Some(self.page_size),
            page_token: self.token.take(),
            ..Default::default()
        };
        match self.paged.list_paginated(prefix.as_deref(), opts).await {
            Ok(listed) => {
                let last = last_key(&listed.result);
                self.reached =
                    self.reached
                        .take()
                        .max(last.clone().map(|l| match l.ends_with('/') {
                            true => past(&l),
                            false => l,
                        }));
                self.token = listed.page_token;
                self.done = self.token.is_none();
                let through = if self.done {
                    None
                } else {
                    last.or_else(|| self.reached.clone())
                };
                Ok(Some(Page {
                    result: listed.result,
                    through,
                }))
            }
            Err(object_store::Error::InvalidPath { source }) => {
                report(self.client.provider(), &odd_key(&source));
                self.done = true;
                let reached = self.reached.take();
                let rest = list_around_odd_keys(
                    self.client.provider(),
                    &self.paged,
                    self.key.as_ref(),
                    reached,
                )
                .await?;
                Ok(Some(Page {
                    result: rest,
                    through: None,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What a one-key listing below a directory found.
#[derive(Debug, Clone, Default)]
pub struct Below {
    /// Whether any object is below the directory's key.
    pub any: bool,
    /// The first key below it in byte order, where the provider lists in pages (S3, GCS, Azure list keys in that
    /// order; `KEY/` itself, an object standing for the folder, sorts first and comes back as `KEY` on S3, while
    /// object_store drops it on Azure, leaving the page empty). None where the provider lists otherwise, the page
    /// came back empty, or the key is not a path.
    pub first: Option<Path>,
}

impl Below {
    /// Something is below, which key first is not known.
    const UNSEEN: Below = Below {
        any: true,
        first: None,
    };
}

/// Whether the client's provider holds any object below `key` (a directory's key, without the trailing `/`), and
/// the first one: one key asked for where listings are paginated, not a page of a thousand. An object whose key no
/// path can name is still something below `key`.
pub async fn any_below(client: &ProviderClient<'_>, key: &Path) -> object_store::Result<Below> {
    let found = match client.pages() {
        Some(paged) => {
            let prefix = format!("{key}{}", if key.as_ref().is_empty() { "" } else { "/" });
            let opts = PaginatedListOptions {
                max_keys: Some(1),
                ..Default::default()
            };
            paged
                .list_paginated((!prefix.is_empty()).then_some(prefix.as_str()), opts)
                .await
                .map(|page| {
                    let first = page.result.objects.first().map(|m| m.location.clone());
                    Below {
                        // A page emptied by the client (object_store drops Azure's `KEY/` blob and directory
                        // entries) still says there is more when it carries a continuation.
                        any: first.is_some()
                            || !page.result.common_prefixes.is_empty()
                            || page.page_token.is_some(),
                        first,
                    }
                })
        }
        None => {
            let mut listing = client.store().list(Some(key));
            match futures::StreamExt::next(&mut listing).await {
                Some(Ok(_)) => Ok(Below::UNSEEN),
                None => Ok(Below::default()),
                Some(Err(e)) => Err(e),
            }
        }
    };
    match found {
        Err(object_store::Error::InvalidPath { .. }) => Ok(Below::UNSEEN),
        Err(object_store::Error::NotFound { .. }) => Ok(Below::default()),
        other => other,
    }
}

/// The raw key object_store could not take, from its error.
fn odd_key(error: &object_store::path::Error) -> String {
    match error {
        object_store::path::Error::BadSegment { path, .. } => path.clone(),
        other => other.to_string(),
    }
}

/// Logs an odd key once per provider and key.
fn report(provider: &Provider, key: &str) {
    static SEEN: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if seen
        .lock()
        .expect("poisoned")
        .insert((provider.name.clone(), key.to_string()))
    {
        tracing::warn!(
            "provider {}: object {:?} is left out of listings: its key cannot be a path (control characters, or an empty, `.` or `..` part)",
            provider.name,
            key
        );
    }
}

/// The largest raw key a page shows: an object's key, or a folder's `KEY/`.
pub fn last_key(page: &ListResult) -> Option<String> {
    let keys = page.objects.iter().map(|m| m.location.as_ref().to_string());
    let folders = page
        .common_prefixes
        .iter()
        .map(|p| format!("{}/", p.as_ref()));
    keys.chain(folders).max()
}

/// What follows every key starting with `key` (start keys are exclusive, compared byte by byte).
fn past(key: &str) -> String {
    format!("{key}{}", char::MAX)
}

/// The rest of a listing from `offset` on (from the start for None), page by page around odd keys.
async fn list_around_odd_keys(
    provider: &Provider,
    paged: &dyn PaginatedListStore,
    key: Option<&Path>,
    mut offset: Option<String>,
) -> object_store::Result<ListResult> {
    let prefix = key.map(|k| format!("{}/", k.as_ref()));
    let mut objects: BTreeMap<String, ObjectMeta> = BTreeMap::new();
    let mut prefixes: BTreeMap<String, Path> = BTreeMap::new();
    let mut page = PAGE;
    let mut skipped: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let opts = PaginatedListOptions {
            offset: offset.clone(),
            delimiter: Some("/".into()),
            max_keys: Some(page),
            ..Default::default()
        };
        match paged.list_paginated(prefix.as_deref(), opts).await {
            Ok(listed) => {
                // The next start: past the last entry of this page (a folder's whole contents for a prefix).
                let mut last = offset.clone();
                for meta in listed.result.objects {
                    let raw = meta.location.as_ref().to_string();
                    if offset.as_ref().is_some_and(|o| raw <= *o) {
                        continue; // a start key some providers include
                    }
                    last = last.max(Some(raw.clone()));
                    objects.insert(raw, meta);
                }
                for dir in listed.result.common_prefixes {
                    let raw = past(&format!("{}/", dir.as_ref()));
                    if offset.as_ref().is_some_and(|o| raw <= *o) {
                        continue;
                    }
                    last = last.max(Some(raw.clone()));
                    prefixes.insert(raw, dir);
                }
                if last == offset || listed.page_token.is_none() {
                    return Ok(ListResult {
                        common_prefixes: prefixes.into_values().collect(),
                        objects: objects.into_values().collect(),
                        extensions: Default::default(),
                    });
                }
                offset = last;
                page = PAGE;
            }
            Err(object_store::Error::InvalidPath { source }) if page > 1 => {
                let _ = source;
                page /= 2; // the odd key is in this page: list up to it in smaller pages
            }
            Err(object_store::Error::InvalidPath { source }) => {
                let odd = odd_key(&source);
                if skipped.as_deref() == Some(odd.as_str()) {
                    // A provider whose start key is inclusive (Azure's startFrom) hands the odd key back: give up
                    // rather than loop.
                    return Err(object_store::Error::InvalidPath { source });
                }
                report(provider, &odd);
                skipped = Some(odd.clone());
                // Step past the odd key, or past every key under an odd folder name.
                let rest = prefix
                    .as_deref()
                    .and_then(|p| odd.strip_prefix(p))
                    .unwrap_or(&odd);
                offset = Some(match rest.find('/') {
                    Some(at) => past(&odd[..odd.len() - rest.len() + at + 1]),
                    None => odd,
                });
                page = PAGE;
            }
            Err(e) => return Err(e),
        }
    }
    Err(object_store::Error::Generic {
        store: "listing",
        source: format!(
            "listing {} did not end after {MAX_PAGES} pages",
            prefix.as_deref().unwrap_or("/")
        )
        .into(),
    })
}
