"""Checking herald's webhook requests in a backend: the Standard Webhooks
signature (`webhook-signature: v1,<base64 HMAC-SHA256>` of
`{webhook-id}.{webhook-timestamp}.{body}`), the timestamp's age, and the
body. Deduplicate by the returned event's `id` (the same in every delivery
of one event)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any


class WebhookError(Exception):
    """The request is not a valid, fresh herald webhook."""


def secret_key(secret: str) -> bytes:
    """The signing key of an endpoint's `secret`: `whsec_` + base64 is
    decoded (the Standard Webhooks form), anything else is its UTF-8
    bytes, as herald does."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header herald sends for this request."""
    msg = webhook_id.encode() + b"." + str(timestamp).encode() + b"." + body
    tag = hmac.new(secret_key(secret), msg, hashlib.sha256).digest()
    return "v1," + base64.b64encode(tag).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    """The event of a webhook request, after checking its signature over the
    raw `body` and that its timestamp is within `tolerance` seconds of
    `now` (replays). `headers` are matched case-insensitively. Raises
    `WebhookError` otherwise."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        webhook_id, ts, sigs = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    except KeyError as e:
        raise WebhookError(f"missing header {e.args[0]}") from None
    try:
        timestamp = int(ts)
    except ValueError:
        raise WebhookError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookError("webhook-timestamp is too far from now")
    want = sign(secret, webhook_id, timestamp, body)
    # Several space-separated signatures may be given (key rotation).
    if not any(hmac.compare_digest(want, s) for s in sigs.split()):
        raise WebhookError("no valid signature")
    event = json.loads(body)
    if not isinstance(event, dict) or event.get("id") != webhook_id:
        raise WebhookError("the body is not the event the headers name")
    return event
