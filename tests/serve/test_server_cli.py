"""`evilm serve` as a user runs it: the console script on a free loopback port. Refusals before
binding, faults while serving (a client that leaves mid-response, a 10 MB query) and a clean
SIGTERM that lets the request in flight finish."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from urllib.parse import urlparse

import httpx

from evilm_core.data.records.manifest import read_manifest
from tests.helpers.cli import run_evilm
from tests.serve.conftest import Server


def test_a_public_address_needs_a_token(served_index):
    proc = run_evilm("serve", "--index", served_index, "--host", "0.0.0.0", check=False, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--token" in proc.stderr and "--insecure" in proc.stderr
    bad = run_evilm("serve", "--index", served_index.parent / "nothing", check=False, timeout=60)
    assert bad.returncode == 2 and "is not an index directory" in bad.stderr


def _raw(url: str, request: bytes) -> socket.socket:
    parts = urlparse(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(request)
    return sock


def test_faults_leave_the_server_serving(server, synth_dir):
    key = read_manifest(synth_dir / "test.jsonl")[0].video
    # a client that reads a few bytes of a video and goes away
    sock = _raw(server.url, f"GET /api/clips/{key}/video HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    sock.close()
    # a 10 MB query, in the URL and in a body
    huge = "a" * (10 * 1024 * 1024)
    try:  # the HTTP parser refuses a request line that long: an error status, or the connection reset
        sock = _raw(server.url, f"GET /api/search?q={huge} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status = sock.recv(64)
        sock.close()
        assert status == b"" or status.split(b" ")[1] in (b"400", b"413", b"414", b"431")
    except (ConnectionResetError, BrokenPipeError):
        pass
    posted = httpx.post(server.url + "api/search", content=b'{"queries": ["' + huge.encode() + b'"]}', timeout=60)
    assert posted.status_code == 413
    ok = httpx.get(server.url + "api/search", params={"q": "a red star", "k": 3}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3
    assert httpx.get(server.url + "healthz").json() == {"status": "ok"}


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(served_index, synth_dir, tmp_path):
    """A slow client downloading a large video when SIGTERM arrives still gets every byte."""
    index = tmp_path / "index"
    shutil.copytree(served_index, index)
    key = read_manifest(synth_dir / "test.jsonl")[0].video
    video = synth_dir / key
    original = video.read_bytes()
    big = original + b"\0" * (8 * 1024 * 1024)  # served as a file: bytes, whatever they hold
    video.write_bytes(big)
    try:
        srv = Server("--index", index).wait_ready()
        received, done = bytearray(), threading.Event()

        def slow_download():
            with httpx.stream("GET", srv.url + f"api/clips/{key}/video", timeout=60) as response:
                for chunk in response.iter_bytes(64 * 1024):
                    received.extend(chunk)
                    time.sleep(0.01)
            done.set()

        reader = threading.Thread(target=slow_download)
        reader.start()
        while len(received) < 256 * 1024:
            time.sleep(0.01)
        code = srv.stop()
        reader.join(60)
        assert done.is_set() and bytes(received) == big
        assert code == 0, srv.proc.stderr.read()
    finally:
        video.write_bytes(original)
