//! Asking every provider that may hold entries of a directory at once, with hedging (a stalled provider whose
//! fallbacks answered is given up) and coverage (an outage is tolerated only where fallbacks stand in).

use super::*;

impl Filesystem {
    /// Asks every provider of `providers` about directory `dir` at once, answers in their order. Stops early when
    /// an answer satisfies `enough` (the others are dropped). Providers still out once the answered ones make the
    /// listing complete without them (their fallbacks answered) are given up after their hedge delay: a stalled
    /// primary costs a listing its hedge delay, not its timeouts (see crate::providers::hedge). They count as
    /// unavailable, so such a listing is not cached.
    pub(in crate::fs) async fn ask_all<T>(
        &self,
        dir: &str,
        providers: &[Arc<Provider>],
        ask: impl Fn(&Arc<Provider>) -> Asked<T>,
        enough: impl Fn(&Result<T, StorageError>) -> bool,
    ) -> Vec<Result<T, StorageError>> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let started = tokio::time::Instant::now();
        let mut answers: Vec<Option<Result<T, StorageError>>> =
            providers.iter().map(|_| None).collect();
        let mut out: FuturesUnordered<_> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let asked = ask(p);
                async move { (i, asked.await) }
            })
            .collect();
        let gave_up = |provider: &Provider| StorageError::Unavailable {
            provider: provider.name.clone(),
            location: provider.location.clone(),
            path: dir.to_string(),
            message: "no answer within the hedge delay while its fallbacks answered".into(),
        };
        while !out.is_empty() {
            let missing: Vec<&str> = providers
                .iter()
                .zip(&answers)
                .filter(|(_, a)| !matches!(a, Some(Ok(_))))
                .map(|(p, _)| p.name.as_str())
                .collect();
            let answered = answers.iter().any(|a| matches!(a, Some(Ok(_))));
            let deadline =
                (answered && self.storage.listing_complete_without(dir, &missing)).then(|| {
                    let waited = providers
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| a.is_none())
                        .map(|(p, _)| p.health.pace.delay())
                        .max()
                        .unwrap_or_default();
                    started + waited
                });
            tokio::select! {
                Some((i, answer)) = out.next() => {
                    let done = enough(&answer);
                    answers[i] = Some(answer);
                    if done {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    for (provider, answer) in providers.iter().zip(answers.iter_mut()) {
                        if answer.is_none() {
                            crate::providers::hedge::given_up(&provider.health);
                            *answer = Some(Err(gave_up(provider)));
                        }
                    }
                    break;
                }
            }
        }
        providers
            .iter()
            .zip(answers)
            .map(|(p, a)| a.unwrap_or_else(|| Err(gave_up(p))))
            .collect()
    }

    /// How hard a listing of `dir` tries `provider`: a listing that can do without it (see
    /// [`Storage::listing_complete_without`]) still retries fully, but skips it while it is marked down.
    pub(in crate::fs) fn dir_attempts(&self, dir: &str, provider: &Provider) -> Attempts {
        let name = provider.name.as_str();
        let complete_without = self.storage.listing_complete_without(dir, &[name]);
        Attempts::unless_sole(complete_without, Attempts::Full)
    }

    /// Fails when providers that did not answer hold entries of `dir` that no answering fallback stands in for;
    /// returns the outage that was tolerated, if any.
    pub(in crate::fs) fn check_covered<T>(
        &self,
        dir: &str,
        outcome: &mut Outcome<'_, T>,
    ) -> FsResult<Option<StorageError>> {
        let Some(outage) = outcome.first_outage.take() else {
            return Ok(None);
        };
        if !self.storage.listing_complete_without(dir, &outcome.failed) {
            return Err(FsError::Storage(outage));
        }
        tracing::debug!(
            "{dir:?}: answered without {:?}, whose fallbacks stand in",
            outcome.failed
        );
        Ok(Some(outage))
    }

    pub(in crate::fs) fn providers_under(&self, dir: &str) -> Vec<Arc<Provider>> {
        self.storage
            .router()
            .providers_under(dir)
            .into_iter()
            .filter_map(|name| self.storage.provider(name).cloned())
            .collect()
    }
}

/// Results of asking several providers: the answers, and which providers could not answer.
pub(in crate::fs) struct Outcome<'a, T> {
    pub(super) answered: Vec<(T, &'a Arc<Provider>)>,
    failed: Vec<&'a str>,
    first_outage: Option<StorageError>,
}

impl<'a, T> Outcome<'a, T> {
    /// Sorts `results` (one per provider); an error other than an outage is returned at once.
    pub(in crate::fs) fn of(
        providers: &'a [Arc<Provider>],
        results: Vec<Result<T, StorageError>>,
    ) -> FsResult<Self> {
        let mut outcome = Outcome {
            answered: Vec::new(),
            failed: Vec::new(),
            first_outage: None,
        };
        for (provider, result) in providers.iter().zip(results) {
            match result {
                Ok(value) => outcome.answered.push((value, provider)),
                Err(e) if e.is_unavailable() => {
                    outcome.failed.push(provider.name.as_str());
                    outcome.first_outage.get_or_insert(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome)
    }
}

/// One provider's answer about a directory, as [`Filesystem::ask_all`] runs it.
pub(in crate::fs) type Asked<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StorageError>> + Send>>;

/// Runs `ask` for every path, 16 requests in flight (what a listing asks beyond the LIST itself).
pub(in crate::fs) async fn ask_each<T, F, Fut>(paths: Vec<String>, ask: F) -> Vec<(String, T)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (String, T)>,
{
    use futures::StreamExt;
    futures::stream::iter(paths.into_iter().map(ask))
        .buffer_unordered(16)
        .collect()
        .await
}

/// One provider's entries directly in `path` (an empty listing when it has none).
pub(in crate::fs) async fn list_one(
    client: &ProviderClient<'_>,
    path: &str,
) -> Result<ListResult, StorageError> {
    let provider = client.provider();
    let key = provider.listing_key(path);
    match crate::providers::listing::list_dir(client, key.as_ref()).await {
        Ok(listing) => Ok(listing),
        Err(object_store::Error::NotFound { .. }) => Ok(ListResult {
            common_prefixes: vec![],
            objects: vec![],
            extensions: Default::default(),
        }),
        Err(e) => Err(StorageError::from_store(provider, path, e)),
    }
}
