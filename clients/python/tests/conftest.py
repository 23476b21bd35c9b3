"""A real herald node on the real broker for the tests: the binary from
HERALD_BIN (else the workspace's debug build), the brokers from
HERALD_TEST_BROKERS (infra/dev/test.sh starts one), topics under a fresh
prefix. Tokens come from `herald gentoken` with the node's configuration."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "py-test-api-key-0123456789"
SECRET = "py-test-secret-0123456789abcdef0123456789"


def herald_bin() -> str:
    if os.environ.get("HERALD_BIN"):
        return os.environ["HERALD_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/herald/target")
    return os.path.join(target, "debug", "herald")


@dataclass
class Herald:
    url: str
    http: str
    config: str
    proc: subprocess.Popen[bytes]

    def token(self, sub: str, ttl_secs: int = 3600) -> str:
        out = subprocess.run(
            [herald_bin(), "gentoken", "-c", self.config, "--sub", sub, "--ttl-secs", str(ttl_secs)],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def channel(self, ns: str = "chat") -> str:
        return f"{ns}:py-{uuid.uuid4().hex[:10]}"


CONFIG = """
[server]
listen = "127.0.0.1:0"
drain_delay_ms = 100
reconnect_jitter_ms = 200
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
[cache]
cursor_flush_ms = 100
[auth]
hs256_secret = "{secret}"
api_key = "{api_key}"
leeway_secs = 0
[[namespace]]
name = "chat"
partitions = 4
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
presence = "anonymous"
join_leave = true
ephemeral = true
[[namespace]]
name = "user"
partitions = 2
subscribe = "owner"
publish = "nobody"
history = "owner"
personal = true
"""


@pytest.fixture(scope="session")
def herald() -> Iterator[Herald]:
    tmp = tempfile.mkdtemp(prefix="herald-py-")
    cfg = os.path.join(tmp, "herald.toml")
    with open(cfg, "w") as f:
        f.write(
            CONFIG.format(
                brokers=os.environ.get("HERALD_TEST_BROKERS", "127.0.0.1:9092"),
                prefix=f"py-{uuid.uuid4().hex[:8]}.",
                secret=SECRET,
                api_key=API_KEY,
            )
        )
    err = open(os.path.join(tmp, "herald.err"), "wb")
    proc = subprocess.Popen([herald_bin(), "serve", "-c", cfg], stdout=subprocess.PIPE, stderr=err)
    addr = None
    deadline = time.time() + 60
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if line.startswith("herald listening on "):
            addr = line.split("herald listening on ", 1)[1].strip()
            break
    if addr is None:
        proc.kill()
        raise RuntimeError(f"herald did not start: see {tmp}/herald.err")
    # Whatever else it prints is read, so a full pipe never blocks it.
    out = proc.stdout
    threading.Thread(target=lambda: out.read(), daemon=True).start()
    # "ws://HOST:PORT/ws"
    host = addr.split("://", 1)[-1].split("/", 1)[0]
    yield Herald(addr, f"http://{host}", cfg, proc)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
