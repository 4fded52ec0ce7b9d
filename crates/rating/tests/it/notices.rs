//! Notices beyond budgets (H4 traffic shares, H10 cost alerts) against hand-computed
//! hours, and their delivery to a real HTTP server on 127.0.0.1: retried on failure,
//! never delivered twice, refused ones kept for the next run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tally_model::ResourceState::Running;
use tally_rating::deliver::{Sink, Webhook};
use tally_rating::notice::{Notice, NoticeKind};
use tally_rating::watch;

use crate::budgets::{Scene, delivered};
use crate::lake::{Lake, server};

/// 3 TB an hour: 5·10¹⁰ bytes a minute.
const THREE_TB_AN_HOUR: u64 = 50_000_000_000;

/// `web` sends 3 TB an hour from a cx22 (20 TB included, H4); `shop` runs a cx22 with
/// cost alerts at 0.02 and 0.024 (H10).
fn scene() -> Scene {
    let mut lake = Lake::default();
    lake.span(
        &server("web", "s-1", "cx22"),
        Running,
        "2026-10-05T10:00:00Z",
        8 * 60,
        THREE_TB_AN_HOUR,
        0,
    )
    .span(
        &server("shop", "s-2", "cx22"),
        Running,
        "2026-10-05T00:00:00Z",
        10 * 60,
        0,
        0,
    );
    let mut scene = Scene::new(
        &lake,
        json!({"accounts": [
            {"account_id": "web", "tariff_id": "hetzner-cloud"},
            {"account_id": "shop", "tariff_id": "hetzner-cloud", "cost_alerts": ["0.02", "0.024"]}
        ]}),
        &[],
    );
    scene.until("2026-10-06T00");
    scene
}

fn timeline(notices: &[Notice], kind: NoticeKind) -> Vec<String> {
    notices
        .iter()
        .filter(|notice| notice.kind == kind)
        .map(|notice| {
            format!(
                "{} @ {} {}",
                notice.id,
                notice.at.format("%m-%dT%H:%M"),
                notice.rule
            )
        })
        .collect()
}

#[tokio::test]
async fn h4_traffic_notices_at_75_and_100_percent_and_h10_cost_alerts_each_once() {
    let findings = watch::find(&scene().request).await.expect("find");
    // 15 TB (75 % of 20) after 5 hours from 10:00; 20 TB first reached with 21 TB at 17:00.
    assert_eq!(
        timeline(&findings.notices, NoticeKind::TrafficIncludedUsed),
        vec![
            "traffic_included_used/web/s-1/2026-10/75 @ 10-05T15:00 H4",
            "traffic_included_used/web/s-1/2026-10/100 @ 10-05T17:00 H4",
        ]
    );
    // 0.006 an hour: 0.024 > 0.02 after 4 hours; 0.030 > 0.024 after 5 (exceeded, not
    // reached).
    assert_eq!(
        timeline(&findings.notices, NoticeKind::CostThresholdExceeded),
        vec![
            "cost_threshold_exceeded/shop/2026-10/0.02 @ 10-05T04:00 H10",
            "cost_threshold_exceeded/shop/2026-10/0.024 @ 10-05T05:00 H10",
        ]
    );
    assert_eq!(findings.notices.len(), 4, "{:#?}", findings.notices);
    assert!(findings.timelines.is_empty(), "no prepaid accounts");
}

/// What the test's HTTP server saw.
#[derive(Debug, Default)]
struct Received {
    /// Every request, in order: (idempotency key, status answered).
    requests: Vec<(String, u16)>,
    /// The bodies accepted, by idempotency key: what a receiver keeping keys acts on.
    accepted: BTreeMap<String, Vec<String>>,
}

/// A webhook receiver on 127.0.0.1 that answers the statuses in `script` first, then 200.
fn receiver(script: Vec<u16>) -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/notices", listener.local_addr().expect("address"));
    let received = Arc::new(Mutex::new(Received::default()));
    let seen = received.clone();
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut key = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("idempotency-key:") {
                    key = line["idempotency-key:".len()..].trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let status = script.next().unwrap_or(200);
            let mut seen = seen.lock().expect("lock");
            seen.requests.push((key.clone(), status));
            if status == 200 {
                seen.accepted
                    .entry(key)
                    .or_default()
                    .push(String::from_utf8(body).expect("utf-8"));
            }
            let reason = if status == 200 { "OK" } else { "Failed" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, received)
}

fn webhook(url: &str) -> Vec<Sink> {
    vec![Sink::Webhook(
        Webhook::new(url, 4, Duration::from_millis(20)).expect("webhook"),
    )]
}

#[tokio::test]
async fn webhook_deliveries_are_retried_on_failure_and_never_duplicated() {
    // Two failures (503, then a 429) before the first notice gets through.
    let (url, received) = receiver(vec![503, 429]);
    let scene = scene();
    let state = scene.request.state_dir.clone();
    let first = watch::run(&scene.request, &webhook(&url))
        .await
        .expect("first run");
    assert_eq!(first.notices_sent, 4);
    let log: Vec<String> = delivered(&state)
        .into_iter()
        .map(|notice| notice.id)
        .collect();
    {
        let seen = received.lock().expect("lock");
        // The first notice three times (two retried failures), the others once.
        assert_eq!(seen.requests.len(), 4 + 2, "{:?}", seen.requests);
        assert_eq!(seen.requests[0].0, seen.requests[2].0);
        assert_eq!(
            seen.requests
                .iter()
                .map(|(_, status)| *status)
                .collect::<Vec<_>>(),
            vec![503, 429, 200, 200, 200, 200]
        );
        assert_eq!(seen.accepted.keys().cloned().collect::<Vec<_>>(), {
            let mut sorted = log.clone();
            sorted.sort();
            sorted
        });
        assert!(seen.accepted.values().all(|bodies| bodies.len() == 1));
        // The body is the notice, with its id as the key.
        let body: Notice = serde_json::from_str(&seen.accepted[&log[0]][0]).expect("notice");
        assert_eq!(body.id, log[0]);
    }
    // Run again: everything was delivered, nothing is sent.
    let again = watch::run(&scene.request, &webhook(&url))
        .await
        .expect("again");
    assert_eq!(again.notices_sent, 0);
    assert_eq!(received.lock().expect("lock").requests.len(), 6);
    // A run that stopped after delivering but before recording: that one notice is sent
    // again, with the same idempotency key, so the receiver acts on it once.
    let path = state.join("notices.ndjson");
    let text = std::fs::read_to_string(&path).expect("log");
    let keep = text.trim_end().rfind('\n').map_or(0, |at| at + 1);
    std::fs::write(&path, &text[..keep]).expect("drop the last record");
    let redo = watch::run(&scene.request, &webhook(&url))
        .await
        .expect("redo");
    assert_eq!(redo.notices_sent, 1);
    let seen = received.lock().expect("lock");
    assert_eq!(seen.requests.len(), 7);
    assert_eq!(seen.requests[6].0, log[3]);
    assert_eq!(
        seen.accepted.len(),
        4,
        "distinct keys: each notice acted on once"
    );
}

#[tokio::test]
async fn a_refused_notice_fails_the_run_and_is_delivered_by_the_next() {
    // 400 is a refusal retrying will not change: no retry, the run fails, nothing recorded.
    let (url, received) = receiver(vec![400]);
    let scene = scene();
    let error = watch::run(&scene.request, &webhook(&url))
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert!(
        text.contains("cost_threshold_exceeded/shop/2026-10/0.02") && text.contains("HTTP 400"),
        "{text}"
    );
    assert!(delivered(&scene.request.state_dir).is_empty());
    assert_eq!(received.lock().expect("lock").requests.len(), 1);
    // Once the receiver takes them, the next run delivers all four.
    let next = watch::run(&scene.request, &webhook(&url))
        .await
        .expect("next run");
    assert_eq!(next.notices_sent, 4);
    assert_eq!(received.lock().expect("lock").accepted.len(), 4);
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried_then_reported_with_the_notice() {
    // A port nothing listens on: connection refused, every attempt.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let url = format!("http://127.0.0.1:{port}/notices");
    let scene = scene();
    let error = watch::run(&scene.request, &webhook(&url))
        .await
        .expect_err("unreachable");
    assert!(error.to_string().contains("4 attempts failed"), "{error}");
    assert!(delivered(&scene.request.state_dir).is_empty());
}
