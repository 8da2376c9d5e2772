"""Text -> token ids: BERT's WordPiece tokenisation over a run's own vocab.txt (no network).

`TextTokens` is what every dataset and the query side use: a caption, or a (question, option)
pair, to fixed-length ids and attention mask. It runs the `tokenizers` library's BERT pipeline
directly (normaliser, pre-tokenizer, WordPiece, [CLS] a [SEP] b [SEP]): the same ids as
transformers' `BertTokenizerFast` over the same vocab.txt (tests/data/test_text.py checks it),
without importing transformers, which costs seconds of start-up in a one-query process
(docs/performance.md, "Start-up"). The tokenizer is built lazily in each process (tokenizers
objects do not cross process boundaries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evilm_core.text.vocab import read_vocab


def load_bert_tokenizer(directory: str | Path, max_len: int):
    """A `tokenizers` BERT WordPiece tokenizer over `directory/vocab.txt`: lower case, accents
    stripped, truncation to `max_len` (longest first for pairs) and padding to `max_len`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import BertProcessing

    words = read_vocab(directory)  # validates first, for a clear message
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = BertPreTokenizer()
    tok.post_processor = BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok.enable_truncation(max_len, strategy="longest_first")
    tok.enable_padding(length=max_len, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tok


class TextTokens:
    """Caption -> fixed-length ids and mask, the tokenizer built lazily per process."""

    def __init__(self, vocab_dir: str | Path, max_len: int):
        self.vocab_dir, self.max_len = str(vocab_dir), max_len
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_bert_tokenizer(self.vocab_dir, self.max_len)
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, text: str, second: str | None = None):
        """One text, or a (question, option) pair as [CLS] q [SEP] o [SEP], padded to max_len ->
        (ids, mask) long tensors [max_len]."""
        import torch

        enc = self.tokenizer.encode(text or "", second) if second else self.tokenizer.encode(text or "")
        return torch.tensor(enc.ids, dtype=torch.long), torch.tensor(enc.attention_mask, dtype=torch.long)

    def batch(self, texts: list[str], as_numpy: bool = False):
        """Many texts -> ids and mask [B, max_len]: long tensors, or int64 arrays with `as_numpy`
        (the ONNX query path, which never imports torch)."""
        encs = self.tokenizer.encode_batch([t or "" for t in texts])
        ids = np.array([e.ids for e in encs], dtype=np.int64).reshape(len(encs), self.max_len)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64).reshape(len(encs), self.max_len)
        if as_numpy:
            return ids, mask
        import torch

        return torch.from_numpy(ids), torch.from_numpy(mask)

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` the vocabulary lacks (each becomes [UNK], i.e. carries no meaning);
        punctuation is not counted."""
        tok = self.tokenizer
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]
        unk = tok.token_to_id("[UNK]")
        return list(dict.fromkeys(w for w in words if any(c.isalnum() for c in w)
                                  and unk in tok.encode(w, add_special_tokens=False).ids))

