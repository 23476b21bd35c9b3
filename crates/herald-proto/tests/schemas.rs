//! Every frame and envelope herald serialises validates against `schemas/`.

use herald_proto::{envelope, frame::MessageFrame, Envelope, Position, ServerFrame};
use serde_json::{value::RawValue, Value};
use uuid::Uuid;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../../schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&value).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, json: &str) {
    let instance: Value = serde_json::from_str(json).unwrap();
    if let Err(e) = v.validate(&instance) {
        panic!("{json} does not validate: {e}");
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

#[test]
fn server_frames_validate() {
    let v = schema("frames.server.json");
    let id = Uuid::new_v4();
    let frames = [
        ServerFrame::Subscribed {
            channel: "chat:a".into(),
            position: Position {
                seq: -1,
                epoch: "e".into(),
            },
            recovered: false,
            auto: false,
        },
        ServerFrame::Subscribed {
            channel: "dm:alice".into(),
            position: Position {
                seq: 4,
                epoch: "e".into(),
            },
            recovered: false,
            auto: true,
        },
        ServerFrame::Unsubscribed {
            channel: "chat:a".into(),
        },
        ServerFrame::Conflated {
            channel: "chat:a".into(),
            skipped: 3,
            from_seq: 4,
            to_seq: 9,
        },
        ServerFrame::Message(MessageFrame {
            channel: "chat:a".into(),
            seq: 4,
            epoch: "e".into(),
            id,
            ts: 1,
            data: raw(r#"{"a":[1,null]}"#),
            replayed: None,
            tags: Some(herald_proto::Tags::from([("kind".into(), "goal".into())])),
        }),
        ServerFrame::Message(MessageFrame {
            channel: "chat:a".into(),
            seq: 9,
            epoch: "e".into(),
            id,
            ts: 1,
            data: raw("7"),
            tags: None,
            replayed: Some(herald_proto::Replayed {
                topic: "herald.chat".into(),
                partition: 3,
                offset: 4,
                id,
            }),
        }),
        ServerFrame::History {
            id: Some("q1".into()),
            channel: "chat:a".into(),
            epoch: "e".into(),
            messages: vec![raw(&ServerFrame::Message(MessageFrame {
                channel: "chat:a".into(),
                seq: 4,
                epoch: "e".into(),
                id,
                ts: 1,
                data: raw("[]"),
                replayed: None,
                tags: None,
            })
            .to_json())],
            next: 4,
            done: false,
            truncated: true,
        },
        ServerFrame::History {
            id: None,
            channel: "chat:a".into(),
            epoch: "e".into(),
            messages: vec![],
            next: -1,
            done: true,
            truncated: false,
        },
        ServerFrame::PublishAck {
            id,
            channel: "chat:a".into(),
            seq: 4,
            duplicate: false,
        },
        ServerFrame::Authenticated {
            sub: "alice".into(),
            expires_at: 1_800_000_000,
        },
        ServerFrame::Error {
            code: herald_proto::codes::UNAUTHORIZED,
            reason: "no".into(),
            id: None,
            channel: Some("user:bob".into()),
        },
        ServerFrame::Error {
            code: herald_proto::codes::BAD_TOKEN,
            reason: "token expired".into(),
            id: None,
            channel: None,
        },
        ServerFrame::PublishAck {
            id,
            channel: "chat:a".into(),
            seq: 4,
            duplicate: true,
        },
        ServerFrame::PublishNack {
            id,
            channel: "chat:a".into(),
            code: herald_proto::codes::UNAVAILABLE,
            reason: "down".into(),
            retry_after_ms: None,
        },
        ServerFrame::PublishNack {
            id,
            channel: "chat:a".into(),
            code: herald_proto::codes::RATE_LIMITED,
            reason: "slow down".into(),
            retry_after_ms: Some(20),
        },
        ServerFrame::Error {
            code: herald_proto::codes::BAD_JSON,
            reason: "x".into(),
            id: None,
            channel: Some("chat:a".into()),
        },
        ServerFrame::Pong,
        ServerFrame::Reconnect { after_ms: 250 },
    ];
    for f in &frames {
        assert_valid(&v, &f.to_json());
    }
    // And the schema is not vacuous.
    let bad: Value = serde_json::from_str(r#"{"type":"message","channel":"chat:a"}"#).unwrap();
    assert!(!v.is_valid(&bad));
}

#[test]
fn client_frames_validate_and_decode() {
    let v = schema("frames.client.json");
    let frames = [
        r#"{"type":"subscribe","channel":"chat:a"}"#,
        r#"{"type":"subscribe","channel":"chat:a","since":{"seq":3,"epoch":"x"}}"#,
        r#"{"type":"unsubscribe","channel":"chat:a"}"#,
        r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":"hi"}"#,
        r#"{"type":"ack","channel":"chat:a","seq":0}"#,
        r#"{"type":"subscribe","channel":"chat:a","since":"cursor"}"#,
        r#"{"type":"subscribe","channel":"chat:a","durable":true}"#,
        r#"{"type":"history","channel":"chat:a"}"#,
        r#"{"type":"history","id":"p2","channel":"chat:a","since_seq":-1,"limit":10}"#,
        r#"{"type":"history","channel":"chat:a","since_time":1700000000000,"reverse":true}"#,
        r#"{"type":"history","channel":"chat:a","before_seq":40,"limit":20}"#,
        r#"{"type":"auth","token":"a.b.c"}"#,
        r#"{"type":"refresh","token":"a.b.c"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":1,"tags":{"kind":"goal","team":""}}"#,
        r#"{"type":"subscribe","channel":"chat:a","filter":{"key":"kind","eq":"goal"}}"#,
        r#"{"type":"subscribe","channel":"chat:a","filter":{"or":[{"key":"k","in":["a","b"]},{"not":{"key":"t","exists":true}}]}}"#,
        r#"{"type":"subscribe","channel":"chat:a","filter":{"and":[{"key":"k","ne":"a"}]}}"#,
        r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":{"typing":true},"ephemeral":true}"#,
    ];
    for f in frames {
        assert_valid(&v, f);
        herald_proto::frame::decode_client(f).unwrap();
    }
    let bad: Value = serde_json::from_str(r#"{"type":"ping","x":1}"#).unwrap();
    assert!(!v.is_valid(&bad));
    // What the decoder refuses, the schema refuses too.
    for f in [
        r#"{"type":"subscribe","channel":"chat:a","filter":{"key":"k"}}"#,
        r#"{"type":"subscribe","channel":"chat:a","filter":{"key":"k","eq":"a","ne":"b"}}"#,
        r#"{"type":"subscribe","channel":"chat:a","filter":{"and":[]}}"#,
        r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":1,"tags":{"k":1}}"#,
    ] {
        let bad: Value = serde_json::from_str(f).unwrap();
        assert!(!v.is_valid(&bad), "{f}");
        assert!(herald_proto::frame::decode_client(f).is_err(), "{f}");
    }
}

#[test]
fn envelope_validates() {
    let v = schema("envelope.v1.json");
    let env = Envelope {
        v: envelope::ENVELOPE_VERSION,
        id: Uuid::new_v4(),
        channel: "chat:lobby".into(),
        publisher: Some("conn:1".into()),
        ts: 1_700_000_000_000,
        content_type: envelope::CONTENT_TYPE_JSON.into(),
        data: raw(r#"{"text":"hello"}"#),
        replayed: None,
        tags: Some(herald_proto::Tags::from([("room".into(), "a".into())])),
    };
    let json = String::from_utf8(env.to_json()).unwrap();
    assert_valid(&v, &json);
    // The `ephemeral` frame written from it is a server frame.
    let borrowed = herald_proto::envelope::EnvelopeRef::decode(json.as_bytes(), None).unwrap();
    let frame = borrowed.ephemeral_json();
    assert_valid(&schema("frames.server.json"), &frame);
    assert!(!frame.contains("\"seq\""), "{frame}");
    let back = Envelope::decode(json.as_bytes(), Some(b"chat:lobby")).unwrap();
    assert_eq!(back.data.get(), r#"{"text":"hello"}"#);
    assert!(Envelope::decode(json.as_bytes(), Some(b"chat:other")).is_err());
}
