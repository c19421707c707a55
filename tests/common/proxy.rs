//! A fault-injecting HTTP/1.1 forwarder in front of a test server, to make a provider misbehave at a chosen
//! moment: refuse connections, stall, delay, cut responses short, or answer 503 to a share of requests.
//!
//! Every connection carries exactly one request: the forwarder adds `Connection: close` to the request and to the
//! response, so faults apply per request (a pooled keep-alive connection would otherwise dodge them).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the forwarder does to requests from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Reset new connections at once (like a dead server); open connections are cut too.
    Refuse,
    /// Accept and read, never answer (a hung server).
    Stall,
    /// Wait this long before forwarding each request.
    Delay(Duration),
    /// Forward only this many bytes of each response, then cut the connection.
    CutResponseAfter(usize),
    /// Answer `503 Service Unavailable` to every n-th request (1 in n), forward the rest.
    Fail503Every(u64),
    /// Answer `503 Service Unavailable` to every upload (PUT, POST); reads and deletes still work.
    Fail503Uploads,
    /// Answer `503 Service Unavailable` to each request with probability 1 in n, independently (a seeded random
    /// sequence: the same run of faults for the same requests), forward the rest.
    Fail503Random(u64),
    /// Forward listings (S3 `GET ...?list-type=`) but keep each answer, as the server gave it, until
    /// [`Proxy::release`]: an answer that is older than what happened meanwhile. Everything else is forwarded.
    HoldListings,
    /// Forward this many listings (S3 `GET ...?list-type=`, counted from when the fault is set), then answer
    /// `503 Service Unavailable` to every later one. Everything else is forwarded.
    Fail503ListingsAfter(u64),
}

pub struct Proxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    open: Open,
    /// Requests seen, and 503s answered.
    pub requests: Arc<AtomicU64>,
    pub injected: Arc<AtomicU64>,
    held: Held,
    /// Listings seen since the fault was last set.
    listings: Arc<AtomicU64>,
}

/// Listing answers held (count) and whether they may go (see [`Fault::HoldListings`]).
type Held = Arc<(Mutex<(u64, bool)>, std::sync::Condvar)>;

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `target` (host:port).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            fault: Arc::new(Mutex::new(Fault::None)),
            open: Arc::default(),
            requests: Arc::default(),
            injected: Arc::default(),
            held: Arc::default(),
            listings: Arc::default(),
        };
        let shared = Shared {
            fault: proxy.fault.clone(),
            open: proxy.open.clone(),
            requests: proxy.requests.clone(),
            injected: proxy.injected.clone(),
            held: proxy.held.clone(),
            listings: proxy.listings.clone(),
            target: target.to_string(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(client));
            }
        });
        proxy
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        self.listings.store(0, Ordering::SeqCst);
        *self.fault.lock().unwrap() = fault;
        if matches!(fault, Fault::Refuse | Fault::None) {
            // A dead server drops its connections; a recovered one starts afresh (stalled requests end too).
            for (_, stream) in self.open.lock().unwrap().drain() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Waits until `n` listing answers are held (see [`Fault::HoldListings`]).
    pub fn wait_held(&self, n: u64) {
        let (state, changed) = &*self.held;
        let (state, timeout) = changed
            .wait_timeout_while(state.lock().unwrap(), Duration::from_secs(60), |s| s.0 < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{} listing answer(s) held, {n} expected",
            state.0
        );
    }

    /// Lets held listing answers go (and later ones pass at once).
    pub fn release(&self) {
        let (state, changed) = &*self.held;
        state.lock().unwrap().1 = true;
        changed.notify_all();
    }

    /// Down: refuse everything and cut open connections. Up: forward again.
    pub fn set_down(&self, down: bool) {
        self.set(if down { Fault::Refuse } else { Fault::None });
    }
}

#[derive(Clone)]
struct Shared {
    fault: Arc<Mutex<Fault>>,
    open: Open,
    requests: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    held: Held,
    listings: Arc<AtomicU64>,
    target: String,
}

/// Connections in progress (so a fault can cut them), by id.
type Open = Arc<Mutex<std::collections::HashMap<u64, TcpStream>>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    fn track(&self, stream: &TcpStream) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.open.lock().unwrap().insert(id, clone);
        }
        id
    }

    fn serve(&self, client: TcpStream) {
        if self.fault() == Fault::Refuse {
            reset(&client); // like a closed port
            return;
        }
        let id = self.track(&client);
        self.serve_request(client);
        self.open.lock().unwrap().remove(&id);
    }

    fn serve_request(&self, mut client: TcpStream) {
        let Some((head, rest)) = read_head(&mut client) else {
            return;
        };
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        match self.fault() {
            Fault::Refuse => {}
            Fault::Stall => {
                let mut sink = [0u8; 64 * 1024];
                while matches!(client.read(&mut sink), Ok(k) if k > 0) {}
            }
            Fault::Fail503Uploads if is_upload(&head) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                drain_body(&mut client, &head, rest.len());
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = client.shutdown(Shutdown::Both);
            }
            Fault::Fail503Random(one_in) if one_in > 0 && random(n).is_multiple_of(one_in) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                drain_body(&mut client, &head, rest.len());
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = client.shutdown(Shutdown::Both);
            }
            Fault::Fail503ListingsAfter(forwarded)
                if is_listing(&head)
                    && self.listings.fetch_add(1, Ordering::SeqCst) >= forwarded =>
            {
                self.injected.fetch_add(1, Ordering::SeqCst);
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = client.shutdown(Shutdown::Both);
            }
            Fault::Fail503Every(every) if every > 0 && n.is_multiple_of(every) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                drain_body(&mut client, &head, rest.len());
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = client.shutdown(Shutdown::Both);
            }
            fault => self.forward(client, &head, &rest, fault),
        }
    }

    fn forward(&self, client: TcpStream, head: &[u8], rest: &[u8], fault: Fault) {
        if let Fault::Delay(d) = fault {
            std::thread::sleep(d);
        }
        let Ok(server) = TcpStream::connect(&self.target) else {
            reset(&client);
            return;
        };
        let id = self.track(&server);
        self.pipe_request(client, server, head, rest, fault);
        self.open.lock().unwrap().remove(&id);
    }

    fn pipe_request(
        &self,
        client: TcpStream,
        mut server: TcpStream,
        head: &[u8],
        rest: &[u8],
        fault: Fault,
    ) {
        if server.write_all(&with_connection_close(head)).is_err()
            || server.write_all(rest).is_err()
        {
            return;
        }
        if fault == Fault::HoldListings && is_listing(head) {
            eprintln!(
                "HOLD {}",
                String::from_utf8_lossy(head)
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
            self.hold_answer(client, server);
            return;
        }
        let limit = match fault {
            Fault::CutResponseAfter(n) => Some(n),
            _ => None,
        };
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || pipe(c2, s2, None, false));
        pipe(server, client, limit, true);
    }
}

impl Shared {
    /// Reads the server's whole answer, holds it until released, then hands it on.
    fn hold_answer(&self, mut client: TcpStream, mut server: TcpStream) {
        let mut answer = Vec::new();
        if server.read_to_end(&mut answer).is_err() {
            return;
        }
        let (state, changed) = &*self.held;
        let mut st = state.lock().unwrap();
        st.0 += 1;
        changed.notify_all();
        drop(changed.wait_while(st, |s| !s.1).unwrap());
        let _ = client.write_all(&answer);
        let _ = client.shutdown(Shutdown::Both);
    }
}

/// An S3 listing request (`GET /bucket?list-type=2...`).
fn is_listing(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.starts_with("GET ") && line.contains("list-type=")
}

/// A well-mixed number for the n-th request (splitmix64): which requests fail is random-looking but repeatable.
fn random(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Closes `stream` with a TCP reset (SO_LINGER 0) when it is dropped, as a dead or closed endpoint does.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A request that stores bytes: a PUT, or a POST other than S3's bulk delete (`POST /bucket?delete`).
fn is_upload(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.starts_with("PUT ") || (line.starts_with("POST ") && !line.contains("?delete"))
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); returns the head and any bytes read past it.
fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.retain(|l| !l.is_empty());
    let mut out = lines[0].to_string() + "\r\nConnection: close";
    for line in &lines[1..] {
        out.push_str("\r\n");
        out.push_str(line);
    }
    out.push_str("\r\n\r\n");
    out.into_bytes()
}

/// Reads and drops the request body (by Content-Length) so the client sees the answer, not a reset.
fn drain_body(stream: &mut TcpStream, head: &[u8], already: usize) {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let length = text
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(already);
    let mut chunk = [0u8; 64 * 1024];
    while left > 0 {
        match stream.read(&mut chunk[..left.min(64 * 1024)]) {
            Ok(0) | Err(_) => return,
            Ok(k) => left -= k,
        }
    }
}

/// Copies `from` to `to` until EOF (or `limit` bytes, then cuts both). A response's head gets `Connection: close`.
fn pipe(mut from: TcpStream, mut to: TcpStream, limit: Option<usize>, response: bool) {
    let mut sent = 0usize;
    let mut pending_head = response.then(Vec::new);
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut data = buf[..n].to_vec();
        if let Some(head) = pending_head.as_mut() {
            head.extend_from_slice(&data);
            let Some(end) = find(head, b"\r\n\r\n") else {
                continue;
            };
            let body = head.split_off(end + 4);
            data = with_connection_close(head);
            data.extend_from_slice(&body);
            pending_head = None;
        }
        if let Some(limit) = limit {
            if sent + data.len() >= limit {
                let _ = to.write_all(&data[..limit - sent]);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        sent += data.len();
        if to.write_all(&data).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
