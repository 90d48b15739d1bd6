//! Operations: health, readiness, metrics, configuration errors and graceful shutdown.

mod common;

use common::{Client, Server};
use serde_json::json;

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = Server::start(&["--dev"]);
    assert_eq!(server.get("/health").await.0, 200);
    assert_eq!(server.get("/ready").await.0, 200);
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "m"})).await;
    server
        .api("publish", json!({"channel": "m", "data": 1}))
        .await;
    c.next_publication().await;
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(value("starling_connections"), 1);
    assert_eq!(value("starling_subscriptions"), 1);
    assert_eq!(value("starling_channels"), 1);
    assert_eq!(value("starling_publications_total"), 1);
    assert!(value("starling_messages_in_total") >= 2);
    assert!(value("starling_bytes_out_total") > 0);
    assert!(text.contains("starling_errors_total{code=\"4500\"}"));
}

#[tokio::test]
async fn sigterm_drains_clients_with_reconnect_advice() {
    let mut server = Server::start(&["--dev"]);
    let (mut a, _) = Client::connect(&server, None).await;
    let (mut b, _) = Client::connect(&server, None).await;
    server.signal("TERM");
    for c in [&mut a, &mut b] {
        let push = c.next_json().await;
        assert_eq!(push["push"]["disconnect"]["code"], 4000, "{push}");
        assert_eq!(push["push"]["disconnect"]["reconnect"], true, "{push}");
        // A jittered wait within the defaults, so a node's clients do not return at once.
        let delay = push["push"]["disconnect"]["delay"].as_u64().expect("delay");
        assert!((500..=5000).contains(&delay), "{push}");
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 4000);
    }
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn config_errors_name_the_key() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_starling"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--set", "websocket.max_mesage_size=1"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("websocket.max_mesage_size"), "{err}");
    let (code, err) = run(&["--set", "websocket.ping_interval_secs=soon"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("ping_interval_secs"), "{err}");
    let (code, err) = run(&[], &[("STARLING_SERVER_LISTN", "x")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("STARLING_SERVER_LISTN"), "{err}");
    let dir = std::env::temp_dir().join(format!("starling-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("starling.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n").expect("write");
    let (code, err) = run(&["--config", file.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bogus") && err.contains("starling.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_explains_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--dev",
        "--echo",
        "--api-key",
        "--token-hmac-secret",
        "--log-format",
        "--set",
    ] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
    // Every setting `starling config` knows is named in the help.
    let config = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("config")
        .output()
        .expect("run");
    let config = String::from_utf8_lossy(&config.stdout);
    let mut section = String::new();
    for line in config.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.replace("namespaces.default", "namespaces.<ns>");
        } else if let Some((key, _)) = line.split_once(" = ") {
            let dotted = format!("{section}.{key}");
            assert!(text.contains(&dotted), "{dotted} missing from serve --help");
        }
    }
}

/// Item 16: `starling config` printed the API key and the token secret.
#[test]
fn config_redacts_secrets_unless_asked() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("config")
            .args([
                "--api-key",
                "api-secret-1",
                "--token-hmac-secret",
                "hmac-secret-2",
            ])
            .args(extra)
            .output()
            .expect("run");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = run(&[]);
    assert!(
        !shown.contains("api-secret-1") && !shown.contains("hmac-secret-2"),
        "{shown}"
    );
    assert!(shown.contains("key = \"<redacted>\""), "{shown}");
    assert!(
        shown.contains("token_hmac_secret = \"<redacted>\""),
        "{shown}"
    );
    let all = run(&["--show-secrets"]);
    assert!(
        all.contains("api-secret-1") && all.contains("hmac-secret-2"),
        "{all}"
    );
}

/// Item 16: `--dev` on an address other machines can reach needs an explicit opt-in.
#[test]
fn dev_mode_refuses_a_public_address_unless_forced() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve", "--dev", "--listen", "0.0.0.0:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // A server that starts would run forever: give it a bounded time to refuse.
    let deadline = std::time::Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "started on 0.0.0.0");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert!(
        err.contains("loopback") && err.contains("server.dev_allow_public"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["config", "--dev", "--listen", "0.0.0.0:0"])
        .args(["--set", "server.dev_allow_public=true"])
        .output()
        .expect("run");
    assert!(out.status.success(), "forced: {out:?}");
}

/// Item 16: while the node drains, the API refuses new requests with 503 and lets the
/// ones already running finish before the process exits.
#[tokio::test]
async fn draining_refuses_new_api_requests_and_finishes_running_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(&["--dev"]);
    let addr = server.addr;
    // A request whose body is still on its way: it is running when the drain begins.
    let body = json!({"channel": "drain", "data": "late"}).to_string();
    let (head_part, rest) = body.split_at(10);
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head_part}",
        common::API_KEY,
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    // A keep-alive connection for requests made during the drain (the listener closes).
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let info = format!(
        "POST /api/info HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {}\r\nContent-Length: 2\r\n\r\n{{}}",
        common::API_KEY
    );
    let deadline = tokio::time::Instant::now() + common::WAIT;
    // The slow request is counted once the server has read its head.
    loop {
        let (_, metrics) = server.get("/metrics").await;
        if metrics.lines().any(|l| l == "starling_api_in_flight 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.signal("TERM");
    // Requests on the open connection get 503 once the drain has begun.
    let mut buf = vec![0u8; 4096];
    loop {
        kept.write_all(info.as_bytes()).await.expect("write");
        let n = tokio::time::timeout(common::WAIT, kept.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("\"code\":4000"), "{text}");
            break;
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(tokio::time::Instant::now() < deadline, "no drain");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The running request completes normally...
    slow.write_all(rest.as_bytes()).await.expect("write rest");
    let mut answer = Vec::new();
    tokio::time::timeout(common::WAIT, slow.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ... and only then the node exits, cleanly.
    assert_eq!(server.wait_exit(), Some(0));
}
