//! The embedded pages and the dashboard's API, against the real binary: cache headers,
//! revalidation, content codings, who may see what, and dashboard sessions.

mod common;

use std::io::Read as _;

use common::{Server, header_of, raw_exchange, status_of};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` with extra header lines; the head as text and the body as bytes.
async fn get(server: &Server, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    (head, out[split + 4..].to_vec())
}

/// `POST path` with a JSON body and an optional `Authorization` value.
async fn post(server: &Server, path: &str, body: &Value, auth: Option<&str>) -> (u16, Value) {
    let body = body.to_string();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let text = raw_exchange(server.addr, request.as_bytes()).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    (
        status_of(head),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The script a page loads (`<script src="...">`).
fn script_of(html: &str) -> String {
    let start = html.find("<script src=\"").expect("a script") + 13;
    let end = html[start..].find('"').expect("quote") + start;
    html[start..end].to_string()
}

#[tokio::test]
async fn pages_revalidate_and_hashed_files_are_immutable() {
    let server = Server::start(&["--dev"]);
    let (head, body) = get(&server, "/admin", "").await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(header_of(&head, "content-type").is_some_and(|v| v.starts_with("text/html")));
    assert_eq!(header_of(&head, "cache-control"), Some("no-cache"));
    assert!(
        header_of(&head, "content-security-policy")
            .is_some_and(|v| v.contains("default-src 'self'"))
    );
    let etag = header_of(&head, "etag").expect("an etag").to_string();
    let html = String::from_utf8(body).expect("utf-8");

    let (head, body) = get(&server, "/admin", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!(status_of(&head), 304, "{head}");
    assert!(body.is_empty());
    assert_eq!(header_of(&head, "etag"), Some(etag.as_str()));
    let (head, _) = get(&server, "/admin", "If-None-Match: \"stale\"\r\n").await;
    assert_eq!(status_of(&head), 200);

    let script = script_of(&html);
    assert!(script.starts_with("/static/admin-"), "{script}");
    let (head, plain) = get(&server, &script, "").await;
    assert_eq!(status_of(&head), 200);
    assert_eq!(
        header_of(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(header_of(&head, "content-encoding").is_none());
    assert_eq!(header_of(&head, "vary"), Some("Accept-Encoding"));

    let (head, br) = get(&server, &script, "Accept-Encoding: gzip, deflate, br\r\n").await;
    assert_eq!(header_of(&head, "content-encoding"), Some("br"));
    assert!(br.len() < plain.len());
    let (head, gz) = get(&server, &script, "Accept-Encoding: gzip\r\n").await;
    assert_eq!(header_of(&head, "content-encoding"), Some("gzip"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unzipped)
        .expect("gzip");
    assert_eq!(unzipped, plain, "the gzip variant is the same file");

    let (head, _) = get(&server, "/static/nothing-here.js", "").await;
    assert_eq!(status_of(&head), 404);
    let (head, _) = get(&server, "/static/../admin.html", "").await;
    assert_eq!(status_of(&head), 404, "no path tricks");
}

#[tokio::test]
async fn production_serves_no_demo_and_no_dashboard_unless_enabled() {
    let server = Server::start(&[]);
    for path in ["/", "/admin", "/admin/api/session", "/admin/api/snapshot"] {
        let (head, _) = get(&server, path, "").await;
        assert_eq!(status_of(&head), 404, "{path}");
    }
    let (status, _) = post(&server, "/admin/api/login", &json!({"password": ""}), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_dashboard_logs_in_with_its_password_and_acts_through_the_api() {
    let server = Server::start(&[
        "--set",
        "admin.enabled=true",
        "--set",
        "admin.password=\"hunter22\"",
    ]);
    let (head, body) = get(&server, "/admin/api/session", "").await;
    assert_eq!(status_of(&head), 200);
    let session: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(session["password_required"], true, "{session}");

    let (status, _) = post(
        &server,
        "/admin/api/login",
        &json!({"password": "nope"}),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (head, _) = get(&server, "/admin/api/snapshot", "").await;
    assert_eq!(status_of(&head), 401, "no session");
    let (head, _) = get(
        &server,
        "/admin/api/snapshot",
        "Authorization: Bearer x.y.z\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 401, "a forged session");

    let (status, reply) = post(
        &server,
        "/admin/api/login",
        &json!({"password": "hunter22"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let token = reply["token"].as_str().expect("a token").to_string();
    let bearer = format!("Bearer {token}");

    let (head, body) = get(
        &server,
        "/admin/api/snapshot",
        &format!("Authorization: {bearer}\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let snapshot: Value = serde_json::from_slice(&body).expect("json");
    assert!(
        snapshot["metrics"]["starling_connections"].is_number(),
        "{snapshot}"
    );
    assert!(
        snapshot["info"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1)
    );
    assert!(snapshot["time_ms"].as_u64().is_some_and(|t| t > 0));

    // The session opens the HTTP API (the dashboard's actions), a client token does not.
    let (status, reply) = post(
        &server,
        "/api/publish",
        &json!({"channel": "news", "data": {"n": 1}}),
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(&server, "/api/info", &json!({}), Some(&bearer)).await;
    assert_eq!(status, 200, "{reply}");
    let client_token = common::token(json!({"sub": "admin", "adm": true}));
    let (status, _) = post(
        &server,
        "/api/info",
        &json!({}),
        Some(&format!("Bearer {client_token}")),
    )
    .await;
    assert_eq!(status, 401, "a client token is no session");
}

#[tokio::test]
async fn dev_mode_opens_the_dashboard_without_a_password() {
    let server = Server::start(&["--dev"]);
    let (head, body) = get(&server, "/admin/api/session", "").await;
    assert_eq!(status_of(&head), 200);
    let session: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(session["password_required"], false);
    let (status, reply) = post(&server, "/admin/api/login", &json!({}), None).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply["token"].is_string());
}
