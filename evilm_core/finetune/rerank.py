"""Re-ranking text-to-video retrieval with the matching head (`evilm evaluate --rerank K`).

E-ViLM retrieves with its dual encoder (one T x V similarity of unimodal embeddings). LAVIS and
UMT then re-score each text's top-K clips with the fusion decoder's joint pass and the VTM head:
here the new score of (text, clip) is the VTM match log-odds, logit(match) - logit(no match),
on the joint [CLS] of the clip's video tokens e^V (kept from the embedding pass, so the video
encoder runs once per clip) with the text. Clips outside the top-K keep their similarity and stay
below every re-scored clip, so the re-ranked matrix feeds `retrieval_metrics` unchanged.

Only text-to-video is re-ranked: the column-wise (video-to-text) ranks of that matrix mix
re-scored and similarity entries and are no re-ranking of texts, so they are not reported.

Which checkpoint: the VTM head is trained by pre-training (loss.vtm) and by `finetune` mc.
Fine-tuning retrieval (or qa) keeps it frozen, so its export carries the pre-trained head, on a
trunk that fine-tuning moved; a run fine-tuned from scratch (init.checkpoint null) carries a
head that was never trained, which `require_matching_head` refuses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.errors import EvilmError
from evilm_core.evaluation.metrics import require_finite, retrieval_metrics
from evilm_core.models.scoring import match_log_odds

log = logging.getLogger("evilm.finetune")
VTM_TRAINED_BY = ("mc",)  # fine-tuning tasks whose loss trains heads.vtm


@torch.no_grad()
def rerank_scores(net, video_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, sim: torch.Tensor,
                  k: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """video_tokens [V, N, D] (the clips' e^V), ids / mask [T, L], sim [T, V] -> re-ranked [T, V]
    (float64): each text's top-k clips of `sim` scored by VTM log-odds on the joint pass, lifted
    above every other clip, which keeps its similarity. Runs in the caller's autocast context."""
    t, v = sim.shape
    k = min(k, v)
    top = sim.topk(k, dim=1).indices  # [T, k]
    texts = torch.arange(t).repeat_interleave(k)  # [T*k], text i k times
    columns = top.flatten()  # [T*k], its top-k clips
    scores = []
    for start in range(0, t * k, batch_size):
        ti, ci = texts[start:start + batch_size], columns[start:start + batch_size]
        out = net._joint(video_tokens[ci].to(device), ids[ti].to(device), mask[ti].to(device))
        scores.append(match_log_odds(net, out["cls"]).cpu())  # [b]
    vtm = require_finite(torch.cat(scores), "re-ranking match scores").double().view(t, k)  # [T, k]
    reranked = sim.double().clone()  # [T, V]
    lift = float(reranked.max()) - float(vtm.min()) + 1.0  # every re-scored clip > every other clip
    reranked.scatter_(1, top, vtm + lift)
    return reranked


def rerank_metrics(net, video_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, sim: torch.Tensor,
                   gold: torch.Tensor, k: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """The text-to-video metrics of the re-ranked matrix as "rerank_t2v_*", with "rerank_k" and
    "rerank_ms_per_query" (wall time of the joint passes, per text)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    reranked = rerank_scores(net, video_tokens, ids, mask, sim, k, batch_size, device)  # [T, V]
    seconds = time.perf_counter() - start
    metrics = retrieval_metrics(reranked, gold)
    out = {f"rerank_{name}": value for name, value in metrics.items() if name.startswith("t2v_")}
    out["rerank_k"] = min(k, sim.shape[1])
    out["rerank_ms_per_query"] = 1000.0 * seconds / max(sim.shape[0], 1)
    log.info("re-ranked the top %d of %d texts in %.1f s", out["rerank_k"], sim.shape[0], seconds)
    return out


def _run_recipe(directory: Path, config: dict) -> dict | None:
    """The fine-tuning recipe a checkpoint came from: a trainer step_* holds it, a final/ has it in
    its run dir; None when neither is there (a pre-trained or a moved checkpoint)."""
    if config.get("kind") == "finetune":
        return config
    parent = directory.parent
    if config.get("task") and (parent / ckpt.CONFIG).is_file():
        try:
            raw = ckpt.read_yaml_config(parent)
        except EvilmError:
            return None
        return raw if raw.get("kind") == "finetune" else None
    return None


def require_matching_head(net, directory: Path, config: dict) -> None:
    """An EvilmError unless the checkpoint's VTM head is one that was trained."""
    use = "re-rank with the pre-trained checkpoint (the `evilm pretrain` run, loss.vtm > 0) instead"
    if "vtm" not in getattr(net, "heads", {}):
        raise EvilmError(f"checkpoint {directory} has no matching (VTM) head, so --rerank cannot score pairs; {use}")
    recipe = _run_recipe(directory, config)
    if recipe is None or recipe.get("task") in VTM_TRAINED_BY:
        return
    if not (recipe.get("init") or {}).get("checkpoint"):
        raise EvilmError(f"checkpoint {directory} was fine-tuned for {recipe.get('task')} from scratch: its matching "
                         f"(VTM) head was never trained, so --rerank would score pairs at random; {use}")
    log.info("--rerank: %s keeps the matching head of %s (frozen while fine-tuning %s)", directory,
             recipe["init"]["checkpoint"], recipe.get("task"))
