"""Thin adapter over timm for the two image backbones (EdgeNeXt student, ViT tokenizer encoder).

`pretrained` is a recipe value: false (random init), true (timm's own hub download; only where
the network exists) or a path to a local .safetensors/.pth file, loaded through timm's
`pretrained_cfg_overlay=dict(file=...)` so timm's own key remapping and position-embedding
resizing apply exactly as for a hub download.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from evilm_core.errors import EvilmError


def create_backbone(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """timm.create_model(name, num_classes=0, **kwargs) with the pretrained policy above."""
    import timm  # here, not at the top: modules that only init weights (heads) stay light to import

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise EvilmError(f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else ""))
    kwargs.setdefault("num_classes", 0)
    if isinstance(pretrained, str) and pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise EvilmError(f"pretrained weights file not found: {path}")
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as err:  # key mismatch, wrong file type
            raise EvilmError(f"could not load pretrained weights {path} into '{name}': {err}") from None
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # no network, no cached weights
            raise EvilmError(
                f"could not fetch pretrained weights for '{name}' from the hub ({type(err).__name__}: "
                f"{str(err)[:200]}). Without network access set `pretrained:` to a local weights file "
                "(.safetensors), or to false for random initialisation."
            ) from None
    return timm.create_model(name, pretrained=False, **kwargs)


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """Initialise our own (non-timm) Linear/Embedding layers the way ViT/BERT do."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
