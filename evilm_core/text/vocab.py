"""Word vocabulary built from captions (the paper keeps only frequent words, section 4.1).

Words are produced by BERT's own normaliser and pre-tokenizer (lower case, accents stripped,
punctuation split), so every vocabulary entry is a whole word that `BertTokenizerFast` maps to
exactly one id and anything else becomes [UNK]. The same vocabulary, minus the special tokens,
gives the tokenizer's K caption-word targets (paper eq. 5-6).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text

if TYPE_CHECKING:
    import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"


def _word_splitter():
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    return lambda text: [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def split_words(text: str) -> list[str]:
    """The words BERT's basic tokenisation sees in `text`."""
    return _word_splitter()(text)


def build_vocab(texts: Iterable[str], max_words: int | None = None, top_share: float | None = None,
                min_count: int = 1) -> list[str]:
    """Special tokens, then words by descending frequency (ties alphabetical, so deterministic).

    `max_words` keeps at most that many words; `top_share` keeps that share of the distinct
    words (the paper keeps the top 30%); `min_count` drops rarer words. All limits combine.
    """
    split = _word_splitter()
    counts = Counter(w for t in texts if t for w in split(t))
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
                   key=lambda w: (-counts[w], w))
    if top_share is not None:
        if not 0 < top_share <= 1:
            raise EvilmError(f"top_share must be in (0, 1], got {top_share}")
        words = words[: max(1, round(len(words) * top_share))]
    if max_words is not None:
        words = words[:max_words]
    return list(SPECIAL_TOKENS) + words


def save_vocab(vocab: list[str], directory: str | Path) -> Path:
    return atomic_write_text(Path(directory) / VOCAB_FILE, "\n".join(vocab) + "\n", fsync=False)


def read_vocab(path: str | Path) -> list[str]:
    """Read vocab.txt (a file, or a directory holding one) and check its special tokens."""
    path = Path(path)
    path = path / VOCAB_FILE if path.is_dir() else path
    if not path.is_file():
        raise EvilmError(f"vocabulary file not found: {path}")
    vocab = path.read_text(encoding="utf-8").splitlines()
    if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise EvilmError(f"{path}: must start with the special tokens {', '.join(SPECIAL_TOKENS)}")
    return vocab


class WordTargets:
    """Caption -> K-way multi-hot target over the non-special vocabulary words."""

    def __init__(self, vocab: list[str]):
        self.words = vocab[len(SPECIAL_TOKENS):]
        self.index = {w: i for i, w in enumerate(self.words)}
        self._split = None  # built lazily: tokenizers objects do not cross process boundaries

    def __getstate__(self):
        return {"words": self.words, "index": self.index, "_split": None}

    def __len__(self) -> int:
        return len(self.words)

    def __call__(self, caption: str) -> torch.Tensor:
        import torch  # here, so reading a vocab (the query path) does not import torch

        if self._split is None:
            self._split = _word_splitter()
        target = torch.zeros(len(self.words))
        ids = [self.index[w] for w in self._split(caption or "") if w in self.index]
        target[ids] = 1.0
        return target
