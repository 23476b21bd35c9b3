//! WebSocket conformance, the core of the Autobahn testsuite's cases ported
//! to raw frames over TCP (Autobahn itself needs Python 2): framing and
//! reserved bits, masking, opcodes, fragmentation with interleaved control
//! frames, ping/pong payloads, close handshake and codes, UTF-8 validation
//! (whole and fragmented), size limits.

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

async fn handshake(s: &Server) -> TcpStream {
    let host = s.http.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&host).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's example key and accept value.
    assert!(
        head.to_ascii_lowercase()
            .contains("s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    tcp
}

/// A client frame; `mask` false sends it unmasked (a protocol error).
fn frame(fin: bool, rsv: u8, opcode: u8, mask: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12u8, 0x34, 0x56, 0x78];
    if mask {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads one server frame: (opcode, payload).
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
    let mut len = (h[1] & 0x7f) as usize;
    if len == 126 {
        let mut b = [0u8; 2];
        tcp.read_exact(&mut b).await.ok()?;
        len = u16::from_be_bytes(b) as usize;
    } else if len == 127 {
        let mut b = [0u8; 8];
        tcp.read_exact(&mut b).await.ok()?;
        len = u64::from_be_bytes(b) as usize;
    }
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Reads until a close frame and returns its code.
async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let (op, payload) = read_frame(tcp).await?;
        if op == CLOSE {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

async fn expect_close(s: &Server, bytes: Vec<u8>, want: u16, case: &str) {
    let mut tcp = handshake(s).await;
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(want), "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_the_right_code() {
    let s = Server::start(&unique_prefix("conform"), &["--max-frame-bytes", "4096"]);
    let ping = br#"{"type":"ping"}"#;
    expect_close(
        &s,
        frame(true, 0b100, TEXT, true, ping),
        1002,
        "RSV1 set without an extension",
    )
    .await;
    expect_close(&s, frame(true, 0b001, TEXT, true, ping), 1002, "RSV3 set").await;
    expect_close(
        &s,
        frame(true, 0, TEXT, false, ping),
        1002,
        "unmasked client frame",
    )
    .await;
    expect_close(
        &s,
        frame(true, 0, 0x3, true, b""),
        1002,
        "reserved opcode 3",
    )
    .await;
    expect_close(
        &s,
        frame(true, 0, 0xB, true, b""),
        1002,
        "reserved control opcode 11",
    )
    .await;
    expect_close(
        &s,
        frame(true, 0, PING, true, &[b'x'; 126]),
        1002,
        "control frame over 125 bytes",
    )
    .await;
    expect_close(
        &s,
        frame(false, 0, PING, true, b"x"),
        1002,
        "fragmented control frame",
    )
    .await;
    expect_close(
        &s,
        frame(true, 0, CONT, true, b"x"),
        1002,
        "continuation without a start",
    )
    .await;
    let mut two_starts = frame(false, 0, TEXT, true, b"{");
    two_starts.extend(frame(true, 0, TEXT, true, b"}"));
    expect_close(&s, two_starts, 1002, "new message inside a fragmented one").await;
    expect_close(
        &s,
        frame(true, 0, TEXT, true, &[0xce, 0xba, 0xe1, 0xbd, 0xc0, 0x80]),
        1007,
        "invalid UTF-8",
    )
    .await;
    let mut frag = frame(false, 0, TEXT, true, &[0x7b, 0xce]);
    frag.extend(frame(true, 0, CONT, true, &[0xff, 0x7d]));
    expect_close(&s, frag, 1007, "invalid UTF-8 across fragments").await;
    expect_close(
        &s,
        frame(true, 0, TEXT, true, &vec![b' '; 8000]),
        1009,
        "frame over the size limit",
    )
    .await;
    let mut big = Vec::new();
    for _ in 0..4 {
        big.extend(frame(
            false,
            0,
            if big.is_empty() { TEXT } else { CONT },
            true,
            &[b' '; 1500],
        ));
    }
    big.extend(frame(true, 0, CONT, true, b" "));
    expect_close(&s, big, 1009, "fragmented message over the size limit").await;
    // The server survived all of it.
    let mut c = s.connect().await;
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_fragments_and_the_close_handshake() {
    let s = Server::start(&unique_prefix("conform2"), &[]);
    let mut tcp = handshake(&s).await;

    // Ping payloads come back in the pong.
    tcp.write_all(&frame(true, 0, PING, true, b"hello"))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((PONG, b"hello".to_vec())));
    // An empty ping and a 125-byte ping.
    tcp.write_all(&frame(true, 0, PING, true, b""))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((PONG, Vec::new())));
    tcp.write_all(&frame(true, 0, PING, true, &[b'p'; 125]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((PONG, vec![b'p'; 125])));
    // Unsolicited pongs are ignored.
    tcp.write_all(&frame(true, 0, PONG, true, b"x"))
        .await
        .unwrap();

    // A text message in three fragments with a ping between them.
    tcp.write_all(&frame(false, 0, TEXT, true, br#"{"ty"#))
        .await
        .unwrap();
    tcp.write_all(&frame(true, 0, PING, true, b"mid"))
        .await
        .unwrap();
    tcp.write_all(&frame(false, 0, CONT, true, br#"pe":"pi"#))
        .await
        .unwrap();
    tcp.write_all(&frame(true, 0, CONT, true, br#"ng"}"#))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((PONG, b"mid".to_vec())));
    assert_eq!(
        read_frame(&mut tcp).await,
        Some((TEXT, br#"{"type":"pong"}"#.to_vec()))
    );

    // Valid multi-byte UTF-8 split inside a character across fragments.
    tcp.write_all(&frame(false, 0, TEXT, true, &[b'"', 0xce]))
        .await
        .unwrap();
    tcp.write_all(&frame(true, 0, CONT, true, &[0xba, b'"']))
        .await
        .unwrap();
    let (op, payload) = read_frame(&mut tcp).await.unwrap();
    assert_eq!(op, TEXT);
    assert!(
        String::from_utf8(payload).unwrap().contains("bad_json"),
        "a JSON string is not an object"
    );

    // Close handshake: the server echoes the code and ends the connection.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    tcp.write_all(&frame(true, 0, CLOSE, true, &close))
        .await
        .unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(1000));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("the server closes the TCP connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
