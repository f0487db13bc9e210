//! `kubectl canary dashboard` in a real headless Chromium (WebDriver), against the real API
//! server with a rollout progressing under the real controller (the test plays kubelet): the
//! page shows the right step and weight, follows the rollout live without reloading, and its
//! promote and abort buttons change the rollout as `kubectl canary promote/abort` do. Requests
//! without the token, from another origin or under another host name are refused. Screenshots
//! of the list and of the rollout go to `target/dashboard-screenshots/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_controller::cli::actions::{act, Action};
use canary_controller::crd::Phase;
use canary_controller::dashboard::guard::TOKEN_HEADER;
use canary_controller::dashboard::{Dashboard, DashboardOptions, Scope, SplitSource};
use canary_controller::reconcile::PROMOTE_ANNOTATION;
use serde_json::{json, Value};
use support::browser::{processes_mentioning, Browser};
use support::http_stub::{HttpStub, Reply};
use support::rollout_env::{rollout, RolloutEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "dashboard";

fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("dashboard-screenshots")
}

/// A plain HTTP/1.1 request with exactly these headers (no Host unless given); the status
/// and the JSON body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the dashboard answers")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

/// A client sidecar's Envoy admin endpoint whose filter decides 1,000 requests (10% canary)
/// between two readings.
async fn envoy_admin() -> HttpStub {
    let readings = Arc::new(AtomicU64::new(0));
    HttpStub::start(move |_| {
        let n = readings.fetch_add(1, Ordering::SeqCst) + 1;
        let counter = |subset: &str, value: u64| {
            json!({"name": format!("wasmcustom.wasmcanary.decision.{NS}_reviews.{subset}.weight"), "value": value})
        };
        Reply::ok(&json!({"stats": [counter("stable", 900 * n), counter("canary", 100 * n)]}))
    })
    .await
}

/// The text of `[data-field=NAME]` in the page (the list row's or the detail's).
fn field(scope: &str, name: &str) -> String {
    format!("(document.querySelector(`{scope} [data-field={name}]`) || {{}}).textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_rollout_live_and_its_buttons_act_as_the_cli() {
    let started = Instant::now();
    let env = RolloutEnv::new(NS).await;
    let steps = json!([
        {"setWeight": 10}, {"pause": {}},
        {"setWeight": 30}, {"pause": {}},
        {"setWeight": 60}, {"pause": {}}
    ]);
    env.healthy_on_first_version(&rollout(NS, "reviews:v1", steps))
        .await;
    let canary = env.canary_paused_at(1_000).await;

    let admin = envoy_admin().await;
    let dashboard = Dashboard::start(
        env.client.clone(),
        "127.0.0.1:0".parse().unwrap(),
        DashboardOptions {
            scope: Scope::Namespace(NS.into()),
            read_only: false,
            split: Some(SplitSource::EnvoyAdmin(admin.url.clone())),
        },
    )
    .await
    .unwrap();
    let browser = Browser::start().await;
    let profile = browser.profile().display().to_string();

    // The list: phase, step and weight at a glance.
    browser.goto(&dashboard.url()).await;
    let row = "tr[data-rollout=\"dashboard/reviews\"]";
    browser
        .wait_for(
            "the rollout paused after 1 of 6 steps at 10%",
            &format!(
                "return {} === 'Paused' && {} === '1/6' && {}.includes('10%')",
                field(row, "phase"),
                field(row, "step"),
                field(row, "weight")
            ),
        )
        .await;
    let health = browser
        .execute(
            &format!("return document.querySelector(`{row} .health`).textContent"),
            vec![],
        )
        .await;
    assert_eq!(health, "stable 2/2 ready · canary 1/1 ready · paused");
    browser.screenshot(&screenshots().join("list.png")).await;

    // One rollout, reached by its link: the current step is marked. `status.currentStep` counts
    // the steps done, as Argo Rollouts does (and `kubectl canary list` shows it).
    browser.click(&format!("{row} a")).await;
    let detail = "#detail";
    browser
        .wait_for(
            "the rollout's page after 1 of 6 steps at 10%, the pause (step 2) marked current",
            &format!(
                "const current = document.querySelector('ol.steps li[data-state=current]');
                 return {} === '1/6' && {}.includes('10%') && current && current.textContent.includes('pause (until promoted)')",
                field(detail, "step"),
                field(detail, "weight")
            ),
        )
        .await;
    let canary_row = browser
        .execute(
            "return document.querySelector('tr[data-role=canary]').textContent",
            vec![],
        )
        .await;
    assert!(
        canary_row.as_str().unwrap().contains(&canary)
            && canary_row.as_str().unwrap().contains("1/1 ready"),
        "{canary_row}"
    );
    browser
        .wait_for(
            "the controller's Events and the observed split",
            "const t = document.body.innerText;
             return t.includes('CanaryStarted') && t.includes('Decisions counted by the filter: canary')
                 && document.querySelectorAll('circle.observed-dot').length > 0",
        )
        .await;

    // Live: a promote from outside the page (the CLI's path) shows without a reload.
    browser
        .execute("window.sameDocument = true; return true", vec![])
        .await;
    wait_for_promote_consumed(&env).await;
    act(&env.client, NS, "reviews", Action::Promote)
        .await
        .unwrap();
    env.until("30% and the next pause", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 3_000 && s.phase == Phase::Paused).then_some(())
    })
    .await;
    let seen_in_api = Instant::now();
    browser
        .wait_for(
            "3 of 6 steps done and 30%, without a reload",
            &format!(
                "return window.sameDocument === true && {} === '3/6' && {}.includes('30%')",
                field(detail, "step"),
                field(detail, "weight")
            ),
        )
        .await;
    let lag = seen_in_api.elapsed();
    eprintln!("the page showed the new step {lag:?} after the test saw it in the API server");
    assert!(lag < Duration::from_secs(2), "live update took {lag:?}");

    // The promote button: asks first, then does what `kubectl canary promote` does.
    wait_for_promote_consumed(&env).await;
    browser.click("button[data-action=promote]").await;
    let question = browser
        .wait_for(
            "the confirmation",
            "const d = document.getElementById('confirm'); return d.open && d.textContent",
        )
        .await;
    assert!(
        question
            .as_str()
            .unwrap()
            .contains(&format!("kubectl canary promote reviews -n {NS}")),
        "{question}"
    );
    browser.click("#confirm-ok").await;
    env.until("the promote from the page: 60%", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 6_000 && s.phase == Phase::Paused).then_some(())
    })
    .await;
    browser
        .wait_for(
            "5 of 6 steps done, 60% and the CLI's message",
            &format!(
                "return {} === '5/6' && {}.includes('60%') && document.getElementById('toast').textContent.includes('promote requested')",
                field(detail, "step"),
                field(detail, "weight")
            ),
        )
        .await;
    browser.screenshot(&screenshots().join("rollout.png")).await;

    // The abort button: spec.abort, as `kubectl canary abort`; all traffic back to stable.
    browser.click("button[data-action=abort]").await;
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('confirm').open",
        )
        .await;
    browser.click("#confirm-ok").await;
    env.until("the abort from the page", |r| {
        let s = r.status.as_ref()?;
        (r.spec.abort && s.phase == Phase::Aborted && s.canary_weight == 0).then_some(())
    })
    .await;
    browser
        .wait_for(
            "Aborted at 0%, promote refused with the CLI's reason, retry offered",
            &format!(
                "const promote = document.querySelector('button[data-action=promote]');
                 const retry = document.querySelector('button[data-action=retry]');
                 return {} === 'Aborted' && {}.includes('0%') && promote.disabled
                     && promote.title.includes('is aborted: retry it first') && !retry.disabled",
                field(detail, "phase"),
                field(detail, "weight")
            ),
        )
        .await;

    // Refused: no token, another origin, another host name (DNS rebinding); 403 with a reason.
    let addr = dashboard.addr();
    let host = addr.to_string();
    let host = host.as_str();
    let origin = format!("http://{host}");
    let origin = origin.as_str();
    let promote = format!("/api/rollouts/{NS}/reviews/actions/promote");
    let retry = format!("/api/rollouts/{NS}/reviews/actions/retry");
    let token = dashboard.token();
    // (what, headers, why)
    type Refused<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let refusals: [Refused; 4] = [
        (
            "without the token",
            vec![("Host", host), ("Origin", origin)],
            "no dashboard token",
        ),
        (
            "with another origin",
            vec![
                ("Host", host),
                ("Origin", "http://evil.example"),
                (TOKEN_HEADER, token),
            ],
            "cross-site",
        ),
        (
            "without an origin",
            vec![("Host", host), (TOKEN_HEADER, token)],
            "needs an Origin",
        ),
        (
            "under another host name",
            vec![
                ("Host", "evil.example"),
                ("Origin", "http://evil.example"),
                (TOKEN_HEADER, token),
            ],
            "DNS rebinding",
        ),
    ];
    for (what, headers, why) in &refusals {
        let (status, body) = http(addr, "POST", &retry, headers).await;
        assert_eq!(status, 403, "a request {what} is refused: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(why),
            "{what}: {body}"
        );
    }
    let (status, body) = http(addr, "GET", "/", &[("Host", "evil.example")]).await;
    assert_eq!(
        status, 403,
        "the page itself under another host name: {body}"
    );
    let (status, _) = http(
        addr,
        "GET",
        "/api/rollouts",
        &[("Host", "rebound.example:80")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        env.rollout().await.spec.abort,
        "nothing refused changed the rollout"
    );
    // With everything right, the rollout's own state decides, in the CLI's words.
    let (status, body) = http(
        addr,
        "POST",
        &promote,
        &[("Host", host), ("Origin", origin), (TOKEN_HEADER, token)],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("kubectl canary retry reviews -n {NS}")),
        "{body}"
    );

    // --read-only: no buttons on the page, and actions refused even with its token.
    let read_only = Dashboard::start(
        env.client.clone(),
        "127.0.0.1:0".parse().unwrap(),
        DashboardOptions {
            scope: Scope::Namespace(NS.into()),
            read_only: true,
            split: None,
        },
    )
    .await
    .unwrap();
    browser
        .goto(&format!("{}#/rollouts/{NS}/reviews", read_only.url()))
        .await;
    browser
        .wait_for(
            "the rollout's page without buttons",
            &format!(
                "return {} === 'Aborted' && document.querySelectorAll('[data-action]').length === 0
                    && document.getElementById('mode').textContent === 'read-only'",
                field(detail, "phase")
            ),
        )
        .await;
    let ro_host = read_only.addr().to_string();
    let (status, body) = http(
        read_only.addr(),
        "POST",
        &retry,
        &[
            ("Host", &ro_host),
            ("Origin", &format!("http://{ro_host}")),
            (TOKEN_HEADER, read_only.token()),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--read-only"),
        "{body}"
    );

    // An analysis run as the page draws it: the dashboard's own view of a rollout whose status
    // holds measurements (the controller's analysis has its own tests), laid out by the page's
    // script in the browser: a point per measurement, the conditions' bounds as lines.
    // (The bounds: success `>= 0.95`, failure `< 0.9`; in between is inconclusive.)
    let measurements: Vec<Value> = [0.99, 0.97, 0.96, 0.93, 0.88]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "phase": match v {
                    v if *v >= 0.95 => "Successful",
                    v if *v < 0.9 => "Failed",
                    _ => "Inconclusive",
                },
                "value": format!("[{v}]"),
                "startedAt": format!("2026-12-07T10:0{i}:00Z")
            })
        })
        .collect();
    let mut analysed = env.rollout().await;
    analysed.status.as_mut().unwrap().analysis_runs = vec![serde_json::from_value(json!({
        "name": "step-2", "canaryHash": canary, "phase": "Failed", "startedAt": "2026-12-07T10:00:00Z",
        "message": "metric success-rate failed: 1 measurement failed, limit 0",
        "metrics": [{"name": "success-rate", "phase": "Failed", "count": 5, "successful": 3, "failed": 1, "inconclusive": 1,
            "measurements": measurements}],
        "spec": [{"name": "success-rate", "interval": "1m", "count": 5,
            "successCondition": "result[0] >= 0.95", "failureCondition": "result[0] < 0.9",
            "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "sum(rate(x[1m]))"}}}]
    }))
    .unwrap()];
    let view = canary_controller::dashboard::view::detail(
        &analysed,
        canary_controller::dashboard::view::Observations {
            read_only: true,
            ..Default::default()
        },
    );
    let drawn = browser
        .execute(
            "stream.close();
             render(detailView(arguments[0]));
             document.querySelector('.metric').scrollIntoView();
             return [document.querySelectorAll('.metric svg circle.point').length,
                     document.querySelectorAll('.metric svg circle.point.Failed').length,
                     document.querySelectorAll('.metric svg line.threshold').length];",
            vec![serde_json::to_value(&view).unwrap()],
        )
        .await;
    assert_eq!(
        drawn,
        json!([5, 1, 2]),
        "5 measurements (1 failed), 2 bounds"
    );
    browser
        .screenshot(&screenshots().join("analysis.png"))
        .await;

    // Everything this test started stops: Chromium and chromedriver included.
    drop(browser);
    read_only.stop().await.unwrap();
    dashboard.stop().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_mentioning(&profile).is_empty() {
        assert!(
            Instant::now() < deadline,
            "browser processes left: {:#?}",
            processes_mentioning(&profile)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("dashboard test body: {:?}", started.elapsed());
}

/// The controller clears a consumed promote annotation in a write after its status write; a
/// promote set before that clear lands would be erased (see kubectl_canary.rs).
async fn wait_for_promote_consumed(env: &RolloutEnv) {
    env.until("the previous promote consumed", |r| {
        (!r.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PROMOTE_ANNOTATION)))
        .then_some(())
    })
    .await;
}
