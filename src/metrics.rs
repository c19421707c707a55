//! Prometheus metrics of a running mount (`--metrics-addr 127.0.0.1:PORT`): per provider request counts by kind,
//! bytes, errors, a latency histogram, health, failovers and heals; block-cache hits, misses and evictions;
//! uploads waiting. Served as text format 0.0.4 by a minimal HTTP/1.1 responder (one request per connection), so
//! no web framework is needed.

use crate::fs::Filesystem;
use crate::providers::guard::{HealthState, Op, LATENCY_BUCKETS};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Binds `addr` and answers every request with the metrics of `fs`.
pub async fn serve(addr: &str, fs: Arc<Filesystem>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let fs = fs.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await; // the request line and headers; nothing in them matters
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

/// One metric family: HELP and TYPE lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics text.
pub fn render(fs: &Filesystem) -> String {
    let mut out = String::new();
    let providers: Vec<_> = fs.storage().providers().cloned().collect();
    family(
        &mut out,
        "zmount_provider_requests_total",
        "counter",
        "Requests sent to a provider (retries included), by kind.",
    );
    for p in &providers {
        for op in Op::ALL {
            let n = p.health.counters.by_op[op as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "zmount_provider_requests_total{{provider=\"{}\",op=\"{}\"}} {n}",
                p.name,
                op.name()
            );
        }
    }
    let simple: [(&str, &str, fn(&crate::providers::guard::Counters) -> u64); 8] = [
        (
            "zmount_provider_errors_total",
            "Requests that failed with an outage (connection error, timeout, 5xx).",
            |c| c.failures.load(Ordering::Relaxed),
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
    for (name, help, get) in simple {
        family(&mut out, name, "counter", help);
        for p in &providers {
            let _ = writeln!(
                out,
                "{name}{{provider=\"{}\"}} {}",
                p.name,
                get(&p.health.counters)
            );
        }
    }
    family(
        &mut out,
        "zmount_provider_up",
        "gauge",
        "1 when the provider serves, 0 when marked down (0.5 while probing).",
    );
    for p in &providers {
        let up = match p.health.state() {
            HealthState::Up => "1",
            HealthState::Probing => "0.5",
            HealthState::Down => "0",
        };
        let _ = writeln!(out, "zmount_provider_up{{provider=\"{}\"}} {up}", p.name);
    }
    latency(&mut out, &providers);
    cache(&mut out, fs);
    family(
        &mut out,
        "zmount_uploads_pending",
        "gauge",
        "Files closed but not yet on their provider (queued or staged for retry).",
    );
    let _ = writeln!(
        out,
        "zmount_uploads_pending {}",
        fs.background.pending() + fs.journaled_uploads()
    );
    family(
        &mut out,
        "zmount_heals_pending",
        "gauge",
        "Failover writes waiting to be copied back to their primary.",
    );
    let _ = writeln!(
        out,
        "zmount_heals_pending {}",
        fs.storage().heals().records().len()
    );
    out
}

fn latency(out: &mut String, providers: &[Arc<crate::providers::Provider>]) {
    let name = "zmount_provider_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time of one request attempt until its response began (or it failed).",
    );
    for p in providers {
        let c = &p.health.counters;
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += c.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{provider=\"{}\",le=\"{bound}\"}} {cumulative}",
                p.name
            );
        }
        cumulative += c.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{provider=\"{}\",le=\"+Inf\"}} {cumulative}",
            p.name
        );
        let sum = c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{provider=\"{}\"}} {sum}", p.name);
        let _ = writeln!(out, "{name}_count{{provider=\"{}\"}} {cumulative}", p.name);
    }
}

fn cache(out: &mut String, fs: &Filesystem) {
    let cache = fs.block_cache();
    let s = &cache.stats;
    family(
        out,
        "zmount_cache_hits_total",
        "counter",
        "Block reads served from the cache, by tier.",
    );
    let _ = writeln!(
        out,
        "zmount_cache_hits_total{{tier=\"memory\"}} {}",
        s.memory_hits.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "zmount_cache_hits_total{{tier=\"disk\"}} {}",
        s.disk_hits.load(Ordering::Relaxed)
    );
    family(
        out,
        "zmount_cache_misses_total",
        "counter",
        "Blocks fetched from a provider.",
    );
    let _ = writeln!(
        out,
        "zmount_cache_misses_total {}",
        s.misses.load(Ordering::Relaxed)
    );
    family(
        out,
        "zmount_cache_evictions_total",
        "counter",
        "Blocks dropped to make room, by tier.",
    );
    let _ = writeln!(
        out,
        "zmount_cache_evictions_total{{tier=\"memory\"}} {}",
        s.memory_evictions.load(Ordering::Relaxed)
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
