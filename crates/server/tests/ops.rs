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
