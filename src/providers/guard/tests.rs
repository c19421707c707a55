//! Unit tests of the guard: retries and their budget, the breaker, fast failure for callers with somewhere to go.

use super::*;
use object_store::memory::InMemory;
use object_store::ObjectStoreExt;

fn policy(threshold: u32, cooldown: Duration) -> GuardPolicy {
    GuardPolicy {
        attempts: 3,
        read_attempts: 1,
        delay: Duration::from_millis(1),
        exponential: true,
        budget: Duration::from_secs(30),
        first_byte: Duration::from_secs(5),
        total: Duration::from_secs(5),
        failure_threshold: threshold,
        cooldown,
    }
}

#[test]
fn breaker_opens_after_threshold_failures_and_closes_after_a_good_probe() {
    let p = policy(3, Duration::from_millis(50));
    let h = Health::new("s3", "http://x", &p);
    h.failed(&"boom");
    h.failed(&"boom");
    assert_eq!(
        h.state(),
        HealthState::Up,
        "two failures are below the threshold"
    );
    h.succeeded();
    for _ in 0..3 {
        h.failed(&"boom");
    }
    assert_eq!(h.state(), HealthState::Down);
    assert!(!h.admit(), "requests fail fast while the breaker is open");
    assert_eq!(h.counters.trips.load(Ordering::Relaxed), 1);
    std::thread::sleep(Duration::from_millis(60)); // let the cool-down pass (the clock is the thing tested)
    assert!(h.admit(), "after the cool-down one probe goes through");
    assert_eq!(h.state(), HealthState::Probing);
    assert!(!h.admit(), "only one probe at a time");
    h.failed(&"still down");
    assert_eq!(
        h.state(),
        HealthState::Down,
        "a failed probe opens it again"
    );
    std::thread::sleep(Duration::from_millis(60));
    assert!(h.admit());
    h.succeeded();
    assert_eq!(h.state(), HealthState::Up);
    assert!(h.admit());
}

#[test]
fn backoff_grows_exponentially_with_jitter_and_is_capped() {
    let mut p = policy(3, Duration::from_secs(1));
    p.delay = Duration::from_millis(100);
    for failed in 1..=4u32 {
        let base = 100.0 * 2f64.powi(failed as i32 - 1);
        let d = p.backoff(failed).as_secs_f64() * 1000.0;
        assert!(
            d >= base * 0.5 && d < base,
            "attempt {failed}: {d} ms vs base {base}"
        );
    }
    assert!(p.backoff(40) <= MAX_BACKOFF);
    p.exponential = false;
    assert!(p.backoff(4) < Duration::from_millis(100));
}

#[test]
fn outages_are_told_apart_from_answers() {
    let not_found = object_store::Error::NotFound {
        path: "a".into(),
        source: "gone".into(),
    };
    assert!(!is_outage(&not_found));
    assert!(is_outage(&outage("no response within 1s".into())));
    let status = |text: &str| object_store::Error::Generic {
        store: "S3",
        source: text.to_string().into(),
    };
    assert!(is_outage(&status(
        "Server returned non-2xx status code: 503 Service Unavailable: "
    )));
    assert!(!is_outage(&status(
        "Server returned non-2xx status code: 400 Bad Request: nope"
    )));
}

/// Attempts of one request against a provider failing its first `failures` attempts with `error`.
async fn attempts_until_answered(
    store: &Guarded,
    failures: u32,
    error: fn() -> object_store::Error,
) -> (object_store::Result<()>, u32) {
    let tries = AtomicU64::new(0);
    let result = store
        .attempt(Op::Head, Duration::from_secs(5), || {
            let n = tries.fetch_add(1, Ordering::Relaxed) as u32;
            async move {
                if n < failures {
                    Err(error())
                } else {
                    Ok(())
                }
            }
        })
        .await;
    (result, tries.load(Ordering::Relaxed) as u32)
}

fn busy() -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: "Server returned non-2xx status code: 503 Service Unavailable: SlowDown".into(),
    }
}

fn refused() -> object_store::Error {
    outage("connection refused".into())
}

/// A provider answering 503 is up but busy: a request with nowhere else to go keeps asking it (within its
/// attempts and budget) even after the breaker opened; a provider refusing connections is down, and the same
/// request stops at the open breaker.
#[tokio::test]
async fn a_busy_provider_is_retried_and_a_dead_one_is_not() {
    let mut p = policy(2, Duration::from_secs(60));
    p.attempts = 10;
    let health = Arc::new(Health::new("mem", "memory", &p));
    let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p.clone());
    let (result, tries) = attempts_until_answered(&store, 6, busy).await;
    assert!(
        result.is_ok(),
        "answered on the seventh attempt: {result:?}"
    );
    assert_eq!(tries, 7);
    assert_eq!(health.counters.retries.load(Ordering::Relaxed), 6);

    let health = Arc::new(Health::new("mem", "memory", &p));
    let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p.clone());
    let (result, tries) = attempts_until_answered(&store, 6, refused).await;
    assert!(result.is_err());
    assert_eq!(tries, 2, "the breaker opened after two refused connections");

    // The budget ends a request's retries even with attempts left.
    p.delay = Duration::from_millis(40);
    p.budget = Duration::from_millis(100);
    let store = Guarded::new(
        Arc::new(InMemory::new()),
        Arc::new(Health::new("m", "m", &p)),
        p,
    );
    let (result, tries) = attempts_until_answered(&store, 9, busy).await;
    assert!(result.is_err());
    assert!(tries < 9, "stopped by the budget after {tries} attempts");
}

#[tokio::test]
async fn answers_pass_through_and_a_down_provider_fails_fast() {
    let p = policy(1, Duration::from_secs(60));
    let health = Arc::new(Health::new("mem", "memory", &p));
    let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p);
    store.put(&Path::from("a"), payload("hi")).await.unwrap();
    assert_eq!(
        store
            .get(&Path::from("a"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "hi"
    );
    let missing = store.head(&Path::from("b")).await.unwrap_err();
    assert!(matches!(missing, object_store::Error::NotFound { .. }));
    assert_eq!(health.state(), HealthState::Up, "not found is an answer");
    health.failed(&"connection refused");
    let e = store
        .with_attempts(Attempts::Fast)
        .head(&Path::from("a"))
        .await
        .unwrap_err();
    assert!(
        is_outage(&e),
        "with a fallback to go to, a down provider fails at once: {e}"
    );
    assert_eq!(health.counters.refused.load(Ordering::Relaxed), 1);
    store
        .head(&Path::from("a"))
        .await
        .expect("without one, it is tried (and here answers)");
    assert_eq!(
        health.state(),
        HealthState::Up,
        "an answer closes the breaker"
    );
}

/// Bytes of a whole small object, for tests of this module.
fn payload(text: &str) -> PutPayload {
    PutPayload::from(bytes::Bytes::from(text.to_string()))
}
