//! A provider's health: the circuit breaker (closed, open for a cool-down, one probe), the request counters and
//! answer times the metrics show, and what counts as an outage (connection errors, timeouts, 5xx, 429).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    /// Serving; `failures` attempts in a row have failed.
    Closed { failures: u32 },
    /// Down: requests fail at once until `until`.
    Open { until: Instant },
    /// One probe request is on its way; others fail at once until it answers (or, if it never reports, `until`).
    Probing { until: Instant },
}

/// What the outside world can read about a provider's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Up,
    Down,
    Probing,
}

/// Kinds of request, for counts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Head,
    Put,
    Part,
    List,
    Delete,
    Copy,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Get,
        Op::Head,
        Op::Put,
        Op::Part,
        Op::List,
        Op::Delete,
        Op::Copy,
    ];

    pub fn name(self) -> &'static str {
        ["get", "head", "put", "part", "list", "delete", "copy"][self as usize]
    }
}

/// Upper bounds (seconds) of the request-latency histogram buckets: from a fast local answer to a slow upload.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters of one provider, since the mount started.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Attempts sent (retries included).
    pub requests: AtomicU64,
    /// Attempts by kind (indexed by [`Op`]).
    #[serde(skip)]
    pub by_op: [AtomicU64; 7],
    /// Body bytes received and sent.
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Attempts by latency bucket ([`LATENCY_BUCKETS`], cumulative counts computed when exported; the last slot
    /// counts attempts slower than every bound), and the sum of latencies in microseconds.
    #[serde(skip)]
    pub latency: [AtomicU64; 13],
    #[serde(skip)]
    pub latency_sum_us: AtomicU64,
    /// Attempts that failed with an outage (connection error, timeout, 5xx).
    pub failures: AtomicU64,
    /// Attempts refused without asking the provider because its breaker was open.
    pub refused: AtomicU64,
    /// Attempts sent again after an outage.
    pub retries: AtomicU64,
    /// Reads also sent to another provider because this one had not answered within its hedge delay.
    pub hedges: AtomicU64,
    /// Of those, the ones the other provider answered first.
    pub hedges_won: AtomicU64,
    /// Requests of a race dropped because the other answered first.
    pub hedges_cancelled: AtomicU64,
    /// Times the breaker opened.
    pub trips: AtomicU64,
    /// Reads (blocks, heads, listings) this provider answered for a route whose primary it is not.
    pub served_as_fallback: AtomicU64,
    /// Writes this provider took for a route whose primary was down.
    pub failover_writes: AtomicU64,
    /// Failover writes copied back to this provider (as primary).
    pub heals: AtomicU64,
}

impl Counters {
    /// One request of `op` that took `took` (requests made beside the wrapped store count here too).
    pub(crate) fn record(&self, op: Op, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.by_op[op as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Health of one provider: circuit breaker plus counters.
#[derive(Debug)]
pub struct Health {
    name: String,
    location: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<Breaker>,
    pub counters: Counters,
    /// Answer times and the slow mark (see [`super::hedge`]).
    pub pace: crate::providers::hedge::Pace,
}

impl Health {
    pub fn new(name: &str, location: &str, policy: &GuardPolicy) -> Self {
        Health {
            name: name.to_string(),
            location: location.to_string(),
            threshold: policy.failure_threshold,
            cooldown: policy.cooldown,
            state: Mutex::new(Breaker::Closed { failures: 0 }),
            counters: Counters::default(),
            pace: crate::providers::hedge::Pace::new(name, policy.cooldown),
        }
    }

    pub fn state(&self) -> HealthState {
        match *self.state.lock().unwrap() {
            Breaker::Closed { .. } => HealthState::Up,
            Breaker::Open { .. } => HealthState::Down,
            Breaker::Probing { .. } => HealthState::Probing,
        }
    }

    /// Whether a request may go to the provider now. After the cool-down, the first caller becomes the probe.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        match *state {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } | Breaker::Probing { until } if now >= until => {
                // A probe that never reported (its caller gave up) is replaced after one more cool-down.
                *state = Breaker::Probing {
                    until: now + self.cooldown,
                };
                tracing::info!(
                    "provider `{}` ({}): probing whether it is back",
                    self.name,
                    self.location
                );
                true
            }
            Breaker::Open { .. } | Breaker::Probing { .. } => false,
        }
    }

    /// The provider answered (any answer, "not found" included).
    pub fn succeeded(&self) {
        let mut state = self.state.lock().unwrap();
        if !matches!(*state, Breaker::Closed { .. }) {
            tracing::info!(
                "provider `{}` ({}) is back; its requests go to it again",
                self.name,
                self.location
            );
        }
        *state = Breaker::Closed { failures: 0 };
    }

    /// An attempt failed with an outage.
    pub fn failed(&self, error: &dyn fmt::Display) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap();
        let open = Breaker::Open {
            until: Instant::now() + self.cooldown,
        };
        match *state {
            Breaker::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                self.counters.trips.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "provider `{}` ({}) is down after {} failed attempts in a row (last: {error}); its requests go to fallbacks for {:?}",
                    self.name, self.location, failures + 1, self.cooldown
                );
            }
            Breaker::Closed { failures } => {
                *state = Breaker::Closed {
                    failures: failures + 1,
                }
            }
            Breaker::Probing { .. } => {
                *state = open;
                tracing::debug!(
                    "provider `{}`: probe failed ({error}); still down",
                    self.name
                );
            }
            Breaker::Open { .. } => {}
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !matches!(*self.state.lock().unwrap(), Breaker::Closed { .. })
    }

    pub(super) fn unavailable(&self) -> object_store::Error {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        outage(format!(
            "provider is marked down after repeated failures; it is tried again after a cool-down of {:?}",
            self.cooldown
        ))
    }
}

/// An outage zmount itself detected: a timeout, or a provider whose breaker is open.
#[derive(Debug)]
pub struct Outage(pub String);

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Outage {}

pub(super) fn outage(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "zmount",
        source: Box::new(Outage(message)),
    }
}

/// True when `error` means the provider could not answer (connection refused or reset, timeout, 5xx, 429), as
/// opposed to an answer such as "not found". Outages are retried, count against health and trigger failover.
pub fn is_outage(error: &object_store::Error) -> bool {
    let object_store::Error::Generic { source, .. } = error else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(err) = cause {
        if err.is::<Outage>() || err.is::<object_store::client::HttpError>() {
            return true;
        }
        cause = err.source();
    }
    http_status(&error.to_string()).is_some_and(|s| s >= 500 || s == 429 || s == 408)
}

/// The provider answered, asking to be asked again later (5xx, 429): it is up but busy, unlike a refused
/// connection or a timeout.
pub(super) fn is_busy(error: &object_store::Error) -> bool {
    http_status(&error.to_string()).is_some_and(|s| s >= 500 || s == 429)
}

/// The HTTP status object_store put in an error message ("... status code: 503 ..."), if any.
pub(crate) fn http_status(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}
