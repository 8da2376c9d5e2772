"""`evilm retrieve index`: embed a video collection with a checkpoint's video side."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from evilm_core.data.collect import parse_shard, shard_of
from evilm_core.data.dataset import clip_dataset, collate_clips
from evilm_core.data.decoders import resolve_decoder
from evilm_core.data.inputs import Collection, collect, picker
from evilm_core.machine import apply_threads, autocast, resolve_precision
from evilm_core.engine.runtime import choose_device, environment, eval_loader
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, clean_stale_temps
from evilm_core.retrieval.index import (ANN_META, FORMAT, META, PARTS, IndexMeta, consolidate, indexed_keys, read_meta,
                                        record_skipped, skipped_keys, write_meta, write_part)
from evilm_core.retrieval.sides import Tower, open_video_side

log = logging.getLogger("evilm.retrieve")
ProgressFn = Callable[..., None]
# Pixels per forward pass on the CPU: the paper model embeds 16 frames of 256 px (4 clips of 4
# frames) 1.2x faster per clip than 64 at once, whose activations spill the caches
# (docs/performance.md, "Indexing on the CPU"); GPUs take the whole batch.
CPU_FORWARD_PIXELS = 16 * 256 * 256
MAX_AUTO_WORKERS = 8  # each CPU worker holds a model and a batch of frames (~0.5 GB for the paper model)
GPU_AUTO_WORKERS = 2  # decode workers feeding a GPU


@dataclass
class IndexRequest:
    checkpoint: str  # checkpoint dir or run dir (final/, else newest step_*)
    out: str  # index directory (created, or extended when it exists)
    videos: str | None = None  # a directory of video files (keys: paths under it)
    manifest: str | None = None  # a manifest (keys: its `video` fields) or a shard set (its samples' videos)
    root: str | None = None  # where a manifest's relative paths resolve (default: its directory)
    num_frames: int = 4  # frames per video, segment centres
    batch_size: int = 32  # videos per loader batch (on the CPU, forward passes of CPU_FORWARD_PIXELS)
    num_workers: int | None = None  # loader workers (None: auto, _plan_processes; 0: all in this process)
    shard: tuple[int, int] = (0, 1)  # (i, n): this run embeds keys i, i+n, i+2n, ...
    part_size: int = 1024  # videos per part file: at most this much work is lost to an interruption
    device: str = "auto"  # auto | cpu | cuda[:i]
    precision: str = "auto"  # auto | fp32 | bf16 (autocast of the video side; recorded, never mixed in one index)
    threads: int = 0  # torch CPU threads (0: auto, evilm_core/machine.py)
    ann: str | None = None  # build an approximate index too: faiss-ivf | faiss-ivfpq | faiss-hnsw
    decoder: str = "auto"  # video decoder (decoders.DECODERS)


def collection(req: IndexRequest) -> tuple[Collection, str]:
    """-> (the videos in a fixed order, root the keys resolve against): `evilm label`'s collection rules."""
    coll = collect(req.videos, req.manifest, root=req.root)  # raises on an empty collection
    source = coll.source
    return coll, str(Path(source.get("videos") or source.get("root") or source["shards"]).absolute())


def _open_or_create(out: Path, side: Tower, req: IndexRequest, root: str, precision: str) -> IndexMeta:
    if (out / META).is_file():
        meta = read_meta(out)
        if meta.model_hash != side.model_hash:
            raise EvilmError(f"index {out} was built with another model ({meta.checkpoint}, sha256 "
                             f"{meta.model_hash[:12]}) than {side.directory} (sha256 {side.model_hash[:12]}); "
                             "write to a new --out directory")
        if meta.num_frames != req.num_frames:
            raise EvilmError(f"index {out} samples {meta.num_frames} frames per video but --frames is "
                             f"{req.num_frames}; use the same value to extend it")
        if meta.precision != precision:
            raise EvilmError(f"index {out} holds {meta.precision} embeddings but this run computes {precision}; "
                             f"extend it with --precision {meta.precision} (one index never mixes the two)")
        if meta.root != root:
            log.warning("index %s: new videos resolve against %s (index root: %s)", out, root, meta.root)
        return meta
    if out.exists() and any(out.iterdir()):
        raise EvilmError(f"--out {out} exists and is not an index (no {META}); choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    meta = IndexMeta(FORMAT, side.model_hash, str(side.directory.absolute()), side.embed_dim, req.num_frames,
                     side.image_size, root, precision=precision)
    write_meta(out, meta)
    return meta


def _check_frames(side: Tower, num_frames: int) -> None:
    """Before anything is written: index.yaml would fix the value."""
    if side.fixed_frames is not None and num_frames != side.fixed_frames:
        raise EvilmError(f"--frames {num_frames}: the export {side.directory} takes exactly {side.fixed_frames} "
                         f"frames; use --frames {side.fixed_frames} (or export again with --frames {num_frames})")
    if not 1 <= num_frames <= side.max_frames:
        raise EvilmError(f"--frames {num_frames}: the model of {side.directory} takes 1 to {side.max_frames} frames")


def _plan_processes(req: IndexRequest, device: torch.device) -> tuple[int, int]:
    """-> (loader workers, intra-op threads of each process that embeds). On the CPU the workers
    decode and embed (EmbedInWorker): auto is one worker per core the thread policy gives, at
    most MAX_AUTO_WORKERS, the cores shared out among them, and this process, which only writes
    parts, keeps one thread: intra-op threads competing with decoders for the same cores slow
    both (docs/performance.md, "Indexing on the CPU"). With a GPU the workers decode and this
    process embeds."""
    threads = apply_threads(req.threads)
    workers = req.num_workers
    if device.type != "cpu":
        return (GPU_AUTO_WORKERS if workers is None else workers), threads
    workers = min(threads, MAX_AUTO_WORKERS) if workers is None else workers
    if workers == 0:
        return 0, threads
    torch.set_num_threads(1)
    return workers, max(1, threads // workers)


class EmbedInWorker:
    """The collate_fn of CPU indexing: in each loader worker, stack the clips and embed them with
    that worker's own copy of the video side (opened on first use, `threads` intra-op threads),
    so decoding and embedding of different batches overlap on separate cores without any
    process oversubscribing them; the batch carries embeddings [B, E] back, not pixels."""

    def __init__(self, source: str, precision: str, threads: int):
        self.source, self.precision, self.threads = source, precision, threads
        self._side: Tower | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_side": None}  # each worker opens its own

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_clips(items)
        if batch["size"]:
            if self._side is None:
                torch.set_num_threads(self.threads)
                try:
                    self._side = open_video_side(self.source).to(torch.device("cpu"))
                except EvilmError as err:  # weights that do not load: the main process says so, in its words
                    return {**batch, "error": str(err)}
            with torch.no_grad(), autocast(self.precision, "cpu"):
                batch["embedding"] = embed_clips(self._side, batch.pop("pixels"))
        return batch


def embed_clips(side: Tower, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, T, 3, H, W] -> float32 embeddings [B, E], returned on the CPU. CPU pixels go
    through in chunks of CPU_FORWARD_PIXELS (clips are independent: chunking changes no result)."""
    if pixels.device.type != "cpu":
        return side.embed_video(pixels).float().cpu()
    per_clip = pixels[0].numel() // 3  # T * H * W
    chunk = max(1, CPU_FORWARD_PIXELS // per_clip)
    return torch.cat([side.embed_video(part).float() for part in pixels.split(chunk)])


def build_index(req: IndexRequest, progress: ProgressFn | None = None) -> dict:
    """Embed the videos of this shard that the index lacks; fold parts in once all are there
    (and build or refresh the ANN index). Returns counts: total, embedded (this run), already
    (present before), skipped, complete."""
    i, n = parse_shard(req.shard)
    if req.ann:
        from evilm_core.retrieval.ann import check_ann_kind  # faiss only where an ANN index is asked for

        check_ann_kind(req.ann)  # a missing faiss or a bad kind fails before hours of embedding
    coll, root = collection(req)
    decoder = None if coll.shards else resolve_decoder(req.decoder, "--decoder")  # before any file is written
    keys = coll.keys
    device = choose_device(req.device)
    workers, threads = _plan_processes(req, device)
    in_workers = device.type == "cpu" and workers > 0
    side, out = open_video_side(req.checkpoint, load=not in_workers), Path(req.out)  # workers load their own
    _check_frames(side, req.num_frames)
    for debris in (out, out / PARTS):  # what killed runs of this host left behind
        clean_stale_temps(debris)
    precision = resolve_precision(req.precision, device) if side.kind == "torch" else "fp32"
    fresh = not (out / META).is_file()
    meta = _open_or_create(out, side, req, root, precision)
    done = indexed_keys(out) | skipped_keys(out)
    mine = shard_of(keys, req.shard)
    todo = [k for k in mine if k not in done]
    log.info("index %s: %d videos, shard %d/%d owns %d, %d to embed (%s, %s)", out, len(keys), i, n, len(mine),
             len(todo), device, precision)
    counts = {"total": len(keys), "embedded": 0, "already": len(mine) - len(todo), "skipped": 0,
              "precision": precision, "decoder": decoder}
    if todo:
        collate = EmbedInWorker(str(side.directory), precision, threads) if in_workers else collate_clips
        try:
            with autocast(precision, device):
                _embed(side.to(device), coll, todo, root, req, meta, out, device, counts, progress, workers, collate)
        except EvilmError:
            if fresh and not counts["embedded"] and not any((out / PARTS).glob("*")):
                shutil.rmtree(out, ignore_errors=True)  # this run's, and empty: a fixed model may use the same --out
            raise
    skipped = skipped_keys(out)  # read again: other shards may have finished meanwhile
    present = indexed_keys(out) | skipped
    counts["complete"] = all(k in present for k in keys)
    if counts["complete"] and consolidate(out, meta) and (req.ann or (out / ANN_META).is_file()):
        from evilm_core.retrieval.ann import refresh_ann

        counts["ann"] = refresh_ann(out, req.ann)  # built, or rebuilt when rows were added
    counts["skipped_total"] = len(skipped)
    counts["environment"] = env = environment(device)
    atomic_write_text(out / "environment.json", json.dumps(env, indent=2) + "\n", fsync=False)
    counts["index"] = str(out)
    return counts


@torch.no_grad()
def _embed(side: Tower, coll: Collection, todo: list[str], root: str, req: IndexRequest, meta: IndexMeta, out: Path,
           device: torch.device, counts: dict, progress: ProgressFn | None, workers: int, collate: Callable) -> None:
    frames = picker(coll.shards, str(req.manifest), req.num_frames, meta.image_size, decoder=req.decoder)
    dataset = clip_dataset(coll.records(todo), root, req.num_frames, meta.image_size, frames=frames)
    loader = eval_loader(dataset, req.batch_size, workers, collate_fn=collate)
    keys, embs, seen, start = [], [], 0, time.monotonic()
    name = f"{time.time_ns():x}-s{req.shard[0]}of{req.shard[1]}"
    for batch in loader:
        if "error" in batch:
            raise EvilmError(batch["error"])
        seen += batch["size"] + len(batch["skipped"])
        if batch["skipped"]:
            record_skipped(out, batch["skipped"])
            counts["skipped"] += len(batch["skipped"])
            for video, reason, detail in batch["skipped"]:
                log.warning("skipped %s (%s: %s)", video, reason, detail)
        if batch["size"]:
            emb = batch.get("embedding")  # embedded by the worker (CPU), else here
            embs.append(emb if emb is not None else embed_clips(side, batch["pixels"].to(device)))  # [B, E]
            keys += batch["video"]
        if len(keys) >= req.part_size:
            write_part(out, f"{name}-{counts['embedded']:09d}", keys, torch.cat(embs))
            counts["embedded"] += len(keys)
            keys, embs = [], []
        if progress:
            progress(seen, len(todo), videos_per_s=seen / max(1e-9, time.monotonic() - start))
    if keys:
        write_part(out, f"{name}-{counts['embedded']:09d}", keys, torch.cat(embs))
        counts["embedded"] += len(keys)
