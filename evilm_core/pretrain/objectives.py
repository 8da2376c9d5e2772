"""The pre-training task (paper 3.4, eq. 8) for the shared Trainer, MAE style: `prepare` draws
the step's pairs and masks, `forward` runs the model once, and each objective has its own
function (`vtm_loss`, `mlm_loss`, `mvm_loss`, `vtc_loss`).

One fused forward per step serves all losses: video regions are block-masked (MVM), words are
masked (MLM) and a share of the rows get another clip's caption (VTM). MLM and MVM are computed
on matched rows only (a mismatched caption says nothing about the video and vice versa); VTM on
every row from the [CLS] output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.engine.distributed import global_contrastive_loss
from evilm_core.engine.runtime import eval_loader, to_device, unwrap
from evilm_core.errors import EvilmError
from evilm_core.models.evilm import EViLM
from evilm_core.models.losses import masked_ce
from evilm_core.models.pretrained import export_model
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.masking import mask_pixels, mlm_mask, video_mask, vtm_pairs
from evilm_core.text.vocab import SPECIAL_TOKENS

MASK_ID, SPECIAL_IDS = SPECIAL_TOKENS.index("[MASK]"), list(range(len(SPECIAL_TOKENS)))
Loss = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (the objective's loss, what to log of it)


@dataclass
class PretrainInputs:
    """One step's model inputs and targets, after pairing and masking."""

    pixels: torch.Tensor  # [B, T, 3, H, W] with masked regions zeroed (MVM on)
    input_ids: torch.Tensor  # [B, L] the (possibly borrowed, word-masked) text of each row
    attention_mask: torch.Tensor  # [B, L]
    clean_ids: torch.Tensor  # [B, L] each clip's own caption, unmasked (contrastive term)
    clean_mask: torch.Tensor  # [B, L]
    match: torch.Tensor  # [B] 1 where the text is the clip's own caption
    mlm_labels: torch.Tensor | None  # [B, L] word ids at masked words, -100 elsewhere
    regions: torch.Tensor | None  # [B, T, g, g] bool: masked regions
    mvm_targets: torch.Tensor | None  # [B, T, g, g] tokenizer codes of the unmasked frames


class PretrainTask:
    def __init__(self, recipe: PretrainRecipe, vocab: list[str], val=None, tokenizer=None):
        self.recipe, self.vocab, self.val = recipe, vocab, val
        self.tokenizer = tokenizer  # frozen, eval mode; only for mvm.targets: online
        self.model = EViLM(recipe.model)
        # Parameters no pre-training loss reaches are frozen here, so DDP (which waits for every
        # trainable parameter's gradient) never stalls and AdamW does not decay them for nothing.
        unused = [self.model.retrieval, self.model.logit_scale] if recipe.loss.vtc <= 0 else []
        unused += [self.model.heads[name] for name in ("mlm", "vtm", "mvm") if getattr(recipe.loss, name) <= 0]
        for module in unused:
            for p in ([module] if isinstance(module, nn.Parameter) else module.parameters()):
                p.requires_grad_(False)

    def prepare(self, batch: dict, gen: torch.Generator) -> PretrainInputs:
        """Mismatched pairs (VTM), word masks (MLM), region masks and their targets (MVM)."""
        w, m = self.recipe.loss, self.recipe.masking
        pixels, ids, attn = batch["pixels"], batch["input_ids"], batch["attention_mask"]
        clean_ids, clean_attn = ids, attn
        b, t = pixels.shape[:2]
        match = torch.ones(b, dtype=torch.long, device=pixels.device)
        if w.vtm > 0:
            source, match = vtm_pairs(batch["caption"], gen, m.vtm_negatives)
            ids, attn, match = ids[source.to(ids.device)], attn[source.to(ids.device)], match.to(ids.device)
        mlm_labels = None
        if w.mlm > 0:
            ids, mlm_labels = mlm_mask(ids, attn, m.text_ratio, MASK_ID, len(self.vocab), SPECIAL_IDS, gen)
            mlm_labels[match == 0] = -100
        regions = targets = None
        if w.mvm > 0 and ("mvm_targets" in batch or self.tokenizer is not None):
            regions = video_mask(b, t, self.recipe.model.grid, m.video_ratio, gen, m.min_block).to(pixels.device)
            targets = batch["mvm_targets"] if "mvm_targets" in batch else self._online_targets(pixels)
            pixels = mask_pixels(pixels, regions)
        return PretrainInputs(pixels, ids, attn, clean_ids, clean_attn, match, mlm_labels, regions, targets)

    def forward(self, model: nn.Module, x: PretrainInputs) -> dict[str, torch.Tensor]:
        """One call of the (possibly DDP-wrapped) model, so DDP sees a single forward per step."""
        if self.recipe.loss.vtc > 0:
            return model(x.pixels, x.input_ids, x.attention_mask, mode="pretrain", clean_ids=x.clean_ids,
                         clean_mask=x.clean_mask)
        return model(x.pixels, x.input_ids, x.attention_mask)

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """eq. 8: the weighted sum of the switched-on objectives (plus the optional contrastive term)."""
        w, x = self.recipe.loss, self.prepare(batch, gen)
        out, net = self.forward(model, x), unwrap(model)
        vtm_logits = net.heads["vtm"](out["cls"])  # always run: DDP expects the head in every step's graph
        terms: list[tuple[float, Loss]] = []
        if w.vtc > 0:
            terms.append((w.vtc, vtc_loss(out, net.logit_scale, batch["caption"])))
        if w.vtm > 0:
            terms.append((w.vtm, vtm_loss(vtm_logits, x.match)))
        if x.mlm_labels is not None:
            terms.append((w.mlm, mlm_loss(net.heads["mlm"], out["text"], x.mlm_labels)))
        if x.regions is not None:
            terms.append((w.mvm, mvm_loss(net.heads["mvm"], out["video"], x)))
        loss, parts = x.pixels.new_zeros(()), {}
        for weight, (term, logged) in terms:
            loss = loss + weight * term
            parts.update({k: float(v.detach()) for k, v in logged.items()})
        parts["loss"] = float(loss.detach())
        return loss, parts

    @torch.no_grad()
    def _online_targets(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.tokenizer is None:
            raise EvilmError("mvm.targets is 'online' but no tokenizer is loaded (set mvm.tokenizer)")
        return self.tokenizer.encode(pixels.float())  # unmasked frames, as the student sees them

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation losses and accuracies with fixed masks (generator seeded by the batch index)."""
        if self.val is None:
            return {}
        device = next(model.parameters()).device
        d = self.recipe.data
        sums, n = {}, 0
        for i, batch in enumerate(eval_loader(self.val, d.batch_size, d.num_workers)):
            if batch["size"] == 0:
                continue
            _, parts = self.loss(model, to_device(batch, device), torch.Generator().manual_seed(i))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * batch["size"]
            n += batch["size"]
        return {f"val_{k}": v / max(1, n) for k, v in sums.items()}

    def export(self, model: nn.Module, directory: Path) -> Path:
        """Final checkpoint: the whole model + its config (rebuilds without the recipe) + vocab."""
        return export_model(unwrap(model), directory, self.vocab)


def vtc_loss(out: dict, logit_scale: torch.Tensor, captions: list[str]) -> Loss:
    """Video-text contrastive term over the unimodal embeddings of the global batch (all ranks);
    rows with equal captions are positives."""
    loss = global_contrastive_loss(out["video_emb"], out["text_emb"], logit_scale, captions)
    return loss, {"vtc_loss": loss}


def vtm_loss(logits: torch.Tensor, match: torch.Tensor) -> Loss:
    """Video-text matching on the joint [CLS]: is the text the clip's own caption?"""
    loss = F.cross_entropy(logits.float(), match)
    return loss, {"vtm_loss": loss, "vtm_acc": (logits.argmax(-1) == match).float().mean()}


def mlm_loss(head: nn.Module, text: torch.Tensor, labels: torch.Tensor) -> Loss:
    """Masked words of matched rows predicted from their fused text tokens."""
    loss, acc = masked_ce(head, text, labels, labels != -100)
    return loss, {"mlm_loss": loss, "mlm_acc": acc}


def mvm_loss(head: nn.Module, video: torch.Tensor, x: PretrainInputs) -> Loss:
    """Tokenizer codes of masked regions of matched rows predicted from their fused video tokens.
    Region (t, i, j) is video token t*g*g + i*g + j, the same flattening as the mask and the
    targets (docs/design.md, "Region grid")."""
    sel = x.regions.flatten(1) & (x.match == 1)[:, None]  # [B, T*g*g]
    loss, acc = masked_ce(head, video, x.mvm_targets.flatten(1), sel)
    return loss, {"mvm_loss": loss, "mvm_acc": acc}
