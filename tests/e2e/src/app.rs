//! A minimal upstream application: answers every request with its version name, and echoes each
//! received `x-*` request header back as `x-seen-<name>`. Serves HTTP/1.1 keep-alive on
//! 127.0.0.1 with a port the OS picks. Threads stop when the [`App`] is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    stop: AtomicBool,
    status: AtomicU16,
    served: AtomicU64,
    /// Milliseconds each response waits before it is sent (a slow version).
    delay_ms: AtomicU64,
}

impl App {
    pub fn start(name: &str) -> anyhow::Result<App> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            status: AtomicU16::new(200),
            served: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let (name_owned, st) = (name.to_owned(), state.clone());
        thread::Builder::new()
            .name(format!("app-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (n, s) = (name_owned.clone(), st.clone());
                    let _ = thread::Builder::new()
                        .name(format!("app-{n}-conn"))
                        .spawn(move || serve(conn, &n, &s));
                }
            })?;
        Ok(App {
            name: name.to_owned(),
            addr,
            state,
        })
    }

    /// Makes every later response use this status (e.g. 500 for a failing canary).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Makes every later response wait `delay` before it is sent (a slow version).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, name: &str, state: &State) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        if state.stop.load(Ordering::Relaxed) {
            return;
        }
        // Bytes, not String: header values may be any octets (obs-text), not only UTF-8.
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut echoed = String::new();
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut raw = Vec::new();
            if reader.read_until(b'\n', &mut raw).unwrap_or(0) == 0 {
                return;
            }
            let h = String::from_utf8_lossy(&raw);
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim();
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if k.starts_with("x-") {
                    echoed.push_str(&format!("x-seen-{k}: {v}\r\n"));
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0; content_length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let delay = state.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay)); // the version's own answer time
        }
        let status = state.status.load(Ordering::Relaxed);
        let body = format!("{name}\n");
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-app-version: {name}\r\n{echoed}\r\n{body}",
            if status == 200 { "OK" } else { "Status" },
            body.len()
        );
        state.served.fetch_add(1, Ordering::Relaxed);
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
