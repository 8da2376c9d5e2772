"""A shard set: training clips decoded once into WebDataset tar shards, and its reader
(docs/data.md, "Shards"). `evilm data shards` writes it (build.py).

Layout of a shard directory:

    index.json        format, version, settings (candidates, size, quality, ...), the shards and
                      their sample counts, totals; written last: a directory without it is
                      unfinished
    shard-000000.tar  WebDataset samples: KEY.f00.jpg ... KEY.f07.jpg (the F candidate frames),
                      KEY.json (video, frame indices, fps, frames in the video, the records),
                      KEY.txt (the first caption), KEY = the clip's position in the input
    samples.i64       int64 [N, 3]: shard, byte offset, byte length of each sample's members
    records.jsonl/.i64  the records (evilm_core/data/records/table.py); column 3 = their sample
    skipped.tsv       KEY, video, reason, detail of every clip that could not be decoded
    parts/            one JSON per finished shard (its samples and skips): what the merge reads

A sample is read with one positioned read of its byte range (its members are contiguous in the
tar), so access is map-style and any order costs the same: the trainer's (seed, epoch)
permutation, and so exact resume, stay as they are.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.data.records.table import RecordTable
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.fs import unescape_key

FORMAT, VERSION = "evilm-shards", 1
INDEX, SAMPLES, SKIPPED, PARTS = "index.json", "samples.i64", "skipped.tsv", "parts"
BLOCK = tarfile.BLOCKSIZE  # 512


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def frame_member(j: int) -> str:
    return f"f{j:02d}.jpg"


def looks_like_shards(path: str | os.PathLike | None) -> bool:
    """A directory written by `evilm data shards`, finished (index.json) or not (parts/plan.json)."""
    p = Path(path) if path is not None else None
    return p is not None and p.is_dir() and ((p / INDEX).is_file() or (p / PARTS / "plan.json").is_file())


@dataclass
class FrameSample:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB candidate frames
    info: dict  # the sample's JSON: video, frames (indices), num_video_frames, fps, records


def _members(buf: bytes, where: str) -> dict[str, bytes]:
    """Parse a run of tar members (header blocks and padded data) into {extension: bytes}."""
    out, pos = {}, 0
    while pos + BLOCK <= len(buf):
        try:
            header = tarfile.TarInfo.frombuf(buf[pos:pos + BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise EvilmError(f"{where}: damaged tar header at byte {pos} of the sample ({err})") from None
        start = pos + BLOCK
        data = buf[start:start + header.size]
        if len(data) != header.size:
            raise EvilmError(f"{where}: member {header.name} is truncated")
        out[header.name.split(".", 1)[1]] = data
        pos = start + -(-header.size // BLOCK) * BLOCK
    return out


class ShardSet:
    """Read access to a finished shard directory; picklable (files are reopened per process)."""

    def __init__(self, directory: Path, index: dict):
        self.dir, self.meta = directory, index
        self.settings = index["settings"]
        self.names = [s["name"] for s in index["shards"]]
        self._samples: np.ndarray | None = None
        self.records = RecordTable(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> ShardSet:
        d = Path(directory)
        index = read_index(d)
        shards = cls(d, index)
        missing = [n for n in shards.names if not (d / n).is_file()]
        if missing:
            raise EvilmError(f"{d}: shard file {missing[0]} is missing ({len(missing)} of {len(shards.names)} "
                             "missing); re-run `evilm data shards` with the same arguments to rebuild them")
        if len(shards.samples) != index["samples"]:
            raise EvilmError(f"{d / SAMPLES}: {len(shards.samples)} samples, index.json says {index['samples']}")
        return shards

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:
            path = self.dir / SAMPLES
            size = path.stat().st_size if path.is_file() else -1
            if size < 0 or size % 24:
                raise EvilmError(f"{path}: missing or damaged (size {size})")
            self._samples = np.memmap(path, dtype="<i8", mode="r").reshape(-1, 3) if size else np.zeros((0, 3), "<i8")
        return self._samples

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_samples": None}

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def skipped(self) -> list[tuple[str, str, str]]:
        """(video, reason, detail) of each input clip `evilm data shards` did not store (skipped.tsv)."""
        path = self.dir / SKIPPED
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
        rows = [line.split("\t") for line in lines]
        return [(unescape_key(f[1]), f[2], unescape_key(f[3])) for f in rows if len(f) >= 4]

    def read_members(self, sample: int) -> dict[str, bytes]:
        """The sample's members as {extension: bytes}, by one positioned read."""
        shard, offset, length = (int(v) for v in self.samples[sample])
        path = self.dir / self.names[shard]
        try:
            with open(path, "rb") as fh:
                buf = os.pread(fh.fileno(), length, offset)
        except OSError as err:
            raise VideoDecodeError(f"{path}#{sample}", "missing", str(err)) from None
        if len(buf) != length:
            raise VideoDecodeError(f"{path}#{sample}", "corrupt", f"shard truncated: {len(buf)} of {length} bytes")
        try:
            return _members(buf, f"{path} sample {sample}")
        except EvilmError as err:
            raise VideoDecodeError(f"{path}#{sample}", "corrupt", str(err)) from None

    def read(self, sample: int, which: list[int] | None = None) -> FrameSample:
        """The sample's candidate frames [F, H, W, 3] (only those at positions `which`, when given:
        a training step decodes T of the F JPEGs) and its JSON."""
        members = self.read_members(sample)
        where = f"{self.dir / self.names[int(self.samples[sample, 0])]} sample {sample}"
        try:
            info = json.loads(members["json"])
            which = range(len(info["frames"])) if which is None else which
            frames = [decode_frame(members[frame_member(j)], self.settings["size"], where, j) for j in which]
        except (KeyError, ValueError, OSError) as err:
            raise VideoDecodeError(where, "corrupt", f"unreadable member ({type(err).__name__}: {err})") from None
        return FrameSample(np.stack(frames), info)


def decode_frame(data: bytes, size: int, where: str, j: int) -> np.ndarray:
    """One stored JPEG frame as [size, size, 3] uint8. Its dimensions are read from its header
    first (Pillow's `open` reads nothing else): a frame of another size than the shard set's is
    corrupt and never decoded, so a decompression bomb costs no memory (docs/reliability.md,
    "Bounded reading")."""
    from PIL import Image  # the training loop's only image decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by size
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise VideoDecodeError(where, "corrupt", f"frame {j}: {err}") from None
    if image.size != (size, size):
        raise VideoDecodeError(where, "corrupt", f"frame {j} is {image.size[0]}x{image.size[1]} (its JPEG header), "
                               f"the shard set stores {size}x{size}; not decoded")
    frame = np.asarray(image.convert("RGB"))
    if frame.shape != (size, size, 3):
        raise VideoDecodeError(where, "corrupt", f"frame {j} has shape {frame.shape}, expected ({size}, {size}, 3)")
    return frame


def read_index(directory: Path) -> dict:
    path = directory / INDEX
    if not directory.is_dir():
        raise EvilmError(f"{directory}: no such shard directory; make it with `evilm data shards INPUT --out "
                         f"{directory}` (docs/data.md)")
    if not path.is_file():
        raise EvilmError(f"{directory} is not a shard set (no {INDEX}); make one with `evilm data shards INPUT "
                         f"--out {directory}`, or finish it with `evilm data shards --merge --out {directory}`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvilmError(f"{path}: damaged shard index ({err}); re-run `evilm data shards --merge --out "
                         f"{directory}`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise EvilmError(f"{path}: not an evilm shard index (format {index.get('format') if isinstance(index, dict) else None!r})")
    if index.get("version") != VERSION:
        raise EvilmError(f"{path}: shard format version {index.get('version')!r}; this evilm reads version {VERSION}")
    if not index.get("complete", False):
        raise EvilmError(f"{directory}: the shard set is unfinished ({index.get('done', 0)} of "
                         f"{len(index.get('shards', []))} shards); re-run the `evilm data shards` command, or "
                         f"`evilm data shards --merge --out {directory}` once every --shard i/n run has ended")
    return index
