"""`evilm retrieve index`: embed a video collection with a checkpoint's video side."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from evilm_core.config.sections import MAX_VIDEO_BYTES
from evilm_core.data.clips import Collection, collect, picker
from evilm_core.data.dataset import clip_dataset, collate_clips
from evilm_core.data.windows import WindowSpec, collate_span
from evilm_core.data.work_split import WHOLE, WorkSplit
from evilm_core.engine.runtime import environment, eval_loader
from evilm_core.engine.workers import ComputeInWorker
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, clean_stale_temps
from evilm_core.models.scoring import in_chunks
from evilm_core.progress import Progress
from evilm_core.engine.windows import embed_span
from evilm_core.retrieval.index import (
    ANN_META,
    FORMAT,
    FORMAT_WINDOWS,
    META,
    PARTS,
    IndexMeta,
    check_same_arithmetic,
    consolidate,
    indexed_keys,
    indexed_rows,
    read_meta,
    record_skipped,
    skipped_keys,
    write_meta,
    refuse_nonfinite,
    write_part,
)
from evilm_core.retrieval.sides import Tower, open_video_side
from evilm_core.retrieval.windows import check_windows, complete_videos, embed_windows, plan_spans, window_model
from evilm_core.settings import RunSettings, autocast, index_plan, resolve_settings, set_torch_threads

log = logging.getLogger("evilm.retrieval")


@dataclass
class IndexRequest:
    checkpoint: str  # checkpoint dir or run dir (final/, else newest step_*)
    out: str  # index directory (created, or extended when it exists)
    videos: str | None = None  # a directory of video files (keys: paths under it)
    manifest: str | None = None  # a manifest (keys: its `video` fields) or a shard set (its samples' videos)
    root: str | None = None  # where a manifest's relative paths resolve (default: its directory)
    num_frames: int = 4  # frames per video, segment centres
    batch_size: int = 32  # videos per loader batch (on the CPU, forward passes of CPU_FORWARD_PIXELS)
    num_workers: int | None = None  # loader workers (None: auto, settings.index_plan; 0: all in this process)
    shard: WorkSplit = WHOLE  # --shard i/n: this run embeds keys i, i+n, i+2n, ...
    part_size: int = 1024  # videos per part (windows: rows, at a span end): the most an interruption loses
    device: str = "auto"  # auto | cpu | cuda[:i]
    precision: str = "auto"  # auto | fp32 | bf16 (autocast of the video side; recorded, never mixed in one index)
    threads: int = 0  # torch CPU threads (0: auto, evilm_core/settings.py)
    ann: str | None = None  # build an approximate index too: faiss-ivf | faiss-ivfpq | faiss-hnsw
    decoder: str = "auto"  # video decoder (config/sections.py DECODERS)
    max_video_bytes: int = MAX_VIDEO_BYTES  # a bigger video is skipped and counted, never read
    runtime: str = "auto"  # what runs an ONNX export: auto | onnxruntime | openvino (settings.resolve_runtime)
    window: float | None = None  # seconds per window: one row per window of each video (None: one per video)
    stride: float | None = None  # seconds between window starts (None: half the window)

    def window_spec(self) -> WindowSpec | None:
        """The windows asked for, checked (data/windows.py), or None."""
        if self.window is None:
            if self.stride is not None:
                raise EvilmError("--stride applies to a window index: give --window SEC too")
            return None
        return WindowSpec(float(self.window), float(self.window / 2 if self.stride is None else self.stride),
                          self.num_frames)


def collection(req: IndexRequest) -> tuple[Collection, str]:
    """-> (the videos in a fixed order, root the keys resolve against): `evilm label`'s collection rules."""
    coll = collect(req.videos, req.manifest, root=req.root, spool_dir=req.out)  # raises on an empty collection
    source = coll.source
    return coll, str(Path(source.get("videos") or source.get("root") or source["shards"]).absolute())


def _open_or_create(out: Path, side: Tower, req: IndexRequest, root: str, source: dict | None = None) -> IndexMeta:
    spec = req.window_spec()
    if (out / META).is_file():
        meta = read_meta(out)
        check_windows(meta, spec, out)
        if meta.model_hash != side.model_hash:
            raise EvilmError(f"index {out} was built with another model ({meta.checkpoint}, sha256 "
                             f"{meta.model_hash[:12]}) than {side.directory} (sha256 {side.model_hash[:12]}); "
                             "write to a new --out directory")
        if meta.num_frames != req.num_frames:
            raise EvilmError(f"index {out} samples {meta.num_frames} frames per video but --frames is "
                             f"{req.num_frames}; use the same value to extend it")
        check_same_arithmetic(meta, side.runtime, side.precision, out)
        if meta.root != root:
            log.warning("index %s: new videos resolve against %s (index root: %s)", out, root, meta.root)
        return meta
    if out.exists() and any(out.iterdir()):
        raise EvilmError(f"--out {out} exists and is not an index (no {META}); choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    meta = IndexMeta(FORMAT if spec is None else FORMAT_WINDOWS, side.model_hash, str(side.directory.absolute()),
                     side.embed_dim, req.num_frames, side.image_size, root, precision=side.precision,
                     runtime=side.runtime, window=spec and spec.window, stride=spec and spec.stride, source=source)
    write_meta(out, meta)
    return meta


def _check_frames(side: Tower, num_frames: int) -> None:
    """Before anything is written: index.yaml would fix the value."""
    if side.fixed_frames is not None and num_frames != side.fixed_frames:
        raise EvilmError(f"--frames {num_frames}: the export {side.directory} takes exactly {side.fixed_frames} "
                         f"frames; use --frames {side.fixed_frames} (or export again with --frames {num_frames})")
    if not 1 <= num_frames <= side.max_frames:
        raise EvilmError(f"--frames {num_frames}: the model of {side.directory} takes 1 to {side.max_frames} frames")


def open_embedder(source: str, threads: int, settings: RunSettings, meta: IndexMeta | None = None):
    """In a CPU loader worker (engine/workers.py): the video side of `source` (the run's
    `settings` on this worker's `threads`), as a batch -> {"embedding" [B, E], "embed_s"}
    function that takes the pixels off the batch (a window index's span: its frames, embedded
    window by window: engine/windows.py)."""
    side = open_video_side(source, replace(settings, threads=threads)).to(torch.device("cpu"))
    model = window_model(side, torch.device("cpu"), meta.image_size, meta.num_frames) if meta is not None else None

    def embed(batch: dict) -> dict:
        began = time.perf_counter()
        if model is None:
            embedding = embed_clips(side, batch.pop("pixels"))
        else:
            embedding = embed_span(model, batch.pop("frames"), batch["frame_of"])
        return {"embedding": embedding, "embed_s": time.perf_counter() - began}

    return embed


def embed_clips(side: Tower, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, T, 3, H, W] -> float32 embeddings [B, E], returned on the CPU. CPU pixels go
    through in chunks of CPU_FORWARD_PIXELS (clips are independent: chunking changes no result)."""
    return in_chunks(lambda part: side.embed_video(part).float(), pixels).cpu()


def build_index(req: IndexRequest, progress: Progress | None = None, settings: RunSettings | None = None) -> dict:
    """Embed the videos of this part of the collection that the index lacks; fold parts in once all
    are there (and build or refresh the ANN index). `settings`: resolved by a caller that runs
    several stages (the quickstart), else here from the request. Returns counts: total, embedded
    (this run), already (present before), skipped, complete."""
    split = WorkSplit.parse(req.shard) or WHOLE
    if req.ann:
        from evilm_core.retrieval.ann import check_ann_kind  # faiss only where an ANN index is asked for

        check_ann_kind(req.ann)  # a missing faiss or a bad kind fails before hours of embedding
    spec = req.window_spec()  # a bad --window or --stride fails before anything is opened
    coll, root = collection(req)
    if spec is not None and coll.shards is not None:
        raise EvilmError(f"--window needs the videos themselves; {req.manifest} is a shard set, which stores a few "
                         "frames per clip; index the manifest the shards were made from")
    settings = settings or resolve_settings(req.device, req.precision, req.threads,
                                            None if coll.shards else req.decoder,
                                            runtime=req.runtime)  # before any file is written
    plan = index_plan(settings, req.num_workers)
    set_torch_threads(plan.main_threads)
    in_workers = settings.is_cpu and plan.workers > 0
    side = open_video_side(req.checkpoint, replace(settings, threads=plan.main_threads),
                           load=not in_workers)  # workers load their own
    out = Path(req.out)
    _check_frames(side, req.num_frames)
    for debris in (out, out / PARTS):  # what killed runs of this host left behind
        clean_stale_temps(debris)
    precision = side.precision  # an export in onnxruntime computes in fp32 whatever the run's precision
    fresh = not (out / META).is_file()
    meta = _open_or_create(out, side, req, root, coll.source)
    mine = split.take(coll.keys)
    counts = {"total": len(coll.keys), "embedded": 0, "already": 0, "skipped": 0, "precision": precision,
              "runtime": side.runtime, "decoder": settings.decoder}
    if spec is None:
        done = indexed_keys(out) | skipped_keys(out)
        todo = [k for k in mine if k not in done]
        counts["already"] = len(mine) - len(todo)
    else:
        counts.update(windows=0, short=0, skipped_spans=0, decode_s=0.0, embed_s=0.0)
        todo = plan_spans(coll, mine, root, out, spec, settings.decoder, counts)
    log.info("index %s: %d videos, part %s owns %d, %d %s to embed (%s, %s %s)", out, len(coll.keys), split,
             len(mine), len(todo), "videos" if spec is None else f"spans ({counts['windows']} windows)", settings.device,
             side.runtime, precision)
    if todo:
        collate_items = collate_clips if spec is None else collate_span
        collate = ComputeInWorker(partial(open_embedder, str(side.directory), settings=settings, meta=spec and meta),
                                  precision,
                                  plan.worker_threads, collate_items) if in_workers else collate_items
        job = EmbedJob(coll, todo, root, meta, out, split, settings, plan.workers, collate)
        try:
            with autocast(precision, settings.device):
                _embed(side.to(settings.torch_device), req, job, counts, progress)
        except EvilmError:
            if fresh and not counts["embedded"] and not any((out / PARTS).glob("*")):
                shutil.rmtree(out, ignore_errors=True)  # this run's, and empty: a fixed model may use the same --out
            raise
    skipped = skipped_keys(out)  # read again: other shards may have finished meanwhile
    present = (indexed_keys(out) if spec is None else complete_videos(*indexed_rows(out))) | skipped
    counts["complete"] = all(k in present for k in coll.keys)
    if counts["complete"] and consolidate(out, meta) and (req.ann or (out / ANN_META).is_file()):
        from evilm_core.retrieval.ann import refresh_ann

        counts["ann"] = refresh_ann(out, req.ann)  # built, or rebuilt when rows were added
    counts["skipped_total"] = len(skipped) + len(coll.problems)  # and the input's own (a shard set's skipped.tsv)
    counts["environment"] = env = environment(settings.torch_device)
    atomic_write_text(out / "environment.json", json.dumps(env, indent=2) + "\n", fsync=False)
    counts["index"] = str(out)
    return counts


@dataclass
class EmbedJob:
    """What one run of `build_index` embeds, and how."""

    coll: Collection  # the whole collection
    todo: list  # the keys this run embeds (a window index: the spans, data/windows.py)
    root: str  # where the keys' videos resolve
    meta: IndexMeta  # the index's metadata (image size)
    out: Path  # the index directory
    split: WorkSplit  # this run's part of the collection (names its part files)
    settings: RunSettings  # device and decoder
    workers: int  # loader processes
    collate: Callable  # collate_clips / collate_span, or ComputeInWorker (CPU workers embed)


@torch.no_grad()
def _embed(side: Tower, req: IndexRequest, job: EmbedJob, counts: dict, progress: Progress | None) -> None:
    name = f"{time.time_ns():x}-s{job.split.index}of{job.split.count}"
    if job.meta.window is not None:
        embed_windows(job.todo, side, job.meta, job.out, name, job.workers, job.collate, req.part_size, counts,
                      progress, job.settings.torch_device, job.settings.decoder, job.coll.metas)
        return
    frames = picker(job.coll.shards, str(req.manifest), req.num_frames, job.meta.image_size,
                    decoder=job.settings.decoder, max_bytes=req.max_video_bytes, members=job.coll.members)
    dataset = clip_dataset(job.coll.records(job.todo), job.root, req.num_frames, job.meta.image_size, frames=frames)
    loader = eval_loader(dataset, req.batch_size, job.workers, collate_fn=job.collate)
    keys, embs, seen, start, out, device = [], [], 0, time.monotonic(), job.out, job.settings.torch_device
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
            _write_finite_part(job, f"{name}-{counts['embedded']:09d}", keys, torch.cat(embs), req.checkpoint)
            counts["embedded"] += len(keys)
            keys, embs = [], []
        if progress:
            progress(seen, len(job.todo), videos_per_s=seen / max(1e-9, time.monotonic() - start))
    if keys:
        _write_finite_part(job, f"{name}-{counts['embedded']:09d}", keys, torch.cat(embs), req.checkpoint)
        counts["embedded"] += len(keys)


def _write_finite_part(job: EmbedJob, name: str, keys: list[str], embeddings: torch.Tensor, checkpoint: str) -> None:
    refuse_nonfinite(keys, embeddings, checkpoint, job.out)
    write_part(job.out, name, keys, embeddings, metas=[job.coll.metas.get(k) for k in keys] if job.coll.metas else None)
