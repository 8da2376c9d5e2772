"""Hostile inputs as they come from the internet, made in seconds: a tar whose member claims 50 GB
(its data a hole of a sparse file: the apparent size only, no disk), tars with duplicate keys,
a JPEG decompression bomb inside a shard, and the runner that caps a command's memory and
reports its peak (docs/reliability.md, "Bounded reading")."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)  # GNU base-256 sizes: members over 8 GiB


Data = bytes | int | tuple[bytes, int]


def write_tar(path: Path, members: list[tuple[str, Data]]) -> Path:
    """A tar of (name, data) members. Data is bytes; or an int N: a member of N bytes that are a
    hole (nothing written, the file is sparse); or (bytes, N): those bytes, then a hole up to N."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for name, data in members:
            head, size = (b"", data) if isinstance(data, int) else data if isinstance(data, tuple) \
                else (data, len(data))
            fh.write(_header(name, size))
            fh.write(head)
            fh.seek(size - len(head) + (-size % BLOCK), os.SEEK_CUR)
        fh.seek(2 * BLOCK, os.SEEK_CUR)
        fh.truncate()  # the end blocks (zeros) and the holes
    return path


def clip_members(key: str, video: Data, caption: str) -> list[tuple[str, Data]]:
    """A video2dataset sample: KEY.mp4, KEY.txt, KEY.json (url, status, key)."""
    meta = {"key": key, "caption": caption, "status": "success", "url": f"https://example.org/{key}.mp4"}
    return [(f"{key}.mp4", video), (f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps(meta).encode())]


def bomb_jpeg(width: int = 30000, height: int = 30000) -> bytes:
    """A valid JPEG header announcing width x height (a few hundred bytes: the scan data is cut)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")  # baseline frame header: FF C0, length, precision, height, width
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def replace_frames(shard_dir: Path, sample_key: str, data: bytes, frames: int = 8) -> None:
    """Every stored frame of one sample replaced by `data` (replace_frame, f00.jpg ...)."""
    for j in range(frames):
        replace_frame(shard_dir, sample_key, f"f{j:02d}.jpg", data)


def replace_frame(shard_dir: Path, sample_key: str, frame: str, data: bytes) -> None:
    """Rewrite one shard of a shard set with member KEY.FRAME replaced by `data`, and its index
    (samples.i64) to the new byte ranges: what a set downloaded from a hub may hold."""
    import numpy as np

    index = json.loads((shard_dir / "index.json").read_text())
    samples = np.fromfile(shard_dir / "samples.i64", dtype="<i8").reshape(-1, 3)
    for j, shard in enumerate(index["shards"]):
        path = shard_dir / shard["name"]
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        if not any(m.name == f"{sample_key}.{frame}" for m, _ in members):
            continue
        rows = np.nonzero(samples[:, 0] == j)[0]
        keys, out = [], io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for m, body in members:
                body = data if m.name == f"{sample_key}.{frame}" else body
                key = m.name.split(".", 1)[0]
                if not keys or keys[-1][0] != key:
                    keys.append([key, out.tell(), 0])
                info = tarfile.TarInfo(m.name)
                info.size, info.mtime = len(body), 0
                tar.addfile(info, io.BytesIO(body))
                keys[-1][2] = out.tell() - keys[-1][1]
        path.write_bytes(out.getvalue())
        for row, (_, offset, length) in zip(rows, keys):
            samples[row, 1:] = offset, length
        samples.astype("<i8").tofile(shard_dir / "samples.i64")
        return
    raise AssertionError(f"no member {sample_key}.{frame} in {shard_dir}")


MEASURE = """
import resource, subprocess, sys, json
limit = int(sys.argv[1])
def cap():
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proc = subprocess.run(sys.argv[2:], preexec_fn=cap, capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak_rss": peak}))
"""


def run_capped(*args, cwd: Path, memory: int = 0, env: dict | None = None, timeout: int = 300,
               python: bool = False) -> dict:
    """`evilm args` (`python args` with `python`) with its address space capped at `memory` bytes
    (RLIMIT_AS, inherited by its workers; 0: no cap). Returns {rc, stdout, stderr, peak_rss}:
    peak_rss is the largest resident set of the command or any of its worker processes, in bytes."""
    exe = sys.executable if python else Path(sys.executable).with_name("evilm")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(memory), str(exe), *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, timeout=timeout, env=full_env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)

