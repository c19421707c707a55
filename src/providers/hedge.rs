//! Stalls: a provider that accepts a request and then says nothing is the common failure of an overloaded or
//! partitioned server, and waiting out a timeout per attempt makes every read wait seconds. This module owns how
//! long a read waits for a provider before another provider that can answer is asked too (the hedge delay), the
//! race between the two, and the "slow" mark a provider gets when it keeps losing such races.
//!
//! * **Hedge delay** ([`Pace::delay`]): the 95th percentile of the provider's recent answer times (the time to
//!   the first byte of a GET, to the answer of a HEAD or LIST), doubled, kept within 200 ms and 1 s; 300 ms until
//!   enough answers were seen. A healthy provider answers well within it, so hedges are rare and its load does not
//!   grow.
//! * **Race** ([`race`]): the first request runs alone for the hedge delay; then the second is sent and the first
//!   *good* answer wins, the loser is dropped (cancelled). An answer that is not good from the second ("not found")
//!   never concludes while the first is still out: the caller gets both answers instead.
//! * **Slow** ([`Pace::strike`]): each race the provider loses (and each listing that had to go on without it) is a
//!   strike; three in a row mark it slow for the breaker's cool-down: its reads then go to its fallbacks first and
//!   its hedges start at once. An answer within the hedge delay clears the strikes; after the cool-down it is asked
//!   first again, which is the probe. Slow is not down: requests with nowhere else to go still go to it.

use super::guard::Health;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FLOOR: Duration = Duration::from_millis(200);
const CEILING: Duration = Duration::from_secs(1);
/// Until this many answers were seen, the delay is [`UNKNOWN`].
const MIN_SAMPLES: usize = 8;
const UNKNOWN: Duration = Duration::from_millis(300);
const SAMPLES: usize = 64;
/// Races lost in a row that mark a provider slow.
const STRIKES: u32 = 3;

/// A provider's recent answer times and its slow mark.
#[derive(Debug)]
pub struct Pace {
    name: String,
    cooldown: Duration,
    samples: Mutex<VecDeque<Duration>>,
    strikes: AtomicU32,
    slow_until: Mutex<Option<Instant>>,
}

impl Pace {
    pub fn new(name: &str, cooldown: Duration) -> Self {
        Pace {
            name: name.to_string(),
            cooldown,
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            strikes: AtomicU32::new(0),
            slow_until: Mutex::new(None),
        }
    }

    /// How long a read waits for this provider before asking another one too (zero while it is slow).
    pub fn delay(&self) -> Duration {
        if self.is_slow() {
            return Duration::ZERO;
        }
        let samples = self.samples.lock().unwrap();
        if samples.len() < MIN_SAMPLES {
            return UNKNOWN;
        }
        let mut sorted: Vec<Duration> = samples.iter().copied().collect();
        sorted.sort();
        let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
        (p95 * 2).clamp(FLOOR, CEILING)
    }

    /// An answer that took `took`.
    pub fn observe(&self, took: Duration) {
        let fast = took <= self.delay().max(FLOOR);
        {
            let mut samples = self.samples.lock().unwrap();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(took);
        }
        if fast && self.strikes.swap(0, Ordering::Relaxed) >= STRIKES {
            *self.slow_until.lock().unwrap() = None;
            tracing::info!("provider `{}` answers in time again", self.name);
        }
    }

    /// A race lost (or a listing that went on without it).
    pub fn strike(&self) {
        let strikes = self.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        if strikes == STRIKES {
            *self.slow_until.lock().unwrap() = Some(Instant::now() + self.cooldown);
            tracing::warn!(
                "provider `{}` is slow ({strikes} requests in a row got no answer within the hedge delay): its reads go to its fallbacks first for {:?}",
                self.name,
                self.cooldown
            );
        }
    }

    pub fn is_slow(&self) -> bool {
        let mut until = self.slow_until.lock().unwrap();
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None; // the cool-down is over: the next request is the probe
                self.strikes.store(STRIKES - 1, Ordering::Relaxed); // one more loss marks it slow again
                false
            }
            None => false,
        }
    }
}

/// A listing went on without the provider of `health` after its hedge delay: a race it lost, its request
/// cancelled.
pub fn given_up(health: &Health) {
    let counters = &health.counters;
    counters.hedges.fetch_add(1, Ordering::Relaxed);
    counters.hedges_won.fetch_add(1, Ordering::Relaxed);
    counters.hedges_cancelled.fetch_add(1, Ordering::Relaxed);
    health.pace.strike();
}

/// How a race ended.
pub enum Raced<R> {
    /// No second request was sent (the first answered within the hedge delay, or there was nobody to ask).
    Alone(R),
    /// The first request answered well first (the second, if sent, was cancelled).
    First(R),
    /// The second request answered well first; the first was cancelled.
    Second(R),
    /// Neither answered well: both answers.
    Neither(R, R),
}

/// Runs `first` against the provider whose `health` is given; if it has not answered within that provider's hedge
/// delay, starts `second()` (None: nothing to hedge with) and returns the first answer that `good` accepts.
pub async fn race<R, F, S, SF>(
    health: &Health,
    first: F,
    second: S,
    good: impl Fn(&R) -> bool,
) -> Raced<R>
where
    F: Future<Output = R>,
    S: FnOnce() -> Option<SF>,
    SF: Future<Output = R>,
{
    let mut first = std::pin::pin!(first);
    let delay = health.pace.delay();
    if let Ok(answer) = tokio::time::timeout(delay, &mut first).await {
        return Raced::Alone(answer);
    }
    let Some(second) = second() else {
        return Raced::Alone(first.await);
    };
    let counters = &health.counters;
    counters.hedges.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("no answer within {delay:?}: a hedged request goes out");
    let mut second = std::pin::pin!(second);
    let (mut first_answer, mut second_answer) = (None, None);
    loop {
        tokio::select! {
            answer = &mut first, if first_answer.is_none() => {
                if good(&answer) {
                    if second_answer.is_none() {
                        counters.hedges_cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    return Raced::First(answer);
                }
                first_answer = Some(answer);
            }
            answer = &mut second, if second_answer.is_none() => {
                if good(&answer) {
                    if first_answer.is_none() {
                        counters.hedges_cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.hedges_won.fetch_add(1, Ordering::Relaxed);
                    health.pace.strike();
                    return Raced::Second(answer);
                }
                second_answer = Some(answer);
            }
        }
        if let (Some(_), Some(_)) = (&first_answer, &second_answer) {
            let (a, b) = (first_answer.take().unwrap(), second_answer.take().unwrap());
            return Raced::Neither(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_recent_answers_within_its_bounds() {
        let pace = Pace::new("p", Duration::from_secs(10));
        assert_eq!(pace.delay(), UNKNOWN, "too few answers seen");
        for _ in 0..SAMPLES {
            pace.observe(Duration::from_millis(5));
        }
        assert_eq!(pace.delay(), FLOOR, "a fast provider gets the floor");
        for _ in 0..SAMPLES {
            pace.observe(Duration::from_millis(300));
        }
        assert_eq!(pace.delay(), Duration::from_millis(600));
        for _ in 0..SAMPLES {
            pace.observe(Duration::from_secs(3));
        }
        assert_eq!(pace.delay(), CEILING);
    }

    #[test]
    fn three_lost_races_mark_a_provider_slow_and_a_quick_answer_clears_it() {
        let pace = Pace::new("p", Duration::from_secs(60));
        pace.strike();
        pace.strike();
        assert!(!pace.is_slow());
        pace.strike();
        assert!(pace.is_slow());
        assert_eq!(
            pace.delay(),
            Duration::ZERO,
            "a slow provider is hedged at once"
        );
        pace.observe(Duration::from_millis(1));
        assert!(!pace.is_slow(), "it answered in time");
    }
}
