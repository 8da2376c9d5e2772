"""Model configs, light to import (recipes load them without torch): E-ViLM's (paper 3.1, 4.1;
docs/design.md, "Model") with its named sizes, and the VQ tokenizer's. Stored in every
checkpoint's config.yaml so a model rebuilds without its recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from evilm_core.errors import RecipeError

# Named model sizes (timm style): a recipe's `model: {size: NAME, ...}` starts from these values
# and its other keys override them; `EViLMConfig.sized(NAME, **overrides)` does the same in code.
MODEL_SIZES: dict[str, dict] = {
    # The paper's E-ViLM (4.1): EdgeNeXt-S at 256 px, 6-layer tiny BERT (hidden 128, 4 heads),
    # 4 fusion blocks of width 384, 9,420 MVM classes: 16M parameters without heads.
    "paper": {"video_encoder": "edgenext_small", "image_size": 256, "text_layers": 6, "text_hidden": 128,
              "text_heads": 4, "text_intermediate": 512, "max_text_len": 40, "fusion_dim": 384, "fusion_layers": 4,
              "fusion_heads": 6, "codebook_size": 9420, "embed_dim": 256},
    # The quickstart's (and the synthetic recipes'): minutes on a 2-core CPU, 96 px, 32 codes.
    "quickstart": {"video_encoder": "edgenext_xx_small", "pretrained": False, "image_size": 96, "text_layers": 2,
                   "text_hidden": 128, "text_heads": 4, "max_text_len": 24, "fusion_dim": 192, "fusion_layers": 2,
                   "fusion_heads": 3, "codebook_size": 32, "embed_dim": 128},
    # `evilm quickstart --size quickstart-tiny` and the tests: every stage runs, nothing is expected to learn.
    "quickstart-tiny": {"video_encoder": "edgenext_xx_small", "pretrained": False, "image_size": 64, "text_layers": 1,
                        "text_hidden": 128, "text_heads": 4, "max_text_len": 24, "fusion_dim": 64, "fusion_layers": 1,
                        "fusion_heads": 1, "codebook_size": 16, "embed_dim": 128},
}
GRID_STRIDE = 32  # EdgeNeXt output stride == tokenizer patch size (docs/design.md, "Region grid")
# The range of every size field, far beyond any published model: a config (a recipe, or a model
# directory's config.json from a hub) outside it is refused when it is read, naming the field and
# both values, before anything is built (docs/reliability.md, "Model directories").
SIZE_RANGES = {"image_size": (0, 4096), "max_frames": (1, 1024), "vocab_size": (0, 1_000_000),
               "text_hidden": (1, 8192), "text_layers": (1, 128), "text_heads": (1, 256),
               "text_intermediate": (1, 65536), "max_text_len": (2, 8192), "fusion_dim": (1, 8192),
               "fusion_layers": (1, 128), "fusion_heads": (1, 256), "mlp_ratio": (0.01, 64),
               "codebook_size": (1, 1_000_000), "embed_dim": (1, 65536), "code_dim": (1, 8192),
               "decoder_depth": (0, 128), "decoder_dim": (1, 8192), "decoder_heads": (1, 256),
               "num_words": (0, 1_000_000)}
TIMM_ARG_RANGE = (-65536, 65536)  # every integer of video_args / encoder_args (timm's depth, dims, heads)


def check_sizes(cfg, section: str = "model") -> None:
    """Every size field of `cfg` within SIZE_RANGES (ValueError naming the key, its value and the range)."""
    for name, (low, high) in SIZE_RANGES.items():
        value = getattr(cfg, name, None)
        if value is not None and not low <= value <= high:
            raise ValueError(f"{section}.{name} is {value}; this evilm builds models with {name} from {low} to {high}")
    args = getattr(cfg, "video_args", None) or getattr(cfg, "encoder_args", None) or {}
    low, high = TIMM_ARG_RANGE
    for key, value in args.items():
        if not low <= value <= high:
            raise ValueError(f"{section}.{key} is {value}; timm arguments must be from {low} to {high}")


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
        check_sizes(self)
        if self.image_size % GRID_STRIDE or not self.image_size:
            raise ValueError(f"model.image_size ({self.image_size}) must be a multiple of the video encoder "
                             f"stride {GRID_STRIDE}")

    @classmethod
    def expand_raw(cls, raw: dict, section: str = "model") -> dict:
        """A recipe's model mapping with its `size:` replaced by that size's values (the mapping's
        other keys win); called by the recipe loader before typing."""
        if "size" not in raw:
            return raw
        raw = dict(raw)
        name = raw.pop("size")
        if name not in MODEL_SIZES:
            raise RecipeError(f"recipe key '{section}.size': unknown model size {name!r}; "
                              f"valid sizes: {', '.join(MODEL_SIZES)}")
        return {**MODEL_SIZES[name], **raw}

    @classmethod
    def sized(cls, name: str, **overrides) -> EViLMConfig:
        """The named size's config, with `overrides` (timm's create_model(name, **overrides))."""
        return cls(**cls.expand_raw({"size": name, **overrides}))

    @property
    def grid(self) -> int:
        return self.image_size // GRID_STRIDE


@dataclass
class TokenizerModelConfig:
    encoder: str = "vit_base_patch32_clip_224"  # timm ViT with patch 32 (paper: CLIP ViT-B/32)
    encoder_args: dict[str, int] = field(default_factory=dict)  # timm overrides (embed_dim, depth, num_heads)
    pretrained: bool | str = False  # false | true (timm hub) | path/to/weights.safetensors
    image_size: int = 0  # frame size; 0 = take data.image_size
    code_dim: int = 32  # dimension of the l2-normalised codes
    codebook_size: int = 9420  # M codebook entries
    decoder_depth: int = 8  # self-attention blocks over the quantised codes
    decoder_dim: int = 384  # decoder width
    decoder_heads: int = 6  # decoder attention heads
    max_frames: int = 16  # size of the decoder's frame embedding table
    num_words: int = 0  # K caption words (set from the vocabulary when the model is built)

    def __post_init__(self):
        check_sizes(self, "model")


@dataclass
class CodebookConfig:
    kmeans_init: bool = True  # initialise the codebook by cosine k-means on the first batch
    ema: bool = True  # EMA codebook updates (replaces the codebook term of eq. 7)
    ema_decay: float = 0.99  # EMA decay
    restart_unused: int = 100  # re-seed codes unused for this many steps (0: never)
