//! The HTTP API: every endpoint, its errors, and the OpenAPI document that describes it.

mod common;

use common::{Client, Server};
use serde_json::{Value, json};

#[tokio::test]
async fn every_endpoint_answers_as_documented() {
    let server = Server::start(&[
        "--set",
        "namespaces.chat.allow_publish=true",
        "--set",
        "namespaces.chat.history_size=10",
    ]);
    let openapi: Value = {
        let (status, text) = server.get("/api/openapi.json").await;
        assert_eq!(status, 200);
        serde_json::from_str(&text).expect("openapi is JSON")
    };
    let alice = common::token(json!({"sub": "alice"}));
    let (mut c, _) = Client::connect(&server, Some(&alice)).await;
    c.call("subscribe", json!({"channel": "chat:lobby"})).await;

    let calls = [
        (
            "publish",
            json!({"channel": "chat:lobby", "data": {"n": 1}}),
        ),
        (
            "broadcast",
            json!({"channels": ["chat:lobby", "other"], "data": 2}),
        ),
        ("channels", json!({})),
        ("presence", json!({"channel": "chat:lobby"})),
        ("info", json!({})),
        (
            "unsubscribe",
            json!({"user": "nobody", "channel": "chat:lobby"}),
        ),
        ("user", json!({"user": "alice"})),
        ("disconnect", json!({"user": "nobody"})),
        ("history", json!({"channel": "chat:lobby"})),
        ("analytics", json!({"window_secs": 600, "limit": 5})),
    ];
    let paths = openapi["paths"].as_object().expect("paths");
    assert_eq!(
        paths.len(),
        calls.len(),
        "every documented path is exercised here"
    );
    for (method, body) in calls {
        let path = format!("/api/{method}");
        let doc = &paths
            .get(&path)
            .unwrap_or_else(|| panic!("{path} documented"))["post"];
        let (status, reply) = server.api(method, body).await;
        assert_eq!(status, 200, "{path}: {reply}");
        let schema = &doc["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
            ["result"];
        let schema = resolve(&openapi, schema);
        for field in schema["required"].as_array().expect("required fields") {
            let field = field.as_str().expect("name");
            assert!(
                reply["result"].get(field).is_some(),
                "{path}: missing {field} in {reply}"
            );
        }
        for key in reply["result"].as_object().expect("object").keys() {
            assert!(
                schema["properties"].get(key).is_some(),
                "{path}: undocumented field {key}"
            );
        }
    }
    // Results carry the right values.
    let (_, r) = server.api("channels", json!({})).await;
    assert_eq!(r["result"]["channels"]["chat:lobby"]["num_clients"], 1);
    let (_, r) = server.api("channels", json!({"pattern": "zzz"})).await;
    assert_eq!(r["result"]["channels"], json!({}));
    let (_, r) = server
        .api("presence", json!({"channel": "chat:lobby"}))
        .await;
    let clients = r["result"]["clients"].as_object().expect("clients");
    assert_eq!(clients.values().next().expect("one")["user"], "alice");
    let (_, r) = server.api("info", json!({})).await;
    assert_eq!(r["result"]["connections"], 1);
    assert_eq!(r["result"]["subscriptions"], 1);
    let (_, r) = server
        .api(
            "broadcast",
            json!({"channels": ["chat:lobby", "nope:x"], "data": 3}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["delivered"], 1);
    assert_eq!(r["result"]["responses"][1]["error"]["code"], 102);
    // The subscriber got the publish and both broadcasts.
    for expected in [json!({"n": 1}), json!(2), json!(3)] {
        let (_, p) = c.next_publication().await;
        assert_eq!(p["data"], expected);
    }
    let (_, r) = server.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(r["result"]["disconnected"], 1);
    let close = c.expect_close().await.expect("close");
    assert_eq!(u16::from(close.code), 4503);
}

/// The unsubscribe API ends a user's subscription on the server: the client gets an
/// `unsubscribe` push, hears no more of the channel, keeps its other subscriptions and
/// its connection, and may subscribe again.
#[tokio::test]
async fn unsubscribe_ends_a_user_subscription_and_user_counts_connections() {
    let server = Server::start(&["--dev"]);
    let ann = common::token(json!({"sub": "ann"}));
    let (mut c, _) = Client::connect(&server, Some(&ann)).await;
    let (mut other, _) = Client::connect(&server, Some(&ann)).await;
    for channel in ["news", "sport"] {
        let r = c.call("subscribe", json!({"channel": channel})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let (_, r) = server.api("user", json!({"user": "ann"})).await;
    assert_eq!(r["result"]["connections"], 2, "{r}");
    let (status, r) = server
        .api("unsubscribe", json!({"user": "ann", "channel": "news"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["result"]["unsubscribed"], 2,
        "both connections were asked"
    );
    let push = c.next_json().await;
    assert_eq!(push["push"]["channel"], "news", "{push}");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2000, "{push}");
    // `other` was never subscribed: it gets nothing and stays.
    let r = other.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
    server
        .api("publish", json!({"channel": "news", "data": "gone"}))
        .await;
    server
        .api("publish", json!({"channel": "sport", "data": "kept"}))
        .await;
    let (channel, p) = c.next_publication().await;
    assert_eq!((channel.as_str(), &p["data"]), ("sport", &json!("kept")));
    let r = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(r.get("subscribe").is_some(), "subscribes again: {r}");
    let (status, r) = server
        .api("unsubscribe", json!({"user": "", "channel": "news"}))
        .await;
    assert_eq!(status, 400, "{r}");
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling {r}"))
        }
        None => schema,
    }
}

#[tokio::test]
async fn errors_are_json_with_codes() {
    let server = Server::start(&["--set", "websocket.max_message_size=1024"]);
    let body = json!({"channel": "x", "data": 1}).to_string();
    let (status, r) = server.api_with_key("publish", &body, None).await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (401, Some(101)),
        "{r}"
    );
    let (status, r) = server.api_with_key("publish", &body, Some("wrong")).await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (401, Some(101)),
        "{r}"
    );
    let (status, r) = server
        .api_with_key("publish", "{nope", Some(common::API_KEY))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (400, Some(107)),
        "{r}"
    );
    // A struct is not to be filled by position from an array.
    for (method, body) in [
        ("publish", r#"["x", 1]"#),
        ("info", "[]"),
        ("channels", "[]"),
    ] {
        let (status, r) = server
            .api_with_key(method, body, Some(common::API_KEY))
            .await;
        assert_eq!(
            (status, r["error"]["code"].as_u64()),
            (400, Some(107)),
            "{method} {body}: {r}"
        );
    }
    let (status, r) = server.api("publish", json!({"channel": "x"})).await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (400, Some(107)),
        "missing data: {r}"
    );
    // Well formed but unknown: 404 (400 is for requests that break the document).
    let (status, r) = server
        .api("publish", json!({"channel": "ns:x", "data": 1}))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (404, Some(102)),
        "{r}"
    );
    let big = "y".repeat(2000);
    let (status, r) = server
        .api("publish", json!({"channel": "x", "data": big}))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (413, Some(110)),
        "{r}"
    );
    let huge = "z".repeat(64 * 1024);
    let (status, r) = server
        .api("publish", json!({"channel": "x", "data": huge}))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (413, Some(110)),
        "{r}"
    );
    let (status, r) = server
        .api("broadcast", json!({"channels": [], "data": 1}))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (400, Some(107)),
        "{r}"
    );
    let (status, _) = server.get("/api/nothing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn api_is_disabled_without_a_key() {
    // `--set` wins over `--api-key`: this node has no key at all.
    let server = Server::start(&["--set", "api.key=\"\""]);
    let (status, r) = server.api("info", json!({})).await;
    assert_eq!(status, 401);
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.key")),
        "{r}"
    );
}

#[tokio::test]
async fn retried_publish_with_idempotency_key_is_not_published_twice() {
    let server = Server::start(&["--dev"]);
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "idem"})).await;
    let publish =
        |data: Value, key: &str| json!({"channel": "idem", "data": data, "idempotency_key": key});
    let (status, first) = server.api("publish", publish(json!(1), "k1")).await;
    assert_eq!(status, 200, "{first}");
    let (status, retry) = server.api("publish", publish(json!(1), "k1")).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry, first, "the original result, same offset and epoch");
    // Two concurrent requests with one key: one publication, one result.
    let (a, b) = tokio::join!(
        server.api("publish", publish(json!(2), "k2")),
        server.api("publish", publish(json!(2), "k2")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1, b.1);
    // Another key publishes again.
    let (_, other) = server.api("publish", publish(json!(3), "k3")).await;
    assert_eq!(other["result"]["offset"], 3, "{other}");
    // The subscriber got each publication exactly once, in order.
    for (data, offset) in [(1, 1), (2, 2), (3, 3)] {
        let (_, p) = c.next_publication().await;
        assert_eq!((&p["data"], &p["offset"]), (&json!(data), &json!(offset)));
    }
    // Broadcast keys are separate from publish keys and replay too.
    let body = json!({"channels": ["idem"], "data": 4, "idempotency_key": "k1"});
    let (_, b1) = server.api("broadcast", body.clone()).await;
    let (_, b2) = server.api("broadcast", body).await;
    assert_eq!(b1["result"]["responses"][0]["offset"], 4, "{b1}");
    assert_eq!(b1, b2);
    let (_, p) = c.next_publication().await;
    assert_eq!(p["offset"], 4);
    let (_, info) = server.api("info", json!({})).await;
    assert_eq!(info["result"]["publications"], 4, "{info}");
    // Keys are at most 128 bytes.
    let long = "x".repeat(129);
    let (status, r) = server.api("publish", publish(json!(5), &long)).await;
    assert_eq!((status, &r["error"]["code"]), (400, &json!(107)), "{r}");
    let (status, _) = server
        .api("publish", publish(json!(5), &"x".repeat(128)))
        .await;
    assert_eq!(status, 200);
}

/// An idempotency key is bound to the request it was first used with: the same key
/// with other content is refused with 409 (code 117) and publishes nothing.
#[tokio::test]
async fn idempotency_key_reused_for_another_request_is_refused() {
    let server = Server::start(&["--dev"]);
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "bound"})).await;
    let publish = |channel: &str, data: Value| json!({"channel": channel, "data": data, "idempotency_key": "same"});
    let (status, first) = server.api("publish", publish("bound", json!(1))).await;
    assert_eq!(status, 200, "{first}");
    for other in [
        publish("bound", json!(2)),
        publish("elsewhere", json!(1)),
        json!({"channel": "bound", "data": 1, "durable": true, "idempotency_key": "same"}),
    ] {
        let (status, r) = server.api("publish", other).await;
        assert_eq!((status, &r["error"]["code"]), (409, &json!(117)), "{r}");
    }
    let (status, again) = server.api("publish", publish("bound", json!(1))).await;
    assert_eq!((status, &again), (200, &first));
    let (_, info) = server.api("info", json!({})).await;
    assert_eq!(info["result"]["publications"], 1, "{info}");
    let (_, p) = c.next_publication().await;
    assert_eq!(p["offset"], 1);
}

/// A durable publish whose caller hangs up while the server waits for the fsync still
/// records its result: the retry gets the same offset and nothing is delivered twice.
#[tokio::test]
async fn durable_publish_abandoned_by_its_caller_is_not_published_twice() {
    let server = Server::start(&["--dev"]);
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "hangup"})).await;
    let body = json!({"channel": "hangup", "data": "x", "durable": true, "idempotency_key": "h1"})
        .to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {}\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        common::API_KEY,
        body.len()
    );
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        // Hang up at once. Depending on timing the server drops the request unread, or
        // has published and waits for the fsync: the retry must be right either way.
    }
    let (status, retry) = server
        .api("publish", serde_json::from_str(&body).expect("json"))
        .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["result"]["offset"], 1, "{retry}");
    // Exactly one delivery: the next publication is the marker, at offset 2.
    let (status, _) = server
        .api("publish", json!({"channel": "hangup", "data": "marker"}))
        .await;
    assert_eq!(status, 200);
    let (_, p) = c.next_publication().await;
    assert_eq!((&p["offset"], &p["data"]), (&json!(1), &json!("x")));
    let (_, p) = c.next_publication().await;
    assert_eq!((&p["offset"], &p["data"]), (&json!(2), &json!("marker")));
}

/// Item 4: one channel name check for every entry point. `broadcast` used to accept an
/// empty name that `publish` refused with 107.
#[tokio::test]
async fn channel_names_are_checked_alike_everywhere() {
    let server = Server::start(&["--dev"]);
    let (mut c, _) = Client::connect(&server, None).await;
    for bad in ["", ":x", "x:", "#", "ns:#", "a b", "a\u{3000}b", "a\u{85}"] {
        for (method, body) in [
            ("publish", json!({"channel": bad, "data": 1})),
            ("broadcast", json!({"channels": ["fine", bad], "data": 1})),
            ("history", json!({"channel": bad})),
            ("presence", json!({"channel": bad})),
        ] {
            let (status, r) = server.api(method, body).await;
            assert_eq!(
                (status, r["error"]["code"].as_u64()),
                (400, Some(107)),
                "{method} {bad:?}: {r}"
            );
        }
        for (method, params) in [
            ("subscribe", json!({"channel": bad})),
            ("publish", json!({"channel": bad, "data": 1})),
            ("history", json!({"channel": bad})),
            ("presence", json!({"channel": bad})),
            ("presence_stats", json!({"channel": bad})),
        ] {
            let r = c.call(method, params).await;
            assert_eq!(r["error"]["code"], 107, "{method} {bad:?}: {r}");
        }
    }
    // Nothing of the refused broadcasts was published, not even to the good channel.
    let (_, r) = server.api("info", json!({})).await;
    assert_eq!(r["result"]["publications"], 0, "{r}");
    // 255 characters is fine (multi-byte ones too), 256 is not.
    let long = "é".repeat(255);
    let (status, r) = server
        .api("publish", json!({"channel": long, "data": 1}))
        .await;
    assert_eq!(status, 200, "{r}");
    let longer = "é".repeat(256);
    let (status, _) = server
        .api("publish", json!({"channel": longer, "data": 1}))
        .await;
    assert_eq!(status, 400);
}

/// Item 4: the document states what the server enforces.
#[tokio::test]
async fn openapi_states_the_constraints() {
    let server = Server::start(&[]);
    let (_, text) = server.get("/api/openapi.json").await;
    let doc: Value = serde_json::from_str(&text).expect("json");
    let name = &doc["components"]["schemas"]["ChannelName"];
    assert_eq!(name["pattern"], starling_core::CHANNEL_NAME_PATTERN);
    assert_eq!(name["minLength"], 1);
    assert_eq!(name["maxLength"], starling_core::MAX_CHANNEL_LEN);
    assert_eq!(doc["components"]["schemas"]["UserId"]["minLength"], 1);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let op = &item["post"];
        for status in ["200", "400", "401", "413", "503"] {
            assert!(
                op["responses"].get(status).is_some(),
                "{path} documents {status}"
            );
        }
        let method = path.trim_start_matches("/api/");
        let optional = op["requestBody"]["required"] == json!(false);
        assert_eq!(
            optional,
            matches!(method, "channels" | "info" | "analytics"),
            "{path}: body required?"
        );
        // What the document calls optional is: no body at all is fine.
        let (status, r) = server.api_with_key(method, "", Some(common::API_KEY)).await;
        if optional {
            assert_eq!(status, 200, "{path}: {r}");
        } else {
            assert_eq!(status, 400, "{path}: {r}");
        }
    }
    for path in ["/api/publish", "/api/broadcast"] {
        let key = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]["idempotency_key"];
        assert_eq!(
            (&key["minLength"], &key["maxLength"]),
            (&json!(1), &json!(128))
        );
    }
    // The key limit counts characters, as maxLength does.
    let (status, r) = server
        .api(
            "publish",
            json!({"channel": "x", "data": 1, "idempotency_key": "é".repeat(128)}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
}

/// Without the archive a node answers `/api/analytics` from its own counters: what was
/// just published shows in the current, partial minute (no snapshot needed), with the
/// connect, the 4503 disconnect and a p99; top lists are empty with a note; the request
/// limits are enforced.
#[tokio::test]
async fn analytics_without_the_archive_answers_from_the_node() {
    // The node counts per configured namespace (others together, as ":other").
    let server = Server::start(&[
        "--dev",
        "--set",
        "namespaces.chat.allow_publish=true",
        "--set",
        "namespaces.chat.history_size=10",
    ]);
    let alice = common::token(json!({"sub": "alice"}));
    let (mut c, _) = Client::connect(&server, Some(&alice)).await;
    for n in 0..3 {
        let r = c
            .call("publish", json!({"channel": "chat:x", "data": {"n": n}}))
            .await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    for n in 0..2 {
        let (status, r) = server
            .api("publish", json!({"channel": "news", "data": [n]}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    // A durable publish waits for the log's fsync, which covers everything before it: the
    // top lists (counted from the fsynced log) see it all. `news` keeps no history and
    // has no subscriber: stored nowhere, it is in the traffic, not in the top lists.
    let (status, r) = server
        .api(
            "publish",
            json!({"channel": "chat:x", "data": [9], "durable": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = server.api("analytics", json!({})).await;
    assert_eq!(status, 200, "{r}");
    let result = &r["result"];
    assert_eq!(result["source"], "node");
    assert_eq!(result["bucket"], "minute");
    assert!(
        result["note"]
            .as_str()
            .is_some_and(|n| n.contains("counted from this node's message log")),
        "{r}"
    );
    assert_eq!(
        result["top_channels"],
        json!([{"channel": "chat:x", "namespace": "chat", "messages": 4, "bytes": 24}]),
        "{r}"
    );
    assert_eq!(
        result["top_publishers"],
        json!([
            {"user": "alice", "messages": 3, "bytes": 21},
            {"user": null, "messages": 1, "bytes": 3},
        ])
    );
    assert_eq!(result["connections"]["current"], 1);
    // A minute may turn between the publications: sum the rows.
    let sum = |ns: &str, field: &str| -> u64 {
        result["traffic"]
            .as_array()
            .expect("traffic")
            .iter()
            .filter(|t| t["namespace"] == ns)
            .map(|t| t[field].as_u64().expect("count"))
            .sum()
    };
    assert_eq!(
        (sum("chat", "messages"), sum("chat", "bytes")),
        (4, 24),
        "{r}"
    );
    assert_eq!(
        (sum("default", "messages"), sum("default", "bytes")),
        (2, 6),
        "{r}"
    );
    assert!(
        !result["publish_latency_p99"]
            .as_array()
            .expect("p99")
            .is_empty(),
        "{r}"
    );
    let peaks = result["connections"]["peaks"].as_array().expect("peaks");
    assert_eq!(peaks.last().expect("a bucket")["peak"], 1, "{r}");
    let (status, r) = server
        .api("analytics", json!({"namespace": "chat", "bucket": "hour"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["bucket"], "hour");
    let traffic = r["result"]["traffic"].as_array().expect("traffic");
    assert!(traffic.iter().all(|t| t["namespace"] == "chat"), "{r}");

    let (_, r) = server.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(r["result"]["disconnected"], 1);
    c.expect_close().await;
    let (_, r) = server.api("analytics", json!({"window_secs": 60})).await;
    let events = r["result"]["events_by_code"].as_array().expect("events");
    assert_eq!(
        events[0],
        json!({"kind": "connect", "code": null, "events": 1})
    );
    assert!(
        events.contains(&json!({"kind": "disconnect", "code": 4503, "events": 1})),
        "{r}"
    );

    for bad in [
        json!({"window_secs": 0}),
        json!({"window_secs": 2_678_401}),
        json!({"limit": 0}),
        json!({"limit": 101}),
        json!({"bucket": "day"}),
        json!({"nope": 1}),
    ] {
        let (status, r) = server.api("analytics", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {r}");
    }
}
