"""Text encoder: a tiny transformers `BertModel` built from a config (no download), plus a
linear map to the fusion width (paper 3.1)."""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import BertConfig, BertModel

from evilm_core.models.config import EViLMConfig


def bert_config(cfg: EViLMConfig) -> BertConfig:
    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.text_hidden, num_hidden_layers=cfg.text_layers,
                      num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_intermediate,
                      max_position_embeddings=max(64, cfg.max_text_len), hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, pad_token_id=0, type_vocab_size=2)


class TextEncoder(nn.Module):
    def __init__(self, cfg: EViLMConfig):
        super().__init__()
        if cfg.vocab_size < 6:
            raise ValueError("model.vocab_size must be set from vocab.txt before building the text encoder")
        self.bert = BertModel(bert_config(cfg), add_pooling_layer=False)
        self.proj = nn.Linear(cfg.text_hidden, cfg.fusion_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] ids and mask -> text tokens e^L [B, L, D]."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.proj(hidden)
