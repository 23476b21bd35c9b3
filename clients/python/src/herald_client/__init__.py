"""asyncio client for herald: the WebSocket client (`Client`: subscribe with
resume, publish until acked, durable cursors, history, presence) and the
server API for backends (`ServerApi`), and the check of herald's webhook
requests (`webhooks.verify`)."""

from . import webhooks
from .api import ServerApi
from .client import Client, Subscription, backoff_delay, token_expiry
from .types import ApiError, HeraldError, Message, Position, PublishResult

__all__ = [
    "ApiError",
    "Client",
    "HeraldError",
    "Message",
    "Position",
    "PublishResult",
    "ServerApi",
    "Subscription",
    "backoff_delay",
    "token_expiry",
    "webhooks",
]
