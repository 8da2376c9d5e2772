"""`evilm retrieve index --window SEC [--stride SEC]`: one row per window of each video
(docs/retrieval.md, "Moments"; the windows and spans: data/windows.py; the embedding:
engine/windows.py).

What is left to do is worked out from the rows already written: a video is done once its last
window (the one ending at the video's end) is there, a span once its first window is; only
the other videos are probed (frame count and rate) and planned again. Parts hold whole spans,
each embedded alone, so a re-run after a kill writes the bytes an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evilm_core.data.clips import Collection
from evilm_core.data.records.manifest import resolve_video
from evilm_core.data.windows import SpanDataset, WindowSpec, plan_windows, probe, spans_of, start_ms
from evilm_core.engine.runtime import eval_loader
from evilm_core.engine.windows import WindowModel, embed_span, split_model, whole_model
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.progress import Progress
from evilm_core.retrieval.index import (
    IndexMeta,
    indexed_rows,
    record_skipped,
    refuse_nonfinite,
    skipped_keys,
    write_part,
)
from evilm_core.retrieval.sides import Tower

log = logging.getLogger("evilm.retrieval")


def check_windows(meta: IndexMeta, spec: WindowSpec | None, out: Path) -> None:
    """An index keeps the windows it was built with (or none)."""
    if spec is None and meta.window is not None:
        raise EvilmError(f"index {out} holds {meta.window:g} s windows at a {meta.stride:g} s stride; extend it "
                         f"with --window {meta.window:g} --stride {meta.stride:g}")
    if spec is not None and meta.window is None:
        raise EvilmError(f"--window {spec.window:g}: index {out} was built without --window (one row per video); "
                         "write a window index to a new --out")
    if spec is not None and (spec.window, spec.stride) != (meta.window, meta.stride):
        raise EvilmError(f"--window {spec.window:g} --stride {spec.stride:g}: index {out} holds {meta.window:g} s "
                         f"windows at a {meta.stride:g} s stride; use those to extend it, or a new --out")


def window_model(side: Tower, device: torch.device, image_size: int, num_frames: int) -> WindowModel:
    """The tower as a per-frame and a per-window part (engine/windows.py)."""
    if side.model is not None:
        return split_model(side.model, device, image_size, num_frames)
    return whole_model(side.embed_video, device, image_size, num_frames)


def complete_videos(keys: list[str], times: np.ndarray) -> set[str]:
    """The videos whose last window (the one ending at the video's end) is among the rows."""
    return {k for k, t in zip(keys, times) if t[1] == t[2]}


def plan_spans(coll: Collection, keys: list[str], root: str, out: Path, spec: WindowSpec, decoder: str,
               counts: dict) -> list:
    """The spans of `keys` (this run's share) that no row holds yet; videos that cannot be opened
    are recorded as skipped. Fills counts: already (videos), skipped, short (videos no longer
    than a window: one row each), windows (rows to embed)."""
    rows, times = indexed_rows(out)
    complete = complete_videos(rows, times)
    started = {(k, start_ms(t[0])) for k, t in zip(rows, times)}
    gone = skipped_keys(out)
    paths = dict(zip(coll.keys, coll.paths)) if coll.paths else {}
    spans, failed = [], []
    for key in keys:
        if key in complete or key in gone:
            counts["already"] += 1
            continue
        path = paths.get(key) or str(resolve_video(key, root))
        try:
            windows = plan_windows(*probe(path, decoder), spec)
        except VideoDecodeError as err:
            failed.append((key, err.reason, err.detail))
            continue
        counts["short"] += len(windows) == 1
        mine = [s for s in spans_of(key, path, windows) if (key, start_ms(s.times[0, 0])) not in started]
        counts["windows"] += sum(s.count for s in mine)
        spans += mine
    if failed:
        record_skipped(out, failed)
        counts["skipped"] += len(failed)
        for key, reason, detail in failed:
            log.warning("skipped %s (%s: %s)", key, reason, detail)
    return spans


@torch.no_grad()
def embed_windows(spans: list, side: Tower, meta: IndexMeta, out: Path, name: str, workers: int, collate: Callable,
                  part_size: int, counts: dict, progress: Progress | None, device: torch.device, decoder: str,
                  metas: dict[str, dict] | None = None) -> None:
    """Decode and embed the spans (in `workers` loader processes; `collate` embeds there on the
    CPU, else here), writing a part whenever `part_size` rows are done (at a span's end), with
    each video's provenance (`metas`, key -> its record's meta) beside its rows."""
    dataset = SpanDataset(spans, meta.image_size, decoder)
    loader = eval_loader(dataset, 1, workers, collate_fn=collate)
    model = None if side.model is None and side.kind == "torch" else window_model(side, device, meta.image_size,
                                                                                  meta.num_frames)
    keys, embs, times, seen, start = [], [], [], 0, time.monotonic()
    try:
        for batch in loader:
            if "error" in batch:
                raise EvilmError(batch["error"])
            seen += 1
            if batch["skipped"]:
                record_skipped(out, batch["skipped"])
                counts["skipped_spans"] += 1
                log.warning("skipped %s (%s: %s)", *batch["skipped"][0])
            if batch["size"]:
                if "embedding" not in batch:
                    began = time.perf_counter()
                    batch["embedding"] = embed_span(model, batch["frames"], batch["frame_of"], device)
                    batch["embed_s"] = time.perf_counter() - began
                keys += [batch["video"]] * len(batch["times"])
                embs.append(batch["embedding"])
                times.append(batch["times"].numpy())
                counts["decode_s"] += batch["decode_s"]
                counts["embed_s"] += batch["embed_s"]
            if len(keys) >= part_size:
                _write(out, name, keys, embs, times, counts, meta.checkpoint, metas)
                keys, embs, times = [], [], []
            if progress:
                progress(seen, len(spans), windows_per_s=counts["embedded"] / max(1e-9, time.monotonic() - start))
        if keys:
            _write(out, name, keys, embs, times, counts, meta.checkpoint, metas)
    finally:
        dataset.close()


def _write(out: Path, name: str, keys: list[str], embs: list, times: list, counts: dict, checkpoint: str,
           metas: dict[str, dict] | None) -> None:
    embeddings = torch.cat(embs)
    refuse_nonfinite(keys, embeddings, checkpoint, out)
    write_part(out, f"{name}-{counts['embedded']:09d}", keys, embeddings, np.concatenate(times),
               [metas.get(k) for k in keys] if metas else None)
    counts["embedded"] += len(keys)
