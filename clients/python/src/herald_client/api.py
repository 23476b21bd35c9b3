"""The server API (docs/protocol.md, "Server HTTP API") for backends: every
call authenticated with the API key, answered as JSON; anything but 200
raises ApiError with the server's code and reason."""

from __future__ import annotations

from typing import Any

import httpx

from .types import ApiError


class ServerApi:
    """``async with ServerApi("http://127.0.0.1:8080", api_key) as api``."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    async def __aenter__(self) -> ServerApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(
        self,
        channel: str,
        data: Any,
        id: str | None = None,
        retry: bool = False,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Appends once Kafka confirmed: `{channel, id, seq, duplicate}`. With
        the same `id` again (after a lost answer, `retry=True`, any node) the
        original `seq` comes back with `duplicate: true`."""
        body = _append({"channel": channel}, data, id, retry, tags)
        return await self._call("POST", "/api/publish", json=body)

    async def broadcast(
        self,
        channels: list[str],
        data: Any,
        id: str | None = None,
        retry: bool = False,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = _append({"channels": channels}, data, id, retry, tags)
        return await self._call("POST", "/api/broadcast", json=body)

    async def history(self, channel: str, **query: Any) -> dict[str, Any]:
        params = {"channel": channel, **{k: _param(v) for k, v in query.items() if v is not None}}
        return await self._call("GET", "/api/history", params=params)

    async def position(self, channel: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/channels/{channel}/position")

    async def presence(self, channel: str) -> dict[str, Any]:
        return await self._call("GET", "/api/presence", params={"channel": channel})

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        return await self._call("GET", "/api/presence_stats", params={"channel": channel})

    async def disconnect(
        self,
        user: str,
        code: int | None = None,
        reason: str | None = None,
        reconnect: bool | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"user": user}
        for k, v in (("code", code), ("reason", reason), ("reconnect", reconnect)):
            if v is not None:
                body[k] = v
        return await self._call("POST", "/api/disconnect", json=body)

    async def revoke(
        self,
        *,
        jti: str | None = None,
        user: str | None = None,
        before: int | None = None,
        until: int | None = None,
    ) -> dict[str, Any]:
        """Revokes one token (`jti`, kept until `until`: its `exp`) or every
        token of `user` issued at or before `before` (default now); every
        node closes the covered connections (4011) and refuses the tokens."""
        body = {
            k: v
            for k, v in (("jti", jti), ("user", user), ("before", before), ("until", until))
            if v is not None
        }
        return await self._call("POST", "/api/revoke", json=body)

    async def unsubscribe(self, user: str, channel: str) -> dict[str, Any]:
        return await self._call("POST", "/api/unsubscribe", json={"user": user, "channel": channel})

    async def channels(self, pattern: str | None = None) -> dict[str, Any]:
        params = {"pattern": pattern} if pattern is not None else None
        return await self._call("GET", "/api/channels", params=params)

    async def nodes(self) -> dict[str, Any]:
        return await self._call("GET", "/api/nodes")

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = await self._http.request(method, path, **kw)
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            code = body.get("code", "") if isinstance(body, dict) else ""
            reason = body.get("reason", r.text) if isinstance(body, dict) else r.text
            raise ApiError(r.status_code, str(code), str(reason))
        if not isinstance(body, dict):
            raise ApiError(r.status_code, "bad_answer", "the answer is not a JSON object")
        return body


def _append(
    body: dict[str, Any], data: Any, id: str | None, retry: bool, tags: dict[str, str] | None
) -> dict[str, Any]:
    """An append's body: `data`, and `id`, `retry` and `tags` when given."""
    body["data"] = data
    if id is not None:
        body["id"] = id
    if retry:
        body["retry"] = True
    if tags:
        body["tags"] = tags
    return body


def _param(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)
