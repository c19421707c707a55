//! The direct-object_store side of the benchmarks (`scripts/bench-*.sh`): the same operations the mount performs,
//! done straight against a provider of a mount.toml, so each mount figure can be printed next to its limit.
//!
//! usage: zmount-bench CONFIG PROVIDER COMMAND ARGS...
//!   seed KEY MIB          write a KEY of MIB mebibytes (multipart, 8 MiB parts)
//!   seed-many PREFIX N [BYTES [IN_FLIGHT]]   write N objects PREFIX/fNNNNN.txt (3 bytes, 64 in flight by default)
//!   get KEY               streamed GET of the whole object           -> MiB/s
//!   ranged KEY [MIB [IN_FLIGHT]]   ranged GETs of MIB mebibytes (1), IN_FLIGHT at a time (32) -> MiB/s
//!   random KEY N          N random 4 KiB ranged GETs, one at a time  -> IOPS
//!   list PREFIX           list every key below PREFIX                -> seconds, count, bytes
//!   purge                 delete every object below the provider's prefix (what a benchmark wrote)
//!   wait-size KEY BYTES   poll (HEAD every 20 ms) until KEY holds BYTES bytes (a write is complete on the server)
//!   photo FILE W H SEED   write a photo-like W×H JPEG (gradients and grain, quality 90) to the local FILE

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use std::time::Instant;
use zmount::providers::Provider;
use zmount::{Config, Storage};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!(
            "usage: zmount-bench CONFIG PROVIDER seed|seed-many|get|ranged|random|list|purge ARGS..."
        );
        std::process::exit(2);
    }
    let config = Config::load(args[0].as_ref()).unwrap_or_else(|e| fail(&e));
    let storage = Storage::new(&config).unwrap_or_else(|e| fail(&e));
    let provider = storage
        .provider(&args[1])
        .unwrap_or_else(|| fail(&format!("no provider {}", args[1])))
        .clone();
    let rest = &args[3..];
    match args[2].as_str() {
        "seed" => seed(&provider, &rest[0], rest[1].parse().unwrap()).await,
        "seed-many" => {
            let bytes = rest.get(2).map_or(3, |b| b.parse().unwrap());
            let in_flight = rest.get(3).map_or(64, |c| c.parse().unwrap());
            seed_many(
                &provider,
                &rest[0],
                rest[1].parse().unwrap(),
                bytes,
                in_flight,
            )
            .await
        }
        "get" => get(&provider, &rest[0]).await,
        "ranged" => {
            let n = |i: usize, default: u64| rest.get(i).map_or(default, |v| v.parse().unwrap());
            ranged(&provider, &rest[0], n(1, 1) << 20, n(2, 32) as usize).await
        }
        "random" => random(&provider, &rest[0], rest[1].parse().unwrap()).await,
        "list" => list(&provider, &rest[0]).await,
        "purge" => purge(&provider).await,
        "wait-size" => wait_size(&provider, &rest[0], rest[1].parse().unwrap()).await,
        "photo" => {
            let n = |i: usize| rest[i].parse().unwrap();
            photo(&rest[0], n(1), n(2), n(3))
        }
        other => fail(&format!("unknown command {other}")),
    }
}

async fn wait_size(p: &Provider, key: &str, bytes: u64) {
    let location = p.key_for(key);
    loop {
        match p.object_store().head(&location).await {
            Ok(meta) if meta.size == bytes => return,
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => fail(&e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A JPEG that compresses like a photo: smooth gradients (sky, shading) plus per-pixel grain (sensor noise), so
/// decoding and encoding cost what real photos cost (a flat test pattern would be unrealistically cheap).
fn photo(file: &str, width: u32, height: u32, seed: u32) {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let grain = (state % 24) as i32 - 12;
        let base = [
            (x * 200 / width) as i32 + 30,
            (y * 180 / height) as i32 + 40,
            ((x + y) * 120 / (width + height)) as i32 + 90,
        ];
        image::Rgb(base.map(|c| (c + grain).clamp(0, 255) as u8))
    });
    let out = std::fs::File::create(file).unwrap_or_else(|e| fail(&e));
    let mut encoder =
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(out), 90);
    encoder.encode_image(&img).unwrap_or_else(|e| fail(&e));
}

fn fail(message: &dyn std::fmt::Display) -> ! {
    eprintln!("zmount-bench: {message}");
    std::process::exit(1)
}

fn mib_per_s(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

async fn seed(p: &Provider, key: &str, mib: usize) {
    let upload = p
        .object_store()
        .put_multipart(&p.key_for(key))
        .await
        .unwrap_or_else(|e| fail(&e));
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|i: usize| (i * 31 + i / 4093) as u8)
        .collect();
    let started = Instant::now();
    for _ in 0..mib {
        writer
            .wait_for_capacity(8)
            .await
            .unwrap_or_else(|e| fail(&e));
        writer.write(&chunk);
    }
    writer.finish().await.unwrap_or_else(|e| fail(&e));
    println!(
        "seed {key}: {mib} MiB at {:.0} MiB/s",
        mib_per_s((mib as u64) << 20, started)
    );
}

async fn seed_many(p: &Provider, prefix: &str, n: usize, bytes: usize, in_flight: usize) {
    let body = Bytes::from(vec![b'x'; bytes]);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let body = body.clone();
            async move {
                p.object_store()
                    .put(&p.key_for(&format!("{prefix}/f{i:05}.txt")), body.into())
                    .await
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| fail(&e));
    println!(
        "seed-many {prefix}: {n} objects at {:.0} objects/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
}

async fn get(p: &Provider, key: &str) {
    let started = Instant::now();
    let mut stream = p
        .object_store()
        .get(&p.key_for(key))
        .await
        .unwrap_or_else(|e| fail(&e))
        .into_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap_or_else(|e| fail(&e)).len() as u64;
    }
    println!("{:.0}", mib_per_s(total, started));
}

/// Reads `key` in ranges of `block` bytes, `in_flight` GETs at a time; prints MiB/s.
async fn ranged(p: &Provider, key: &str, block: u64, in_flight: usize) {
    let path = p.key_for(key);
    let size = p
        .object_store()
        .head(&path)
        .await
        .unwrap_or_else(|e| fail(&e))
        .size;
    let started = Instant::now();
    let total: u64 = futures::stream::iter((0..size).step_by(block as usize))
        .map(|start| {
            let path = path.clone();
            async move {
                p.object_store()
                    .get_range(&path, start..(start + block).min(size))
                    .await
                    .map(|b| b.len() as u64)
            }
        })
        .buffered(in_flight)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await
        .unwrap_or_else(|e| fail(&e));
    println!("{:.0}", mib_per_s(total, started));
}

async fn random(p: &Provider, key: &str, n: usize) {
    let path = p.key_for(key);
    let size = p
        .object_store()
        .head(&path)
        .await
        .unwrap_or_else(|e| fail(&e))
        .size;
    let mut state: u64 = 42;
    let started = Instant::now();
    for _ in 0..n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = ((state >> 11) % (size - 4096)) & !4095;
        p.object_store()
            .get_range(&path, offset..offset + 4096)
            .await
            .unwrap_or_else(|e| fail(&e));
    }
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
}

async fn purge(p: &Provider) {
    let prefix = (!p.prefix.is_empty()).then(|| object_store::path::Path::from(p.prefix.as_str()));
    let keys = p
        .object_store()
        .list(prefix.as_ref())
        .map_ok(|m| m.location)
        .boxed();
    let deleted = p
        .object_store()
        .delete_stream(keys)
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap_or_else(|e| fail(&e));
    println!("{deleted}");
}

async fn list(p: &Provider, prefix: &str) {
    let started = Instant::now();
    let (count, bytes) = p
        .object_store()
        .list(Some(&p.key_for(prefix)))
        .try_fold((0usize, 0u64), |(n, b), m| async move {
            Ok((n + 1, b + m.size))
        })
        .await
        .unwrap_or_else(|e| fail(&e));
    println!("{:.3} {count} {bytes}", started.elapsed().as_secs_f64());
}
