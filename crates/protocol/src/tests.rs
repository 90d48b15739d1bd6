//! Unit and property tests for the whole crate.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use crate::encode::encode_push_serde;
use crate::*;

const J: Encoding = Encoding::Json;
const M: Encoding = Encoding::MsgPack;

fn one(enc: Encoding, frame: &[u8]) -> Result<Command, CommandError> {
    let mut v = decode_commands(enc, frame).expect("frame decodes");
    assert_eq!(v.len(), 1, "one command expected");
    v.remove(0)
}

fn cmd(id: u32, method: Method) -> Command {
    Command { id, method }
}

fn json_reply(reply: &Reply) -> String {
    let mut out = Vec::new();
    encode_reply(J, reply, &mut out);
    String::from_utf8(out).unwrap()
}

fn json_push(push: &Push) -> String {
    let mut out = Vec::new();
    encode_push(J, push, &mut out);
    String::from_utf8(out).unwrap()
}

fn msgpack_cmd(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(M, c, &mut out);
    out
}

/// Every method with representative params, and its JSON text.
fn sample_commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            r#"{"id":1,"connect":{}}"#,
            cmd(1, Method::Connect(ConnectRequest::default())),
        ),
        (
            r#"{"id":1,"connect":{"token":"t","name":"js","version":"1.0"}}"#,
            cmd(
                1,
                Method::Connect(ConnectRequest {
                    token: Some("t".into()),
                    name: Some("js".into()),
                    version: Some("1.0".into()),
                }),
            ),
        ),
        (
            r#"{"id":2,"subscribe":{"channel":"chat:lobby"}}"#,
            cmd(
                2,
                Method::Subscribe(SubscribeRequest {
                    channel: "chat:lobby".into(),
                    ..Default::default()
                }),
            ),
        ),
        (
            r#"{"id":2,"subscribe":{"channel":"c","token":"s","recover":true,"offset":7,"epoch":"e","delta":"fossil"}}"#,
            cmd(
                2,
                Method::Subscribe(SubscribeRequest {
                    channel: "c".into(),
                    token: Some("s".into()),
                    recover: true,
                    offset: Some(7),
                    epoch: Some("e".into()),
                    delta: Some(DeltaType::Fossil),
                }),
            ),
        ),
        (
            r#"{"id":3,"unsubscribe":{"channel":"c"}}"#,
            cmd(
                3,
                Method::Unsubscribe(UnsubscribeRequest {
                    channel: "c".into(),
                }),
            ),
        ),
        (
            r#"{"id":4,"publish":{"channel":"c","data":{"text":"hi","n":[1,2]}}}"#,
            cmd(
                4,
                Method::Publish(PublishRequest {
                    channel: "c".into(),
                    data: Bytes::from_static(br#"{"text":"hi","n":[1,2]}"#),
                }),
            ),
        ),
        (
            r#"{"id":5,"presence":{"channel":"c"}}"#,
            cmd(
                5,
                Method::Presence(PresenceRequest {
                    channel: "c".into(),
                }),
            ),
        ),
        (
            r#"{"id":6,"presence_stats":{"channel":"c"}}"#,
            cmd(
                6,
                Method::PresenceStats(PresenceStatsRequest {
                    channel: "c".into(),
                }),
            ),
        ),
        (
            r#"{"id":6,"refresh":{"token":"t.k.n"}}"#,
            cmd(
                6,
                Method::Refresh(RefreshRequest {
                    token: "t.k.n".into(),
                }),
            ),
        ),
        (
            r#"{"id":7,"history":{"channel":"c"}}"#,
            cmd(
                7,
                Method::History(HistoryRequest {
                    channel: "c".into(),
                    ..Default::default()
                }),
            ),
        ),
        (
            r#"{"id":7,"history":{"channel":"c","limit":10,"since":{"offset":3,"epoch":"e"},"reverse":true}}"#,
            cmd(
                7,
                Method::History(HistoryRequest {
                    channel: "c".into(),
                    limit: Some(10),
                    since: Some(StreamPosition {
                        offset: 3,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                }),
            ),
        ),
        (r#"{"id":8,"ping":{}}"#, cmd(8, Method::Ping)),
        (r#"{}"#, cmd(0, Method::Pong)),
    ]
}

// ---------------------------------------------------------------------------
// Decoding commands

#[test]
fn decode_every_command_json() {
    for (text, want) in sample_commands() {
        assert_eq!(one(J, text.as_bytes()), Ok(want.clone()), "{text}");
        // The test encoder produces exactly the documented text.
        let mut out = Vec::new();
        encode_command(J, &want, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), text);
    }
}

#[test]
fn decode_every_command_msgpack() {
    for (_, want) in sample_commands() {
        let bytes = msgpack_cmd(&want);
        assert_eq!(one(M, &bytes), Ok(want.clone()), "{want:?}");
    }
}

#[test]
fn msgpack_publish_data_is_bin() {
    let c = cmd(
        4,
        Method::Publish(PublishRequest {
            channel: "c".into(),
            data: Bytes::from_static(&[0, 159, 255]),
        }),
    );
    let bytes = msgpack_cmd(&c);
    // 0xc4 = bin8, length 3.
    assert!(bytes.windows(5).any(|w| w == [0xc4, 3, 0, 159, 255]));
    assert_eq!(one(M, &bytes), Ok(c));
    // Hand-built: {"id": 9, "publish": {"channel": "c", "data": bin[1,2]}}
    let mut hand = vec![0x82, 0xa2, b'i', b'd', 0x09, 0xa7];
    hand.extend_from_slice(b"publish");
    hand.extend_from_slice(&[0x82, 0xa7]);
    hand.extend_from_slice(b"channel");
    hand.extend_from_slice(&[0xa1, b'c', 0xa4]);
    hand.extend_from_slice(b"data");
    hand.extend_from_slice(&[0xc4, 2, 1, 2]);
    let got = one(M, &hand).unwrap();
    assert_eq!(
        got.method,
        Method::Publish(PublishRequest {
            channel: "c".into(),
            data: Bytes::from_static(&[1, 2])
        })
    );
}

#[test]
fn json_publish_data_is_raw_and_b64data_accepted() {
    let c = one(J, br#"{"id":1,"publish":{"channel":"c","data":  "a\nb" }}"#).unwrap();
    assert_eq!(
        c.method,
        Method::Publish(PublishRequest {
            channel: "c".into(),
            data: Bytes::from_static(br#""a\nb""#)
        })
    );
    let c = one(J, br#"{"id":1,"publish":{"channel":"c","b64data":"AJ//"}}"#).unwrap();
    assert_eq!(
        c.method,
        Method::Publish(PublishRequest {
            channel: "c".into(),
            data: Bytes::from_static(&[0, 159, 255])
        })
    );
}

#[test]
fn unknown_fields_ignored_and_key_order_free() {
    let c = one(
        J,
        br#"{"subscribe":{"x":[1,{"y":2}],"channel":"c"},"id":2}"#,
    )
    .unwrap();
    assert_eq!(c.id, 2);
    assert!(matches!(c.method, Method::Subscribe(ref r) if r.channel == "c"));
    // Escaped keys work too.
    let c = one(J, br#"{"\u0069d":2,"ping":{}}"#).unwrap();
    assert_eq!(c, cmd(2, Method::Ping));
}

#[test]
fn malformed_frames() {
    let cases: &[(&[u8], DecodeError)] = &[
        (b"{", DecodeError::Json(String::new())),
        (b"{\"id\":1,\"ping\":{}", DecodeError::Json(String::new())),
        (b"nul", DecodeError::Json(String::new())),
        (b"\xff", DecodeError::Json(String::new())),
        (
            b"{\"id\":1,\"connect\":{\"name\":\"\xff\"}}",
            DecodeError::Json(String::new()),
        ),
        (b"[1]", DecodeError::NotAnObject),
        (b"5", DecodeError::NotAnObject),
        (b"\"x\"", DecodeError::NotAnObject),
        (b"{\"id\":1,\"ping\":{}}\n7", DecodeError::NotAnObject),
        (b"{\"ping\":{}}", DecodeError::MissingId),
        (b"{\"id\":0,\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":-1,\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":1.5,\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":\"1\",\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":4294967296,\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":null,\"ping\":{}}", DecodeError::InvalidId),
        (b"{\"id\":1,\"id\":2,\"ping\":{}}", DecodeError::InvalidId),
    ];
    for (frame, want) in cases {
        let got = decode_commands(J, frame).expect_err(&String::from_utf8_lossy(frame));
        match (want, &got) {
            (DecodeError::Json(_), DecodeError::Json(_)) => {}
            _ => assert_eq!(&got, want, "{}", String::from_utf8_lossy(frame)),
        }
    }
}

#[test]
fn malformed_msgpack_frames() {
    let ping = msgpack_cmd(&cmd(1, Method::Ping));
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            ping[..ping.len() - 1].to_vec(),
            DecodeError::MsgPack("unexpected end of input"),
        ),
        (vec![0x93, 1, 2, 3], DecodeError::NotAnObject),
        (vec![0x05], DecodeError::NotAnObject),
        (
            vec![0x81, 0x01, 0x80],
            DecodeError::MsgPack("map key is not a string"),
        ),
        (
            vec![0x81, 0xa1, b'x', 0xc1],
            DecodeError::MsgPack("reserved marker 0xc1"),
        ),
        (
            vec![0x81, 0xa4, b'p', b'i', b'n', b'g', 0x80],
            DecodeError::MissingId,
        ),
        (
            vec![
                0x82, 0xa2, b'i', b'd', 0x00, 0xa4, b'p', b'i', b'n', b'g', 0x80,
            ],
            DecodeError::InvalidId,
        ),
        (
            vec![
                0x82, 0xa2, b'i', b'd', 0xff, 0xa4, b'p', b'i', b'n', b'g', 0x80,
            ],
            DecodeError::InvalidId,
        ),
        (
            vec![
                0x82, 0xa2, b'i', b'd', 0xa1, b'1', 0xa4, b'p', b'i', b'n', b'g', 0x80,
            ],
            DecodeError::InvalidId,
        ),
        (
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
            DecodeError::MsgPack("unexpected end of input"),
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(decode_commands(M, &frame), Err(want), "{frame:x?}");
    }
    let mut trailing = ping.clone();
    trailing.push(0x81);
    assert!(decode_commands(M, &trailing).is_err());
}

#[test]
fn unknown_method_replies_104() {
    for enc in [J, M] {
        let frame: Vec<u8> = match enc {
            Encoding::Json => br#"{"id":3,"rpc":{"method":"x"}}"#.to_vec(),
            Encoding::MsgPack => vec![0x82, 0xa2, b'i', b'd', 0x03, 0xa3, b'r', b'p', b'c', 0x80],
        };
        let err = one(enc, &frame).unwrap_err();
        assert_eq!(
            err,
            CommandError::UnknownMethod {
                id: 3,
                method: "rpc".into()
            }
        );
        assert_eq!(err.error().code, codes::METHOD_NOT_FOUND.code);
    }
    let err = one(J, br#"{"id":3,"rpc":{}}"#).unwrap_err();
    assert_eq!(
        json_reply(&err.reply()),
        r#"{"id":3,"error":{"code":104,"message":"method not found"}}"#
    );
}

#[test]
fn invalid_commands_reply_107() {
    let cases: &[(&str, &str)] = &[
        (r#"{"id":1}"#, "bad request: no method"),
        (
            r#"{"id":1,"ping":{},"connect":{}}"#,
            "bad request: more than one method",
        ),
        (
            r#"{"id":1,"subscribe":{}}"#,
            "bad request: subscribe: missing field `channel`",
        ),
        (
            r#"{"id":1,"subscribe":{"channel":""}}"#,
            "bad request: subscribe: empty channel",
        ),
        (
            r#"{"id":1,"refresh":{"token":""}}"#,
            "bad request: refresh: empty token",
        ),
        (
            r#"{"id":1,"subscribe":{"channel":5}}"#,
            "bad request: subscribe: invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"id":1,"subscribe":{"channel":"c","delta":"xdelta"}}"#,
            "bad request: subscribe: unknown variant `xdelta`, expected `fossil`",
        ),
        (
            r#"{"id":1,"publish":{"channel":"c"}}"#,
            "bad request: publish: missing field `data`",
        ),
        (
            r#"{"id":1,"publish":{"channel":"c","b64data":"!"}}"#,
            "bad request: publish: invalid base64",
        ),
        (
            r#"{"id":1,"history":{"channel":"c","limit":-1}}"#,
            "bad request: history: invalid value: integer `-1`, expected u32",
        ),
        (
            r#"{"id":1,"ping":"x"}"#,
            "bad request: ping: invalid type: string \"x\", expected struct Empty",
        ),
        (
            r#"{"id":1,"unsubscribe":null}"#,
            "bad request: unsubscribe: invalid type: null, expected struct UnsubscribeRequest",
        ),
    ];
    for (text, msg) in cases {
        let err = one(J, text.as_bytes()).unwrap_err();
        assert_eq!(err.id(), 1);
        let e = err.error();
        assert_eq!((e.code, &*e.message), (107, *msg), "{text}");
    }
    // MessagePack: wrong type for channel.
    let frame = [
        0x82, 0xa2, b'i', b'd', 0x01, 0xab, b'u', b'n', b's', b'u', b'b', b's', b'c', b'r', b'i',
        b'b', b'e', 0x81, 0xa7, b'c', b'h', b'a', b'n', b'n', b'e', b'l', 0x05,
    ];
    let err = one(M, &frame).unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::InvalidParams {
                id: 1,
                method: "unsubscribe",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn one_bad_command_does_not_spoil_the_batch() {
    let frame = b"{\"id\":1,\"ping\":{}}\n{\"id\":2,\"nope\":{}}\n{\"id\":3,\"subscribe\":{}}\n{\"id\":4,\"ping\":{}}";
    let v = decode_commands(J, frame).unwrap();
    assert_eq!(v.len(), 4);
    assert_eq!(v[0], Ok(cmd(1, Method::Ping)));
    assert_eq!(v[1].as_ref().unwrap_err().error().code, 104);
    assert_eq!(v[2].as_ref().unwrap_err().error().code, 107);
    assert_eq!(v[3], Ok(cmd(4, Method::Ping)));
}

#[test]
fn batches() {
    let want = vec![Ok(cmd(1, Method::Ping)), Ok(cmd(2, Method::Ping))];
    for frame in [
        "{\"id\":1,\"ping\":{}}\n{\"id\":2,\"ping\":{}}",
        "{\"id\":1,\"ping\":{}}\n{\"id\":2,\"ping\":{}}\n",
        "{\"id\":1,\"ping\":{}}\r\n{\"id\":2,\"ping\":{}}\r\n",
        "\n{\"id\":1,\"ping\":{}}\n\n  {\"id\":2,\"ping\":{}}  \n",
    ] {
        assert_eq!(
            decode_commands(J, frame.as_bytes()),
            Ok(want.clone()),
            "{frame:?}"
        );
    }
    assert_eq!(decode_commands(J, b""), Ok(vec![]));
    assert_eq!(decode_commands(J, b" \r\n"), Ok(vec![]));
    assert_eq!(decode_commands(M, b""), Ok(vec![]));
    assert_eq!(
        decode_commands(J, b"{}\n{}"),
        Ok(vec![Ok(cmd(0, Method::Pong)); 2])
    );

    let mut frame = Vec::new();
    for (_, c) in sample_commands() {
        encode_command(M, &c, &mut frame);
    }
    let got: Vec<_> = decode_commands(M, &frame).unwrap();
    let want: Vec<_> = sample_commands().into_iter().map(|(_, c)| Ok(c)).collect();
    assert_eq!(got, want);

    // JSON batch written by the encoder is '\n'-separated.
    let mut frame = Vec::new();
    for (_, c) in sample_commands() {
        encode_command(J, &c, &mut frame);
    }
    let text = String::from_utf8(frame.clone()).unwrap();
    assert_eq!(text.lines().count(), sample_commands().len());
    let got = decode_commands(J, &frame).unwrap();
    let want: Vec<_> = sample_commands().into_iter().map(|(_, c)| Ok(c)).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Encoding replies and pushes

fn info() -> ClientInfo {
    ClientInfo {
        user: "42".into(),
        client: "c1".into(),
        conn_info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        chan_info: None,
    }
}

fn publication() -> Publication {
    Publication {
        data: Bytes::from_static(br#"{"text":"hi"}"#),
        offset: 5,
        info: None,
        tags: None,
        delta: false,
    }
}

fn sample_replies() -> Vec<(Reply, &'static str)> {
    let mut tags = BTreeMap::new();
    tags.insert("k".to_owned(), "v".to_owned());
    let mut clients = BTreeMap::new();
    clients.insert("c1".to_owned(), info());
    vec![
        (
            Reply::ok(
                1,
                ReplyBody::Connect(ConnectResult {
                    client: "c1".into(),
                    version: "0.1.0".into(),
                    ping: 25,
                    expires: false,
                    ttl: None,
                }),
            ),
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25}}"#,
        ),
        (
            Reply::ok(
                1,
                ReplyBody::Connect(ConnectResult {
                    client: "c1".into(),
                    version: "0.1.0".into(),
                    ping: 25,
                    expires: true,
                    ttl: Some(3600),
                }),
            ),
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"expires":true,"ttl":3600}}"#,
        ),
        (
            Reply::ok(
                2,
                ReplyBody::Subscribe(SubscribeResult {
                    epoch: "ab".into(),
                    offset: 5,
                    ..Default::default()
                }),
            ),
            r#"{"id":2,"subscribe":{"epoch":"ab","offset":5}}"#,
        ),
        (
            Reply::ok(
                2,
                ReplyBody::Subscribe(SubscribeResult {
                    epoch: "ab".into(),
                    offset: 5,
                    recoverable: true,
                    recovered: true,
                    publications: vec![Publication {
                        tags: Some(tags.clone()),
                        info: Some(info()),
                        ..publication()
                    }],
                    delta: true,
                }),
            ),
            r#"{"id":2,"subscribe":{"epoch":"ab","offset":5,"recoverable":true,"recovered":true,"publications":[{"data":{"text":"hi"},"offset":5,"info":{"user":"42","client":"c1","conn_info":{"name":"Ann"}},"tags":{"k":"v"}}],"delta":true}}"#,
        ),
        (
            Reply::ok(3, ReplyBody::Unsubscribe(UnsubscribeResult {})),
            r#"{"id":3,"unsubscribe":{}}"#,
        ),
        (
            Reply::ok(
                4,
                ReplyBody::Publish(PublishResult {
                    offset: 6,
                    epoch: "ab".into(),
                }),
            ),
            r#"{"id":4,"publish":{"offset":6,"epoch":"ab"}}"#,
        ),
        (
            Reply::ok(5, ReplyBody::Presence(PresenceResult { clients })),
            r#"{"id":5,"presence":{"clients":{"c1":{"user":"42","client":"c1","conn_info":{"name":"Ann"}}}}}"#,
        ),
        (
            Reply::ok(
                6,
                ReplyBody::PresenceStats(PresenceStatsResult {
                    num_clients: 3,
                    num_users: 2,
                }),
            ),
            r#"{"id":6,"presence_stats":{"num_clients":3,"num_users":2}}"#,
        ),
        (
            Reply::ok(
                7,
                ReplyBody::History(HistoryResult {
                    publications: vec![
                        publication(),
                        Publication {
                            data: Bytes::from_static(&[0xff, 0x00]),
                            offset: 6,
                            ..Default::default()
                        },
                    ],
                    epoch: "ab".into(),
                    offset: 6,
                }),
            ),
            r#"{"id":7,"history":{"publications":[{"data":{"text":"hi"},"offset":5},{"b64data":"/wA=","offset":6}],"epoch":"ab","offset":6}}"#,
        ),
        (
            Reply::ok(7, ReplyBody::History(HistoryResult::default())),
            r#"{"id":7,"history":{"publications":[],"epoch":"","offset":0}}"#,
        ),
        (Reply::ok(8, ReplyBody::Ping), r#"{"id":8,"ping":{}}"#),
        (
            Reply::ok(
                8,
                ReplyBody::Refresh(RefreshResult {
                    expires: true,
                    ttl: Some(60),
                }),
            ),
            r#"{"id":8,"refresh":{"expires":true,"ttl":60}}"#,
        ),
        (
            Reply::error(9, codes::PERMISSION_DENIED),
            r#"{"id":9,"error":{"code":103,"message":"permission denied"}}"#,
        ),
        (
            Reply::error(9, codes::INTERNAL),
            r#"{"id":9,"error":{"code":100,"message":"internal server error","temporary":true}}"#,
        ),
    ]
}

fn sample_pushes() -> Vec<(Push, &'static str)> {
    let mut tags = BTreeMap::new();
    tags.insert("a\"b".to_owned(), "\n".to_owned());
    vec![
        (
            Push::Publication {
                channel: "chat:lobby".into(),
                publication: publication(),
            },
            r#"{"push":{"channel":"chat:lobby","pub":{"data":{"text":"hi"},"offset":5}}}"#,
        ),
        (
            Push::Publication {
                channel: "c".into(),
                publication: Publication {
                    data: Bytes::from_static(b"\x00\x01binary"),
                    offset: 0,
                    info: Some(ClientInfo {
                        chan_info: Some(Bytes::from_static(b"\xfe")),
                        ..info()
                    }),
                    tags: Some(tags),
                    delta: false,
                },
            },
            r#"{"push":{"channel":"c","pub":{"b64data":"AAFiaW5hcnk=","offset":0,"info":{"user":"42","client":"c1","conn_info":{"name":"Ann"},"b64chan_info":"/g=="},"tags":{"a\"b":"\n"}}}}"#,
        ),
        (
            Push::Join {
                channel: "c".into(),
                info: info(),
            },
            r#"{"push":{"channel":"c","join":{"info":{"user":"42","client":"c1","conn_info":{"name":"Ann"}}}}}"#,
        ),
        (
            Push::Leave {
                channel: "c".into(),
                info: ClientInfo {
                    user: "".into(),
                    client: "c2".into(),
                    ..Default::default()
                },
            },
            r#"{"push":{"channel":"c","leave":{"info":{"user":"","client":"c2"}}}}"#,
        ),
        (
            Push::Unsubscribe {
                channel: "c".into(),
                code: 2000,
                reason: "server unsubscribe".into(),
            },
            r#"{"push":{"channel":"c","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#,
        ),
        (
            Push::disconnect(codes::SHUTDOWN),
            r#"{"push":{"channel":"","disconnect":{"code":4000,"reason":"shutdown","reconnect":true}}}"#,
        ),
        (
            Push::disconnect(codes::FORBIDDEN),
            r#"{"push":{"channel":"","disconnect":{"code":4504,"reason":"forbidden","reconnect":false}}}"#,
        ),
        (
            Push::disconnect_after(codes::SHUTDOWN, 1234),
            r#"{"push":{"channel":"","disconnect":{"code":4000,"reason":"shutdown","reconnect":true,"delay":1234}}}"#,
        ),
    ]
}

#[test]
fn encode_every_reply_json() {
    for (reply, want) in sample_replies() {
        assert_eq!(json_reply(&reply), want);
    }
}

#[test]
fn encode_every_push_json() {
    for (push, want) in sample_pushes() {
        assert_eq!(json_push(&push), want);
        let mut serde_out = Vec::new();
        encode_push_serde(J, &push, &mut serde_out);
        assert_eq!(String::from_utf8(serde_out).unwrap(), want);
    }
}

#[test]
fn replies_and_pushes_roundtrip_both_encodings() {
    for enc in [J, M] {
        let mut frame = Vec::new();
        let mut want = Vec::new();
        for (reply, _) in sample_replies() {
            encode_reply(enc, &reply, &mut frame);
            want.push(ServerMessage::Reply(reply));
        }
        for (push, _) in sample_pushes() {
            encode_push(enc, &push, &mut frame);
            want.push(ServerMessage::Push(push));
        }
        encode_heartbeat(enc, &mut frame);
        want.push(ServerMessage::Ping);
        assert_eq!(decode_server_messages(enc, &frame), Ok(want), "{enc:?}");
    }
}

#[test]
fn msgpack_publication_is_bin_and_fast_path_matches_serde() {
    for (push, _) in sample_pushes() {
        let mut fast = Vec::new();
        encode_push(M, &push, &mut fast);
        let mut slow = Vec::new();
        encode_push_serde(M, &push, &mut slow);
        assert_eq!(fast, slow);
    }
    let mut out = Vec::new();
    encode_publication(M, "c", &publication(), &mut out);
    let data = br#"{"text":"hi"}"#;
    let mut bin = vec![0xc4, data.len() as u8];
    bin.extend_from_slice(data);
    assert!(out.windows(bin.len()).any(|w| w == bin));
}

#[test]
fn json_output_is_newline_separated() {
    let mut out = Vec::new();
    encode_reply(J, &Reply::ok(1, ReplyBody::Ping), &mut out);
    encode_push(J, &sample_pushes()[0].0, &mut out);
    encode_heartbeat(J, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":1,\"ping\":{}}\n{\"push\":{\"channel\":\"chat:lobby\",\"pub\":{\"data\":{\"text\":\"hi\"},\"offset\":5}}}\n{}"
    );
    let mut out = Vec::new();
    encode_heartbeat(M, &mut out);
    encode_reply(M, &Reply::ok(1, ReplyBody::Ping), &mut out);
    assert_eq!(out[0], 0x80);
    assert_eq!(decode_server_messages(M, &out).unwrap().len(), 2);
}

#[test]
fn embedded_json_newlines_are_flattened() {
    let p = Push::Publication {
        channel: "c".into(),
        publication: Publication {
            data: Bytes::from_static(b"{\r\n  \"a\": \"x\\ny\"\n}\n"),
            ..Default::default()
        },
    };
    let s = json_push(&p);
    assert_eq!(
        s,
        "{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":{    \"a\": \"x\\ny\" },\"offset\":0}}}"
    );
    assert!(!s.contains('\n'));
    let mut serde_out = Vec::new();
    encode_push_serde(J, &p, &mut serde_out);
    assert_eq!(String::from_utf8(serde_out).unwrap(), s);
}

#[test]
fn delta_subscriptions_get_exact_bytes() {
    let p = Publication {
        data: Bytes::from_static(b"{\"a\": \"x\"}\n"),
        offset: 7,
        tags: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..Default::default()
    };
    let json = |payload: &[u8], delta: bool| {
        let mut out = Vec::new();
        encode_delta_publication(J, "c", &p, payload, delta, &mut out);
        String::from_utf8(out).unwrap()
    };
    // In full: the data as a JSON string (newline escaped: framing holds), no `delta`.
    assert_eq!(
        json(&p.data, false),
        r#"{"push":{"channel":"c","pub":{"data":"{\"a\": \"x\"}\n","offset":7,"tags":{"k":"v"}}}}"#
    );
    // A delta (text here) with `delta: true`; bytes that are not UTF-8 as b64data.
    assert_eq!(
        json(b"5\n5:hello2p;", true),
        r#"{"push":{"channel":"c","pub":{"data":"5\n5:hello2p;","offset":7,"delta":true,"tags":{"k":"v"}}}}"#
    );
    assert_eq!(
        json(b"\xff", true),
        r#"{"push":{"channel":"c","pub":{"b64data":"/w==","offset":7,"delta":true,"tags":{"k":"v"}}}}"#
    );
    // The client side sees the flag; the JSON string's value is the exact bytes.
    let msgs = decode_server_messages(J, json(&p.data, true).as_bytes()).unwrap();
    let ServerMessage::Push(Push::Publication { publication, .. }) = &msgs[0] else {
        panic!("{msgs:?}");
    };
    assert!(publication.delta);
    let text: String = serde_json::from_slice(&publication.data).unwrap();
    assert_eq!(text.as_bytes(), &p.data[..]);
    // MessagePack: bin, and the same map as the serde encoding of such a publication.
    for delta in [false, true] {
        let mut out = Vec::new();
        encode_delta_publication(M, "c", &p, b"\x00\x01", delta, &mut out);
        let want = Push::Publication {
            channel: "c".into(),
            publication: Publication {
                data: Bytes::from_static(b"\x00\x01"),
                delta,
                ..p.clone()
            },
        };
        let mut serde_out = Vec::new();
        encode_push_serde(M, &want, &mut serde_out);
        assert_eq!(out, serde_out);
        let back = decode_server_messages(M, &out).unwrap();
        assert_eq!(back, vec![ServerMessage::Push(want)]);
    }
}

#[test]
fn subprotocol_negotiation() {
    assert_eq!(Encoding::from_subprotocol(None), Some(J));
    assert_eq!(Encoding::from_subprotocol(Some("starling.json")), Some(J));
    assert_eq!(
        Encoding::from_subprotocol(Some("starling.msgpack")),
        Some(M)
    );
    assert_eq!(Encoding::from_subprotocol(Some("mqtt")), None);
    assert_eq!(Encoding::negotiate(None), Some((J, None)));
    assert_eq!(
        Encoding::negotiate(Some("mqtt, starling.msgpack, starling.json")),
        Some((M, Some("starling.msgpack")))
    );
    assert_eq!(Encoding::negotiate(Some("mqtt")), None);
    assert_eq!(SUBPROTOCOLS, ["starling.json", "starling.msgpack"]);
    assert!(M.is_binary() && !J.is_binary());
}

#[test]
fn error_type_basics() {
    let e: Error = codes::BAD_REQUEST.with_message(Cow::Owned("x".into()));
    assert_eq!(e.to_string(), "x (107)");
    assert_eq!(Reply::error(1, e.clone()).body, Err(e));
}

// ---------------------------------------------------------------------------
// Property tests

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from),
        any::<String>().prop_map(|s| Bytes::from(serde_json::to_string(&s).unwrap())),
        any::<(i64, bool)>()
            .prop_map(|(n, b)| Bytes::from(format!("{{\"n\":{n},\"b\":[{b},null]}}"))),
    ]
}

fn arb_info() -> impl Strategy<Value = ClientInfo> {
    (
        any::<String>(),
        any::<String>(),
        proptest::option::of(arb_bytes()),
        proptest::option::of(arb_bytes()),
    )
        .prop_map(|(user, client, conn_info, chan_info)| ClientInfo {
            user,
            client,
            conn_info,
            chan_info,
        })
}

fn arb_publication() -> impl Strategy<Value = Publication> {
    (
        arb_bytes(),
        any::<u64>(),
        proptest::option::of(arb_info()),
        proptest::option::of(proptest::collection::btree_map(
            any::<String>(),
            any::<String>(),
            0..4,
        )),
        any::<bool>(),
    )
        .prop_map(|(data, offset, info, tags, delta)| Publication {
            data,
            offset,
            info,
            tags,
            delta,
        })
}

/// What a JSON client gets back for opaque bytes: the JSON text normalized, or the bytes.
fn json_normalized(b: &Bytes) -> Bytes {
    match json_text(b) {
        Some(t) => Bytes::from(t.into_owned()),
        None => b.clone(),
    }
}

fn normalize_publication(p: &Publication) -> Publication {
    Publication {
        data: json_normalized(&p.data),
        offset: p.offset,
        info: p.info.as_ref().map(|i| ClientInfo {
            user: i.user.clone(),
            client: i.client.clone(),
            conn_info: i.conn_info.as_ref().map(json_normalized),
            chan_info: i.chan_info.as_ref().map(json_normalized),
        }),
        tags: p.tags.clone(),
        delta: p.delta,
    }
}

fn arb_channel() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-empty", |s| !s.is_empty())
}

fn arb_method() -> impl Strategy<Value = Method> {
    let opt_s = || proptest::option::of(any::<String>());
    prop_oneof![
        (opt_s(), opt_s(), opt_s()).prop_map(|(token, name, version)| Method::Connect(
            ConnectRequest {
                token,
                name,
                version
            }
        )),
        (
            arb_channel(),
            opt_s(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            opt_s(),
            any::<bool>(),
        )
            .prop_map(
                |(channel, token, recover, offset, epoch, delta)| Method::Subscribe(
                    SubscribeRequest {
                        channel,
                        token,
                        recover,
                        offset,
                        epoch,
                        delta: delta.then_some(DeltaType::Fossil),
                    }
                )
            ),
        arb_channel().prop_map(|channel| Method::Unsubscribe(UnsubscribeRequest { channel })),
        (arb_channel(), arb_bytes())
            .prop_map(|(channel, data)| Method::Publish(PublishRequest { channel, data })),
        arb_channel().prop_map(|channel| Method::Presence(PresenceRequest { channel })),
        arb_channel().prop_map(|channel| Method::PresenceStats(PresenceStatsRequest { channel })),
        (
            arb_channel(),
            proptest::option::of(any::<u32>()),
            proptest::option::of((any::<u64>(), any::<String>())),
            any::<bool>()
        )
            .prop_map(
                |(channel, limit, since, reverse)| Method::History(HistoryRequest {
                    channel,
                    limit,
                    since: since.map(|(offset, epoch)| StreamPosition { offset, epoch }),
                    reverse
                })
            ),
        any::<String>()
            .prop_filter("non-empty", |s| !s.is_empty())
            .prop_map(|token| Method::Refresh(RefreshRequest { token })),
        Just(Method::Ping),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        9 => (1..=u32::MAX, arb_method()).prop_map(|(id, method)| Command { id, method }),
        1 => Just(Command { id: 0, method: Method::Pong }),
    ]
}

fn json_normalized_command(c: &Command) -> Command {
    match &c.method {
        Method::Publish(p) => Command {
            id: c.id,
            method: Method::Publish(PublishRequest {
                channel: p.channel.clone(),
                data: json_normalized(&p.data),
            }),
        },
        _ => c.clone(),
    }
}

proptest! {
    #[test]
    fn publication_push_roundtrip(channel in any::<String>(), p in arb_publication()) {
        // MessagePack: exact round trip; fast path == serde.
        let mut out = Vec::new();
        encode_publication(M, &channel, &p, &mut out);
        let push = Push::Publication { channel: channel.clone(), publication: p.clone() };
        let mut slow = Vec::new();
        encode_push_serde(M, &push, &mut slow);
        prop_assert_eq!(&out, &slow);
        prop_assert_eq!(decode_server_messages(M, &out), Ok(vec![ServerMessage::Push(push.clone())]));

        // JSON: hand-written == serde, valid single-line JSON, round trip modulo normalization.
        let mut out = Vec::new();
        encode_publication(J, &channel, &p, &mut out);
        let mut slow = Vec::new();
        encode_push_serde(J, &push, &mut slow);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&slow));
        prop_assert!(!out.contains(&b'\n'));
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        let want = Push::Publication { channel, publication: normalize_publication(&p) };
        prop_assert_eq!(decode_server_messages(J, &out), Ok(vec![ServerMessage::Push(want)]));
    }

    #[test]
    fn commands_roundtrip(cmds in proptest::collection::vec(arb_command(), 1..5)) {
        let mut m = Vec::new();
        let mut j = Vec::new();
        for c in &cmds {
            encode_command(M, c, &mut m);
            encode_command(J, c, &mut j);
        }
        let want: Vec<_> = cmds.iter().cloned().map(Ok).collect();
        prop_assert_eq!(decode_commands(M, &m), Ok(want));
        let want: Vec<_> = cmds.iter().map(|c| Ok(json_normalized_command(c))).collect();
        prop_assert_eq!(decode_commands(J, &j), Ok(want));
    }

    #[test]
    fn json_escaping_is_valid(s in any::<String>(), ctl in proptest::collection::vec(0u8..0x20, 0..8)) {
        let s = format!("{s}{}\"\\\u{7f}\u{2028}", String::from_utf8(ctl).unwrap());
        let mut out = Vec::new();
        crate::encode::json::string(&s, &mut out);
        let back: String = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
    }

    #[test]
    fn u64_writer(v in any::<u64>()) {
        let mut out = Vec::new();
        crate::encode::json::u64(v, &mut out);
        prop_assert_eq!(out, v.to_string().into_bytes());
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_commands(J, &bytes);
        let _ = decode_commands(M, &bytes);
        let _ = decode_server_messages(J, &bytes);
        let _ = decode_server_messages(M, &bytes);
    }
}
