use super::*;
use crate::compress_message;
use crate::frame::encode_client_frame;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn cf(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    encode_client_frame(op, fin, false, payload, MASK)
}

fn conn() -> Connection {
    Connection::new(Config::default(), None)
}

fn dconn() -> Connection {
    Connection::new(Config::default(), Some(DeflateParams::default()))
}

fn feed(c: &mut Connection, data: &[u8]) -> (Vec<Message>, Result<(), ProtocolError>) {
    let mut out = Vec::new();
    let r = c.receive(data, &mut |m| out.push(m));
    (out, r)
}

fn outbound(c: &mut Connection) -> Vec<Bytes> {
    std::iter::from_fn(|| c.poll_outbound()).collect()
}

/// Parses one unmasked server frame: (fin, rsv1, opcode, payload).
fn parse_server(frame: &[u8]) -> (bool, bool, u8, Vec<u8>) {
    let (len, at) = match frame[1] & 0x7f {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    assert_eq!(frame.len(), at + len, "exactly one frame");
    (
        frame[0] & 0x80 != 0,
        frame[0] & 0x40 != 0,
        frame[0] & 0x0f,
        frame[at..].to_vec(),
    )
}

fn expect_err(c: &mut Connection, data: &[u8], err: ProtocolError, code: u16) {
    let (msgs, r) = feed(c, data);
    assert!(msgs.is_empty());
    assert_eq!(r, Err(err.clone()));
    assert_eq!(err.close_code(), CloseCode(code));
    assert!(c.is_closed());
    let close = c.fail(&err);
    let (_, _, op, payload) = parse_server(&close);
    assert_eq!(op, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    assert!(c.close_sent());
    // Later bytes are ignored.
    assert_eq!(feed(c, &cf(OpCode::Text, true, b"x")), (vec![], Ok(())));
}

#[test]
fn size_of_connection() {
    // 136 bytes on x86_64: two usize limits, the u64 payload countdown, two
    // empty Vecs, an empty VecDeque, the 14-byte header array and a few flag
    // bytes. No heap memory while idle.
    let size = std::mem::size_of::<Connection>();
    println!("size_of::<Connection>() = {size}");
    assert!(size <= 136, "Connection is {size} bytes");
}

#[test]
fn protocol_errors_1002() {
    use ProtocolError::*;
    let mut unmasked = cf(OpCode::Text, true, b"hi");
    unmasked[1] &= 0x7f;
    expect_err(&mut conn(), &unmasked, UnmaskedFrame, 1002);

    let mut rsv2 = cf(OpCode::Text, true, b"hi");
    rsv2[0] |= 0x20;
    expect_err(&mut conn(), &rsv2, ReservedBits, 1002);
    let mut rsv3 = cf(OpCode::Binary, true, b"hi");
    rsv3[0] |= 0x10;
    expect_err(&mut dconn(), &rsv3, ReservedBits, 1002);
    // RSV1 without deflate.
    let rsv1 = encode_client_frame(OpCode::Text, true, true, b"hi", MASK);
    expect_err(&mut conn(), &rsv1, ReservedBits, 1002);
    // RSV1 on control / continuation even with deflate.
    let ping = encode_client_frame(OpCode::Ping, true, true, b"", MASK);
    expect_err(&mut dconn(), &ping, CompressedControlOrContinuation, 1002);
    let mut data = cf(OpCode::Text, false, b"a");
    data.extend(encode_client_frame(
        OpCode::Continuation,
        true,
        true,
        b"b",
        MASK,
    ));
    expect_err(&mut dconn(), &data, CompressedControlOrContinuation, 1002);

    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut f = cf(OpCode::Binary, true, b"");
        f[0] = 0x80 | op;
        expect_err(&mut conn(), &f, ReservedOpcode(op), 1002);
    }

    expect_err(
        &mut conn(),
        &cf(OpCode::Ping, true, &[0u8; 126]),
        ControlFrameTooLong,
        1002,
    );
    expect_err(
        &mut conn(),
        &cf(OpCode::Ping, false, b"x"),
        FragmentedControlFrame,
        1002,
    );
    expect_err(
        &mut conn(),
        &cf(OpCode::Continuation, true, b"x"),
        UnexpectedContinuation,
        1002,
    );
    let mut two = cf(OpCode::Text, false, b"a");
    two.extend(cf(OpCode::Text, true, b"b"));
    expect_err(&mut conn(), &two, ExpectedContinuation, 1002);
    expect_err(
        &mut conn(),
        &cf(OpCode::Close, true, &[3]),
        CloseTooShort,
        1002,
    );
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        expect_err(
            &mut conn(),
            &cf(OpCode::Close, true, &code.to_be_bytes()),
            InvalidCloseCode(code),
            1002,
        );
    }
    let mut huge = vec![0x82, 0xff];
    huge.extend(u64::MAX.to_be_bytes());
    huge.extend(MASK);
    expect_err(&mut conn(), &huge, InvalidLength, 1002);
}

#[test]
fn payload_errors_1007() {
    use ProtocolError::*;
    expect_err(
        &mut conn(),
        &cf(OpCode::Text, true, b"ab\xff"),
        InvalidUtf8,
        1007,
    );
    let mut reason = 1000u16.to_be_bytes().to_vec();
    reason.extend(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80");
    expect_err(
        &mut conn(),
        &cf(OpCode::Close, true, &reason),
        InvalidCloseReason,
        1007,
    );
    // Truncated UTF-8 at the end of the message.
    let mut f = cf(OpCode::Text, false, b"a\xe2");
    f.extend(cf(OpCode::Continuation, true, b"\x82"));
    expect_err(&mut conn(), &f, InvalidUtf8, 1007);
    // Bad deflate data.
    let bad = encode_client_frame(OpCode::Binary, true, true, &[0xff; 20], MASK);
    expect_err(&mut dconn(), &bad, InvalidDeflate, 1007);
    // Compressed text that inflates to invalid UTF-8.
    let c = compress_message(b"\xff\xfe not text", 15).expect("compress");
    let f = encode_client_frame(OpCode::Text, true, true, &c, MASK);
    expect_err(&mut dconn(), &f, InvalidUtf8, 1007);
}

#[test]
fn size_errors_1009_before_buffering() {
    use ProtocolError::*;
    let small = Config {
        max_frame_size: 100,
        max_message_size: 150,
    };
    // Only the header of a 2^40-byte frame is sent: refused at once.
    let mut hdr = vec![0x82, 0xff];
    hdr.extend((1u64 << 40).to_be_bytes());
    hdr.extend(MASK);
    let mut c = Connection::new(small, None);
    expect_err(&mut c, &hdr, FrameTooBig, 1009);
    // Frame limit.
    let mut c = Connection::new(small, None);
    expect_err(
        &mut c,
        &cf(OpCode::Binary, true, &[0; 101])[..8],
        FrameTooBig,
        1009,
    );
    // Message limit across fragments.
    let mut c = Connection::new(small, None);
    let mut f = cf(OpCode::Binary, false, &[0; 100]);
    f.extend(cf(OpCode::Continuation, true, &[0; 51]));
    expect_err(&mut c, &f, MessageTooBig, 1009);
    // Exactly at the limits is fine.
    let mut c = Connection::new(small, None);
    let mut f = cf(OpCode::Binary, false, &[0; 100]);
    f.extend(cf(OpCode::Continuation, true, &[0; 50]));
    assert_eq!(
        feed(&mut c, &f),
        (vec![Message::Binary(Bytes::from(vec![0; 150]))], Ok(()))
    );
}

#[test]
fn zip_bomb_is_1009() {
    let bomb = compress_message(&vec![0u8; 20 * 1024 * 1024], 15).expect("compress");
    assert!(bomb.len() < 64 * 1024);
    let f = encode_client_frame(OpCode::Binary, true, true, &bomb, MASK);
    expect_err(&mut dconn(), &f, ProtocolError::MessageTooBig, 1009);
}

#[test]
fn utf8_fails_fast_inside_a_frame() {
    let f = cf(
        OpCode::Text,
        true,
        "κόσμε\u{10ffff} then more text".as_bytes(),
    );
    let mut c = conn();
    // Valid prefix split inside a multi-byte character: fine so far.
    assert_eq!(feed(&mut c, &f[..6 + 3]), (vec![], Ok(())));
    let mut bad = cf(
        OpCode::Text,
        true,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80hello",
    );
    let mut c = conn();
    // Header + 11 valid bytes + the first byte of a bad sequence: not yet decidable.
    assert_eq!(feed(&mut c, &bad[..6 + 12]), (vec![], Ok(())));
    // The second byte (0x90 after 0xf4) is already invalid, long before the frame ends.
    let (_, r) = feed(&mut c, &bad[6 + 12..6 + 13]);
    assert_eq!(r, Err(ProtocolError::InvalidUtf8));
    bad.clear();
}

#[test]
fn fragmented_with_interleaved_ping() {
    let mut data = cf(OpCode::Text, false, "Hé".as_bytes());
    data.extend(cf(OpCode::Ping, true, b"ping!"));
    data.extend(cf(OpCode::Continuation, false, b""));
    data.extend(cf(OpCode::Pong, true, b"unsolicited"));
    data.extend(cf(OpCode::Continuation, true, "llo wörld".as_bytes()));
    let mut c = conn();
    let (msgs, r) = feed(&mut c, &data);
    r.expect("ok");
    assert_eq!(msgs, vec![Message::Text(Bytes::from("Héllo wörld"))]);
    let out = outbound(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(parse_server(&out[0]), (true, false, 0xA, b"ping!".to_vec()));
    assert!(!c.is_closed());
    // Idle again: nothing allocated.
    assert_eq!(
        (c.msg.capacity(), c.ctrl.capacity(), c.outbound.capacity()),
        (0, 0, 0)
    );
}

#[test]
fn every_ping_gets_a_pong() {
    let mut c = conn();
    let data: Vec<u8> = (0..10u8)
        .flat_map(|i| cf(OpCode::Ping, true, &[i]))
        .collect();
    feed(&mut c, &data).1.expect("ok");
    let out = outbound(&mut c);
    assert_eq!(out.len(), 10);
    for (i, f) in out.iter().enumerate() {
        assert_eq!(parse_server(f).3, vec![i as u8]);
    }
}

#[test]
fn client_initiated_close() {
    let mut c = conn();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(b"bye");
    let mut data = cf(OpCode::Close, true, &payload);
    data.extend(cf(OpCode::Text, true, b"after close"));
    let (msgs, r) = feed(&mut c, &data);
    r.expect("ok");
    assert!(msgs.is_empty());
    assert!(c.is_closed());
    assert!(c.close_sent());
    let out = outbound(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(
        parse_server(&out[0]),
        (true, false, 0x8, 1000u16.to_be_bytes().to_vec())
    );
    // Close without a code is echoed empty; custom codes are echoed.
    let mut c = conn();
    feed(&mut c, &cf(OpCode::Close, true, b"")).1.expect("ok");
    assert_eq!(parse_server(&outbound(&mut c)[0]).3, Vec::<u8>::new());
    let mut c = conn();
    feed(&mut c, &cf(OpCode::Close, true, &4321u16.to_be_bytes()))
        .1
        .expect("ok");
    assert_eq!(
        parse_server(&outbound(&mut c)[0]).3,
        4321u16.to_be_bytes().to_vec()
    );
}

#[test]
fn server_initiated_close() {
    let mut c = conn();
    let f = c.close(CloseCode::GOING_AWAY, "restart");
    let (_, _, op, payload) = parse_server(&f);
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"restart");
    assert!(c.close_sent() && !c.is_closed());
    assert!(
        c.close(CloseCode::NORMAL, "").is_empty(),
        "only one close frame"
    );
    // Data and pings in flight are dropped; the peer's close completes the handshake.
    let mut data = cf(OpCode::Text, true, b"late");
    data.extend(cf(OpCode::Ping, true, b""));
    data.extend(cf(OpCode::Close, true, &1001u16.to_be_bytes()));
    let (msgs, r) = feed(&mut c, &data);
    r.expect("ok");
    assert!(msgs.is_empty());
    assert!(c.is_closed());
    assert!(outbound(&mut c).is_empty(), "no second close, no pong");
}

#[test]
fn deflate_round_trip() {
    let text = "permessage-deflate round trip ".repeat(200);
    let params = DeflateParams::default();
    let server_frame = crate::encode_message(MessageKind::Text, text.as_bytes(), Some(&params));
    let (fin, rsv1, op, compressed) = parse_server(&server_frame);
    assert!(fin && rsv1);
    assert_eq!(op, 0x1);
    assert!(compressed.len() < text.len() / 10);
    // Feed the same compressed bytes back as a masked client frame, fragmented.
    let (a, b) = compressed.split_at(compressed.len() / 2);
    let mut data = encode_client_frame(OpCode::Text, false, true, a, MASK);
    data.extend(cf(OpCode::Ping, true, b"mid"));
    data.extend(cf(OpCode::Continuation, true, b));
    data.extend(encode_client_frame(
        OpCode::Binary,
        true,
        true,
        &compressed,
        MASK,
    ));
    data.extend(cf(OpCode::Binary, true, b"plain"));
    let mut c = dconn();
    let (msgs, r) = feed(&mut c, &data);
    r.expect("ok");
    assert_eq!(
        msgs,
        vec![
            Message::Text(Bytes::from(text.clone())),
            Message::Binary(Bytes::from(text.clone())),
            Message::Binary(Bytes::from_static(b"plain")),
        ]
    );
    // Incompressible or tiny payloads go out uncompressed; window 8 never compresses.
    let (_, rsv1, _, p) = parse_server(&crate::encode_message(
        MessageKind::Binary,
        b"hi",
        Some(&params),
    ));
    assert!(!rsv1);
    assert_eq!(p, b"hi");
    let eight = DeflateParams {
        server_max_window_bits: 8,
        client_max_window_bits: 15,
    };
    assert!(
        !parse_server(&crate::encode_message(
            MessageKind::Text,
            text.as_bytes(),
            Some(&eight)
        ))
        .1
    );
    for bits in 9..=15 {
        let p = DeflateParams {
            server_max_window_bits: bits,
            client_max_window_bits: 15,
        };
        let (_, rsv1, _, body) = parse_server(&crate::encode_message(
            MessageKind::Text,
            text.as_bytes(),
            Some(&p),
        ));
        assert!(rsv1);
        let mut c = dconn();
        let (msgs, r) = feed(
            &mut c,
            &encode_client_frame(OpCode::Text, true, true, &body, MASK),
        );
        r.expect("ok");
        assert_eq!(msgs, vec![Message::Text(Bytes::from(text.clone()))]);
    }
}

/// A stream exercising most paths: fragmented text with multi-byte characters
/// split across frames, interleaved controls, empty frames, compressed messages.
fn mixed_stream() -> (Vec<u8>, Vec<Message>, usize) {
    let mut d = Vec::new();
    let text = "añb€c𝄞d";
    let bytes = text.as_bytes();
    d.extend(cf(OpCode::Text, false, &bytes[..2]));
    d.extend(cf(OpCode::Ping, true, b"p1"));
    d.extend(cf(OpCode::Continuation, false, &bytes[2..6]));
    d.extend(cf(OpCode::Continuation, false, b""));
    d.extend(cf(OpCode::Continuation, true, &bytes[6..]));
    d.extend(cf(OpCode::Binary, true, &[7u8; 300]));
    d.extend(cf(OpCode::Text, true, b""));
    let big = "zzzz compress me ".repeat(50);
    let c = compress_message(big.as_bytes(), 15).expect("compress");
    let (x, y) = c.split_at(5);
    d.extend(encode_client_frame(OpCode::Text, false, true, x, MASK));
    d.extend(cf(OpCode::Pong, true, b""));
    d.extend(cf(OpCode::Continuation, true, y));
    d.extend(cf(OpCode::Ping, true, &[1u8; 125]));
    d.extend(cf(OpCode::Binary, true, &[9u8; 70_000]));
    let expected = vec![
        Message::Text(Bytes::from(text)),
        Message::Binary(Bytes::from(vec![7u8; 300])),
        Message::Text(Bytes::new()),
        Message::Text(Bytes::from(big)),
        Message::Binary(Bytes::from(vec![9u8; 70_000])),
    ];
    (d, expected, 2)
}

fn big_config() -> Config {
    Config {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    }
}

#[test]
fn every_split_point_gives_the_same_result() {
    let (data, expected, pongs) = mixed_stream();
    for split in 0..=data.len() {
        let mut c = Connection::new(big_config(), Some(DeflateParams::default()));
        let (mut msgs, r) = feed(&mut c, &data[..split]);
        r.expect("first part");
        let (more, r) = feed(&mut c, &data[split..]);
        r.expect("second part");
        msgs.extend(more);
        assert_eq!(msgs, expected, "split at {split}");
        assert_eq!(outbound(&mut c).len(), pongs);
        assert_eq!((c.msg.capacity(), c.ctrl.capacity()), (0, 0));
    }
}

#[test]
fn one_byte_at_a_time() {
    let (data, expected, pongs) = mixed_stream();
    let mut c = Connection::new(big_config(), Some(DeflateParams::default()));
    let mut msgs = Vec::new();
    for b in &data {
        c.receive(std::slice::from_ref(b), &mut |m| msgs.push(m))
            .expect("ok");
    }
    assert_eq!(msgs, expected);
    assert_eq!(outbound(&mut c).len(), pongs);
}

#[test]
fn receive_events_keeps_pongs_in_arrival_order() {
    let mut c = conn();
    let mut data = cf(OpCode::Text, true, b"first");
    data.extend(cf(OpCode::Text, false, b"frag"));
    data.extend(cf(OpCode::Ping, true, b"p"));
    data.extend(cf(OpCode::Continuation, true, b"ment"));
    let mut events = Vec::new();
    c.receive_events(&data, &mut |e| events.push(e))
        .expect("valid");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[0],
        Event::Message(Message::Text(Bytes::from_static(b"first")))
    );
    assert!(
        matches!(&events[1], Event::Pong(f) if parse_server(f).2 == 0xA),
        "pong second"
    );
    assert_eq!(
        events[2],
        Event::Message(Message::Text(Bytes::from_static(b"fragment")))
    );
    assert!(c.poll_outbound().is_none(), "nothing left queued");
}
