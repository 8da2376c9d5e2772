"""Writing a label cache (docs/design.md, "Label cache"): creating or resuming the preallocated
arrays, crash-safe row writes, and merging shard caches into one. The layout and the reader
are in evilm_core/data/label_cache.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from evilm_core.data.label_cache import (
    CANDIDATE_RULE,
    CHUNK_ROWS,
    CODES,
    FORMAT_VERSION,
    FRAMES,
    IDENTITY,
    KEYS,
    META,
    NFRAMES,
    OK,
    PENDING,
    STATUS,
    VARIANTS,
    codebook_usage,
    find_shards,
    nbytes,
    open_arrays,
    read_keys,
    read_meta,
    shapes,
    status_counts,
)
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, clean_stale_temps, disk_errors, escape_key, process_lock

log = logging.getLogger("evilm.label")
LOCK = ".label.lock"  # held by the one process writing a cache directory (fs.process_lock)


def shard_dir_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def make_meta(tok_info: dict, num_candidates: int, flips: bool, num_keys: int,
              shard: tuple[int, int] | None, source: dict | None, precision: str = "fp32",
              decoder: str = "pyav") -> dict:
    """The meta.json record of a new cache."""
    if tok_info["codebook_size"] > np.iinfo(np.uint16).max + 1:
        raise EvilmError(f"codebook size {tok_info['codebook_size']} does not fit the cache's uint16 codes")
    if num_candidates < 1:
        raise EvilmError(f"--candidates must be at least 1, got {num_candidates}")
    return {
        "format_version": FORMAT_VERSION, "tokenizer_sha256": tok_info["sha256"],
        "tokenizer_dir": str(tok_info["dir"]), "codebook_size": int(tok_info["codebook_size"]),
        "image_size": int(tok_info["image_size"]), "grid": int(tok_info["grid"]),
        "num_candidates": int(num_candidates), "candidate_rule": CANDIDATE_RULE,
        "variants": list(VARIANTS[: 2 if flips else 1]), "dtype": "uint16", "num_keys": int(num_keys),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "precision": precision,  # fp32 | bf16: the tokenizer's arithmetic (bf16 changes some codes)
        "decoders": [decoder],  # the backends that decoded the rows, first used first (not identity: see docs)
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source or {},
    }


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_text(directory / META, json.dumps(meta, indent=2) + "\n")


def allocate(directory: Path, meta: dict, keys: list[str]) -> None:
    """Create keys.txt (keys escaped: one line each whatever the file name) and the zero-filled
    (zero = pending) data files; not meta.json. The blocks are reserved now (`posix_fallocate`):
    rows are written through memory maps, and a full disk under a map is a SIGBUS, not an error."""
    bad = next((k for k in keys if not k), None)
    if bad is not None:
        raise EvilmError("a video key is empty; every video needs a path")
    if len(keys) != meta["num_keys"]:
        raise ValueError("meta num_keys differs from the key list")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / KEYS, (escape_key(k) + "\n" for k in keys))
    sizes = {name: nbytes(shape, dtype) for name, (shape, dtype) in shapes(meta).items()}
    for name, size in sizes.items():
        with disk_errors(directory / name, needed=sum(sizes.values())), open(directory / name, "wb") as f:
            f.truncate(size)
            if size and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as err:  # a file system without it: stay sparse
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
            os.fsync(f.fileno())


def mismatch(a: dict, b: dict, fields, a_name: str = "cache", b_name: str = "this run") -> list[str]:
    return [f"{k}: {a_name} has {a.get(k)!r}, {b_name} has {b.get(k)!r}" for k in fields if a.get(k) != b.get(k)]


def key_difference(old: list[str], new: list[str]) -> str:
    if len(old) != len(new):
        return f"the cache has {len(old)} keys, this run has {len(new)}"
    row = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    return f"row {row} is {old[row]!r} in the cache but {new[row]!r} in this run"


class CacheWriter:
    """Opens (creating or resuming) a cache directory for labelling and writes batches of rows."""

    def __init__(self, directory: str | Path, meta: dict, keys: list[str]):
        self.dir = Path(directory)
        self.meta = meta
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = ExitStack()  # one writer per cache directory, for as long as it is open
        if not self._lock.enter_context(process_lock(self.dir / LOCK)):
            raise EvilmError(f"another `evilm label` is writing {self.dir} right now; wait for it to finish (a re-run "
                             "then labels only what is left), or give this run its own --out or --shard i/n")
        clean_stale_temps(self.dir)  # what a killed labeller of this host left
        try:
            self._open(meta, keys)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, meta: dict, keys: list[str]) -> None:
        if (self.dir / META).is_file():
            self._check_resume(meta, keys)
            self.resumed = True
        else:  # new, or a crash before meta.json was written: (re)allocate everything
            allocate(self.dir, meta, keys)
            write_meta(self.dir, meta)
            self.resumed = False
        self.arrays = open_arrays(self.dir, self.meta, mode="r+")

    def _check_resume(self, meta: dict, keys: list[str]) -> None:
        old = read_meta(self.dir)
        diffs = mismatch(old, meta, IDENTITY + ("shard",))
        if diffs:
            raise EvilmError(f"{self.dir} holds a label cache made with different settings ("
                             + "; ".join(diffs) + "); use another --out or delete it to start over"
                             + (f", or label with --precision {old['precision']} as it was made (codes of two "
                                "precisions are not mixed in one cache)" if old["precision"] != meta["precision"] else ""))
        old_keys = read_keys(self.dir)
        if old_keys != keys:
            raise EvilmError(f"{self.dir} holds a label cache of different videos ({key_difference(old_keys, keys)}); "
                             "use another --out or delete it to start over")
        self.meta = old

    def record_decoder(self, decoder: str) -> None:
        """A resumed cache labelled on by another backend: allowed (the pixels differ by about one
        level of 255, a few codes may change; docs/data.md, "Decoders"), logged and recorded."""
        if decoder in self.meta["decoders"]:
            return
        log.warning("label: %s was labelled with decoded frames of %s; this run decodes with %s (recorded in "
                    "meta.json `decoders`; pass --decoder %s to keep one backend)", self.dir,
                    ", ".join(self.meta["decoders"]), decoder, self.meta["decoders"][0])
        self.meta = {**self.meta, "decoders": [*self.meta["decoders"], decoder]}
        write_meta(self.dir, self.meta)

    @property
    def status(self) -> np.memmap:
        return self.arrays[STATUS]

    def pending(self, rows: np.ndarray) -> list[int]:
        """The rows among `rows` not labelled yet (what a resumed run still has to do)."""
        return rows[np.asarray(self.status[rows]) == PENDING].tolist()

    def write_batch(self, ok_rows: list[int], codes: np.ndarray | None, frames: np.ndarray | None,
                    nframes: np.ndarray | None, skipped: list[tuple[int, int]]) -> None:
        """Write labelled rows (codes [k, V, F, g, g], frames [k, F], nframes [k]) and skipped rows
        ((row, status) pairs: zero-filled, so a resumed cache is byte-identical) in one crash-safe write."""
        k, rows = len(ok_rows), list(ok_rows) + [row for row, _ in skipped]
        all_codes = np.zeros((len(rows), *self.arrays[CODES].shape[1:]), np.uint16)
        all_frames = np.zeros((len(rows), self.arrays[FRAMES].shape[1]), np.int32)
        all_nframes = np.zeros(len(rows), np.int32)
        status = np.array([OK] * k + [code for _, code in skipped], np.uint8)
        if k:
            all_codes[:k], all_frames[:k], all_nframes[:k] = codes, frames, nframes
        self.write(rows, all_codes, all_frames, all_nframes, status)

    def summary(self, rows: np.ndarray) -> tuple[dict[str, int], float]:
        """(status counts, codebook usage) over `rows` (this run's share)."""
        counts = status_counts(self.status[rows])
        return counts, codebook_usage(self.arrays[CODES], self.status, self.meta["codebook_size"], rows)

    def write(self, rows: list[int], codes: np.ndarray, frames: np.ndarray, nframes: np.ndarray,
              status: np.ndarray) -> None:
        """Write complete rows, flush, then their status bytes, flush: a crash never shows a
        status for a row whose data is not on disk."""
        idx = np.asarray(rows, dtype=np.int64)
        for name, values in ((CODES, codes), (FRAMES, frames), (NFRAMES, nframes)):
            self.arrays[name][idx] = values
            self.arrays[name].flush()  # msync: the rows are on disk before any status says so
        self.arrays[STATUS][idx] = status
        self.arrays[STATUS].flush()

    def close(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}
        self._lock.close()


def _shard_dirs(out: Path) -> tuple[int, list[Path]]:
    """All n shard directories of `out`, in shard order; errors name what is missing."""
    shards = find_shards(out)
    if not shards:
        raise EvilmError(f"no shard caches (shard-i-of-n/) in {out}; make them with "
                         f"`evilm label ... --shard i/n --out {out}`")
    counts = sorted({n for _, n, _ in shards})
    if len(counts) > 1:
        raise EvilmError(f"{out} mixes shard counts {counts} ({', '.join(p.name for _, _, p in shards)}); "
                         "keep the shard directories of one --shard i/n split only")
    n = counts[0]
    present = {i: p for i, _, p in shards}
    for i in range(n):
        if i not in present or not (present[i] / META).is_file():
            raise EvilmError(f"shard {i}/{n} ({out / shard_dir_name(i, n)}) is missing or was never started; "
                             f"run `evilm label ... --shard {i}/{n} --out {out}` first")
    return n, [present[i] for i in range(n)]


def _check_shard_rows(i: int, n: int, path: Path, status: np.ndarray, out: Path) -> None:
    own = np.asarray(status[i::n])
    pending = int((own == PENDING).sum())
    if pending:
        raise EvilmError(f"shard {i}/{n} ({path}) is incomplete: {pending} of {len(own)} videos pending; "
                         f"re-run `evilm label ... --shard {i}/{n} --out {out}` to finish it, then merge")
    foreign = np.asarray(status) != PENDING
    foreign[i::n] = False
    if foreign.any():
        row = int(np.flatnonzero(foreign)[0])
        raise EvilmError(f"shard {i}/{n} ({path}) has labels for rows outside its share (e.g. row {row}, which "
                         f"belongs to shard {row % n}/{n}): its files were not made by `--shard {i}/{n}`")


def merge_shards(out: str | os.PathLike, progress=None) -> dict:
    """Combine OUT/shard-i-of-n/ (i = 0..n-1) into one cache in OUT, byte-identical to an
    unsharded run. Every shard must be complete and agree on meta and keys."""
    start = time.perf_counter()
    out = Path(out)
    n, dirs = _shard_dirs(out)
    metas = [{"precision": "fp32", **read_meta(d)} for d in dirs]  # no precision: made before the switch, fp32
    keys = read_keys(dirs[0])
    for i in range(1, n):
        diffs = mismatch(metas[0], metas[i], IDENTITY, f"shard 0/{n}", f"shard {i}/{n}")
        if diffs:
            raise EvilmError(f"shards of {out} were made with different settings: " + "; ".join(diffs))
        if read_keys(dirs[i]) != keys:
            raise EvilmError(f"shard {i}/{n} ({dirs[i]}) lists different videos than shard 0/{n} "
                             f"({key_difference(keys, read_keys(dirs[i]))})")
    sources = [open_arrays(d, m) for d, m in zip(dirs, metas)]
    for i, (d, arr) in enumerate(zip(dirs, sources)):
        _check_shard_rows(i, n, d, arr[STATUS], out)
    decoders = list(dict.fromkeys(d for m in metas for d in m["decoders"]))  # not identity: all
    meta = {**metas[0], "shard": None, "merged_from": n, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "decoders": decoders}
    (out / META).unlink(missing_ok=True)  # the directory is not a valid cache until the merge ends
    allocate(out, meta, keys)
    dest = open_arrays(out, meta, mode="r+")
    total, done = len(keys), 0
    for i, src in enumerate(sources):
        for start_row in range(i, total, CHUNK_ROWS * n):
            rows = np.arange(start_row, min(total, start_row + CHUNK_ROWS * n), n)
            for name in (CODES, FRAMES, NFRAMES, STATUS):
                dest[name][rows] = src[name][rows]
            done += len(rows)
            if progress:
                progress(done, total)
    for arr in dest.values():
        arr.flush()
    write_meta(out, meta)
    counts = status_counts(dest[STATUS])
    return {"out": str(out), "videos": total, "labelled": counts["ok"], "skipped": counts["missing"] + counts["corrupt"],
            "missing": counts["missing"], "corrupt": counts["corrupt"], "newly_labelled": 0, "merged_shards": n,
            "codebook_usage": round(codebook_usage(dest[CODES], dest[STATUS], meta["codebook_size"]), 6),
            "seconds": round(time.perf_counter() - start, 3)}
