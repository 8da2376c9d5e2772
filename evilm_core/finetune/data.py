"""The tasks' record fields (the `extras` a ClipDataset merges into each clip's item), the
class vocabularies (QA answers, probe labels) and the checks that records carry what a task reads.

Randomness per item (augmentation, and the distractor captions of caption-only multiple
choice records) comes from (seed, epoch, index), like every dataset of the project.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from evilm_core.data.dataset import Sample
from evilm_core.data.records.record import ClipRecord
from evilm_core.errors import EvilmError
from evilm_core.text.tokens import TextTokens


def normalize_answer(answer) -> str:
    """QA answers compare lower-cased with whitespace collapsed ("Two " == "two")."""
    return " ".join(str(answer).split()).lower()


def answer_vocab(answers: list[str], limit: int) -> list[str]:
    """The `limit` most frequent (normalised) answers, most frequent first, ties alphabetical:
    answers[0] is the majority answer."""
    counts = Counter(normalize_answer(a) for a in answers)
    counts.pop("", None)
    return sorted(counts, key=lambda a: (-counts[a], a))[:limit]


def label_vocab(labels: list[str]) -> list[str]:
    """Probe classes: the distinct training labels, sorted."""
    return sorted({str(label).strip() for label in labels})


def require_fields(records: list[ClipRecord], names: tuple[str, ...], manifest: str | Path, task: str) -> None:
    """Every record must carry the fields the task reads; the error names file, record and field."""
    for i, record in enumerate(records):
        missing = [n for n in names if getattr(record, n) in (None, "", [])]
        if missing:
            raise EvilmError(f"{manifest}: record {i + 1} ({record.video}) has no '{missing[0]}', which task '{task}' "
                             f"needs (fields: {', '.join(names)})")


def texts_for_vocab(records: list[ClipRecord]) -> list[str]:
    """Every text a task feeds the text encoder: captions, questions, options."""
    out = []
    for r in records:
        out += [t for t in (r.caption, r.question) if t]
        out += list(r.options or [])
    return out


class QAFields:
    """question -> input ids; answer -> index in the answer vocabulary (-1: outside it)."""

    def __init__(self, tokens: TextTokens, answers: list[str]):
        self.tokens, self.index = tokens, {a: i for i, a in enumerate(answers)}

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        ids, mask = self.tokens(record.question or "")
        gold = normalize_answer(record.answer)
        return {"input_ids": ids, "attention_mask": mask, "answer": self.index.get(gold, -1), "answer_text": gold}


def caption_options(caption: str, pool: list[str], k: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """The caption among k-1 other distinct captions of `pool`, at a random position."""
    chosen: list[str] = []
    for _ in range(100 * k):  # rejection sampling, bounded: a pool of repeats cannot loop forever
        other = pool[int(rng.integers(len(pool)))] if pool else caption
        if other != caption and other not in chosen:
            chosen.append(other)
        if len(chosen) == k - 1:
            break
    if len(chosen) < k - 1:
        raise EvilmError(f"too few distinct captions to draw {k - 1} distractors for '{caption}'")
    answer = int(rng.integers(k))
    chosen.insert(answer, caption)
    return chosen, answer


class MCFields:
    """options -> ids/mask [K, L] (question paired with each option when there is one); a
    record without options gets its caption among num_options - 1 captions of `pool`."""

    def __init__(self, tokens: TextTokens, num_options: int, pool: list[str] | None = None):
        self.tokens, self.num_options, self.pool = tokens, num_options, pool

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        if record.options:
            options, answer = record.options, int(record.answer)
        else:
            options, answer = caption_options(record.caption or "", self.pool or [], self.num_options, sample.rng)
        pairs = [self.tokens(record.question, o) if record.question else self.tokens(o)
                 for o in options]
        return {"option_ids": torch.stack([p[0] for p in pairs]), "option_mask": torch.stack([p[1] for p in pairs]),
                "answer": answer}


class CaptionFields:
    def __init__(self, tokens: TextTokens):
        self.tokens = tokens

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        ids, mask = self.tokens(record.caption or "")
        return {"input_ids": ids, "attention_mask": mask}


class LabelFields:
    def __init__(self, labels: list[str]):
        self.index = {label: i for i, label in enumerate(labels)}

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        label = str(record.label).strip()
        return {"label": self.index.get(label, -1), "label_text": label}


def check_mc_records(records: list[ClipRecord], manifest: str | Path, train: bool, num_options: int) -> int:
    """Multiple choice records: options with an in-range int answer (or, in training only, a
    caption to draw options around); one option count per manifest. Returns that count."""
    counts = set()
    for i, r in enumerate(records):
        where = f"{manifest}: record {i + 1} ({r.video})"
        if r.options:
            if isinstance(r.answer, bool) or not isinstance(r.answer, int) or not 0 <= r.answer < len(r.options):
                raise EvilmError(f"{where}: 'answer' must be the index of the right option (0-{len(r.options) - 1}), "
                                 f"got {r.answer!r}")
            counts.add(len(r.options))
        elif train and r.caption:
            counts.add(num_options)
        else:
            raise EvilmError(f"{where}: has no 'options'" + (" and no 'caption' to draw options around" if train else
                                                              "; evaluation needs the options and the answer index"))
    if len(counts) > 1:
        raise EvilmError(f"{manifest}: records have different numbers of options ({sorted(counts)}); use one count "
                         "per manifest (mc.num_options for caption-only records)")
    return counts.pop()
