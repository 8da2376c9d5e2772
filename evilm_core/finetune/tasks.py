"""The fine-tuning tasks (docs/design.md, "Fine-tuning tasks"). A task is one class: the record
fields it needs, its classes and head, how it trains (the shared Trainer's loss / evaluate /
export, or its own `fit`) and how it evaluates a split. run.py holds the registry and dispatches.

Parameters no task loss reaches are frozen at construction (DDP waits for every trainable
parameter's gradient; AdamW would decay them for nothing):

| task      | trains besides the trunk      | frozen                                   |
|-----------|-------------------------------|------------------------------------------|
| qa        | heads.qa (MLP on joint [CLS]) | mlm, vtm, mvm heads, retrieval, scale     |
| mc        | heads.vtm (match score)       | mlm, mvm heads, retrieval, scale          |
| retrieval | retrieval projections, scale  | mlm, vtm, mvm heads                       |
| probe     | heads.probe (a Linear)        | everything else (probe.py)               |

Scoring: multiple choice scores each (clip, option) pair by the VTM head on the joint [CLS] as
the log-odds of "match", the clip encoded once for all its options (`EViLM.forward_options`);
retrieval is the dual encoder, similarity = dot product of l2-normalised embeddings.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.config.sections import DataConfig
from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.dataset import clip_dataset
from evilm_core.data.records.record import ClipRecord
from evilm_core.engine.distributed import global_contrastive_loss
from evilm_core.engine.runtime import eval_batches, unwrap
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError
from evilm_core.evaluation import predictions
from evilm_core.evaluation.metrics import (
    accuracy,
    require_finite,
    retrieval_metrics,
    retrieval_ranks,
    video_to_text_ranks,
)
from evilm_core.evaluation.predictions import PredictionRows
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.data import (
    CaptionFields,
    MCFields,
    QAFields,
    answer_vocab,
    check_mc_records,
    normalize_answer,
    require_fields,
)
from evilm_core.finetune.rerank import rerank_metrics
from evilm_core.fs import escape_key
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import attach_head, freeze_except
from evilm_core.models.losses import logit_scale_value
from evilm_core.models.pretrained import export_model
from evilm_core.models.scoring import (
    answer_logits,
    embed_texts,
    joint_cls,
    match_log_odds,
    similarities,
    video_tokens,
)
from evilm_core.settings import RunSettings
from evilm_core.text.tokens import TextTokens

log = logging.getLogger("evilm.finetune")


class FinetuneTask:
    """One downstream task. Class level: what it needs before a model exists; instance: the
    Trainer's task (loss, evaluate, export) over `net` with validation records `val`."""

    name = ""
    needs: tuple[str, ...] = ()  # record fields every record of the task must carry
    keep: tuple[str, ...] = ()  # heads (or 'retrieval', 'logit_scale') trained besides the trunk
    evaluates: tuple[str, ...] = ()  # other tasks whose fine-tuned checkpoints it evaluates as they are

    def __init__(self, recipe: FinetuneRecipe, net: EViLM, vocab: list[str], settings: RunSettings,
                 val: tuple[list[ClipRecord], str] | None = None, classes: list[str] | None = None,
                 tokens: TextTokens | None = None):
        self.recipe, self.model, self.vocab, self.val, self.classes = recipe, net, vocab, val, classes
        self.tokens, self.settings = tokens, settings
        freeze_except(net, self.keep)

    # ------------------------------------------------------------------ before the model
    @classmethod
    def check_trainable(cls) -> None:
        """Raise for a task that is only evaluated (before `evilm finetune` does any work)."""

    @classmethod
    def check_records(cls, recipe: FinetuneRecipe, records: list[ClipRecord], manifest: str, train: bool) -> None:
        require_fields(records, cls.needs, manifest, cls.name)

    @classmethod
    def select(cls, recipe: FinetuneRecipe, records: list[ClipRecord]) -> tuple[list[ClipRecord], list[str] | None]:
        """-> (the records it trains on, its classes in head order or None)."""
        return records, None

    @classmethod
    def attach(cls, net: EViLM, classes: list[str] | None) -> None:
        """Add the task's own head, if it has one."""

    @classmethod
    def fields(cls, recipe: FinetuneRecipe, tokens: TextTokens, classes: list[str] | None,
               records: list[ClipRecord] | None = None):
        """The extras a clip of this task carries (`records`: the training records, when training)."""
        return CaptionFields(tokens)

    @classmethod
    def head_classes(cls, loaded) -> list[str] | None:
        """The classes of this task's head in a LoadedCheckpoint (None: the task has no head)."""
        return None

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, recipe: FinetuneRecipe, net: EViLM, vocab: list[str], classes, records, run, init_dir, progress,
            resume: bool) -> dict:
        """Train on the shared Trainer; returns its result."""
        d = recipe.data
        tokens = TextTokens(run.run_dir, recipe.model.max_text_len)
        fields = cls.fields(recipe, tokens, classes, records)
        train = cls.dataset(recipe, records, run.source, fields, run.settings, train=True)
        val = None
        if d.val:
            val = cls.read_split(recipe, d.val, train=False)
        task = cls(recipe, net, vocab, run.settings, val, classes, tokens)
        log.info("finetune %s: %d clips, from %s, %.2fM trainable parameters", cls.name, len(train),
                 init_dir or "scratch", sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6)
        return Trainer(recipe, task, train, run.info, run.settings, progress).fit(resume=resume)

    @classmethod
    def dataset(cls, recipe: FinetuneRecipe, records: list[ClipRecord], source: ClipSource, fields,
                settings: RunSettings, train: bool = False):
        """The clips of `records` (some or all of `source`'s) with the task's `fields`."""
        d = recipe.data
        frames = source.frames(d.num_frames, d.image_size, decoder=settings.decoder, max_bytes=d.max_video_bytes)
        return clip_dataset(records, source.root, d.num_frames, d.image_size, train=train, hflip=d.hflip,
                            color_jitter=d.color_jitter, seed=recipe.seed, extras=fields, frames=frames)

    @classmethod
    def read_split(cls, recipe: FinetuneRecipe, manifest: str, train: bool) -> tuple[list[ClipRecord], ClipSource]:
        """A split's records, checked for the task's fields, and the source they came from."""
        key = "data.train" if train else "data.val"
        source = open_clips(manifest, recipe.data.format, recipe.data.root, key)
        cls.check_records(recipe, source.records, manifest, train)
        return source.records, source

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        net = unwrap(model)
        records, source = self.val
        metrics = self.evaluate_split(self.recipe, net, records, source, self.tokens, self.classes, self.settings)
        return {f"val_{k}": v for k, v in metrics.items()}

    def export(self, model: nn.Module, directory: Path) -> Path:
        return export_model(unwrap(model), directory, self.vocab, self.name, classes=self.classes)

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate_split(cls, recipe: FinetuneRecipe, net: EViLM, records: list[ClipRecord], source: ClipSource,
                       tokens: TextTokens, classes: list[str] | None, settings: RunSettings,
                       saved: dict | None = None, out: PredictionRows | None = None) -> dict[str, float]:
        """The task's metrics on one split (`saved`: the checkpoint's config, when evaluating one;
        `out`: a PredictionRows that collects one row per item, `evaluate --predictions`)."""
        raise NotImplementedError


def _parts(loss: torch.Tensor, **extra: torch.Tensor) -> dict[str, float]:
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in extra.items()}}


class QATask(FinetuneTask):
    """Open-ended QA as classification over the answer vocabulary (`classes`, most frequent first).
    QA keeps the `qa.num_answers` most frequent training answers and trains on the questions whose
    answer is among them; evaluation still counts every question."""

    name, needs, keep = "qa", ("question", "answer"), ("qa",)

    @classmethod
    def select(cls, recipe, records):
        answers = answer_vocab([r.answer for r in records], recipe.qa.num_answers)
        known = set(answers)
        kept = [r for r in records if normalize_answer(r.answer) in known]
        log.info("qa: %d answers cover %d of %d training questions (the others are not trained on)", len(answers),
                 len(kept), len(records))
        return kept, answers

    @classmethod
    def attach(cls, net, classes):
        attach_head(net, "qa", len(classes))

    @classmethod
    def fields(cls, recipe, tokens, classes, records=None):
        return QAFields(tokens, classes)

    @classmethod
    def head_classes(cls, loaded):
        return head_classes(loaded, "qa")

    def loss(self, model, batch, gen):
        out = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        logits = unwrap(model).heads["qa"](out["cls"]).float()
        loss = F.cross_entropy(logits, batch["answer"])  # training records are all in the vocabulary
        return loss, _parts(loss, acc=(logits.argmax(-1) == batch["answer"]).float().mean())

    @classmethod
    def evaluate_split(cls, recipe, net, records, source, tokens, classes, settings, saved=None, out=None):
        data = cls.dataset(recipe, records, source, QAFields(tokens, classes), settings)
        return evaluate_qa(net, data, classes, recipe.data, settings.torch_device, out)


class MCTask(FinetuneTask):
    """Multiple choice: cross-entropy over the options' VTM match scores. A training record without
    `options` gets its caption among mc.num_options - 1 captions of other training clips."""

    name, needs, keep = "mc", ("options",), ("vtm",)

    @classmethod
    def check_records(cls, recipe, records, manifest, train):
        check_mc_records(records, manifest, train, recipe.mc.num_options)

    @classmethod
    def fields(cls, recipe, tokens, classes, records=None):
        pool = [r.caption for r in records if r.caption] if records is not None else None
        return MCFields(tokens, recipe.mc.num_options, pool)

    def loss(self, model, batch, gen):
        scores = option_scores(model, batch["pixels"], batch["option_ids"], batch["option_mask"])
        loss = F.cross_entropy(scores, batch["answer"])
        return loss, _parts(loss, acc=(scores.argmax(-1) == batch["answer"]).float().mean())

    @classmethod
    def evaluate_split(cls, recipe, net, records, source, tokens, classes, settings, saved=None, out=None):
        data = cls.dataset(recipe, records, source, MCFields(tokens, recipe.mc.num_options), settings)
        return evaluate_mc(net, data, recipe.data, settings.torch_device, out)


class RetrievalTask(FinetuneTask):
    """Text-to-video retrieval with the dual encoder: symmetric InfoNCE with the learned
    temperature; rows of the same video in a batch are all positives."""

    name, needs, keep = "retrieval", ("caption",), ("retrieval", "logit_scale")

    def __init__(self, recipe, net, vocab, settings, val=None, classes=None, tokens=None):
        super().__init__(recipe, net, vocab, settings, val, classes, tokens)
        with torch.no_grad():  # the recipe's initial temperature (a resumed run then loads its own)
            net.logit_scale.fill_(math.log(1.0 / recipe.retrieval.temperature_init))

    def loss(self, model, batch, gen):
        out = model(batch["pixels"], batch["input_ids"], batch["attention_mask"], mode="unimodal")
        scale = unwrap(model).logit_scale
        loss = global_contrastive_loss(out["video"], out["text"], scale, batch["video"])  # all ranks' clips
        return loss, _parts(loss, temperature=1.0 / logit_scale_value(scale))

    @classmethod
    def evaluate_split(cls, recipe, net, records, source, tokens, classes, settings, saved=None, out=None, rerank=0):
        """`rerank` > 0: also each text's top-`rerank` clips re-scored by the VTM head (rerank.py)."""
        return evaluate_retrieval(net, records, source, recipe.data, tokens, settings, rerank=rerank, out=out)


def head_classes(loaded, task: str) -> list[str]:
    """The classes of a loaded checkpoint's `task` head; an error when it has none."""
    if task not in loaded.classes:
        raise EvilmError(f"checkpoint {loaded.directory} has no {task} head (its task: "
                         f"{loaded.task or 'pre-training'}); "
                         f"fine-tune it with `evilm finetune` first (zero-shot evaluation exists for mc and retrieval)")
    return loaded.classes[task]


# ---------------------------------------------------------------------------- scoring and metrics


def option_scores(model: nn.Module, pixels: torch.Tensor, option_ids: torch.Tensor,
                  option_mask: torch.Tensor) -> torch.Tensor:
    """pixels [B, T, 3, H, W], options [B, K, L] -> match log-odds [B, K] (float32), through the
    model's forward (the training step: DDP sees one forward)."""
    out = model(pixels, option_ids, option_mask, mode="options")
    return match_log_odds(unwrap(model), out["cls"])  # [B, K]


def qa_metrics(predictions: list[str], gold: list[str], answers: list[str]) -> dict[str, float]:
    """Accuracy over every example (out-of-vocabulary gold answers can never match), how many
    gold answers were out of vocabulary, and always answering the most frequent training answer."""
    vocab = set(answers)
    return {"accuracy": accuracy(predictions, gold), "majority_baseline": accuracy([answers[0]] * len(gold), gold),
            "oov_answers": sum(g not in vocab for g in gold), "num_examples": len(gold)}


def _records(dataset, batch: dict) -> list[ClipRecord]:
    return [dataset.records[i] for i in batch["index"].tolist()]


def _asked(record: ClipRecord) -> dict:
    return {"key": escape_key(record.video), **({"question": record.question} if record.question else {})}


@torch.no_grad()
def evaluate_qa(net: EViLM, dataset, answers: list[str], data: DataConfig, device: torch.device,
                out: PredictionRows | None = None) -> dict[str, float]:
    counts: dict = {"skipped": 0}
    preds, gold = [], []
    for batch in eval_batches(dataset, data.batch_size, data.num_workers, device, counts):
        cls = joint_cls(net, video_tokens(net, batch["pixels"]), [1] * batch["size"], batch["input_ids"],
                        batch["attention_mask"])
        logits = require_finite(answer_logits(net, cls), "answer scores")
        best = [answers[i] for i in logits.argmax(-1).tolist()]
        if out is not None:
            for record, probs, said, truth in zip(_records(dataset, batch), logits.softmax(-1), best,
                                                  batch["answer_text"]):
                out.rows.append({**_asked(record), "gold": truth, **predictions.answers(probs, answers, out.k),
                                 "correct": said == truth})
        preds += best
        gold += batch["answer_text"]
    return {**qa_metrics(preds, gold, answers), "skipped": counts["skipped"]}


@torch.no_grad()
def evaluate_mc(net: EViLM, dataset, data: DataConfig, device: torch.device,
                out: PredictionRows | None = None) -> dict[str, float]:
    counts: dict = {"skipped": 0}
    preds, gold, k = [], [], 0
    for batch in eval_batches(dataset, data.batch_size, data.num_workers, device, counts):
        b, k = batch["option_ids"].shape[:2]
        cls = joint_cls(net, video_tokens(net, batch["pixels"]), [k] * b, batch["option_ids"].flatten(0, 1),
                        batch["option_mask"].flatten(0, 1))
        scores = require_finite(match_log_odds(net, cls).view(b, k), "option scores")
        if out is not None:
            for record, row, answer in zip(_records(dataset, batch), scores, batch["answer"].tolist()):
                chosen = predictions.options(row, record.options)
                out.rows.append({**_asked(record), **chosen, "gold": answer, "correct": chosen["chosen"] == answer})
        preds += scores.argmax(-1).tolist()
        gold += batch["answer"].tolist()
    return {"accuracy": accuracy(preds, gold), "chance": 100.0 / k if k else 0.0, "num_examples": len(gold),
            "skipped": counts["skipped"]}


@torch.no_grad()
def evaluate_retrieval(net: EViLM, records: list[ClipRecord], source: ClipSource, data: DataConfig, tokens: TextTokens,
                       settings: RunSettings, rerank: int = 0, out: PredictionRows | None = None) -> dict[str, float]:
    """Dual-encoder retrieval: each distinct clip embedded once, each caption once, one T x V
    similarity (no pairwise cross scoring). Captions of undecodable clips leave the query set.
    `source`: where the records came from (their videos' root, or the shard set with the frames).
    `rerank` > 0 adds "rerank_*" metrics: each text's top-`rerank` clips re-scored by the VTM head
    on the joint pass (finetune/rerank.py), from the video tokens the embedding pass kept."""
    first = {r.video: r for r in reversed(records)}  # the first record of each video
    videos = list(dict.fromkeys(r.video for r in records))
    counts, device = {"skipped": 0}, settings.torch_device
    frames = source.frames(data.num_frames, data.image_size, decoder=settings.decoder,
                           max_bytes=data.max_video_bytes)
    clips = clip_dataset([ClipRecord(video=v, sample=first[v].sample) for v in videos], source.root, data.num_frames,
                         data.image_size, frames=frames)
    video_emb, kept_tokens, kept = [], [], []
    for batch in eval_batches(clips, data.batch_size, data.num_workers, device, counts):
        tokens_v = video_tokens(net, batch["pixels"])  # [B, N, D] e^V, encoded once
        video_emb.append(net._video_embedding(tokens_v).float())
        if rerank > 0:
            kept_tokens.append(tokens_v.cpu())
        kept += batch["video"]
    column = {v: i for i, v in enumerate(kept)}
    queries = [r for r in records if r.video in column]
    if not queries:
        raise EvilmError("retrieval evaluation: no clip of the split could be decoded")
    captions = [r.caption or "" for r in queries]
    text_emb, text_ids, text_mask = embed_texts(net, tokens, captions, data.batch_size, device)
    sim = similarities(text_emb, torch.cat(video_emb)).cpu()  # [T, V]
    gold = torch.tensor([column[r.video] for r in queries])  # [T]
    metrics = retrieval_metrics(sim, gold)
    if out is not None:
        out.rows += retrieval_rows(sim, gold, kept, captions, out.k)
    if rerank > 0:
        metrics.update(rerank_metrics(net, torch.cat(kept_tokens), text_ids, text_mask, sim, gold, rerank,
                                      data.batch_size, device))
    return {**metrics, "num_examples": len(queries), "num_videos": len(kept), "skipped": counts["skipped"]}


def retrieval_rows(sim: torch.Tensor, gold: torch.Tensor, keys: list[str], captions: list[str], k: int) -> list[dict]:
    """One row per caption (text-to-video: its clip's rank, the top-k keys) and one per clip
    (video-to-text: the rank of its best caption among the other clips' captions, the top-k captions)."""
    keys = [escape_key(key) for key in keys]
    ranks = retrieval_ranks(sim, gold).tolist()
    rows = [{"direction": "t2v", "caption": caption, "key": keys[g], "rank": rank,
             "top": predictions.top_keys(row, keys, k)}
            for caption, g, rank, row in zip(captions, gold.tolist(), ranks, sim)]
    v2t = video_to_text_ranks(sim, gold)
    rows += [{"direction": "v2t", "key": keys[v], "rank": rank, **predictions.texts(sim[:, v], captions, k)}
             for v, rank in v2t.items()]
    return rows
