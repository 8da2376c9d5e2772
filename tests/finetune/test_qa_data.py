"""QA answer vocabulary and honest QA metrics (out-of-vocabulary answers count as wrong, majority
baseline), multiple-choice records and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evilm_core.config.sections import DataConfig
from evilm_core.data.records.record import ClipRecord
from evilm_core.errors import EvilmError
from evilm_core.finetune.data import answer_vocab, caption_options, check_mc_records, normalize_answer
from evilm_core.finetune.tasks import evaluate_qa, qa_metrics
from evilm_core.models.heads import attach_head
from tests.helpers.finetune import ListDataset, clips, texts, tiny_model


def test_answer_vocab_keeps_most_frequent_first_ties_alphabetical():
    answers = ["dog", "Cat ", "cat", "bird", "dog", "cat", "fish", "bird", ""]
    assert normalize_answer("  Two   Cats ") == "two cats"
    assert answer_vocab(answers, 3) == ["cat", "bird", "dog"]  # cat 3; bird, dog 2 (alphabetical); fish 1 dropped
    assert answer_vocab(answers, 10) == ["cat", "bird", "dog", "fish"]  # the empty answer is never a class


def test_qa_metrics_count_out_of_vocabulary_answers_as_wrong():
    answers = ["cat", "dog", "bird"]  # "cat" is the majority training answer
    gold = ["cat", "dog", "fish", "cat", "zebra"]  # fish and zebra are outside the vocabulary
    preds = ["cat", "bird", "cat", "cat", "dog"]
    m = qa_metrics(preds, gold, answers)
    assert m["accuracy"] == pytest.approx(100 * 2 / 5)  # not 2/3: the two OOV questions stay in the count
    assert m["oov_answers"] == 2 and m["num_examples"] == 5
    assert m["majority_baseline"] == pytest.approx(100 * 2 / 5)  # always "cat"


def test_evaluate_qa_reads_the_head_and_counts_every_question():
    net = tiny_model().eval()
    classes = ["one", "two", "three"]
    attach_head(net, "qa", 3)
    pixels, (ids, mask) = clips(5), texts(5)
    with torch.no_grad():
        pred = net.heads["qa"](net(pixels, ids, mask)["cls"]).argmax(-1)
    gold = [classes[int(p)] for p in pred[:3]] + ["seven", "eight"]  # 3 right, 2 outside the vocabulary
    items = [{"pixels": pixels[i], "input_ids": ids[i], "attention_mask": mask[i], "answer_text": gold[i]}
             for i in range(5)]
    m = evaluate_qa(net, ListDataset(items), classes, DataConfig(image_size=64, batch_size=2, num_workers=0),
                    torch.device("cpu"))
    assert m["accuracy"] == pytest.approx(60.0) and m["oov_answers"] == 2 and m["num_examples"] == 5
    assert m["majority_baseline"] == pytest.approx(100 * gold.count("one") / 5)


def test_caption_options_hold_the_caption_at_the_answer_among_distinct_others():
    pool = [f"caption {i}" for i in range(10)] + ["caption 3"] * 5
    options, answer = caption_options("caption 3", pool, 5, np.random.default_rng(0))
    assert len(options) == len(set(options)) == 5 and options[answer] == "caption 3"
    assert (options, answer) == caption_options("caption 3", pool, 5, np.random.default_rng(0))
    with pytest.raises(EvilmError, match="too few distinct captions"):
        caption_options("a", ["a", "b"], 5, np.random.default_rng(0))


def test_mc_records_are_checked_with_file_and_record_named():
    good = [ClipRecord(video="v.mp4", options=["a", "b", "c"], answer=2)]
    assert check_mc_records(good, "m.jsonl", train=False, num_options=5) == 3
    assert check_mc_records([ClipRecord(video="c.mp4", caption="x")], "m.jsonl", train=True, num_options=5) == 5
    with pytest.raises(EvilmError, match=r"m.jsonl: record 1 \(v.mp4\).*answer"):
        check_mc_records([ClipRecord(video="v.mp4", options=["a", "b"], answer=2)], "m.jsonl", False, 5)
    with pytest.raises(EvilmError, match="no 'options'"):
        check_mc_records([ClipRecord(video="c.mp4", caption="x")], "m.jsonl", train=False, num_options=5)
    with pytest.raises(EvilmError, match="different numbers of options"):
        check_mc_records(good + [ClipRecord(video="w.mp4", options=["a", "b"], answer=0)], "m.jsonl", False, 5)
