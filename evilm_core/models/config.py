"""E-ViLM model config (paper 3.1, 4.1; DESIGN 2). Stored in every checkpoint's config.yaml so a
model rebuilds without its recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

GRID_STRIDE = 32  # EdgeNeXt output stride == tokenizer patch size (DESIGN 3)


@dataclass
class EViLMConfig:
    video_encoder: str = "edgenext_small"  # timm EdgeNeXt (any size by name)
    video_args: dict[str, int] = field(default_factory=dict)  # timm overrides (e.g. depths/dims for tiny models)
    pretrained: bool | str = False  # EdgeNeXt init: false | true (timm hub, ImageNet) | path/to/weights.safetensors
    image_size: int = 256  # frame size; the video grid is image_size / 32 per side
    max_frames: int = 16  # size of the frame-embedding table
    vocab_size: int = 0  # text vocabulary size (set from vocab.txt)
    text_hidden: int = 128  # tiny BERT width (paper: 128)
    text_layers: int = 6  # tiny BERT depth (6 layers + 9,420 words = 2.40M params)
    text_heads: int = 4  # tiny BERT heads (paper: 4)
    text_intermediate: int = 512  # tiny BERT feed-forward width (4 x hidden)
    max_text_len: int = 40  # longest caption/question in tokens, [CLS] and [SEP] included
    fusion_dim: int = 384  # multi-modal decoder width (paper: 384)
    fusion_layers: int = 4  # multi-modal decoder blocks (paper: 4)
    fusion_heads: int = 6  # attention heads in the decoder
    mlp_ratio: float = 4.0  # decoder feed-forward width / fusion_dim
    dropout: float = 0.1  # BERT-style dropout in the text encoder
    codebook_size: int = 9420  # MVM classes: the tokenizer's codebook size
    embed_dim: int = 256  # retrieval embedding size (unimodal CLS -> linear)

    def __post_init__(self):
        if self.image_size % GRID_STRIDE:
            raise ValueError(f"model.image_size ({self.image_size}) must be a multiple of the video encoder "
                             f"stride {GRID_STRIDE}")

    @property
    def grid(self) -> int:
        return self.image_size // GRID_STRIDE
