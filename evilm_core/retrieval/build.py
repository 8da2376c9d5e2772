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

from evilm_core.config.sections import MAX_VIDEO_BYTES
from evilm_core.data.clips import Collection, collect, picker
from evilm_core.data.dataset import clip_dataset, collate_clips
from evilm_core.data.work_split import WHOLE, WorkSplit
from evilm_core.engine.runtime import environment, eval_loader
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, clean_stale_temps
from evilm_core.progress import Progress
from evilm_core.retrieval.index import (
    ANN_META,
    FORMAT,
    META,
    PARTS,
    IndexMeta,
    consolidate,
    indexed_keys,
    read_meta,
    record_skipped,
    skipped_keys,
    write_meta,
    write_part,
)
from evilm_core.retrieval.sides import Tower, open_video_side
from evilm_core.settings import RunSettings, autocast, index_plan, resolve_settings, set_torch_threads

log = logging.getLogger("evilm.retrieval")
# Pixels per forward pass on the CPU: the paper model embeds 16 frames of 256 px (4 clips of 4
# frames) 1.2x faster per clip than 64 at once, whose activations spill the caches
# (docs/performance.md, "Indexing on the CPU"); GPUs take the whole batch.
CPU_FORWARD_PIXELS = 16 * 256 * 256


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
    part_size: int = 1024  # videos per part file: at most this much work is lost to an interruption
    device: str = "auto"  # auto | cpu | cuda[:i]
    precision: str = "auto"  # auto | fp32 | bf16 (autocast of the video side; recorded, never mixed in one index)
    threads: int = 0  # torch CPU threads (0: auto, evilm_core/settings.py)
    ann: str | None = None  # build an approximate index too: faiss-ivf | faiss-ivfpq | faiss-hnsw
    decoder: str = "auto"  # video decoder (config/sections.py DECODERS)
    max_video_bytes: int = MAX_VIDEO_BYTES  # a bigger video is skipped and counted, never read


def collection(req: IndexRequest) -> tuple[Collection, str]:
    """-> (the videos in a fixed order, root the keys resolve against): `evilm label`'s collection rules."""
    coll = collect(req.videos, req.manifest, root=req.root, spool_dir=req.out)  # raises on an empty collection
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
                    self._side = open_video_side(self.source, threads=self.threads).to(torch.device("cpu"))
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


def build_index(req: IndexRequest, progress: Progress | None = None, settings: RunSettings | None = None) -> dict:
    """Embed the videos of this part of the collection that the index lacks; fold parts in once all
    are there (and build or refresh the ANN index). `settings`: resolved by a caller that runs
    several stages (the quickstart), else here from the request. Returns counts: total, embedded
    (this run), already (present before), skipped, complete."""
    split = WorkSplit.parse(req.shard) or WHOLE
    if req.ann:
        from evilm_core.retrieval.ann import check_ann_kind  # faiss only where an ANN index is asked for

        check_ann_kind(req.ann)  # a missing faiss or a bad kind fails before hours of embedding
    coll, root = collection(req)
    settings = settings or resolve_settings(req.device, req.precision, req.threads,
                                            None if coll.shards else req.decoder)  # before any file is written
    plan = index_plan(settings, req.num_workers)
    set_torch_threads(plan.main_threads)
    in_workers = settings.is_cpu and plan.workers > 0
    side = open_video_side(req.checkpoint, load=not in_workers, threads=plan.main_threads)  # workers load their own
    out = Path(req.out)
    _check_frames(side, req.num_frames)
    for debris in (out, out / PARTS):  # what killed runs of this host left behind
        clean_stale_temps(debris)
    precision = settings.precision if side.kind == "torch" else "fp32"  # an export computes in fp32
    fresh = not (out / META).is_file()
    meta = _open_or_create(out, side, req, root, precision)
    done = indexed_keys(out) | skipped_keys(out)
    mine = split.take(coll.keys)
    todo = [k for k in mine if k not in done]
    log.info("index %s: %d videos, part %s owns %d, %d to embed (%s, %s)", out, len(coll.keys), split, len(mine),
             len(todo), settings.device, precision)
    counts = {"total": len(coll.keys), "embedded": 0, "already": len(mine) - len(todo), "skipped": 0,
              "precision": precision, "decoder": settings.decoder}
    if todo:
        collate = EmbedInWorker(str(side.directory), precision, plan.worker_threads) if in_workers else collate_clips
        job = EmbedJob(coll, todo, root, meta, out, split, settings, plan.workers, collate)
        try:
            with autocast(precision, settings.device):
                _embed(side.to(settings.torch_device), req, job, counts, progress)
        except EvilmError:
            if fresh and not counts["embedded"] and not any((out / PARTS).glob("*")):
                shutil.rmtree(out, ignore_errors=True)  # this run's, and empty: a fixed model may use the same --out
            raise
    skipped = skipped_keys(out)  # read again: other shards may have finished meanwhile
    present = indexed_keys(out) | skipped
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
    todo: list[str]  # the keys this run embeds
    root: str  # where the keys' videos resolve
    meta: IndexMeta  # the index's metadata (image size)
    out: Path  # the index directory
    split: WorkSplit  # this run's part of the collection (names its part files)
    settings: RunSettings  # device and decoder
    workers: int  # loader processes
    collate: Callable  # collate_clips, or EmbedInWorker (CPU workers embed)


@torch.no_grad()
def _embed(side: Tower, req: IndexRequest, job: EmbedJob, counts: dict, progress: Progress | None) -> None:
    frames = picker(job.coll.shards, str(req.manifest), req.num_frames, job.meta.image_size,
                    decoder=job.settings.decoder, max_bytes=req.max_video_bytes, members=job.coll.members)
    dataset = clip_dataset(job.coll.records(job.todo), job.root, req.num_frames, job.meta.image_size, frames=frames)
    loader = eval_loader(dataset, req.batch_size, job.workers, collate_fn=job.collate)
    keys, embs, seen, start, out, device = [], [], 0, time.monotonic(), job.out, job.settings.torch_device
    name = f"{time.time_ns():x}-s{job.split.index}of{job.split.count}"
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
    """A part of finite embeddings, or an error naming the model: a NaN embedding would rank
    first or last for every query, and a score of NaN is not a result (docs/reliability.md)."""
    bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise EvilmError(f"the model {checkpoint} embeds {len(bad)} of these {len(keys)} clips as NaN or infinity "
                         f"(e.g. {keys[bad[0]]!r}): its weights are not usable (a diverged training run?), and these "
                         f"embeddings were not written to {job.out}. Index with a checkpoint whose validation is "
                         "finite")
    write_part(job.out, name, keys, embeddings, [job.coll.metas.get(k) for k in keys] if job.coll.metas else None)
