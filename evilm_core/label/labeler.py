"""`evilm label`: run the tokenizer once over every video and fill the label cache (docs/design.md, "Label cache").

Decoding runs in DataLoader workers (spawned: decord and forked CUDA state do not mix) while
the tokenizer runs in this process. Each clip's codes depend only on its own frames: the
tokenizer runs in eval mode, in fp32 with TF32 off (or bf16 autocast with --precision bf16, which
the cache records and never mixes), so batch composition, sharding and resuming do not change a
byte of the cache. Shards (`--shard i/n`) label rows with index % n == i into
OUT/shard-i-of-n/; `merge_shards` (writer.py) combines them into OUT.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evilm_core.data.clips import collect
from evilm_core.data.label_cache import CORRUPT, MISSING
from evilm_core.data.shards.layout import ShardSet
from evilm_core.data.transforms import normalize
from evilm_core.data.video.read import MAX_VIDEO_BYTES, TarMember, read_frames, segment_indices
from evilm_core.data.work_split import WorkSplit
from evilm_core.engine.runtime import environment, eval_loader
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.label.writer import CacheWriter, make_meta, shard_dir_name
from evilm_core.models.tokenizer import load_tokenizer
from evilm_core.progress import Progress
from evilm_core.settings import RunSettings, autocast, label_plan, resolve_settings, set_torch_threads

log = logging.getLogger("evilm.label")
MIN_CODEBOOK_USAGE = 0.10  # --min-codebook-usage: below it, label warns that the tokenizer's codes say little
_SKIP_CODES = {"missing": MISSING}  # every other decode failure is recorded as corrupt
_LOGGED_SKIPS = 10  # skipped clips logged one by one at warning level; the rest at debug


class CandidateFrames(Dataset):
    """Item i: the F candidate frames of one video (segment centres), normalised, or a skip marker.
    From a shard set, the frames it stores (row r = sample r): the very pixels training reads."""

    def __init__(self, rows: list[int], paths: list[str | TarMember] | None, num_candidates: int, image_size: int,
                 shards: ShardSet | None = None, decoder: str | None = "pyav", max_bytes: int = MAX_VIDEO_BYTES):
        self.rows, self.paths, self.shards = rows, paths, shards
        self.num_candidates, self.image_size, self.decoder = num_candidates, image_size, decoder
        self.max_bytes = max_bytes  # data.max_video_bytes: a bigger video is skipped unread

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, i: int) -> tuple[np.ndarray, list[int], int]:
        if self.shards is not None:
            sample = self.shards.read(self.rows[i])
            return sample.frames, sample.info["frames"], int(sample.info["num_video_frames"])
        f = self.num_candidates
        clip = read_frames(self.paths[i], lambda n: segment_indices(n, f, "eval"), self.image_size, self.decoder,
                           self.max_bytes)
        return clip.frames, clip.indices, clip.num_video_frames

    def __getitem__(self, i: int) -> dict:
        try:
            frames, indices, total = self._decode(i)
        except VideoDecodeError as err:
            where = str(self.paths[i]) if self.paths is not None else f"{self.shards.dir} sample {self.rows[i]}"
            return {"row": self.rows[i], "skip": (where, err.reason, err.detail)}
        return {"row": self.rows[i], "pixels": normalize(frames), "frames": np.asarray(indices, dtype=np.int32),
                "nframes": total}


def collate_candidates(items: list[dict]) -> dict:
    ok = [it for it in items if "skip" not in it]
    return {"rows": [it["row"] for it in ok], "skipped": [(it["row"], *it["skip"]) for it in items if "skip" in it],
            "pixels": torch.stack([it["pixels"] for it in ok]) if ok else None,
            "frames": np.stack([it["frames"] for it in ok]) if ok else None,
            "nframes": np.asarray([it["nframes"] for it in ok], dtype=np.int32)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers: no intra-op thread pools fighting the tokenizer


@contextmanager
def label_arithmetic(settings: RunSettings, num_workers: int):
    """fp32: full fp32 matmuls/convolutions (no TF32), so codes do not depend on kernel choice;
    bf16: autocast (faster where native; some codes differ from fp32, so the cache records it).
    Threads: settings.label_plan (the tokenizer gets the cores the decoding workers leave)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    set_torch_threads(label_plan(settings, num_workers).main_threads)
    try:
        with torch.inference_mode(), autocast(settings.precision, settings.device):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        set_torch_threads(settings.threads)


def encode_variants(model, pixels: torch.Tensor, flips: bool) -> np.ndarray:
    """pixels [B, F, 3, H, W] -> codes [B, V, F, g, g] uint16 (V = 2 with flips: the tokenizer is
    run on the mirrored pixels, it is not flip-equivariant)."""
    variants = [model.encode(pixels)]
    if flips:
        variants.append(model.encode(pixels.flip(-1)))
    return torch.stack(variants, dim=1).cpu().numpy().astype(np.uint16)


def _write_batch(writer: CacheWriter, batch: dict, codes: np.ndarray | None) -> None:
    skipped = [(s[0], _SKIP_CODES.get(s[2], CORRUPT)) for s in batch["skipped"]]
    writer.write_batch(batch["rows"], codes, batch["frames"], batch["nframes"], skipped)


def _log_skips(skipped: list[tuple], seen_before: int) -> None:
    for j, (_, path, reason, detail) in enumerate(skipped):
        level = logging.WARNING if seen_before + j < _LOGGED_SKIPS else logging.DEBUG
        log.log(level, "skipped %s: %s%s", path, reason, f" ({detail})" if detail else "")


def _loader(rows: list[int], paths: list[str] | None, meta: dict, batch_size: int, num_workers: int, pin: bool,
            shards: ShardSet | None, decoder: str | None, max_bytes: int):
    ds = CandidateFrames(rows, [paths[r] for r in rows] if paths is not None else None, meta["num_candidates"],
                         meta["image_size"], shards, decoder, max_bytes)
    return eval_loader(ds, batch_size, num_workers, collate_candidates, pin_memory=pin, worker_init_fn=_worker_init)


def label_videos(keys: list[str], paths: list[str], tokenizer: str | os.PathLike, out: str | os.PathLike,
                 settings: RunSettings, *, num_candidates: int = 8, flips: bool = False, batch_size: int = 16,
                 num_workers: int = 2, split: WorkSplit | None = None, source: dict | None = None,
                 shards: ShardSet | None = None, progress: Progress | None = None,
                 max_video_bytes: int = MAX_VIDEO_BYTES, min_codebook_usage: float = MIN_CODEBOOK_USAGE) -> dict:
    """Label every pending row of this run's share of `keys` with the resolved `settings`; returns the
    summary {out, videos, labelled, skipped, missing, corrupt, newly_labelled, codebook_usage, seconds, ...}.
    A codebook usage below `min_codebook_usage` is warned about (and flagged in the summary)."""
    start = time.perf_counter()
    if batch_size < 1 or num_workers < 0:
        raise EvilmError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {num_workers})")
    dev, precision = settings.torch_device, settings.precision
    model, info = load_tokenizer(tokenizer, dev)
    model = model.float().eval()
    if shards is not None:
        _check_shards(shards, num_candidates, info["image_size"])
    # what decodes: the backend here, or for a shard set the one that decoded its stored frames
    decoder = settings.decoder if shards is None else shards.settings["decoder"]
    shard = (split.index, split.count) if split else None
    out_dir = Path(out) / shard_dir_name(*shard) if shard else Path(out)
    writer = CacheWriter(out_dir, make_meta(info, num_candidates, flips, len(keys), shard, source, precision, decoder),
                         keys)
    i, n = shard or (0, 1)
    share = np.arange(i, len(keys), n)
    todo = writer.pending(share)
    if todo:
        writer.record_decoder(decoder)
    log.info("label: %d videos in %s%s, %d to label (%d done before), tokenizer %s on %s", len(share), out_dir,
             f" (shard {i}/{n} of {len(keys)})" if shard else "", len(todo), len(share) - len(todo), info["dir"],
             f"{dev}, {precision}")
    done, new_ok, new_skipped, t0 = 0, 0, 0, time.perf_counter()
    with label_arithmetic(settings, num_workers):
        for batch in _loader(todo, paths, writer.meta, batch_size, num_workers, dev.type == "cuda", shards, decoder,
                             max_video_bytes):
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
    counts, usage = writer.summary(share)
    writer.close()
    if counts["missing"] + counts["corrupt"]:
        log.warning("label: %d videos could not be decoded (%d missing, %d corrupt); pretraining skips them",
                    counts["missing"] + counts["corrupt"], counts["missing"], counts["corrupt"])
    low_usage = bool(counts["ok"]) and usage < min_codebook_usage
    if low_usage:  # a diverged or collapsed tokenizer: its codes say little about the frames
        log.warning("label: the tokenizer %s used %.1f%% of its %d codes on these %d videos, below "
                    "--min-codebook-usage %.0f%%: MVM targets from it carry little information. Check its training "
                    "(val codebook_usage and loss in its run's metrics.jsonl; a lower optim.lr, "
                    "codebook.restart_unused) before pretraining with this cache", info["dir"], 100 * usage,
                    info["codebook_size"], counts["ok"], 100 * min_codebook_usage)
    return {"out": str(out_dir), "videos": len(share), "labelled": counts["ok"],
            "skipped": counts["missing"] + counts["corrupt"], "missing": counts["missing"], "corrupt": counts["corrupt"],
            "pending": counts["pending"], "newly_labelled": new_ok, "codebook_usage": round(usage, 6),
            "low_codebook_usage": low_usage,
            "seconds": round(time.perf_counter() - start, 3), "videos_per_second": round(done / max(loop_s, 1e-9), 2),
            "shard": writer.meta["shard"], "total_keys": len(keys), "precision": precision,
            "decoder": decoder,
            "environment": environment(dev)}


def _check_shards(shards: ShardSet, num_candidates: int, image_size: int) -> None:
    stored = shards.settings
    if (stored["candidates"], stored["size"]) != (num_candidates, image_size):
        raise EvilmError(f"the shard set {shards.dir} stores {stored['candidates']} frames of {stored['size']} px per "
                         f"clip, but labelling asks for --candidates {num_candidates} at the tokenizer's {image_size} "
                         "px; use the same values (or rebuild the shards with `evilm data shards --candidates "
                         f"{num_candidates} --size {image_size}`)")


def run_label(videos=None, manifest=None, format: str = "auto", root=None, device: str = "auto",
              precision: str = "fp32", threads: int = 0, decoder: str = "auto", settings: RunSettings | None = None,
              split: str | WorkSplit | None = None, **kwargs) -> dict:
    """What `evilm label` does: resolve the run settings (unless a caller that runs several stages
    gives them), collect the videos (a shard set as --manifest: its stored frames), label them."""
    split = WorkSplit.parse(split)  # a bad value fails before any loading
    coll = collect(videos, manifest, format, root, spool_dir=str(kwargs["out"]) if kwargs.get("out") else None)
    settings = (settings or resolve_settings(device, precision, threads, None if coll.shards else decoder)).apply()
    summary = label_videos(coll.keys, coll.paths, source=coll.source, shards=coll.shards, settings=settings,
                           split=split, **kwargs)
    if coll.problems:  # input clips that are no key (a shard set's skipped.tsv, tar samples without a video, ...)
        log.warning("label: %d clips of the input were skipped before labelling (e.g. %s: %s)", len(coll.problems),
                    coll.problems[0][0], coll.problems[0][1])
    return {**summary, "input_skipped": len(coll.problems)}


