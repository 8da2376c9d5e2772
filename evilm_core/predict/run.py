"""`evilm predict`: run a checkpoint's head over videos (docs/predict.md).

The loading pattern is `retrieve index`'s (engine/workers.py, settings.index_plan): on the CPU
each loader worker decodes a batch of clips and runs the model on it with its own copy, and
sends back scores; with a GPU the workers decode and this process computes. A clip's video
side runs once for all its items (questions, options, texts). Lines come out in input order:
to the caller (`emit`, per batch) or appended to the --out file, which a re-run resumes.

Batches are aligned to the input (batch j holds clips j*B .. j*B+B-1 whatever is already done),
and a batch with any clip still to do is computed whole: a resumed run feeds the model exactly
the batches of an uninterrupted one, so its lines are the same to the last digit.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

import torch

from evilm_core.data.dataset import clip_dataset, collate_clips
from evilm_core.engine.runtime import eval_loader, to_device
from evilm_core.engine.workers import ComputeInWorker
from evilm_core.errors import EvilmError
from evilm_core.models.scoring import embed_texts
from evilm_core.predict import inputs
from evilm_core.predict.checkpoint import CheckpointInfo, describe_checkpoint
from evilm_core.predict.heads import Head, PairFields, error_row, open_predictor
from evilm_core.predict.inputs import Clip, Plan, PredictRequest
from evilm_core.predict.output import ResultFile
from evilm_core.progress import Progress
from evilm_core.settings import ProcessPlan, RunSettings, index_plan, resolve_settings, set_torch_threads
from evilm_core.text.tokens import TextTokens

log = logging.getLogger("evilm.predict")
TEXT_BATCH = 64  # texts embedded per forward pass (--texts, --labels)


def run_predict(req: PredictRequest, emit: Callable[[list[dict]], None] | None = None,
                progress: Progress | None = None, settings: RunSettings | None = None) -> dict:
    """Answer for every clip of the request that --out does not hold yet. `emit(rows)` gets each
    batch's lines in input order; returns the summary (clips, answered, skipped, already, seconds)."""
    started = time.monotonic()
    info = describe_checkpoint(req.checkpoint)
    plan = inputs.plan(req, info)
    if not 1 <= req.num_frames <= info.model.max_frames:
        raise EvilmError(f"--frames {req.num_frames}: the model of {info.directory} takes 1 to "
                         f"{info.model.max_frames} frames")
    settings = settings or resolve_settings(req.device, req.precision, req.threads,
                                            None if plan.source.shards else req.decoder)
    processes = index_plan(settings, req.num_workers)
    set_torch_threads(processes.main_threads)
    results = ResultFile(req.out, {c.record.video: len(c.items) for c in plan.clips}) if req.out else None
    done = results.done if results is not None else set()
    todo = aligned_todo(plan.clips, done, req.batch_size)
    counts = {"clips": len(plan.clips), "answered": 0, "skipped": 0, "lines": 0,
              "already": sum(c.record.video in done for c in plan.clips)}
    log.info("predict %s with %s (%s): %d clips, %d already in %s, %d to compute (%s)", plan.head, info.directory,
             info.task, len(plan.clips), counts["already"], req.out, len(todo), settings.describe())
    try:
        if todo:
            _answer(req, info, plan, settings, todo, done, results, emit, counts, progress, processes)
    finally:
        if results is not None:
            results.close()
    seconds = time.monotonic() - started
    return {**counts, "seconds": seconds, "clips_per_s": (counts["answered"] + counts["skipped"]) / max(seconds, 1e-9),
            "head": plan.head, "task": info.task, "checkpoint": str(info.directory), "out": req.out,
            "device": settings.device, "precision": settings.precision, "decoder": settings.decoder,
            "workers": processes.workers}


def aligned_todo(clips: list[Clip], done: set[str], batch_size: int) -> list[Clip]:
    """The batches (aligned to the input) that hold a clip not done yet, whole."""
    todo = []
    for start in range(0, len(clips), batch_size):
        batch = clips[start:start + batch_size]
        if any(c.record.video not in done for c in batch):
            todo += batch
    return todo


def _answer(req: PredictRequest, info: CheckpointInfo, plan: Plan, settings: RunSettings, todo: list[Clip],
            done: set[str], results: ResultFile | None, emit, counts: dict, progress: Progress | None,
            processes: ProcessPlan) -> None:
    device, workers = settings.torch_device, processes.workers
    in_workers = settings.is_cpu and workers > 0
    tokens = TextTokens(info.directory, info.model.max_text_len)
    net = None if in_workers else _load(info, settings).to(device)
    head = Head(plan.head, info.classes, info.feature)
    if plan.head == "texts":
        head.text_emb = _embed_texts(info, net, tokens, plan.texts, settings)
    frames = plan.source.frames(req.num_frames, info.model.image_size, decoder=settings.decoder)
    extras = PairFields(tokens, [c.items for c in todo]) if plan.head in ("qa", "mc") else None
    dataset = clip_dataset([c.record for c in todo], plan.source.root, req.num_frames, info.model.image_size,
                           frames=frames, extras=extras)
    collate = ComputeInWorker(partial(open_predictor, str(info.directory), head, precision=settings.precision),
                              settings.precision,
                              processes.worker_threads) if in_workers else collate_clips
    position, start = 0, time.monotonic()
    for batch in eval_loader(dataset, req.batch_size, workers, collate_fn=collate):
        if "error" in batch:
            raise EvilmError(batch["error"])
        if batch["size"] and "scores" not in batch:  # no worker computed it: this process does
            with torch.no_grad(), settings.autocast():
                batch.update(head.compute(net, to_device(batch, device)))
        size = batch["size"] + len(batch["skipped"])
        clips, position = todo[position:position + size], position + size
        rows = _batch_rows(head, plan, clips, batch, done, req.top_k, counts)
        if results is not None:
            results.write(rows)
        if emit is not None and rows:
            emit(rows)
        if progress is not None:
            progress(position, len(todo), clips_per_s=position / max(1e-9, time.monotonic() - start))


def _batch_rows(head: Head, plan: Plan, clips: list[Clip], batch: dict, done: set[str], k: int,
                counts: dict) -> list[dict]:
    """The lines of a batch's clips, in input order; clips `done` before (a resumed batch) are left out."""
    scores = dict(zip(batch.get("video", []), batch.get("scores", [])))
    skipped = {video: (reason, detail) for video, reason, detail in batch["skipped"]}
    rows = []
    for clip in clips:
        video = clip.record.video
        if video in done:
            continue
        if video in skipped:
            log.warning("skipped %s (%s: %s)", video, *skipped[video])
            mine = [error_row(video, *skipped[video])]
        else:
            mine = head.rows(clip, scores[video], plan, k)
        bad = "error" in mine[0]
        counts["skipped" if bad else "answered"] += 1
        counts["lines"] += len(mine)
        rows += mine
    return rows


def _load(info: CheckpointInfo, settings: RunSettings):
    """The model as this process computes with it (bf16 weights on the CPU in bf16: models/loading.py)."""
    from evilm_core.models.loading import for_precision, load_checkpoint

    return for_precision(load_checkpoint(info.directory).model.eval(), settings.precision, settings.device)


def _embed_texts(info: CheckpointInfo, net, tokens: TextTokens, texts: list[str], settings: RunSettings):
    """The texts' embeddings [T, E] (CPU): with the loaded model, else its text side alone."""
    if net is None:
        from evilm_core.models.loading import for_precision, load_text_side

        net, _ = load_text_side(info.directory)
        for_precision(net, settings.precision, settings.device).to(settings.torch_device)
    for text in texts:
        unknown = tokens.unknown_words(text)
        if unknown:
            log.warning("text %r: %s not in the model's vocabulary; ranked without %s", text,
                        ", ".join(repr(w) for w in unknown), "it" if len(unknown) == 1 else "them")
    with settings.autocast():
        emb, _, _ = embed_texts(net, tokens, texts, TEXT_BATCH, settings.torch_device)
    return emb.cpu()
