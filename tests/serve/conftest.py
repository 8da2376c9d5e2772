"""An index of the synthetic test clips built by `evilm retrieve index` with a tiny model, and a
running `evilm serve` over it: what the serve tests query (a real server process or the ASGI app)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli import run_evilm
from tests.helpers.predict import write_checkpoints
from tests.retrieval.test_retrieve_cli import write_model


@pytest.fixture(scope="package")
def served_index(synth_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    model = write_model(base / "model", synth_dir, seed=0)
    out = base / "index"
    run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", synth_dir / "test.jsonl", "--out", out,
              "--workers", "0", "--precision", "fp32", "--threads", "1", "--json")
    return out


class Server:
    """`evilm serve` in a subprocess on a free loopback port."""

    def __init__(self, *args, env: dict | None = None):
        exe = Path(sys.executable).with_name("evilm")
        self.proc = subprocess.Popen([str(exe), "serve", "--port", "0", "--threads", "1", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.url, lines, deadline = None, [], time.monotonic() + 60
        while self.url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"evilm serve: (http://\S+/)", line)
            self.url = m.group(1) if m else None
        assert self.url, "".join(lines)

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "readyz").status_code == 200:
                return self
            time.sleep(0.2)
        raise AssertionError("the server did not become ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="package")
def qa_checkpoint(synth_dir, tmp_path_factory) -> Path:
    """A tiny random-weight qa checkpoint (what `--qa` answers questions with)."""
    return write_checkpoints(tmp_path_factory.mktemp("serve_qa"), synth_dir)["qa"]


@pytest.fixture(scope="package")
def server(served_index, qa_checkpoint):
    srv = Server("--index", served_index, "--qa", qa_checkpoint).wait_ready()
    yield srv
    srv.stop()
