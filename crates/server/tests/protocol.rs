//! The client protocol over real WebSocket connections to the real binary.

mod common;

use std::time::Duration;

use common::{Client, Server, now, token};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn dev() -> Server {
    Server::start(&["--dev"])
}

#[tokio::test]
async fn quick_start_subscribe_and_receive_from_client_and_api() {
    let server = dev();
    let (mut alice, reply) = Client::connect(&server, None).await;
    assert!(
        reply["connect"]["client"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(reply["connect"]["ping"], 25);
    let sub = alice
        .call("subscribe", json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(sub["subscribe"]["offset"], 0, "{sub}");
    let epoch = sub["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();

    let (mut bob, _) = Client::connect(&server, None).await;
    let published = bob
        .call(
            "publish",
            json!({"channel": "chat:lobby", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(published["publish"]["offset"], 1, "{published}");
    assert_eq!(published["publish"]["epoch"], epoch.as_str());
    let (channel, p) = alice.next_publication().await;
    assert_eq!(channel, "chat:lobby");
    assert_eq!(p["data"], json!({"text": "hi"}));
    assert_eq!(p["offset"], 1);
    assert_eq!(p["info"]["user"], "", "anonymous publisher");
    assert!(p["info"]["client"].is_string(), "{p}");

    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "chat:lobby", "data": [1, 2, 3]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 2);
    assert_eq!(body["result"]["delivered"], 1);
    let (_, p) = alice.next_publication().await;
    assert_eq!(p["data"], json!([1, 2, 3]));
    assert_eq!(p["offset"], 2);
    assert!(
        p.get("info").is_none(),
        "API publications carry no client info"
    );
}

#[tokio::test]
async fn publications_arrive_in_order() {
    // 201 commands at once: more than the default burst, and this test is about order.
    let server = Server::start(&["--dev", "--set", "client.command_rate=0"]);
    let (mut sub, _) = Client::connect(&server, None).await;
    sub.call("subscribe", json!({"channel": "order"})).await;
    let (mut publisher, _) = Client::connect(&server, None).await;
    for i in 0..200 {
        publisher
            .send("publish", json!({"channel": "order", "data": i}))
            .await;
    }
    for i in 0..200u64 {
        let (_, p) = sub.next_publication().await;
        assert_eq!(p["data"], json!(i));
        assert_eq!(p["offset"], i + 1);
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = dev();
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "a"})).await;
    c.call("subscribe", json!({"channel": "b"})).await;
    let r = c.call("unsubscribe", json!({"channel": "a"})).await;
    assert_eq!(r["unsubscribe"], json!({}));
    server
        .api("publish", json!({"channel": "a", "data": "x"}))
        .await;
    server
        .api("publish", json!({"channel": "b", "data": "y"}))
        .await;
    let (channel, p) = c.next_publication().await;
    assert_eq!((channel.as_str(), &p["data"]), ("b", &json!("y")));
}

#[tokio::test]
async fn presence_and_stats() {
    let server = dev();
    let alice_token = token(json!({"sub": "alice"}));
    let (mut a, _) = Client::connect(&server, Some(&alice_token)).await;
    let (mut a2, _) = Client::connect(&server, Some(&alice_token)).await;
    let bob_token = token(json!({"sub": "bob", "info": {"name": "Bob"}}));
    let (mut b, _) = Client::connect(&server, Some(&bob_token)).await;
    for c in [&mut a, &mut a2, &mut b] {
        c.call("subscribe", json!({"channel": "room"})).await;
    }
    let p = a.call("presence", json!({"channel": "room"})).await;
    let clients = p["presence"]["clients"].as_object().expect("clients");
    assert_eq!(clients.len(), 3);
    let bob = clients.values().find(|c| c["user"] == "bob").expect("bob");
    assert_eq!(
        bob["conn_info"],
        json!({"name": "Bob"}),
        "token info is shown: {bob}"
    );
    assert!(
        bob["client"]
            .as_str()
            .is_some_and(|id| clients.contains_key(id))
    );
    let mut users: Vec<_> = clients
        .values()
        .map(|c| c["user"].as_str().unwrap_or(""))
        .collect();
    users.sort();
    assert_eq!(users, vec!["alice", "alice", "bob"]);
    let s = a.call("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(
        s["presence_stats"],
        json!({"num_clients": 3, "num_users": 2})
    );
    let denied = a.call("presence", json!({"channel": "elsewhere"})).await;
    assert_eq!(
        denied["error"]["code"], 111,
        "presence needs a subscription: {denied}"
    );
}

#[tokio::test]
async fn ping_batch_and_unknown_method() {
    let server = dev();
    let (mut c, _) = Client::connect(&server, None).await;
    c.send_text("{\"id\":10,\"ping\":{}}\n{\"id\":11,\"frobnicate\":{}}\n{\"id\":12,\"ping\":{}}")
        .await;
    let frame = c.next_frame().await;
    let text = frame.into_text().expect("text");
    let replies: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(replies.len(), 3, "a batch in, a batch out: {text}");
    assert_eq!(replies[0], json!({"id": 10, "ping": {}}));
    assert_eq!(replies[1]["id"], 11);
    assert_eq!(replies[1]["error"]["code"], 104);
    assert_eq!(replies[2], json!({"id": 12, "ping": {}}));
}

#[tokio::test]
async fn history_pages_and_is_refused_where_not_kept() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "namespaces.news.history_size=0",
        "--set",
        "namespaces.feed.history_size=3",
    ]);
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "news:x"})).await;
    let r = c.call("history", json!({"channel": "news:x"})).await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    let r = c.call("history", json!({"channel": "feed:x"})).await;
    assert_eq!(r["error"]["code"], 111, "subscribe first: {r}");
    let sub = c.call("subscribe", json!({"channel": "feed:x"})).await;
    let epoch = sub["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    assert_eq!(sub["subscribe"]["recoverable"], true, "{sub}");
    for i in 1..=5 {
        server
            .api("publish", json!({"channel": "feed:x", "data": i}))
            .await;
    }
    let r = c.call("history", json!({"channel": "feed:x"})).await;
    let data: Vec<_> = r["history"]["publications"]
        .as_array()
        .expect("pubs")
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(
        data,
        vec![json!(3), json!(4), json!(5)],
        "only the last 3 are kept"
    );
    assert_eq!(r["history"]["offset"], 5);
    let r = c
        .call(
            "history",
            json!({"channel": "feed:x", "limit": 1, "since": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["history"]["publications"][0]["offset"], 4, "{r}");
    let r = c
        .call(
            "history",
            json!({"channel": "feed:x", "limit": 2, "reverse": true}),
        )
        .await;
    let offsets: Vec<_> = r["history"]["publications"]
        .as_array()
        .expect("pubs")
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offsets, vec![json!(5), json!(4)]);
    let r = c
        .call(
            "history",
            json!({"channel": "feed:x", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 112, "offset 2 is gone: {r}");
    let r = c
        .call(
            "history",
            json!({"channel": "feed:x", "since": {"offset": 4, "epoch": "other"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 112, "other epoch: {r}");
}

#[tokio::test]
async fn reconnecting_client_recovers_missed_publications() {
    let server = Server::start(&["--dev", "--set", "namespaces.feed.history_size=100"]);
    let (mut keeper, _) = Client::connect(&server, None).await;
    keeper.call("subscribe", json!({"channel": "feed:r"})).await;
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c.call("subscribe", json!({"channel": "feed:r"})).await;
    let epoch = sub["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    server
        .api("publish", json!({"channel": "feed:r", "data": "a"}))
        .await;
    let (_, p) = c.next_publication().await;
    let last = p["offset"].as_u64().expect("offset");
    drop(c);
    for d in ["b", "c", "d"] {
        server
            .api("publish", json!({"channel": "feed:r", "data": d}))
            .await;
    }
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "feed:r", "recover": true, "offset": last, "epoch": epoch}),
        )
        .await;
    assert_eq!(sub["subscribe"]["recovered"], true, "{sub}");
    let missed: Vec<_> = sub["subscribe"]["publications"]
        .as_array()
        .expect("pubs")
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(missed, vec![json!("b"), json!("c"), json!("d")]);
    server
        .api("publish", json!({"channel": "feed:r", "data": "e"}))
        .await;
    let (_, p) = c.next_publication().await;
    assert_eq!(
        (p["data"].clone(), p["offset"].as_u64()),
        (json!("e"), Some(last + 4))
    );
    // A stale epoch: not recovered, the client must reload.
    let (mut d, _) = Client::connect(&server, None).await;
    let sub = d
        .call(
            "subscribe",
            json!({"channel": "feed:r", "recover": true, "offset": 1, "epoch": "stale"}),
        )
        .await;
    assert!(sub["subscribe"].get("recovered").is_none(), "{sub}");
}

/// A client that negotiated `starling.msgpack`.
async fn msgpack_client(server: &Server) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "starling.msgpack".parse().expect("header"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"starling.msgpack"[..])
    );
    Client { ws, next_id: 1 }
}

#[tokio::test]
async fn unknown_subprotocol_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = dev();
    let mut request = server.ws_url().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let err = tokio_tungstenite::connect_async(request)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn msgpack_subprotocol() {
    use starling_protocol::{
        Command, ConnectRequest, Encoding, Method, PublishRequest, ReplyBody, ServerMessage,
        SubscribeRequest, decode_server_messages, encode_command,
    };
    let server = dev();
    let mut client = msgpack_client(&server).await;
    let mut frame = Vec::new();
    for command in [
        Command {
            id: 1,
            method: Method::Connect(ConnectRequest::default()),
        },
        Command {
            id: 2,
            method: Method::Subscribe(SubscribeRequest {
                channel: "bin".into(),
                ..Default::default()
            }),
        },
        Command {
            id: 3,
            method: Method::Publish(PublishRequest {
                channel: "bin".into(),
                data: bytes::Bytes::from_static(&[0, 159, 146, 150]),
            }),
        },
    ] {
        encode_command(Encoding::MsgPack, &command, &mut frame);
    }
    client.ws.send(Message::binary(frame)).await.expect("send");
    let mut seen_pub = false;
    let mut replies = 0;
    while !(seen_pub && replies == 3) {
        let Message::Binary(bytes) = client.next_frame().await else {
            panic!("msgpack frames are binary");
        };
        for m in decode_server_messages(Encoding::MsgPack, &bytes).expect("decode") {
            match m {
                ServerMessage::Reply(r) => {
                    let body = r.body.expect("ok reply");
                    if let ReplyBody::Publish(p) = body {
                        assert_eq!(p.offset, 1);
                    }
                    replies += 1;
                }
                ServerMessage::Push(starling_protocol::Push::Publication {
                    publication, ..
                }) => {
                    assert_eq!(&publication.data[..], &[0, 159, 146, 150]);
                    seen_pub = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn binary_data_reaches_json_clients_as_b64data() {
    let server = dev();
    let (mut json_client, _) = Client::connect(&server, None).await;
    json_client
        .call("subscribe", json!({"channel": "mixed"}))
        .await;
    let (mut other, _) = Client::connect(&server, None).await;
    other
        .call(
            "publish",
            json!({"channel": "mixed", "b64data": "AJ+Slg=="}),
        )
        .await;
    let (_, p) = json_client.next_publication().await;
    assert_eq!(p["b64data"], "AJ+Slg==", "{p}");
}

// --- auth and permissions ---------------------------------------------------------

#[tokio::test]
async fn production_defaults_refuse_anonymous() {
    let server = Server::start(&[]);
    let mut c = Client::open(&server).await;
    c.send("connect", json!({})).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4501);
}

#[tokio::test]
async fn token_auth_expired_and_forged() {
    let server = Server::start(&[]);
    let good = token(json!({"sub": "alice", "exp": now() + 600}));
    let (_, reply) = Client::connect(&server, Some(&good)).await;
    assert_eq!(reply["connect"]["expires"], true);
    assert!(reply["connect"]["ttl"].as_u64().is_some_and(|t| t > 500));

    let mut c = Client::open(&server).await;
    let expired = token(json!({"sub": "alice", "exp": now() - 60}));
    let r = c.call("connect", json!({"token": expired})).await;
    assert_eq!(r["error"]["code"], 109, "{r}");

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(b"wrong secret"),
    )
    .expect("sign");
    c.send("connect", json!({"token": forged})).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4501);
}

#[tokio::test]
async fn rs256_tokens() {
    let dir = std::env::temp_dir().join(format!("starling-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let public = dir.join("public.pem");
    std::fs::write(&public, RSA_PUBLIC).expect("write key");
    let server = Server::start(&[
        "--set",
        &format!("client.token_rsa_public_key=\"{}\"", public.display()),
    ]);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "carol", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("private key"),
    )
    .expect("sign");
    let (_, reply) = Client::connect(&server, Some(&token)).await;
    assert!(reply["connect"]["client"].is_string());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn namespaces_permissions_private_and_personal_channels() {
    let server = Server::start(&[
        "--set",
        "namespaces.chat.allow_publish=true",
        "--set",
        "namespaces.secret.private=true",
        "--set",
        "namespaces.default.presence=true",
    ]);
    let (mut alice, _) = Client::connect(&server, Some(&token(json!({"sub": "alice"})))).await;
    // Unknown namespace.
    let r = alice.call("subscribe", json!({"channel": "nope:x"})).await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    // Invalid name.
    let r = alice
        .call("subscribe", json!({"channel": "has space"}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    // Publish not allowed in default, allowed in chat.
    let r = alice
        .call("publish", json!({"channel": "news", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    let r = alice
        .call("publish", json!({"channel": "chat:x", "data": 1}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    // Private channel: refused without a token, with a token for someone else, accepted with one.
    let r = alice
        .call("subscribe", json!({"channel": "secret:plans"}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let bobs = token(json!({"sub": "bob", "channel": "secret:plans"}));
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": bobs}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let expired = token(json!({"sub": "alice", "channel": "secret:plans", "exp": now() - 5}));
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": expired}),
        )
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let hers = token(json!({"sub": "alice", "channel": "secret:plans"}));
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": hers}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    // Twice.
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": hers}),
        )
        .await;
    assert_eq!(r["error"]["code"], 105, "{r}");
    // Personal channels.
    let r = alice.call("subscribe", json!({"channel": "#alice"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = alice.call("subscribe", json!({"channel": "#bob"})).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
}

#[tokio::test]
async fn token_channel_list_limits_subscriptions() {
    let server = Server::start(&[]);
    let t = token(json!({"sub": "dave", "channels": ["allowed"]}));
    let (mut c, _) = Client::connect(&server, Some(&t)).await;
    let r = c.call("subscribe", json!({"channel": "allowed"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = c.call("subscribe", json!({"channel": "other"})).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
}

#[tokio::test]
async fn join_and_leave_pushes() {
    let server = Server::start(&["--dev", "--set", "namespaces.room.join_leave=true"]);
    let (mut a, _) = Client::connect(&server, Some(&token(json!({"sub": "ann"})))).await;
    a.call("subscribe", json!({"channel": "room:1"})).await;
    let (mut b, _) = Client::connect(&server, Some(&token(json!({"sub": "ben"})))).await;
    b.call("subscribe", json!({"channel": "room:1"})).await;
    let join = a.next_json().await;
    assert_eq!(join["push"]["channel"], "room:1");
    assert_eq!(join["push"]["join"]["info"]["user"], "ben", "{join}");
    b.call("unsubscribe", json!({"channel": "room:1"})).await;
    let leave = a.next_json().await;
    assert_eq!(leave["push"]["leave"]["info"]["user"], "ben", "{leave}");
}

// --- bad input: the offender is closed with a documented code, others keep going ---

#[tokio::test]
async fn command_before_connect_malformed_json_and_others_unaffected() {
    let server = dev();
    let (mut bystander, _) = Client::connect(&server, None).await;
    bystander
        .call("subscribe", json!({"channel": "calm"}))
        .await;

    let mut early = Client::open(&server).await;
    early.send("subscribe", json!({"channel": "calm"})).await;
    let close = early.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4502);

    let mut garbage = Client::open(&server).await;
    garbage.send_text("{not json").await;
    let close = garbage.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4500);

    let mut not_object = Client::open(&server).await;
    not_object.send_text("[1,2,3]").await;
    let close = not_object.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4500);

    let mut bad_msgpack = msgpack_client(&server).await;
    bad_msgpack
        .ws
        .send(Message::binary(vec![0x81, 0xa2, b'i', b'd', 0xc1]))
        .await
        .expect("send");
    let close = bad_msgpack.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4500);

    let mut wrong_frame = msgpack_client(&server).await;
    wrong_frame.send_text("{\"id\":1,\"connect\":{}}").await;
    let close = wrong_frame.expect_close().await.expect("close frame");
    assert_eq!(
        u16::from(close.code),
        1008,
        "text on a MessagePack connection"
    );

    server
        .api("publish", json!({"channel": "calm", "data": "still here"}))
        .await;
    let (_, p) = bystander.next_publication().await;
    assert_eq!(p["data"], "still here");
}

#[tokio::test]
async fn disconnect_push_precedes_close() {
    let server = dev();
    let (mut c, _) = Client::connect(&server, Some(&token(json!({"sub": "eve"})))).await;
    let (status, body) = server.api("disconnect", json!({"user": "eve"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["disconnected"], 1);
    let push = c.next_json().await;
    assert_eq!(
        push["push"]["disconnect"],
        json!({"code": 4503, "reason": "disconnected", "reconnect": false}),
        "{push}"
    );
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4503);
}

#[tokio::test]
async fn connect_timeout_closes_silent_clients() {
    let server = Server::start(&["--dev", "--set", "client.connect_timeout_secs=1"]);
    let mut c = Client::open(&server).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4502);
}

#[tokio::test]
async fn token_expiry_disconnects() {
    let server = Server::start(&[]);
    let t = token(json!({"sub": "fay", "exp": now() + 2}));
    let (mut c, _) = Client::connect(&server, Some(&t)).await;
    let push = c.next_json().await;
    assert_eq!(push["push"]["disconnect"]["code"], 4004, "{push}");
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4004);
}

/// `refresh` moves the expiry of a live connection: past the first token's `exp` it is
/// still served, and it closes with 4004 at the new token's `exp`.
#[tokio::test]
async fn refresh_moves_the_expiry_without_a_reconnect() {
    let server = Server::start(&[]);
    let t = token(json!({"sub": "gil", "exp": now() + 1}));
    let (mut c, _) = Client::connect(&server, Some(&t)).await;
    let later = token(json!({"sub": "gil", "exp": now() + 4}));
    let r = c.call("refresh", json!({"token": later})).await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(
        r["refresh"]["ttl"]
            .as_u64()
            .is_some_and(|t| (2..=4).contains(&t)),
        "{r}"
    );
    // Wait out the first token's expiry (a timer under test, not a synchronization).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "served past the first exp: {r}");
    let push = c.next_json().await;
    assert_eq!(push["push"]["disconnect"]["code"], 4004, "{push}");
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4004);
}

/// An expired token in `refresh` is error 109 and the connection stays; a token of
/// another user, or a forged one, closes it with 4501.
#[tokio::test]
async fn refresh_refuses_expired_foreign_and_forged_tokens() {
    let server = Server::start(&[]);
    let t = token(json!({"sub": "hal", "exp": now() + 600}));
    let (mut c, _) = Client::connect(&server, Some(&t)).await;
    let expired = token(json!({"sub": "hal", "exp": now() - 5}));
    let r = c.call("refresh", json!({"token": expired})).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "still connected: {r}");
    let foreign = token(json!({"sub": "ivy", "exp": now() + 600}));
    c.send("refresh", json!({"token": foreign})).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4501, "another user's token");

    let (mut c, _) = Client::connect(&server, Some(&t)).await;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "hal", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"wrong secret"),
    )
    .expect("sign");
    c.send("refresh", json!({"token": forged})).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4501, "forged token");
}

const RSA_PRIVATE: &str = include_str!("data/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("data/rsa_public.pem");

// --- issue 6: private publishing, token kinds and claims, input before connect ---

/// Item 2: publishing into a private channel took no proof at all; now it takes a
/// subscription (which took a subscription token).
#[tokio::test]
async fn private_channel_publish_needs_a_subscription() {
    let server = Server::start(&[
        "--set",
        "namespaces.secret.private=true",
        "--set",
        "namespaces.secret.allow_publish=true",
    ]);
    let (mut alice, _) = Client::connect(&server, Some(&token(json!({"sub": "alice"})))).await;
    let (mut bob, _) = Client::connect(&server, Some(&token(json!({"sub": "bob"})))).await;
    let publish = json!({"channel": "secret:board", "data": "hi"});
    let r = alice.call("publish", publish.clone()).await;
    assert_eq!(r["error"]["code"], 103, "never subscribed: {r}");
    let hers = token(json!({"sub": "alice", "channel": "secret:board"}));
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "secret:board", "token": hers}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = alice.call("publish", publish.clone()).await;
    assert!(r.get("publish").is_some(), "subscribed with a token: {r}");
    // Someone else's subscription is no proof for bob.
    let r = bob.call("publish", publish.clone()).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    // Leaving the channel ends the right to publish.
    alice
        .call("unsubscribe", json!({"channel": "secret:board"}))
        .await;
    let r = alice.call("publish", publish).await;
    assert_eq!(r["error"]["code"], 103, "after unsubscribe: {r}");
}

/// Item 3: a subscription token opened a connection (sidestepping the connection token's
/// `channels` list); a connection token must not pass as a subscription token either.
#[tokio::test]
async fn token_kinds_are_not_interchangeable() {
    let server = Server::start(&["--set", "namespaces.secret.private=true"]);
    let subscription = token(json!({"sub": "alice", "channel": "secret:plans"}));
    let mut c = Client::open(&server).await;
    c.send("connect", json!({"token": subscription})).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4501, "subscription token at connect");

    let connection = token(json!({"sub": "alice", "channels": ["secret:plans"]}));
    let (mut c, _) = Client::connect(&server, Some(&connection)).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": connection}),
        )
        .await;
    assert_eq!(
        r["error"]["code"], 103,
        "connection token as subscription token: {r}"
    );
}

/// Item 16: `exp` is required unless configured otherwise; `nbf` is checked; `aud` and
/// `iss` are checked when configured.
#[tokio::test]
async fn token_claims_exp_nbf_audience_issuer() {
    async fn refused(server: &Server, token: &str) {
        let mut c = Client::open(server).await;
        c.send("connect", json!({"token": token})).await;
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 4501, "{token}");
    }
    let server = Server::start(&[]);
    let no_exp = common::token_as_is(json!({"sub": "gil"}));
    refused(&server, &no_exp).await;
    refused(&server, &token(json!({"sub": "gil", "nbf": now() + 600}))).await;
    Client::connect(
        &server,
        Some(&token(json!({"sub": "gil", "nbf": now() - 1}))),
    )
    .await;

    let lax = Server::start(&["--set", "client.token_require_exp=false"]);
    let (_, reply) = Client::connect(&lax, Some(&no_exp)).await;
    assert!(reply["connect"].get("expires").is_none(), "{reply}");

    let strict = Server::start(&[
        "--set",
        "client.token_audience=\"rt\"",
        "--set",
        "client.token_issuer=\"backend\"",
    ]);
    Client::connect(
        &strict,
        Some(&token(json!({"sub": "gil", "aud": "rt", "iss": "backend"}))),
    )
    .await;
    for claims in [
        json!({"sub": "gil"}),
        json!({"sub": "gil", "aud": "rt"}),
        json!({"sub": "gil", "aud": "other", "iss": "backend"}),
        json!({"sub": "gil", "aud": "rt", "iss": "other"}),
    ] {
        refused(&strict, &token(claims)).await;
    }
}

/// Item 16: a malformed command before `connect` used to get an error reply; it now
/// closes the connection with 4500. After `connect` it still gets a reply.
#[tokio::test]
async fn malformed_command_before_connect_closes() {
    let server = dev();
    for text in [
        r#"{"id":1,"subscribe":{}}"#,
        r#"{"id":1,"no_such_method":{}}"#,
        r#"{"id":1,"connect":{"token":5}}"#,
        r#"{"id":1}"#,
    ] {
        let mut c = Client::open(&server).await;
        c.send_text(text).await;
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 4500, "{text}");
    }
    let (mut c, _) = Client::connect(&server, None).await;
    let r = c.call("subscribe", json!({})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "still open: {r}");
}
