"""Text -> token ids: transformers' `BertTokenizerFast` over a run's own vocab.txt (no network).

`TextTokens` is what every dataset and the query side use: a caption, or a (question, option)
pair, to fixed-length ids and attention mask. The tokenizer is loaded lazily in each process
(tokenizers objects do not cross process boundaries).
"""

from __future__ import annotations

from pathlib import Path

import torch

from evilm_core.data.vocab import read_vocab


def load_bert_tokenizer(directory: str | Path):
    """A transformers `BertTokenizerFast` over `directory/vocab.txt` (no network)."""
    from transformers import BertTokenizerFast

    read_vocab(directory)  # validate first, for a clear message
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True, local_files_only=True)


class TextTokens:
    """Caption -> fixed-length ids and mask with BertTokenizerFast, loaded lazily per process."""

    def __init__(self, vocab_dir: str | Path, max_len: int):
        self.vocab_dir, self.max_len = str(vocab_dir), max_len
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_bert_tokenizer(self.vocab_dir)
        return self._tok

    def __call__(self, text: str, second: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One text, or a (question, option) pair as [CLS] q [SEP] o [SEP], padded to max_len."""
        if not second:
            enc = self.tokenizer(text or "", max_length=self.max_len, truncation=True, padding="max_length",
                                 return_tensors="pt")
        else:
            enc = self.tokenizer(text, second, max_length=self.max_len, truncation="longest_first",
                                 padding="max_length", return_tensors="pt")
        return enc["input_ids"][0], enc["attention_mask"][0]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Many texts -> ids and mask [B, max_len]."""
        pairs = [self(t) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
