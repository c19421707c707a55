//! Prometheus metrics of a running mount (`--metrics-addr 127.0.0.1:PORT`): per provider request counts by kind,
//! bytes, errors, a latency histogram, health, failovers and heals; block-cache hits, misses and evictions;
//! uploads waiting. Served as text format 0.0.4 by a minimal HTTP/1.1 responder (one request per connection), so
//! no web framework is needed.

use crate::fs::Filesystem;
use crate::providers::guard::{Counters, HealthState, Op, LATENCY_BUCKETS};
use crate::providers::Provider;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client may take to send its request before the connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read; what the request says does not matter, only that it was received.
const MAX_REQUEST: usize = 16 * 1024;

/// Binds `addr` and answers every request with the metrics of `fs`.
pub async fn serve(addr: &str, fs: Arc<Filesystem>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let mut conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of descriptors or similar: wait instead of spinning.
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let fs = fs.clone();
            tokio::spawn(async move {
                let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut conn));
                if request.await.is_err() {
                    return;
                }
                let body = render(&fs);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Reads to the end of the request head, so that closing afterwards does not reset the connection.
async fn read_request(conn: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP and TYPE lines (its samples follow).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Counters exported one sample per provider: name, help, value.
type PerProvider = (&'static str, &'static str, fn(&Counters) -> u64);

const PER_PROVIDER: [PerProvider; 12] = [
    (
        "zmount_provider_errors_total",
        "Requests that failed with an outage (connection error, timeout, 5xx).",
        |c| c.failures.load(Ordering::Relaxed),
    ),
    (
        "zmount_provider_retries_total",
        "Attempts sent again after an outage (within the request's retry budget).",
        |c| c.retries.load(Ordering::Relaxed),
    ),
    (
        "zmount_hedged_requests_total",
        "Reads also sent to another provider because this one had not answered within its hedge delay.",
        |c| c.hedges.load(Ordering::Relaxed),
    ),
    (
        "zmount_hedge_wins_total",
        "Hedged reads the other provider answered first.",
        |c| c.hedges_won.load(Ordering::Relaxed),
    ),
    (
        "zmount_hedge_cancelled_total",
        "Requests of a hedged read dropped because the other answered first.",
        |c| c.hedges_cancelled.load(Ordering::Relaxed),
    ),
    (
        "zmount_provider_refused_total",
        "Requests not sent because the provider was marked down.",
        |c| c.refused.load(Ordering::Relaxed),
    ),
    (
        "zmount_provider_read_bytes_total",
        "Body bytes received from a provider.",
        |c| c.bytes_read.load(Ordering::Relaxed),
    ),
    (
        "zmount_provider_written_bytes_total",
        "Body bytes sent to a provider.",
        |c| c.bytes_written.load(Ordering::Relaxed),
    ),
    (
        "zmount_provider_down_total",
        "Times a provider was marked down (breaker trips).",
        |c| c.trips.load(Ordering::Relaxed),
    ),
    (
        "zmount_failover_reads_total",
        "Reads a provider served as a fallback.",
        |c| c.served_as_fallback.load(Ordering::Relaxed),
    ),
    (
        "zmount_failover_writes_total",
        "Writes a provider took as a fallback.",
        |c| c.failover_writes.load(Ordering::Relaxed),
    ),
    (
        "zmount_heals_total",
        "Failover writes copied back to this provider.",
        |c| c.heals.load(Ordering::Relaxed),
    ),
];

/// The metrics text.
pub fn render(fs: &Filesystem) -> String {
    let mut out = String::new();
    let providers: Vec<Arc<Provider>> = fs.storage().providers().cloned().collect();
    let name = "zmount_provider_requests_total";
    family(
        &mut out,
        name,
        "counter",
        "Requests sent to a provider (retries included), by kind.",
    );
    for p in &providers {
        for op in Op::ALL {
            let n = p.health.counters.by_op[op as usize].load(Ordering::Relaxed);
            let (provider, op) = (label(&p.name), op.name());
            let _ = writeln!(out, "{name}{{provider=\"{provider}\",op=\"{op}\"}} {n}");
        }
    }
    for (name, help, get) in PER_PROVIDER {
        family(&mut out, name, "counter", help);
        for p in &providers {
            let (provider, n) = (label(&p.name), get(&p.health.counters));
            let _ = writeln!(out, "{name}{{provider=\"{provider}\"}} {n}");
        }
    }
    let name = "zmount_provider_up";
    family(
        &mut out,
        name,
        "gauge",
        "1 when the provider serves, 0 when marked down (0.5 while probing).",
    );
    for p in &providers {
        let up = match p.health.state() {
            HealthState::Up => "1",
            HealthState::Probing => "0.5",
            HealthState::Down => "0",
        };
        let _ = writeln!(out, "{name}{{provider=\"{}\"}} {up}", label(&p.name));
    }
    latency(&mut out, &providers);
    cache(&mut out, fs);
    images(&mut out, fs);
    let name = "zmount_uploads_pending";
    family(
        &mut out,
        name,
        "gauge",
        "Files acknowledged (closed or fsynced) but not yet on their provider.",
    );
    let stats = fs.stats();
    let _ = writeln!(out, "{name} {}", stats.journaled_uploads);
    let name = "zmount_uploads_running";
    family(
        &mut out,
        name,
        "gauge",
        "Background uploads in progress (write-back versions being put on their provider).",
    );
    let _ = writeln!(out, "{name} {}", stats.background_uploads);
    let name = "zmount_heals_pending";
    family(
        &mut out,
        name,
        "gauge",
        "Failover writes waiting to be copied back to their primary.",
    );
    let _ = writeln!(out, "{name} {}", stats.pending_heals);
    out
}

fn latency(out: &mut String, providers: &[Arc<Provider>]) {
    let name = "zmount_provider_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time of one request attempt until its response began (or it failed).",
    );
    for p in providers {
        let c = &p.health.counters;
        let provider = label(&p.name);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += c.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{provider=\"{provider}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += c.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{provider=\"{provider}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{provider=\"{provider}\"}} {cumulative}");
    }
}

/// Image work (routes with `transforms`/`variants`): one counter family, by outcome.
fn images(out: &mut String, fs: &Filesystem) {
    let Some(images) = fs.images() else {
        return;
    };
    let c = &images.counters;
    family(
        out,
        "zmount_images_total",
        "counter",
        "Image work by outcome: variants written, files transformed, files skipped (not usable images), jobs failed.",
    );
    for (outcome, n) in [
        ("variant", &c.variants),
        ("transformed", &c.transformed),
        ("skipped", &c.skipped),
        ("failed", &c.failed),
    ] {
        let n = n.load(Ordering::Relaxed);
        let _ = writeln!(out, "zmount_images_total{{outcome=\"{outcome}\"}} {n}");
    }
}

fn cache(out: &mut String, fs: &Filesystem) {
    let cache = fs.block_cache();
    let s = &cache.stats;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    family(
        out,
        "zmount_cache_hits_total",
        "counter",
        "Block reads served from the cache, by tier.",
    );
    let _ = writeln!(
        out,
        "zmount_cache_hits_total{{tier=\"memory\"}} {}",
        load(&s.memory_hits)
    );
    let _ = writeln!(
        out,
        "zmount_cache_hits_total{{tier=\"disk\"}} {}",
        load(&s.disk_hits)
    );
    family(
        out,
        "zmount_cache_misses_total",
        "counter",
        "Blocks fetched from a provider.",
    );
    let _ = writeln!(out, "zmount_cache_misses_total {}", load(&s.misses));
    family(
        out,
        "zmount_cache_fills_total",
        "counter",
        "Objects read at random that were fetched whole into the disk cache.",
    );
    let _ = writeln!(out, "zmount_cache_fills_total {}", load(&s.fills));
    family(
        out,
        "zmount_cache_evictions_total",
        "counter",
        "Blocks dropped to make room, by tier.",
    );
    let _ = writeln!(
        out,
        "zmount_cache_evictions_total{{tier=\"memory\"}} {}",
        load(&s.memory_evictions)
    );
    let _ = writeln!(
        out,
        "zmount_cache_evictions_total{{tier=\"disk\"}} {}",
        cache.disk_evictions()
    );
    family(
        out,
        "zmount_cache_disk_bytes",
        "gauge",
        "Bytes the disk cache holds.",
    );
    let _ = writeln!(out, "zmount_cache_disk_bytes {}", cache.disk_used());
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
