"""`task: moments`: temporal grounding in long videos, evaluated (docs/retrieval.md, "Moments").

Nothing trains for it: the retrieval dual encoder (`task: retrieval`) scores windows, and the
merge rule of `retrieve query` turns them into moments. `evilm evaluate` of a moments recipe
embeds every video of the split window by window exactly as `retrieve index --window` does
(data/windows.py, engine/windows.py), embeds each caption once, and for each query (a video and
a caption, with one or more ground-truth windows) ranks the moments of its own video:

- merged moments (the merge rule, `moments.merge`), the method;
- fixed windows: the best windows as they are, without merging (baseline);
- random: windows of the merged moments' lengths placed uniformly at random in the video,
  scored in expectation (baseline; evaluation/moments.py).

A ground-truth window starting at or after its video's end is skipped and counted
(`skipped_moments`); one ending after it is clipped to it (`clipped_moments`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from evilm_core.data.clips import ClipSource
from evilm_core.data.records.manifest import resolve_video
from evilm_core.data.records.record import ClipRecord
from evilm_core.data.windows import SpanDataset, VideoWindows, WindowSpec, collate_span, plan_windows, probe, spans_of
from evilm_core.engine.runtime import eval_loader
from evilm_core.engine.windows import embed_span, split_model
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.evaluation.metrics import require_finite
from evilm_core.evaluation.moments import (
    RANKS,
    fixed_windows,
    mean_scores,
    propose_moments,
    query_scores,
    random_scores,
    temporal_iou,
)
from evilm_core.evaluation.predictions import DIGITS, PredictionRows
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.tasks import FinetuneTask
from evilm_core.models.evilm import EViLM
from evilm_core.settings import RunSettings
from evilm_core.text.tokens import TextTokens

log = logging.getLogger("evilm.finetune")


class MomentsTask(FinetuneTask):
    """Moment retrieval inside long videos: evaluation only."""

    name, needs, evaluates = "moments", ("caption", "start", "end"), ("retrieval",)

    @classmethod
    def check_trainable(cls):
        raise EvilmError("task 'moments' is evaluated, not trained: fine-tune a `task: retrieval` recipe, then "
                         "`evilm evaluate` this recipe with that checkpoint (docs/retrieval.md, \"Moments\")")

    @classmethod
    def evaluate_split(cls, recipe, net, records, source, tokens, classes, settings, saved=None, out=None):
        return evaluate_moments(net, records, source, recipe, tokens, settings, out)


@torch.no_grad()
def embed_videos(net: EViLM, source: ClipSource, videos: list[str], spec: WindowSpec, image_size: int,
                 workers: int, settings: RunSettings) -> tuple[dict[str, tuple[torch.Tensor, VideoWindows]], int]:
    """-> ({video: (window embeddings [K, E], its windows)}, videos skipped): every window of
    every video, decoded in spans by `workers` loader processes and embedded here."""
    planned, spans = {}, []
    for video in videos:
        path = str(resolve_video(video, source.root))
        try:
            planned[video] = plan_windows(*probe(path, settings.decoder), spec)
        except VideoDecodeError as err:
            log.warning("skipped %s (%s: %s)", video, err.reason, err.detail)
            continue
        spans += spans_of(video, path, planned[video])
    model = split_model(net, settings.torch_device, image_size, spec.num_frames)
    rows: dict[str, list[torch.Tensor]] = {}
    broken = set()
    for batch in eval_loader(SpanDataset(spans, image_size, settings.decoder), 1, workers, collate_fn=collate_span):
        for video, reason, detail in batch["skipped"]:
            log.warning("skipped %s (%s: %s)", video, reason, detail)
            broken.add(video)
        if batch["size"]:
            rows.setdefault(batch["video"], []).append(embed_span(model, batch["frames"], batch["frame_of"],
                                                                  settings.torch_device))
    out = {v: (require_finite(torch.cat(rows[v]), "window embeddings"), planned[v])
           for v in planned if v in rows and v not in broken}
    return out, len(videos) - len(out)


def ground_truths(records: list[ClipRecord], embedded: dict, counts: dict) -> dict[tuple[str, str], np.ndarray]:
    """{(video, caption): truths [G, 2]} of the decoded videos; windows past the video's end are
    skipped or clipped, and counted."""
    truths: dict[tuple[str, str], list] = {}
    for r in records:
        if r.video not in embedded:
            continue
        duration = embedded[r.video][1].duration
        if r.start >= duration:
            counts["skipped_moments"] += 1
            log.warning("moment %r of %s starts at %s s, at or after the video's end (%.3f s): skipped", r.caption,
                        r.video, r.start, duration)
            continue
        if r.end > duration:
            counts["clipped_moments"] += 1
        truths.setdefault((r.video, r.caption), []).append((r.start, min(r.end, duration)))
    return {q: np.asarray(t, dtype=np.float64) for q, t in truths.items()}


@torch.no_grad()
def evaluate_moments(net: EViLM, records: list[ClipRecord], source: ClipSource, recipe: FinetuneRecipe,
                     tokens: TextTokens, settings: RunSettings, out: PredictionRows | None = None) -> dict[str, float]:
    """R@k at temporal IoU and mIoU of the merged moments, beside the two baselines; `out` (evaluate
    --predictions) gets one row per query: its video, the true windows and the top moments."""
    if source.shards is not None:
        raise EvilmError(f"task moments needs the videos themselves; {source.path} is a shard set (a few frames "
                         "per clip); use the moment manifest")
    d, m = recipe.data, recipe.moments
    spec = WindowSpec(m.window, m.stride, d.num_frames)
    videos = list(dict.fromkeys(r.video for r in records))
    embedded, skipped = embed_videos(net, source, videos, spec, d.image_size, d.num_workers, settings)
    counts = {"skipped_moments": 0, "clipped_moments": 0}
    truths = ground_truths(records, embedded, counts)
    if not truths:
        raise EvilmError("moments evaluation: no video of the split could be decoded, or no moment lies inside one")
    queries = list(truths)
    text = []
    for start in range(0, len(queries), d.batch_size):
        ids, mask = tokens.batch([caption for _, caption in queries[start:start + d.batch_size]])
        text.append(net.embed_text(ids.to(settings.torch_device), mask.to(settings.torch_device)).float().cpu())
    text_emb = require_finite(torch.cat(text), "caption embeddings").numpy()
    ours, fixed, chance = [], [], []
    for (video, caption), query in zip(queries, text_emb):
        emb, windows = embedded[video]
        scores, truth = emb.numpy() @ query, truths[video, caption]  # scores [K] of the video's windows
        moments = propose_moments(scores, windows.times, max(RANKS), m.merge)
        ours.append(query_scores(moments, truth))
        if out is not None:
            out.rows.append(moment_row(video, caption, truth, moments[:out.k]))
        fixed.append(query_scores(fixed_windows(scores, windows.times, max(RANKS)), truth))
        chance.append(random_scores([x.end - x.start for x in moments], windows.duration, truth))
    metrics = mean_scores(ours)
    metrics.update({f"fixed_{k}": v for k, v in mean_scores(fixed).items()})
    metrics.update({f"random_{k}": v for k, v in mean_scores(chance).items()})
    return {**metrics, "num_queries": len(queries), "num_videos": len(embedded),
            "num_windows": sum(len(w) for _, w in embedded.values()), "skipped": skipped, **counts}


def moment_row(video: str, caption: str, truth, moments: list) -> dict:
    """One query's line of `evaluate --predictions`: the true windows and the top moments, each with
    its best temporal IoU against them."""
    return {"video": video, "caption": caption, "gold": [[round(float(s), 3), round(float(e), 3)] for s, e in truth],
            "moments": [{"start": round(x.start, 3), "end": round(x.end, 3), "score": round(x.score, DIGITS),
                         "iou": round(float(temporal_iou(x.start, x.end, truth).max()), 4)} for x in moments]}
