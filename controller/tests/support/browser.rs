//! A real headless Chromium, driven through WebDriver (Debian `chromium` and
//! `chromium-driver`): chromedriver on a free loopback port, one session with a new empty
//! profile. The page's own JavaScript runs; the test reads the DOM and clicks as a user would.
//! Dropping it ends the session (Chromium quits) and kills chromedriver's process group, also
//! when the test fails.

#![allow(clippy::panic, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::owned_process::free_loopback_addr;

/// How long chromedriver and Chromium may take to start, and a page to show what a test waits
/// for, on a loaded 2-core machine.
pub const BROWSER_WAIT: Duration = Duration::from_secs(45);

/// The flags Chromium needs on a machine without network or display: without them it hangs
/// trying to reach Google's services.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--window-size=1360,1000",
];

/// See the module documentation.
pub struct Browser {
    base: String,
    session: Option<String>,
    driver: Child,
    client: Client<HttpConnector, Full<Bytes>>,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Blocking on purpose: Drop cannot await, and Chromium quits only when asked.
            let _ = delete_session_blocking(&self.base, &session);
        }
        // chromedriver leads its own process group, which Chromium's processes join.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a Chromium session.
    pub async fn start() -> Browser {
        let chromium = on_path("chromium")
            .unwrap_or_else(|| panic!("chromium not found: install Debian chromium (make setup)"));
        let chromedriver = on_path("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver not found: install Debian chromium-driver (make setup)")
        });
        let profile = tempfile::tempdir().unwrap();
        let port = free_loopback_addr().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut browser = Browser {
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            driver,
            client: Client::builder(TokioExecutor::new()).build_http(),
            profile,
        };
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if let Ok(status) = browser.request("GET", "/status", None).await {
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver not ready within {BROWSER_WAIT:?}"
            );
            if let Ok(Some(exit)) = browser.driver.try_wait() {
                panic!("chromedriver exited: {exit}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser.profile.path().join("chromium").display()
        ));
        let created = browser
            .request(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args}
                }}})),
            )
            .await
            .unwrap_or_else(|e| panic!("starting Chromium: {e}"));
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser.session = Some(session);
        browser
    }

    /// The profile folder: every Chromium process of this browser names it.
    pub fn profile(&self) -> &Path {
        self.profile.path()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string())
        };
        let answer = tokio::time::timeout(BROWSER_WAIT, exchange)
            .await
            .map_err(|_| format!("{method} {path}: no answer within {BROWSER_WAIT:?}"))??;
        match answer["value"]["error"].as_str() {
            Some(error) => Err(format!(
                "{method} {path}: {error}: {}",
                answer["value"]["message"]
            )),
            None => Ok(answer),
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().unwrap_or_default();
        self.request(method, &format!("/session/{session}{path}"), body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))["value"]
            .clone()
    }

    /// Loads `url` (and waits for its document to load).
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Waits (at most [`BROWSER_WAIT`]) until `script` returns something truthy; returns it.
    /// On timeout, fails with `what` and the page's visible text.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            let v = self.execute(script, vec![]).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.execute("return document.body.innerText", vec![]).await;
                panic!(
                    "the page did not show {what} within {BROWSER_WAIT:?}; it shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` selects, as a user would (it must be visible and enabled). A
    /// page that redrew the element between finding and clicking it is asked again (at most
    /// [`BROWSER_WAIT`]): a user would click the redrawn one.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            let element = self
                .command(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            let id = element
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no element {css}: {element}"))
                .to_owned();
            let session = self.session.as_deref().unwrap_or_default();
            match self
                .request(
                    "POST",
                    &format!("/session/{session}/element/{id}/click"),
                    Some(json!({})),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e.contains("stale element reference") => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{css} kept being redrawn for {BROWSER_WAIT:?}: {e}"
                    );
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// Saves a PNG of the window at `path` (folders created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }
}

/// `DELETE /session/<id>` over a plain socket, bounded by a timeout.
fn delete_session_blocking(base: &str, session: &str) -> std::io::Result<()> {
    let authority = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// The processes whose command line mentions `text` (`/proc/*/cmdline`), as `pid command`.
pub fn processes_mentioning(text: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(text)
                .then(|| format!("{} {}", e.file_name().to_string_lossy(), cmdline.trim()))
        })
        .collect()
}
