//! Delta subscriptions (`subscribe` with `delta: "fossil"`) over real WebSocket
//! connections to the real binary, in JSON and MessagePack: the client applies every
//! delta to the data before it and must get the exact bytes that were published.

mod common;

use common::{API_KEY, Client, Server};
use futures_util::SinkExt;
use serde_json::{Value, json};
use starling_protocol::delta;
use starling_protocol::{
    Command, ConnectRequest, DeltaType, Encoding, Method, Push, ReplyBody, ServerMessage,
    SubscribeRequest, decode_server_messages, encode_command,
};
use tokio_tungstenite::tungstenite::Message;

/// A state-like document (a ticker): 30 fields, 2 or 3 of which change from one
/// publication to the next; some text is not ASCII.
fn doc(i: u64) -> String {
    let mut fields = vec![
        format!("\"seq\":{i}"),
        "\"venue\":\"Börse Zürich — €\"".to_string(),
    ];
    for f in 0..28u64 {
        // Field f changes every (f + 2)-th publication.
        fields.push(format!("\"f{f}\":{}", 1000 + (i / (f + 2)) * 7 + f));
    }
    format!("{{{}}}", fields.join(","))
}

async fn publish(server: &Server, channel: &str, data: &str) {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let (status, reply) = server.api_with_key("publish", &body, Some(API_KEY)).await;
    assert_eq!(status, 200, "{reply}");
}

/// The payload bytes of a delta subscription's JSON publication: `data` is a JSON
/// string holding them, `b64data` their base64.
fn json_payload(publication: &Value) -> Vec<u8> {
    if let Some(text) = publication["data"].as_str() {
        return text.as_bytes().to_vec();
    }
    let b64 = publication["b64data"].as_str().expect("data or b64data");
    starling_protocol::b64_decode(b64).expect("base64")
}

/// Applies a delta subscription's publication to the previous data: the new data, and
/// whether it came as a delta.
fn apply(previous: &[u8], payload: &[u8], is_delta: bool) -> (Vec<u8>, bool) {
    if is_delta {
        let data = delta::apply(previous, payload, 1 << 20).expect("the delta applies");
        (data, true)
    } else {
        (payload.to_vec(), false)
    }
}

#[tokio::test]
async fn json_delta_subscription_rebuilds_every_publication() {
    let server = Server::start(&["--dev"]);
    let (mut client, _) = Client::connect(&server, None).await;
    let sub = client
        .call(
            "subscribe",
            json!({"channel": "state:ticker", "delta": "fossil"}),
        )
        .await;
    assert_eq!(sub["subscribe"]["delta"], true, "{sub}");
    let (mut plain, _) = Client::connect(&server, None).await;
    let sub = plain
        .call("subscribe", json!({"channel": "state:ticker"}))
        .await;
    assert!(sub["subscribe"].get("delta").is_none(), "{sub}");

    // Similar documents, one unlike the others in the middle (sent in full: its delta
    // would not be smaller), then similar ones again.
    let mut docs: Vec<String> = (1..=6).map(doc).collect();
    docs.push(r#"{"reset":true}"#.to_string());
    docs.extend((7..=10).map(doc));
    for d in &docs {
        publish(&server, "state:ticker", d).await;
    }
    let mut previous = Vec::new();
    let mut kinds = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let (_, p) = client.next_publication().await;
        assert_eq!(p["offset"], i as u64 + 1, "{p}");
        let is_delta = p["delta"] == true;
        let (data, was_delta) = apply(&previous, &json_payload(&p), is_delta);
        assert_eq!(String::from_utf8_lossy(&data), *d, "publication {i}: {p}");
        if was_delta {
            assert!(p["data"].as_str().is_some_and(|t| t.len() < d.len()), "{p}");
        }
        kinds.push(if was_delta { "delta" } else { "full" });
        previous = data;
        // The plain subscriber gets the data as JSON, as ever.
        let (_, q) = plain.next_publication().await;
        assert!(q.get("delta").is_none(), "{q}");
        let want: Value = serde_json::from_str(d).expect("json");
        assert_eq!(q["data"], want);
    }
    assert_eq!(
        kinds,
        [
            "full", "delta", "delta", "delta", "delta", "delta", "full", "full", "delta", "delta",
            "delta"
        ],
        "the first in full, the unlike one and the one after it in full"
    );
    assert_eq!(
        server.metric("starling_delta_deliveries_total").await,
        Some(8),
        "the node counts the deltas it sent"
    );

    // Subscribing again starts in full.
    client
        .call("unsubscribe", json!({"channel": "state:ticker"}))
        .await;
    client
        .call(
            "subscribe",
            json!({"channel": "state:ticker", "delta": "fossil"}),
        )
        .await;
    publish(&server, "state:ticker", &doc(11)).await;
    publish(&server, "state:ticker", &doc(12)).await;
    let (_, first) = client.next_publication().await;
    assert!(first.get("delta").is_none(), "{first}");
    assert_eq!(json_payload(&first), doc(11).as_bytes());
    let (_, second) = client.next_publication().await;
    assert_eq!(second["delta"], true, "{second}");
    let (data, _) = apply(doc(11).as_bytes(), &json_payload(&second), true);
    assert_eq!(data, doc(12).as_bytes());
}

#[tokio::test]
async fn delta_is_refused_where_not_allowed_or_unknown() {
    let server = Server::start(&[
        "--set",
        "client.allow_anonymous=true",
        "--set",
        "namespaces.default.allow_anonymous=true",
        "--set",
        "namespaces.state.allow_anonymous=true",
        "--set",
        "namespaces.state.allow_delta=true",
    ]);
    let (mut client, _) = Client::connect(&server, None).await;
    let refused = client
        .call("subscribe", json!({"channel": "plain", "delta": "fossil"}))
        .await;
    assert_eq!(refused["error"]["code"], 108, "{refused}");
    let unknown = client
        .call(
            "subscribe",
            json!({"channel": "state:x", "delta": "xdelta"}),
        )
        .await;
    assert_eq!(unknown["error"]["code"], 107, "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fossil")),
        "{unknown}"
    );
    let ok = client
        .call(
            "subscribe",
            json!({"channel": "state:x", "delta": "fossil"}),
        )
        .await;
    assert_eq!(ok["subscribe"]["delta"], true, "{ok}");
    // The refusals subscribed nothing.
    let again = client.call("subscribe", json!({"channel": "plain"})).await;
    assert!(again.get("subscribe").is_some(), "{again}");
}

#[tokio::test]
async fn msgpack_delta_subscription_rebuilds_every_publication() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::start(&["--dev"]);
    let mut request = server.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "starling.msgpack".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let mut frame = Vec::new();
    for command in [
        Command {
            id: 1,
            method: Method::Connect(ConnectRequest::default()),
        },
        Command {
            id: 2,
            method: Method::Subscribe(SubscribeRequest {
                channel: "state:bin".into(),
                delta: Some(DeltaType::Fossil),
                ..Default::default()
            }),
        },
    ] {
        encode_command(Encoding::MsgPack, &command, &mut frame);
    }
    ws.send(Message::binary(frame)).await.expect("send");
    let mut client = Client { ws, next_id: 3 };
    let mut replies = 0;
    while replies < 2 {
        let Message::Binary(bytes) = client.next_frame().await else {
            panic!("msgpack frames are binary");
        };
        for m in decode_server_messages(Encoding::MsgPack, &bytes).expect("decode") {
            let ServerMessage::Reply(r) = m else {
                panic!("only replies so far: {m:?}");
            };
            if let Ok(ReplyBody::Subscribe(s)) = &r.body {
                assert!(s.delta, "{s:?}");
            }
            r.body.expect("ok");
            replies += 1;
        }
    }
    let docs: Vec<String> = (1..=8).map(doc).collect();
    for d in &docs {
        publish(&server, "state:bin", d).await;
    }
    let mut previous = Vec::new();
    let mut got = Vec::new();
    let mut deltas = 0;
    while got.len() < docs.len() {
        let Message::Binary(bytes) = client.next_frame().await else {
            panic!("msgpack frames are binary");
        };
        for m in decode_server_messages(Encoding::MsgPack, &bytes).expect("decode") {
            let ServerMessage::Push(Push::Publication { publication, .. }) = m else {
                panic!("a publication: {m:?}");
            };
            if got.is_empty() {
                assert!(!publication.delta, "the first one is in full");
            }
            let (data, was_delta) = apply(&previous, &publication.data, publication.delta);
            deltas += usize::from(was_delta);
            previous = data.clone();
            got.push(String::from_utf8(data).expect("utf-8"));
        }
    }
    assert_eq!(got, docs);
    assert_eq!(deltas, docs.len() - 1, "all but the first as deltas");
}
