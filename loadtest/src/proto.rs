//! The wire protocols the generator speaks: herald's JSON frames (also the
//! bare WebSocket floor's), Socket.IO 4 with the events of
//! `loadtest/socketio/server.js`, and Centrifugo's JSON client protocol.
//!
//! Every protocol is decoded into typed structs by serde (never into
//! `serde_json::Value`), so the generator pays about the same decoding cost
//! for every server it compares.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Which server the generator talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// herald's JSON frames (also the bare WebSocket floor).
    Herald,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket) with the events of
    /// `loadtest/socketio/server.js`: `subscribe`, `publish`, `message`,
    /// `publish_ack`.
    SocketIo,
    /// Centrifugo's JSON client protocol (v2): `connect`, `subscribe` and
    /// `publish` commands with an `id`, replies with the same `id`,
    /// publications as `push`es; several in a frame, one per line.
    Centrifugo,
}

impl Proto {
    /// `herald`, `socketio` or `centrifugo`.
    pub fn parse(s: &str) -> anyhow::Result<Proto> {
        Ok(match s {
            "herald" => Proto::Herald,
            "socketio" => Proto::SocketIo,
            "centrifugo" => Proto::Centrifugo,
            other => anyhow::bail!("protocol {other}: herald, socketio or centrifugo"),
        })
    }

    /// The label a report carries.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Herald => "herald-ws",
            Proto::SocketIo => "socket.io",
            Proto::Centrifugo => "centrifugo",
        }
    }
}

/// A frame as the generator needs it, from any protocol.
#[derive(Debug, Default, PartialEq)]
pub struct Incoming {
    /// `subscribed`, `message`, `publish_ack`, `publish_nack`, `error`,
    /// `connected` or `ping` (answer with [`pong_frame`]).
    pub kind: String,
    pub channel: Option<String>,
    /// The message's id (herald: the frame's; Socket.IO: the event's;
    /// Centrifugo: inside the publication's data).
    pub id: Option<Uuid>,
    /// The publisher's clock when it sent the message, ns.
    pub t: Option<u64>,
    pub code: Option<String>,
    /// herald: the `seq` of an ack; Socket.IO / Centrifugo: the position in
    /// the channel's stream a message was delivered with.
    pub seq: Option<i64>,
    /// Centrifugo: the command id a reply answers.
    pub cmd: Option<u32>,
}

/// `subscribe` to `channel`; `cmd` numbers the command (Centrifugo).
pub fn subscribe_frame(proto: Proto, channel: &str, cmd: u32) -> String {
    match proto {
        Proto::Herald => serde_json::json!({"type": "subscribe", "channel": channel}).to_string(),
        Proto::SocketIo => format!("42{}", serde_json::json!(["subscribe", channel])),
        Proto::Centrifugo => {
            serde_json::json!({"id": cmd, "subscribe": {"channel": channel}}).to_string()
        }
    }
}

/// A publish of message `id` sent at `t` (ns) with `pad` as padding.
pub fn publish_frame(proto: Proto, channel: &str, id: Uuid, t: u64, pad: &str, cmd: u32) -> String {
    match proto {
        Proto::Herald => serde_json::json!({
            "type": "publish", "channel": channel, "id": id, "data": {"t": t, "pad": pad}
        })
        .to_string(),
        Proto::SocketIo => format!(
            "42{}",
            serde_json::json!(["publish", {"channel": channel, "id": id, "data": {"t": t, "pad": pad}}])
        ),
        // Centrifugo's data is opaque: the id travels inside it.
        Proto::Centrifugo => serde_json::json!({
            "id": cmd, "publish": {"channel": channel, "data": {"id": id, "t": t, "pad": pad}}
        })
        .to_string(),
    }
}

/// The first command on a new connection, if the protocol has one.
pub fn hello_frame(proto: Proto) -> Option<String> {
    match proto {
        Proto::Herald => None,
        Proto::SocketIo => Some("40".into()),
        Proto::Centrifugo => Some(r#"{"id":1,"connect":{}}"#.into()),
    }
}

/// The answer to a server's ping.
pub fn pong_frame(proto: Proto) -> &'static str {
    match proto {
        Proto::Herald => "",
        Proto::SocketIo => "3",
        Proto::Centrifugo => "{}",
    }
}

#[derive(Deserialize)]
struct HeraldFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    data: Option<Stamp>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    seq: Option<i64>,
    /// A `batch` frame's frames.
    #[serde(default)]
    frames: Option<Vec<HeraldFrame>>,
}

/// What the generator puts in every message's data.
#[derive(Deserialize)]
struct Stamp {
    #[serde(default)]
    id: Option<Uuid>,
    t: u64,
}

#[derive(Deserialize)]
struct SioPayload {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct CfReply {
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    push: Option<CfPush>,
    #[serde(default)]
    error: Option<CfError>,
    #[serde(default)]
    connect: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    subscribe: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    publish: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CfPush {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "pub")]
    publication: Option<CfPublication>,
}

#[derive(Deserialize)]
struct CfPublication {
    data: Stamp,
    #[serde(default)]
    offset: Option<i64>,
}

#[derive(Deserialize)]
struct CfError {
    code: u32,
    #[serde(default)]
    message: String,
}

/// Appends the frames in one WebSocket text message to `out` (Centrifugo
/// batches several, one per line); frames the generator does not use are
/// skipped.
pub fn decode(proto: Proto, text: &str, out: &mut Vec<Incoming>) {
    match proto {
        Proto::Herald => {
            let herald = |f: HeraldFrame| Incoming {
                kind: f.kind,
                channel: f.channel,
                id: f.id,
                t: f.data.map(|d| d.t),
                code: f.code,
                seq: f.seq,
                cmd: None,
            };
            if let Ok(f) = serde_json::from_str::<HeraldFrame>(text) {
                if f.kind == "batch" {
                    // `?batch=true`: several frames in one.
                    out.extend(f.frames.into_iter().flatten().map(herald));
                } else {
                    out.push(herald(f));
                }
            }
        }
        Proto::SocketIo => out.extend(decode_sio(text)),
        Proto::Centrifugo => {
            for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                out.extend(decode_centrifugo(line));
            }
        }
    }
}

fn decode_sio(text: &str) -> Option<Incoming> {
    if text == "2" {
        return Some(Incoming {
            kind: "ping".into(),
            ..Incoming::default()
        });
    }
    if text.starts_with("40") {
        return Some(Incoming {
            kind: "connected".into(),
            ..Incoming::default()
        });
    }
    let body = text.strip_prefix("42")?;
    // [name, payload, offset?]: with connection state recovery on, the
    // server appends the packet's offset.
    let parts: Vec<&RawValue> = serde_json::from_str(body).ok()?;
    let kind: String = serde_json::from_str(parts.first()?.get()).ok()?;
    let payload = parts.get(1)?.get();
    let mut f = Incoming {
        kind,
        ..Incoming::default()
    };
    if payload.starts_with('"') {
        // `subscribed` carries the channel name alone.
        f.channel = serde_json::from_str(payload).ok();
    } else {
        let p: SioPayload = serde_json::from_str(payload).ok()?;
        f.channel = p.channel;
        f.id = p.id;
        f.t = p.data.map(|d| d.t);
        // The recovery offset: its order is the delivery order the
        // verifier checks (Socket.IO's acks carry no position).
        f.seq = parts
            .get(2)
            .and_then(|o| serde_json::from_str::<&str>(o.get()).ok())
            .and_then(stream_id_order);
    }
    Some(f)
}

/// A Redis stream id `MS-SEQ` (the Socket.IO Redis Streams adapter's
/// recovery offset) as one number in the stream's order: MS × 2^20 + SEQ.
fn stream_id_order(id: &str) -> Option<i64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (i64, i64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(ms.checked_mul(1 << 20)? + seq.min((1 << 20) - 1))
}

fn decode_centrifugo(line: &str) -> Option<Incoming> {
    let r: CfReply = serde_json::from_str(line).ok()?;
    let mut f = Incoming {
        cmd: r.id,
        ..Incoming::default()
    };
    if let Some(e) = r.error {
        // A refused command: the publisher counts one it sent as a nack.
        f.kind = "error".into();
        f.code = Some(format!("{} {}", e.code, e.message));
    } else if let Some(p) = r.push {
        let publication = p.publication?;
        f.kind = "message".into();
        f.channel = p.channel;
        f.id = publication.data.id;
        f.t = Some(publication.data.t);
        f.seq = publication.offset;
    } else if r.connect.is_some() {
        f.kind = "connected".into();
    } else if r.subscribe.is_some() {
        f.kind = "subscribed".into();
    } else if r.publish.is_some() {
        f.kind = "publish_ack".into();
    } else if r.id.is_none() {
        // `{}`: the server's ping.
        f.kind = "ping".into();
    } else {
        return None;
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(proto: Proto, text: &str) -> Option<Incoming> {
        let mut v = Vec::new();
        decode(proto, text, &mut v);
        assert!(v.len() <= 1, "{v:?}");
        v.pop()
    }

    #[test]
    fn a_herald_batch_frame_decodes_to_its_frames_in_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let text = format!(
            r#"{{"type":"batch","frames":[{{"type":"message","channel":"chat:a","seq":4,"epoch":"e","id":"{a}","ts":1,"data":{{"t":5,"pad":""}}}},{{"type":"message","channel":"chat:a","seq":5,"epoch":"e","id":"{b}","ts":1,"data":{{"t":6,"pad":""}}}}]}}"#
        );
        let mut v = Vec::new();
        decode(Proto::Herald, &text, &mut v);
        assert_eq!(
            v.iter().map(|f| (f.id, f.seq, f.t)).collect::<Vec<_>>(),
            [(Some(a), Some(4), Some(5)), (Some(b), Some(5), Some(6))]
        );
        assert_eq!(crate::gen::ws_frame_bytes(100), 102);
        assert_eq!(crate::gen::ws_frame_bytes(1500), 1504);
    }

    #[test]
    fn socketio_frames_round_trip() {
        let id = Uuid::new_v4();
        let f = publish_frame(Proto::SocketIo, "chat:a", id, 7, "xx", 0);
        assert!(f.starts_with(r#"42["publish",{"#), "{f}");
        // What server.js broadcasts, with the recovery offset appended.
        let msg = format!(
            r#"42["message",{{"channel":"chat:a","id":"{id}","data":{{"t":7,"pad":"xx"}}}},"1795-0"]"#
        );
        let d = one(Proto::SocketIo, &msg).unwrap();
        assert_eq!(d.kind, "message");
        assert_eq!(d.channel.as_deref(), Some("chat:a"));
        assert_eq!(d.id, Some(id));
        assert_eq!(d.t, Some(7));
        assert_eq!(d.seq, Some(1795 << 20));
        let later = msg.replace("1795-0", "1795-3");
        assert_eq!(
            one(Proto::SocketIo, &later).unwrap().seq,
            Some((1795 << 20) + 3)
        );
        let next_ms = msg.replace("1795-0", "1796-0");
        assert!(
            one(Proto::SocketIo, &next_ms).unwrap().seq > one(Proto::SocketIo, &later).unwrap().seq
        );
        let sub = one(Proto::SocketIo, r#"42["subscribed","chat:a","1-0"]"#).unwrap();
        assert_eq!(
            (sub.kind.as_str(), sub.channel.as_deref()),
            ("subscribed", Some("chat:a"))
        );
        assert_eq!(one(Proto::SocketIo, "2").unwrap().kind, "ping");
        assert!(one(Proto::SocketIo, "42not json").is_none());
        assert_eq!(
            subscribe_frame(Proto::SocketIo, "chat:a", 0),
            r#"42["subscribe","chat:a"]"#
        );
    }

    #[test]
    fn herald_frames_round_trip() {
        let id = Uuid::new_v4();
        let f: serde_json::Value =
            serde_json::from_str(&publish_frame(Proto::Herald, "chat:a", id, 9, "", 0)).unwrap();
        assert_eq!(f["type"], "publish");
        assert_eq!(f["data"]["t"], 9);
        let msg = format!(
            r#"{{"type":"message","channel":"chat:a","seq":1,"epoch":"e","id":"{id}","ts":0,"data":{{"t":9}}}}"#
        );
        let d = one(Proto::Herald, &msg).unwrap();
        assert_eq!((d.kind.as_str(), d.id, d.t), ("message", Some(id), Some(9)));
    }

    #[test]
    fn centrifugo_frames_round_trip() {
        let id = Uuid::new_v4();
        let f: serde_json::Value =
            serde_json::from_str(&publish_frame(Proto::Centrifugo, "chat:a", id, 9, "x", 7))
                .unwrap();
        assert_eq!(f["id"], 7);
        assert_eq!(f["publish"]["channel"], "chat:a");
        assert_eq!(f["publish"]["data"]["id"], id.to_string());
        // Replies and a push batched in one frame, one per line.
        let text = format!(
            "{{\"id\":7,\"publish\":{{}}}}\n{{\"push\":{{\"channel\":\"chat:a\",\"pub\":{{\"data\":{{\"id\":\"{id}\",\"t\":9,\"pad\":\"x\"}},\"offset\":42}}}}}}\n{{}}"
        );
        let mut v = Vec::new();
        decode(Proto::Centrifugo, &text, &mut v);
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!((v[0].kind.as_str(), v[0].cmd), ("publish_ack", Some(7)));
        assert_eq!(v[1].kind, "message");
        assert_eq!(
            (v[1].channel.as_deref(), v[1].id, v[1].t, v[1].seq),
            (Some("chat:a"), Some(id), Some(9), Some(42))
        );
        assert_eq!(v[2].kind, "ping");
        let sub = one(
            Proto::Centrifugo,
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"x","offset":3}}"#,
        )
        .unwrap();
        assert_eq!((sub.kind.as_str(), sub.cmd), ("subscribed", Some(2)));
        let nack = one(
            Proto::Centrifugo,
            r#"{"id":9,"error":{"code":103,"message":"permission denied"}}"#,
        )
        .unwrap();
        assert_eq!(
            (nack.kind.as_str(), nack.cmd, nack.code.as_deref()),
            ("error", Some(9), Some("103 permission denied"))
        );
        let refused = one(
            Proto::Centrifugo,
            r#"{"id":1,"error":{"code":101,"message":"unauthorized"}}"#,
        )
        .unwrap();
        assert_eq!(refused.kind, "error");
        assert_eq!(
            one(Proto::Centrifugo, r#"{"id":1,"connect":{"client":"c"}}"#)
                .unwrap()
                .kind,
            "connected"
        );
    }
}
