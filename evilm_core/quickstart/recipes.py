"""The quickstart's recipes, sized to finish on a 2-core CPU in minutes.

They are written into the quickstart directory as ordinary YAML recipes (`DIR/recipes/`), so
every stage can be re-run, changed and continued with the individual commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evilm_core.config.loader import save_yaml
from evilm_core.models.config import MODEL_SIZES
from evilm_core.recipes import build_recipe


@dataclass(frozen=True)
class QuickstartSize:
    model: str  # the E-ViLM size (evilm_core/models/config.py, MODEL_SIZES): frames, codebook, widths
    videos: int  # synthetic clips in all (70% train, 10% val, 20% test)
    frames: int  # frames rendered per clip
    num_frames: int  # T frames sampled per clip by every stage
    batch_size: int  # clips per step
    tokenizer_depth: int  # ViT/32 blocks of the tokenizer
    tokenizer_epochs: int  # stage 1 passes over the training clips
    pretrain_epochs: int  # stage 2 passes
    retrieval_epochs: int  # fine-tuning passes, text-to-video retrieval
    qa_epochs: int  # fine-tuning passes, open-ended QA

    @property
    def image_size(self) -> int:  # frame size in pixels, the model's (a multiple of 32: regions are 32 x 32)
        return MODEL_SIZES[self.model]["image_size"]

    @property
    def codebook_size(self) -> int:  # tokenizer codes (= MVM classes), the model's
        return MODEL_SIZES[self.model]["codebook_size"]


SIZES = {
    # The default: the whole run in a few minutes on this project's 2-core CPU reference machine.
    "default": QuickstartSize(model="quickstart", videos=800, frames=8, num_frames=4, batch_size=16, tokenizer_depth=2,
                              tokenizer_epochs=4, pretrain_epochs=8, retrieval_epochs=8, qa_epochs=5),
    # For tests: every stage runs, nothing is expected to learn much.
    "tiny": QuickstartSize(model="quickstart-tiny", videos=40, frames=8, num_frames=2, batch_size=8, tokenizer_depth=1,
                           tokenizer_epochs=1, pretrain_epochs=1, retrieval_epochs=1, qa_epochs=1),
}


def write_recipe(raw: dict, path: Path):
    """Write a recipe dict as YAML (so the individual commands can re-run it) and return it typed."""
    save_yaml(raw, path)
    return build_recipe(raw, path)


def _data(out: Path, s: QuickstartSize, **extra) -> dict:
    shards = out / "shards"  # every stage reads the frames `evilm data shards` decoded once
    return {"train": str(shards / "train"), "val": str(shards / "val"), "test": str(shards / "test"),
            "num_frames": s.num_frames, "image_size": s.image_size, "batch_size": s.batch_size,
            "num_workers": 0,  # decoding 96 px clips is cheap; worker start-up would cost more than it saves
            "hflip": False, **extra}  # captions say "left"/"right"


def _train(epochs: int) -> dict:
    return {"epochs": epochs, "precision": "fp32", "log_every": 5, "keep_checkpoints": 1}


def _model(s: QuickstartSize) -> dict:
    return {"size": s.model}


def tokenizer_recipe(out: Path, s: QuickstartSize, seed: int) -> dict:
    return {
        "kind": "tokenizer", "seed": seed, "data": _data(out, s),
        "model": {"encoder": "vit_base_patch32_clip_224",
                  "encoder_args": {"embed_dim": 192, "depth": s.tokenizer_depth, "num_heads": 3},
                  "pretrained": False, "code_dim": 32, "codebook_size": s.codebook_size, "decoder_depth": 1,
                  "decoder_dim": 128, "decoder_heads": 4},
        "codebook": {"kmeans_init": True, "ema": True, "ema_decay": 0.99, "restart_unused": 10},
        "loss": {"word_loss": "focal", "gamma_pos": 0.0, "gamma_neg": 1.0},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_steps": 10, "schedule": "cosine", "grad_clip": 1.0},
        "train": _train(s.tokenizer_epochs), "output": {"dir": str(out / "tokenizer")},
    }


def pretrain_recipe(out: Path, s: QuickstartSize, seed: int, loss: dict | None = None) -> dict:
    return {
        "kind": "pretrain", "seed": seed, "data": _data(out, s, val=None), "model": _model(s),
        "masking": {"video_ratio": 0.4, "min_block": 2, "text_ratio": 0.15, "vtm_negatives": 0.5},
        "loss": loss or {"mlm": 1.0, "vtm": 1.0, "mvm": 1.0, "vtc": 1.0},
        "mvm": {"targets": "cache", "labels": str(out / "labels"), "tokenizer": str(out / "tokenizer"),
                "candidates": 2 * s.num_frames},
        "optim": {"lr": 5.0e-4, "weight_decay": 0.01, "warmup_steps": 20, "schedule": "cosine", "grad_clip": 1.0},
        "train": _train(s.pretrain_epochs), "output": {"dir": str(out / "pretrain")},
    }


def finetune_recipe(out: Path, s: QuickstartSize, seed: int, task: str, init: str | None) -> dict:
    epochs = s.retrieval_epochs if task == "retrieval" else s.qa_epochs
    recipe = {
        "kind": "finetune", "task": task, "seed": seed, "init": {"checkpoint": init},
        "data": _data(out, s), "model": _model(s),
        "optim": {"lr": 5.0e-4, "weight_decay": 0.01, "warmup_steps": 10, "schedule": "cosine", "grad_clip": 1.0},
        "train": {**_train(epochs), "eval_every": 0}, "output": {"dir": str(out / task)},
    }
    if task == "retrieval":
        recipe["retrieval"] = {"temperature_init": 0.07}
    return recipe
