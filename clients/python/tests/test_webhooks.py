"""The webhook checker against the Standard Webhooks specification's example
and against what herald signs (the same vector as herald's own test)."""

from __future__ import annotations

import pytest

from herald_client.webhooks import WebhookError, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_specifications_example_signs_as_herald_does() -> None:
    sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_a_good_request_and_refuses_tampering_and_replays() -> None:
    body = b'{"id":"e1","type":"join","time":1,"channel":"chat:a"}'
    headers = {
        "Webhook-Id": "e1",
        "Webhook-Timestamp": "1000",
        "Webhook-Signature": "v1,bogus= " + sign("plain-secret", "e1", 1000, body),
    }
    event = verify("plain-secret", headers, body, now=1010)
    assert event["type"] == "join"
    with pytest.raises(WebhookError, match="signature"):
        verify("plain-secret", headers, body.replace(b"chat:a", b"chat:b"), now=1010)
    with pytest.raises(WebhookError, match="signature"):
        verify("other-secret", headers, body, now=1010)
    with pytest.raises(WebhookError, match="too far"):
        verify("plain-secret", headers, body, now=5000)
    with pytest.raises(WebhookError, match="missing"):
        verify("plain-secret", {"webhook-id": "e1"}, body, now=1010)
    other = dict(headers, **{"Webhook-Id": "e2"})
    other["Webhook-Signature"] = sign("plain-secret", "e2", 1000, body)
    with pytest.raises(WebhookError, match="the headers name"):
        verify("plain-secret", other, body, now=1010)
