"""Shared assets for the label-cache tests: tiny exported tokenizers, synthetic clips and a small
hand-written cache.

`assets` is built once per test session (module-level cache), because every label test needs the
same ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e"]
_ASSETS: dict = {}


def make_tokenizer(directory: Path, seed: int = 0, image_size: int = 64, codebook_size: int = 32) -> Path:
    from evilm_core.models.tokenizer import CodebookConfig, SemanticTokenizer, TokenizerModelConfig, export_tokenizer

    torch.manual_seed(seed)
    cfg = TokenizerModelConfig(encoder_args=dict(embed_dim=64, depth=1, num_heads=2), image_size=image_size,
                               codebook_size=codebook_size, decoder_depth=1, decoder_dim=32, decoder_heads=2,
                               num_words=5)
    return export_tokenizer(SemanticTokenizer(cfg, CodebookConfig(kmeans_init=False)), VOCAB, directory)


def write_broken(root: Path) -> list[str]:
    """A 0-byte file, a non-video file and a 3-frame clip (fewer frames than candidates);
    returns their manifest paths plus one that does not exist."""
    from evilm_core.data.video.write import write_mp4

    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "garbage.mp4").write_bytes(b"this is not a video" * 64)
    rng = np.random.default_rng(3)
    write_mp4(root / "videos" / "short.mp4", rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8))
    return ["videos/empty.mp4", "videos/garbage.mp4", "videos/short.mp4", "videos/nope.mp4"]


def _manifest(root: Path, name: str, videos: list[str]) -> Path:
    path = root / name
    path.write_text("".join(json.dumps({"video": v, "caption": "a b"}) + "\n" for v in videos))
    return path


def assets(tmp_path_factory) -> dict:
    """tok (seed 0), tok_b (seed 1), tok_big (96 px, 48 codes); data: 12 clips + broken ones with
    manifests `clean.jsonl` (the 12) and `mixed.jsonl` (12 + broken, one duplicate line)."""
    if _ASSETS:
        return _ASSETS
    from evilm_core.prepare.synth import generate

    base = tmp_path_factory.mktemp("label_assets")
    data = base / "synth"
    generate(data, num_videos=12, frames=8, size=64, workers=1)
    clean = sorted(p.relative_to(data).as_posix() for p in (data / "videos").glob("*.mp4"))
    broken = write_broken(data)
    mixed = clean[:5] + broken + clean[5:] + [clean[0]]
    _ASSETS.update(
        tok=make_tokenizer(base / "tok", seed=0), tok_b=make_tokenizer(base / "tok_b", seed=1),
        tok_big=make_tokenizer(base / "tok_big", seed=0, image_size=96, codebook_size=48),
        data=data, clean_videos=clean, broken=broken,
        clean=_manifest(data, "clean.jsonl", clean), mixed=_manifest(data, "mixed.jsonl", mixed))
    return _ASSETS


def read_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (Path(directory) / name).read_bytes()
            for name in ("codes.u16", "frames.i32", "nframes.i32", "status.u8", "keys.txt")}


# A hand-written cache (no tokenizer run): 4 keys, 8 candidates, a 2 x 2 grid, codes below 50.
INFO = {"sha256": "a" * 64, "dir": "/tok", "codebook_size": 50, "image_size": 64, "grid": 2}
KEYS = ["v/0.mp4", "v/1.mp4", "v/2.mp4", "v/3.mp4"]


def random_codes(rng, n, v=2, f=8, g=2):
    return rng.integers(0, 50, (n, v, f, g, g)).astype(np.uint16)


def write_cache(directory, flips=True, keys=KEYS):
    """Rows 0, 2 ok; row 1 missing; row 3 corrupt. Returns the ok codes written ({row: [V, F, g, g]})."""
    from evilm_core.data.label_cache import CORRUPT, MISSING, OK
    from evilm_core.label.writer import CacheWriter, make_meta

    rng = np.random.default_rng(0)
    w = CacheWriter(directory, make_meta(INFO, 8, flips, len(keys), None, {"videos": "v"}), keys)
    codes = random_codes(rng, 2, v=2 if flips else 1)
    frames = np.tile(np.arange(8, dtype=np.int32) * 2, (2, 1))
    w.write([2, 0], codes, frames, np.array([16, 16], np.int32), np.array([OK, OK], np.uint8))
    zeros = np.zeros((2, *codes.shape[1:]), np.uint16)
    w.write([1, 3], zeros, np.zeros((2, 8), np.int32), np.zeros(2, np.int32), np.array([MISSING, CORRUPT], np.uint8))
    w.close()
    return {2: codes[0], 0: codes[1]}
