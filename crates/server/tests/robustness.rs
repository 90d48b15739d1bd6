//! Inputs at the edges of their types, over real connections: the answer is defined,
//! the connection that sent them survives (or is closed with a documented code) and the
//! node keeps serving everyone.

mod common;

use common::{Client, Server};
use serde_json::json;

/// A token expiring near the end of `u64` used to overflow the connection's clock and
/// kill its task; it is an ordinary long-lived connection now.
#[tokio::test]
async fn token_expiring_at_the_end_of_time_keeps_a_working_connection() {
    let server = Server::start(&["--set", "namespaces.default.history_size=10"]);
    for exp in [u64::MAX, u64::MAX / 1000, i64::MAX as u64] {
        let token = common::token(json!({"sub": "alice", "exp": exp}));
        let (mut c, reply) = Client::connect(&server, Some(&token)).await;
        assert!(reply.get("error").is_none(), "{reply}");
        // The connection still answers (its task did not die on the deadline).
        let pong = c.call("ping", json!({})).await;
        assert!(pong.get("error").is_none(), "{pong}");
        c.call("subscribe", json!({"channel": "edge"})).await;
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "edge", "data": exp.to_string()}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, p) = c.next_publication().await;
        assert_eq!(p["data"], json!(exp.to_string()));
    }
}

/// Positions at the end of `u64` in history and recovery requests get defined answers.
#[tokio::test]
async fn extreme_positions_get_defined_answers() {
    let server = Server::start(&["--set", "namespaces.default.history_size=10"]);
    let token = common::token(json!({"sub": "bob", "exp": common::now() + 600}));
    let (mut c, _) = Client::connect(&server, Some(&token)).await;
    c.call("subscribe", json!({"channel": "h"})).await;
    let (status, _) = server
        .api("publish", json!({"channel": "h", "data": 1}))
        .await;
    assert_eq!(status, 200);
    let _ = c.next_publication().await;
    let epoch = {
        let r = c.call("history", json!({"channel": "h", "limit": 1})).await;
        r["history"]["epoch"].as_str().expect("epoch").to_string()
    };
    for reverse in [false, true] {
        let r = c
            .call(
                "history",
                json!({"channel": "h", "since": {"offset": u64::MAX, "epoch": epoch}, "reverse": reverse}),
            )
            .await;
        assert!(
            r.get("history").is_some() || r.get("error").is_some(),
            "{r}"
        );
    }
    let (status, r) = server
        .api(
            "history",
            json!({"channel": "h", "since": {"offset": u64::MAX, "epoch": epoch}}),
        )
        .await;
    assert!(status == 200 || status == 400, "{status} {r}");
    // Recovery from the far future is refused as unrecoverable, not a crash.
    let (mut d, _) = Client::connect(&server, Some(&token)).await;
    let r = d
        .call(
            "subscribe",
            json!({"channel": "h", "recover": true, "offset": u64::MAX, "epoch": epoch}),
        )
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    assert_ne!(r["subscribe"]["recovered"], json!(true), "{r}");
    // Both connections still work.
    for client in [&mut c, &mut d] {
        let pong = client.call("ping", json!({})).await;
        assert!(pong.get("error").is_none(), "{pong}");
    }
}
