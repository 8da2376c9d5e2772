"""The offline MVM label cache (docs/design.md, "Label cache"): its on-disk format and its
reader. Writing (creating, resuming, merging shards) is evilm_core/label/writer.py.

Layout of a cache directory (every array fixed-size and positional, row r = line r of keys.txt):

    meta.json     format_version, tokenizer_sha256, codebook_size, image_size, grid, ...
    keys.txt      the distinct video keys, one per line, in row order
    codes.u16     uint16 [N, V, F, g, g]   tokenizer codes (V variants: orig[, hflip])
    frames.i32    int32  [N, F]            the decoded frame index of each candidate
    nframes.i32   int32  [N]               frames in the video
    status.u8     uint8  [N]               0 pending, 1 ok, 2 missing, 3 corrupt

Crash safety: the data files are preallocated (sparse) before meta.json is written, and a
batch's rows are written and flushed before its status bytes, which are flushed after. A
SIGKILL at any point therefore leaves each row either complete or pending (status 0), and a
re-run only labels pending rows. Rows of skipped clips are zero-filled, so a resumed, sharded or
merged cache is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.fs import read_text, unescape_key

if TYPE_CHECKING:
    import torch

log = logging.getLogger("evilm.data")

FORMAT_VERSION = 1
META, KEYS = "meta.json", "keys.txt"
CODES, FRAMES, NFRAMES, STATUS = "codes.u16", "frames.i32", "nframes.i32", "status.u8"
PENDING, OK, MISSING, CORRUPT = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", OK: "ok", MISSING: "missing", CORRUPT: "corrupt"}
CANDIDATE_RULE = "segment-centres"
VARIANTS = ("orig", "hflip")
# meta fields that must agree between a resumed run and its cache, and between merged shards
IDENTITY = ("format_version", "tokenizer_sha256", "codebook_size", "image_size", "grid", "num_candidates",
            "candidate_rule", "variants", "dtype", "num_keys", "precision")
_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")
CHUNK_ROWS = 4096  # rows per chunk when scanning or copying whole arrays


class CacheKeyError(EvilmError, KeyError):
    """A key that is not in the cache, or whose row is not labelled."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def shapes(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    n, v, f, g = meta["num_keys"], len(meta["variants"]), meta["num_candidates"], meta["grid"]
    return {CODES: ((n, v, f, g, g), "<u2"), FRAMES: ((n, f), "<i4"), NFRAMES: ((n,), "<i4"), STATUS: ((n,), "u1")}


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EvilmError(f"{directory / META}: cannot read the label cache metadata ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise EvilmError(f"{directory}: label cache format version {meta.get('format_version')!r}, but this "
                         f"evilm reads version {FORMAT_VERSION}; re-run `evilm label` to rebuild it")
    return meta


def read_keys(directory: Path) -> list[str]:
    path = directory / KEYS
    if not path.is_file():
        raise EvilmError(f"{directory}: label cache has meta.json but no {KEYS}")
    return [unescape_key(k) for k in read_text(path, "label cache key list").split("\n")[:-1]]


def open_arrays(directory: Path, meta: dict, mode: str = "r") -> dict[str, np.memmap]:
    """Memory-map the data files, checking their sizes against meta."""
    arrays = {}
    for name, (shape, dtype) in shapes(meta).items():
        path = directory / name
        want = nbytes(shape, dtype)
        have = path.stat().st_size if path.is_file() else None
        if have != want:
            raise EvilmError(f"{path}: {'missing' if have is None else f'{have} bytes'}, expected {want} bytes "
                             f"for {meta['num_keys']} keys (truncated, or not part of this cache)")
        arrays[name] = np.memmap(path, dtype=dtype, mode=mode, shape=shape)
    return arrays


def status_counts(status: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(status), minlength=4)
    return {STATUS_NAMES[s]: int(counts[s]) for s in STATUS_NAMES}


def codebook_usage(codes: np.ndarray, status: np.ndarray, codebook_size: int, rows=None) -> float:
    """Share of codebook entries seen among the ok rows (variant 0, the unflipped frames)."""
    seen = np.zeros(codebook_size, dtype=bool)
    rows = np.arange(len(status)) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS]
        chunk = chunk[np.asarray(status[chunk]) == OK]
        if len(chunk):
            seen[np.unique(np.asarray(codes[chunk, 0]))] = True
    return float(seen.mean()) if codebook_size else 0.0


def choose_candidates(num_candidates: int, num_frames: int, mode: str = "train", rng=None) -> list[int]:
    """Which cached candidates give the T frames of a clip: T groups of F/T consecutive
    candidates; train takes a random one per group, eval the middle one ((F/T)//2)."""
    f, t = int(num_candidates), int(num_frames)
    if t < 1 or f % t:
        raise EvilmError(f"the label cache has {f} candidate frames per video, which cannot be split into "
                         f"{t} equal groups (num_frames must divide {f})")
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    group = f // t
    if mode == "eval":
        return [g * group + group // 2 for g in range(t)]
    rng = rng if rng is not None else np.random.default_rng()
    return [g * group + int(rng.integers(group)) for g in range(t)]


def key_hashes(keys: list[str]) -> np.ndarray:
    """[N] uint64: the first 8 bytes of each key's blake2b digest."""
    digest = hashlib.blake2b
    raw = b"".join(digest(k.encode("utf-8", "surrogateescape"), digest_size=8).digest() for k in keys)
    return np.frombuffer(raw, dtype="<u8")


class KeyRows:
    """key -> row without a Python object per key: sorted 64-bit key hashes and their rows (16
    bytes per key; a dict of 2.5M keys is ~300 MB). What DataLoader workers receive instead of the
    key list (docs/data.md, "Memory at scale"). Built only when no two keys share a hash."""

    def __init__(self, keys: list[str]):
        hashes = key_hashes(keys)
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]
        self.unique = bool(len(self.hashes) < 2 or (np.diff(self.hashes) != 0).all())

    def row(self, key: str) -> int | None:
        h = key_hashes([key])[0]
        i = int(np.searchsorted(self.hashes, h))
        return int(self.order[i]) if i < len(self.hashes) and self.hashes[i] == h else None

    def all_rows(self, key: str) -> list[int]:
        """Every row whose key hashes as `key` does, in row order (for key lists that repeat a key)."""
        h = key_hashes([key])[0]
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        return sorted(int(r) for r in self.order[lo:hi])


class LabelCache:
    """Read-only access to a label cache. Picklable: memory maps are reopened lazily in each
    process (a pickled np.memmap would copy the whole array), and the key list travels as
    `KeyRows` hashes (a key unknown to the cache can then only be told apart from a known one by
    its 64-bit hash: with 2.5M keys a false match has a chance of ~1e-7 per lookup)."""

    def __init__(self, directory: Path, meta: dict, keys: list[str] | None):
        self.dir, self.meta, self.keys = directory, meta, keys
        self._index = {k: i for i, k in enumerate(keys)} if keys is not None else None
        self._rows: KeyRows | None = None
        self._arrays: dict[str, np.memmap] | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike) -> LabelCache:
        d = Path(directory)
        if not (d / META).is_file():
            raise EvilmError(_not_a_cache(d))
        cache = cls(d, read_meta(d), read_keys(d))
        if len(cache.keys) != cache.meta["num_keys"]:
            raise EvilmError(f"{d / KEYS} has {len(cache.keys)} keys, meta.json says {cache.meta['num_keys']}")
        cache.arrays  # check sizes now, not at the first read
        pending = cache.counts()["pending"]
        if pending:
            log.warning("label cache %s is incomplete: %d of %d videos pending; re-run `evilm label` to finish",
                        d, pending, len(cache))
        return cache

    @property
    def arrays(self) -> dict[str, np.memmap]:
        if self._arrays is None:
            self._arrays = open_arrays(self.dir, self.meta, mode="r")
        return self._arrays

    def __getstate__(self):
        if self._rows is None and self.keys is not None:
            self._rows = KeyRows(self.keys)
        if not self._rows.unique:  # two keys share a hash: keep the exact dict (never seen in practice)
            return {**self.__dict__, "_arrays": None}
        return {**self.__dict__, "_arrays": None, "keys": None, "_index": None}

    def __len__(self) -> int:
        return int(self.meta["num_keys"])

    def __contains__(self, key: str) -> bool:
        return self._find(key) is not None

    def _find(self, key: str) -> int | None:
        if self._index is not None:
            return self._index.get(key)
        return self._rows.row(key)

    def row(self, key: str) -> int:
        r = self._find(key)
        if r is None:
            raise CacheKeyError(f"video {key!r} is not in the label cache {self.dir}")
        return r

    def status(self, key: str) -> str:
        """'ok', 'missing', 'corrupt' or 'pending'."""
        return STATUS_NAMES[int(self.arrays[STATUS][self.row(key)])]

    def counts(self) -> dict[str, int]:
        return status_counts(self.arrays[STATUS])

    def _labelled_row(self, key: str) -> int:
        r = self.row(key)
        state = int(self.arrays[STATUS][r])
        if state != OK:
            raise CacheKeyError(f"video {key!r} has no labels in {self.dir}: it is {STATUS_NAMES[state]}")
        return r

    def entry(self, key: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes [V, F, g, g] uint16, candidate frame indices [F] int32, frames in the video)."""
        r = self._labelled_row(key)
        return (np.array(self.arrays[CODES][r]), np.array(self.arrays[FRAMES][r]), int(self.arrays[NFRAMES][r]))

    def candidate_frames(self, key: str) -> np.ndarray:
        """The decoded frame index of each of the video's F candidates [F] int32 (reads that row only)."""
        r = self._labelled_row(key)
        return np.array(self.arrays[FRAMES][r])

    def targets(self, key: str, candidate_ids: list[int], flipped: bool = False) -> torch.Tensor:
        """MVM targets [T, g, g] long: the codes of the chosen candidates, of the flipped frames
        (the tokenizer's codes of the mirrored pixels) when `flipped`."""
        import torch  # the cache itself is NumPy: a process that only looks keys up never loads torch

        if flipped and "hflip" not in self.meta["variants"]:
            raise EvilmError(f"label cache {self.dir} has no codes of flipped frames (made without --flips), "
                             "but flipped targets were asked for; re-run `evilm label --flips` or turn off hflip")
        codes, _, _ = self.entry(key)
        ids = list(candidate_ids)
        bad = [c for c in ids if not 0 <= c < self.meta["num_candidates"]]
        if bad:
            raise EvilmError(f"candidate ids {bad} out of range: the cache has {self.meta['num_candidates']} per video")
        variant = self.meta["variants"].index("hflip") if flipped else 0
        return torch.from_numpy(codes[variant, ids].astype(np.int64))

    def validate(self, tokenizer_sha256: str | None = None, codebook_size: int | None = None,
                 image_size: int | None = None, grid: int | None = None, num_candidates: int | None = None,
                 need_flips: bool = False) -> None:
        """Raise if the cache was not made for the caller's tokenizer/recipe (each given value must match)."""
        wanted = {"tokenizer_sha256": tokenizer_sha256, "codebook_size": codebook_size, "image_size": image_size,
                  "grid": grid, "num_candidates": num_candidates}
        diffs = [f"{k}: cache has {self.meta.get(k)!r}, expected {v!r}" for k, v in wanted.items()
                 if v is not None and self.meta.get(k) != v]
        if need_flips and "hflip" not in self.meta["variants"]:
            diffs.append(f"variants: cache has {self.meta['variants']!r}, expected ['orig', 'hflip'] "
                         "(flip augmentation needs codes of flipped frames: label with --flips)")
        if diffs:
            raise EvilmError(f"label cache {self.dir} does not match this run: " + "; ".join(diffs)
                             + ". Re-run `evilm label` with the matching tokenizer/settings")

    def usage(self) -> float:
        return codebook_usage(self.arrays[CODES], self.arrays[STATUS], self.meta["codebook_size"])


def find_shards(directory: Path) -> list[tuple[int, int, Path]]:
    found = []
    if directory.is_dir():
        for d in sorted(directory.iterdir()):
            m = _SHARD_DIR.match(d.name)
            if m and d.is_dir():
                found.append((int(m.group(1)), int(m.group(2)), d))
    return found


def _not_a_cache(d: Path) -> str:
    if not d.exists():
        return f"label cache {d} does not exist; make it with `evilm label --out {d}`"
    if find_shards(d):
        return (f"{d} holds only shard caches ({', '.join(p.name for _, _, p in find_shards(d))}); "
                f"combine them with `evilm label --merge --out {d}`")
    return f"{d} is not a label cache (no {META}); make it with `evilm label --out {d}`"

