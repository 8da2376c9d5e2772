"""Word vocabulary: frequency order, limits, file round trip, BertTokenizerFast, word targets."""

from __future__ import annotations

import pytest

from evilm_core.errors import EvilmError
from evilm_core.text.tokens import load_bert_tokenizer
from evilm_core.text.vocab import SPECIAL_TOKENS, WordTargets, build_vocab, read_vocab, save_vocab, split_words

CAPTIONS = ["A red circle moves left.", "a Red square grows", "a blue circle moves left", "café"]


def test_split_words_matches_bert_basic_tokenization():
    assert split_words("A Red circle, moves LEFT! Café") == ["a", "red", "circle", ",", "moves", "left", "!", "cafe"]


def test_build_vocab_orders_by_frequency_then_alphabet():
    vocab = build_vocab(CAPTIONS)
    assert tuple(vocab[:5]) == SPECIAL_TOKENS
    words = vocab[5:]
    assert words[:4] == ["a", "circle", "left", "moves"]  # a:3; circle, left, moves, red: 2 each
    assert words[4] == "red"
    assert set(words) == {"a", "circle", "left", "moves", "red", "square", "grows", "blue", ".", "cafe"}


def test_build_vocab_limits():
    assert build_vocab(CAPTIONS, max_words=2)[5:] == ["a", "circle"]
    assert len(build_vocab(CAPTIONS, top_share=0.3)) == 5 + 3  # 10 distinct words -> 3
    assert "blue" not in build_vocab(CAPTIONS, min_count=2)
    with pytest.raises(EvilmError):
        build_vocab(CAPTIONS, top_share=1.5)


def test_vocab_round_trip_and_bert_tokenizer(tmp_path):
    vocab = build_vocab(CAPTIONS)
    save_vocab(vocab, tmp_path)
    assert read_vocab(tmp_path) == vocab
    tok = load_bert_tokenizer(tmp_path, max_len=6)
    assert tok.get_vocab_size() == len(vocab)
    ids = tok.encode("A red circle zebra").ids
    assert ids[0] == vocab.index("[CLS]") and ids[-1] == vocab.index("[SEP]")
    assert ids[1:-1] == [vocab.index("a"), vocab.index("red"), vocab.index("circle"), vocab.index("[UNK]")]
    assert tok.token_to_id("[MASK]") == vocab.index("[MASK]") and tok.token_to_id("[PAD]") == 0


def test_read_vocab_errors(tmp_path):
    with pytest.raises(EvilmError, match="vocabulary file not found"):
        read_vocab(tmp_path / "none.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(EvilmError, match="must start with the special tokens"):
        read_vocab(bad)


def test_word_targets_multi_hot():
    vocab = build_vocab(CAPTIONS)
    targets = WordTargets(vocab)
    assert len(targets) == len(vocab) - 5
    t = targets("a red zebra, red")
    on = {targets.words[i] for i in t.nonzero().flatten().tolist()}
    assert on == {"a", "red"} and t.sum() == 2
