"""TextTokens (the `tokenizers` BERT pipeline) gives exactly transformers' BertTokenizerFast ids
over the same vocab.txt: captions, question/option pairs, truncation, accents, unknown words."""

from __future__ import annotations

import pytest
import torch

from evilm_core.data.records.manifest import read_manifest
from evilm_core.text.tokens import TextTokens
from evilm_core.text.vocab import build_vocab, save_vocab

ODD = ["", "A RED circle, moves LEFT!", "café crème brûlée", "a dog playing frisbee", "zzz " * 40,
       "chinese 中文 chars", "tab\tand\nnewline", "unbelievable redness"]


@pytest.fixture(scope="module")
def vocab_dir(synth_dir, tmp_path_factory):
    records = read_manifest(synth_dir / "train.jsonl")
    directory = tmp_path_factory.mktemp("vocab")
    save_vocab(build_vocab([r.caption for r in records] + ["red", "ness", "##ness", "café"]), directory)
    return directory, records


def reference(directory, max_len):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True, local_files_only=True)


@pytest.mark.parametrize("max_len", [8, 24])
def test_same_ids_as_bert_tokenizer_fast(vocab_dir, max_len):
    directory, records = vocab_dir
    ref, mine = reference(directory, max_len), TextTokens(directory, max_len)
    texts = [r.caption for r in records[:40]] + ODD
    for text in texts:
        want = ref(text, max_length=max_len, truncation=True, padding="max_length", return_tensors="pt")
        ids, mask = mine(text)
        assert torch.equal(ids, want["input_ids"][0]) and torch.equal(mask, want["attention_mask"][0]), text
    ids, mask = mine.batch(texts)
    assert ids.shape == (len(texts), max_len) and torch.equal(ids[0], mine(texts[0])[0])
    for question, option in [("what moves left?", "a red circle"), ("what colour " * 10, "blue"), ("q", "")]:
        if not option:
            continue
        want = ref(question, option, max_length=max_len, truncation="longest_first", padding="max_length",
                   return_tensors="pt")
        ids, mask = mine(question, option)
        assert torch.equal(ids, want["input_ids"][0]) and torch.equal(mask, want["attention_mask"][0])


def test_unknown_words_are_named(vocab_dir):
    directory, _ = vocab_dir
    tokens = TextTokens(directory, 24)
    assert tokens.unknown_words("a dog playing frisbee, a red circle") == ["dog", "playing", "frisbee"]
    assert tokens.unknown_words("a red circle") == []
