//! Progress of long commands (search, migrate, sync): one line redrawn in place on a terminal, plain lines
//! otherwise (so logs and CI output stay readable). Always on stderr; results go to stdout.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Progress {
    what: &'static str,
    terminal: bool,
    started: Instant,
    /// Total files and bytes, when known.
    total_files: u64,
    total_bytes: u64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    last_draw: std::sync::Mutex<Instant>,
}

impl Progress {
    pub fn new(what: &'static str, total_files: u64, total_bytes: u64) -> Self {
        Progress {
            what,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            total_files,
            total_bytes,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_draw: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// One file done (`bytes` of it); `line` is printed as is when not on a terminal.
    pub fn done(&self, bytes: u64, line: Option<String>) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !self.terminal {
            if let Some(line) = line {
                eprintln!("{line}");
            }
            return;
        }
        let mut last = self.last_draw.lock().unwrap();
        if last.elapsed().as_millis() >= 100 {
            *last = Instant::now();
            eprint!("\r{}\x1b[K", self.line());
            let _ = std::io::stderr().flush();
        }
    }

    /// Files, bytes, rate and ETA.
    pub fn line(&self) -> String {
        let (files, bytes) = (
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let mut line = format!(
            "{}: {files}/{} files, {} / {}, {}/s",
            self.what,
            self.total_files,
            human(bytes),
            human(self.total_bytes),
            human(rate as u64)
        );
        if rate > 0.0 && self.total_bytes > bytes {
            line.push_str(&format!(
                ", ETA {:.0} s",
                (self.total_bytes - bytes) as f64 / rate
            ));
        }
        line
    }

    pub fn finish(&self) {
        if self.terminal {
            eprintln!("\r{}\x1b[K", self.line());
        }
    }
}

/// Bytes in B/KiB/MiB/GiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
