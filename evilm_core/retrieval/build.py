"""`evilm retrieve index`: embed a video collection with a checkpoint's video side."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from evilm_core.data.collect import parse_shard, shard_of
from evilm_core.data.dataset import clip_dataset
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


@dataclass
class IndexRequest:
    checkpoint: str  # checkpoint dir or run dir (final/, else newest step_*)
    out: str  # index directory (created, or extended when it exists)
    videos: str | None = None  # a directory of video files (keys: paths under it)
    manifest: str | None = None  # a manifest (keys: its `video` fields) or a shard set (its samples' videos)
    root: str | None = None  # where a manifest's relative paths resolve (default: its directory)
    num_frames: int = 4  # frames per video, segment centres
    batch_size: int = 32  # videos per forward pass
    num_workers: int = 2  # decode workers
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


def _apply_threads(req: IndexRequest) -> None:
    """auto on the CPU leaves the decode workers their cores (as `label` does): intra-op threads
    competing with decoders for the same cores slow both."""
    threads = apply_threads(req.threads)
    if req.threads == 0 and req.num_workers and req.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(max(1, threads - req.num_workers))


def build_index(req: IndexRequest, progress: ProgressFn | None = None) -> dict:
    """Embed the videos of this shard that the index lacks; fold parts in once all are there
    (and build or refresh the ANN index). Returns counts: total, embedded (this run), already
    (present before), skipped, complete."""
    i, n = parse_shard(req.shard)
    _apply_threads(req)
    if req.ann:
        from evilm_core.retrieval.ann import check_ann_kind  # faiss only where an ANN index is asked for

        check_ann_kind(req.ann)  # a missing faiss or a bad kind fails before hours of embedding
    coll, root = collection(req)
    decoder = None if coll.shards else resolve_decoder(req.decoder, "--decoder")  # before any file is written
    keys = coll.keys
    side, out = open_video_side(req.checkpoint), Path(req.out)
    _check_frames(side, req.num_frames)
    for debris in (out, out / PARTS):  # what killed runs of this host left behind
        clean_stale_temps(debris)
    device = choose_device(req.device)
    precision = resolve_precision(req.precision, device) if side.kind == "torch" else "fp32"
    meta = _open_or_create(out, side, req, root, precision)
    done = indexed_keys(out) | skipped_keys(out)
    mine = shard_of(keys, req.shard)
    todo = [k for k in mine if k not in done]
    log.info("index %s: %d videos, shard %d/%d owns %d, %d to embed (%s, %s)", out, len(keys), i, n, len(mine),
             len(todo), device, precision)
    counts = {"total": len(keys), "embedded": 0, "already": len(mine) - len(todo), "skipped": 0,
              "precision": precision, "decoder": decoder}
    if todo:
        with autocast(precision, device):
            _embed(side.to(device), coll, todo, root, req, meta, out, device, counts, progress)
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
           device: torch.device, counts: dict, progress: ProgressFn | None) -> None:
    frames = picker(coll.shards, str(req.manifest), req.num_frames, meta.image_size, decoder=req.decoder)
    dataset = clip_dataset(coll.records(todo), root, req.num_frames, meta.image_size, frames=frames)
    loader = eval_loader(dataset, req.batch_size, req.num_workers)
    keys, embs, seen, start = [], [], 0, time.monotonic()
    name = f"{time.time_ns():x}-s{req.shard[0]}of{req.shard[1]}"
    for batch in loader:
        seen += batch["size"] + len(batch["skipped"])
        if batch["skipped"]:
            record_skipped(out, batch["skipped"])
            counts["skipped"] += len(batch["skipped"])
            for video, reason, detail in batch["skipped"]:
                log.warning("skipped %s (%s: %s)", video, reason, detail)
        if batch["size"]:
            embs.append(side.embed_video(batch["pixels"].to(device)).float().cpu())  # [B, E]
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
