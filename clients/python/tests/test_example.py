"""The README's example, run as written against the test node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import API_KEY, Herald

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_example_runs(herald: Herald) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    host = herald.http
    env = {**os.environ, "HERALD_URL": herald.url, "HERALD_HTTP": host, "HERALD_API_KEY": API_KEY}
    out = subprocess.run([sys.executable, "-c", blocks[0]], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seq = re.search(r"published at seq (\d+)", out.stdout)
    assert seq, out.stdout
    assert f"received {seq.group(1)} {{'text': 'hello from Python'}}" in out.stdout
    assert re.search(r"backend published at seq \d+", out.stdout)
