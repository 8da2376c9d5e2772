"""Tiny in-memory models, recipes and batches shared by the fine-tuning unit tests."""

from __future__ import annotations

import torch

from evilm_core.config.sections import DataConfig
from evilm_core.finetune.config import FinetuneRecipe
from tests.helpers.models import clips, texts, tiny_config, tiny_model

__all__ = ["ListDataset", "clips", "texts", "tiny_config", "tiny_model", "tiny_recipe"]


def tiny_recipe(task: str, **extra) -> FinetuneRecipe:
    return FinetuneRecipe(task=task, model=tiny_config(),
                          data=DataConfig(image_size=64, num_frames=2, batch_size=4, num_workers=0), **extra)


class ListDataset(torch.utils.data.Dataset):
    """Ready-made items (dicts of tensors) for the evaluation loops."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
