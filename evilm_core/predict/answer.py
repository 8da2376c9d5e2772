"""One question about one clip at a time, with the model loaded once: what `evilm serve --qa`
answers (docs/serving.md). The same heads and lines as `evilm predict` (predict/heads.py), so
the service and the command give the same answer for the same clip and question.
"""

from __future__ import annotations

import threading

import torch

from evilm_core.data.clips import ClipSource
from evilm_core.data.dataset import clip_dataset, collate_clips
from evilm_core.data.records.record import ClipRecord
from evilm_core.engine.runtime import to_device
from evilm_core.errors import EvilmError
from evilm_core.predict.checkpoint import CheckpointInfo, describe_checkpoint
from evilm_core.predict.heads import Head, PairFields
from evilm_core.predict.inputs import Clip, Item, Plan
from evilm_core.settings import RunSettings
from evilm_core.text.tokens import TextTokens

MAX_OPTIONS = 32  # options in one multiple-choice request at most


def answering_checkpoint(checkpoint: str) -> CheckpointInfo:
    """The checkpoint, refused unless it answers questions about a clip (qa, mc, pre-trained)."""
    info = describe_checkpoint(checkpoint)
    if info.task not in ("qa", "mc", "pretrained"):
        raise info.refuse("--qa needs a checkpoint that answers questions about a clip (qa, mc or pre-trained)")
    return info


class ClipAnswerer:
    """A QA, MC or pre-trained checkpoint's answering head over single clips; thread-safe (one
    clip at a time: a request holds the model for a few hundred milliseconds on a CPU)."""

    def __init__(self, checkpoint: str, settings: RunSettings, num_frames: int = 4):
        self.info = answering_checkpoint(checkpoint)
        from evilm_core.models.loading import load_checkpoint

        self.settings, self.num_frames = settings, min(num_frames, self.info.model.max_frames)
        self.net = load_checkpoint(self.info.directory).model.eval().to(settings.torch_device)
        self.tokens = TextTokens(self.info.directory, self.info.model.max_text_len)
        self.head = Head("qa" if self.info.task == "qa" else "mc", self.info.classes)
        self._lock = threading.Lock()

    @property
    def takes(self) -> str:
        return "a question" if self.head.kind == "qa" else "options (and an optional question)"

    def answer(self, source: ClipSource, video: str, sample: int | None, question: str | None,
               options: list[str] | None, k: int = 5) -> dict:
        """The clip's answer line (predict's): qa -> top-k answers; mc -> each option's score and
        the chosen one. An unreadable clip is an EvilmError naming it and why."""
        item = self._item(question, options)
        clip = Clip(ClipRecord(video=video, sample=sample), [item])
        frames = source.frames(self.num_frames, self.info.model.image_size, decoder=self.settings.decoder)
        dataset = clip_dataset([clip.record], source.root, self.num_frames, self.info.model.image_size,
                               frames=frames, extras=PairFields(self.tokens, [clip.items]))
        batch = collate_clips([dataset[0]])
        if batch["skipped"]:
            _, reason, detail = batch["skipped"][0]
            raise EvilmError(f"clip {video} cannot be read ({reason}: {detail})")
        with self._lock, torch.no_grad(), self.settings.autocast():
            scores = self.head.compute(self.net, to_device(batch, self.settings.torch_device))["scores"]
        [row] = self.head.rows(clip, scores[0], Plan(self.head.kind, [clip], source), k)
        if "error" in row:
            raise EvilmError(f"clip {video}: {row['detail']}")
        return row

    def _item(self, question: str | None, options: list[str] | None) -> Item:
        question = question.strip() if isinstance(question, str) else None
        if self.head.kind == "qa":
            if options is not None:
                raise self.info.refuse("options do not apply to a qa checkpoint")
            if not question:
                raise self.info.refuse("the question is empty")
            return Item(question)
        if not options or not all(isinstance(o, str) and o.strip() for o in options):
            raise self.info.refuse("give the options to choose from, each a non-empty text")
        if len(options) > MAX_OPTIONS:
            raise EvilmError(f"{len(options)} options; at most {MAX_OPTIONS}")
        return Item(question or None, [o.strip() for o in options])
