"""`evilm label`: run the tokenizer once over every video and fill the label cache (DESIGN 5).

Decoding runs in DataLoader workers (spawned: decord and forked CUDA state do not mix) while
the tokenizer runs in this process. Each clip's codes depend only on its own frames: the
tokenizer runs in eval mode, in fp32 with TF32 off, so batch composition, sharding and resuming
do not change a byte of the cache. Shards (`--shard i/n`) label rows with index % n == i into
OUT/shard-i-of-n/; `merge_shards` combines them into OUT.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from evilm_core.data.dataset import video_root
from evilm_core.data.formats import VIDEO_EXTS
from evilm_core.data.manifest import read_manifest, resolve_video
from evilm_core.data.transforms import normalize
from evilm_core.data.video import read_frames, segment_indices
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.label.cache import (CODES, CORRUPT, FRAMES, META, MISSING, NFRAMES, OK, PENDING, STATUS, IDENTITY,
                                    CacheWriter, CHUNK_ROWS, allocate, codebook_usage, find_shards, key_difference,
                                    make_meta, mismatch, open_arrays, parse_shard, read_keys, read_meta,
                                    shard_dir_name, status_counts, write_meta)

log = logging.getLogger("evilm.label")
Progress = Callable[..., None]
_SKIP_CODES = {"missing": MISSING}  # every other decode failure is recorded as corrupt
_LOGGED_SKIPS = 10  # skipped clips logged one by one at warning level; the rest at debug


def collect_videos(videos: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                   format: str = "auto", root: str | os.PathLike | None = None) -> tuple[list[str], list[str], dict]:
    """(keys, paths, source): the distinct videos to label, in a stable order.

    --videos DIR: every video file under DIR (sorted; key = path relative to DIR).
    --manifest FILE: the manifest's distinct `video` strings in order (key = that string),
    resolved against --root (default: the manifest's directory).
    """
    if (videos is None) == (manifest is None):
        raise EvilmError("give exactly one of --videos DIR or --manifest FILE")
    if videos is not None:
        if root is not None:
            raise EvilmError("--root applies to --manifest only; with --videos DIR the keys are relative to DIR")
        base = Path(videos)
        if not base.is_dir():
            raise EvilmError(f"--videos {base}: not a directory")
        keys = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                      if p.suffix.lower() in VIDEO_EXTS and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(base).parts))
        if not keys:
            raise EvilmError(f"no video files ({', '.join(VIDEO_EXTS)}) under {base}")
        return keys, [str(base / k) for k in keys], {"videos": str(base.absolute())}
    records = read_manifest(manifest, format)
    base = video_root(str(root) if root is not None else None, manifest)
    keys = list(dict.fromkeys(r.video for r in records))
    source = {"manifest": str(Path(manifest).absolute()), "format": format, "root": base}
    return keys, [str(resolve_video(k, base)) for k in keys], source


class CandidateFrames(Dataset):
    """Item i: the F candidate frames of one video (segment centres), normalised, or a skip marker."""

    def __init__(self, rows: list[int], paths: list[str], num_candidates: int, image_size: int):
        self.rows, self.paths = rows, paths
        self.num_candidates, self.image_size = num_candidates, image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        f = self.num_candidates
        try:
            clip = read_frames(self.paths[i], lambda n: segment_indices(n, f, "eval"), size=self.image_size)
        except VideoDecodeError as err:
            return {"row": self.rows[i], "skip": (self.paths[i], err.reason, err.detail)}
        return {"row": self.rows[i], "pixels": normalize(clip.frames),
                "frames": np.asarray(clip.indices, dtype=np.int32), "nframes": clip.num_video_frames}


def collate_candidates(items: list[dict]) -> dict:
    ok = [it for it in items if "skip" not in it]
    return {"rows": [it["row"] for it in ok], "skipped": [(it["row"], *it["skip"]) for it in items if "skip" in it],
            "pixels": torch.stack([it["pixels"] for it in ok]) if ok else None,
            "frames": np.stack([it["frames"] for it in ok]) if ok else None,
            "nframes": np.asarray([it["nframes"] for it in ok], dtype=np.int32)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers: no intra-op thread pools fighting the tokenizer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EvilmError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvilmError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


@contextmanager
def exact_fp32(device: torch.device, num_workers: int):
    """Full fp32 matmuls/convolutions (no TF32), so codes do not depend on kernel choice. On CPU
    the tokenizer gets the cores the decoding workers leave (oversubscribed intra-op threads
    make small models many times slower)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if device.type == "cpu" and num_workers > 0:
        torch.set_num_threads(max(1, min(saved[2], (os.cpu_count() or 1) - num_workers)))
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])


def encode_variants(model, pixels: torch.Tensor, flips: bool) -> np.ndarray:
    """pixels [B, F, 3, H, W] -> codes [B, V, F, g, g] uint16 (V = 2 with flips: the tokenizer is
    run on the mirrored pixels, it is not flip-equivariant)."""
    variants = [model.encode(pixels)]
    if flips:
        variants.append(model.encode(pixels.flip(-1)))
    return torch.stack(variants, dim=1).cpu().numpy().astype(np.uint16)


def _write_batch(writer: CacheWriter, batch: dict, codes: np.ndarray | None) -> None:
    """Write the batch's ok rows and its zero-filled skipped rows in one crash-safe write."""
    k, rows = len(batch["rows"]), batch["rows"] + [s[0] for s in batch["skipped"]]
    all_codes = np.zeros((len(rows), *writer.arrays[CODES].shape[1:]), np.uint16)
    frames = np.zeros((len(rows), writer.arrays[FRAMES].shape[1]), np.int32)
    nframes = np.zeros(len(rows), np.int32)
    status = np.array([OK] * k + [_SKIP_CODES.get(s[2], CORRUPT) for s in batch["skipped"]], np.uint8)
    if k:
        all_codes[:k], frames[:k], nframes[:k] = codes, batch["frames"], batch["nframes"]
    writer.write(rows, all_codes, frames, nframes, status)


def _log_skips(skipped: list[tuple], seen_before: int) -> None:
    for j, (_, path, reason, detail) in enumerate(skipped):
        level = logging.WARNING if seen_before + j < _LOGGED_SKIPS else logging.DEBUG
        log.log(level, "skipped %s: %s%s", path, reason, f" ({detail})" if detail else "")


def _loader(rows: list[int], paths: list[str], meta: dict, batch_size: int, num_workers: int, pin: bool):
    ds = CandidateFrames(rows, [paths[r] for r in rows], meta["num_candidates"], meta["image_size"])
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_candidates, pin_memory=pin, worker_init_fn=_worker_init,
                      multiprocessing_context="spawn" if num_workers > 0 else None)


def label_videos(keys: list[str], paths: list[str], tokenizer: str | os.PathLike, out: str | os.PathLike, *,
                 num_candidates: int = 8, flips: bool = False, batch_size: int = 16, num_workers: int = 2,
                 device: str = "auto", shard: str | tuple[int, int] | None = None, source: dict | None = None,
                 progress: Progress | None = None) -> dict:
    """Label every pending row of this run's share of `keys`; returns the summary
    {out, videos, labelled, skipped, missing, corrupt, newly_labelled, codebook_usage, seconds, ...}."""
    from evilm_core.tokenizer.train import load_tokenizer

    start = time.perf_counter()
    if batch_size < 1 or num_workers < 0:
        raise EvilmError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {num_workers})")
    shard = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    dev = resolve_device(device)
    model, info = load_tokenizer(tokenizer, dev)
    model = model.float().eval()
    out_dir = Path(out) / shard_dir_name(*shard) if shard else Path(out)
    writer = CacheWriter(out_dir, make_meta(info, num_candidates, flips, len(keys), shard, source), keys)
    i, n = shard or (0, 1)
    share = np.arange(i, len(keys), n)
    todo = share[np.asarray(writer.status[share]) == PENDING].tolist()
    log.info("label: %d videos in %s%s, %d to label (%d done before), tokenizer %s on %s", len(share), out_dir,
             f" (shard {i}/{n} of {len(keys)})" if shard else "", len(todo), len(share) - len(todo), info["dir"], dev)
    done, new_ok, new_skipped, t0 = 0, 0, 0, time.perf_counter()
    with exact_fp32(dev, num_workers):
        for batch in _loader(todo, paths, writer.meta, batch_size, num_workers, dev.type == "cuda"):
            codes = None
            if batch["pixels"] is not None:
                codes = encode_variants(model, batch["pixels"].to(dev, non_blocking=True), flips)
            _write_batch(writer, batch, codes)
            _log_skips(batch["skipped"], new_skipped)
            new_ok, new_skipped = new_ok + len(batch["rows"]), new_skipped + len(batch["skipped"])
            done = new_ok + new_skipped
            if progress:
                progress(done, len(todo), skipped=new_skipped, videos_per_s=done / max(1e-9, time.perf_counter() - t0))
    loop_s = time.perf_counter() - t0
    counts = status_counts(writer.status[share])
    usage = codebook_usage(writer.arrays[CODES], writer.status, writer.meta["codebook_size"], share)
    writer.close()
    if counts["missing"] + counts["corrupt"]:
        log.warning("label: %d videos could not be decoded (%d missing, %d corrupt); pretraining skips them",
                    counts["missing"] + counts["corrupt"], counts["missing"], counts["corrupt"])
    return {"out": str(out_dir), "videos": len(share), "labelled": counts["ok"],
            "skipped": counts["missing"] + counts["corrupt"], "missing": counts["missing"], "corrupt": counts["corrupt"],
            "pending": counts["pending"], "newly_labelled": new_ok, "codebook_usage": round(usage, 6),
            "seconds": round(time.perf_counter() - start, 3), "videos_per_second": round(done / max(loop_s, 1e-9), 2),
            "shard": writer.meta["shard"], "total_keys": len(keys)}


def run_label(videos=None, manifest=None, format: str = "auto", root=None, **kwargs) -> dict:
    """collect_videos + label_videos: what `evilm label` does."""
    keys, paths, source = collect_videos(videos, manifest, format, root)
    return label_videos(keys, paths, source=source, **kwargs)


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
    metas = [read_meta(d) for d in dirs]
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
    meta = {**metas[0], "shard": None, "merged_from": n, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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
