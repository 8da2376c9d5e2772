"""Stage 2: E-ViLM pre-training with MLM + VTM + MVM (paper 3.4, eq. 8) on the shared Trainer.

One fused forward per step serves all three losses: video regions are block-masked (MVM), words
are masked (MLM) and a share of the rows get another clip's caption (VTM). MLM and MVM are
computed on matched rows only (a mismatched caption says nothing about the video and vice
versa); VTM on every row from the [CLS] output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from evilm_core.data.dataset import collate_clips, video_root
from evilm_core.data.manifest import read_manifest
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.vocab import SPECIAL_TOKENS, build_vocab, read_vocab, save_vocab
from evilm_core.engine import checkpoint as ckpt
from evilm_core.engine.distributed import barrier, init_distributed
from evilm_core.engine.seed import seed_everything
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError
from evilm_core.finetune.scoring import contrastive_loss
from evilm_core.finetune.scoring import same_video as same_caption  # [B, B] bool: equal strings
from evilm_core.models.evilm import EViLM
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.data import PretrainDataset, TextTokens, open_label_cache
from evilm_core.pretrain.masking import mask_pixels, mlm_mask, video_mask, vtm_pairs

log = logging.getLogger("evilm.pretrain")
MASK_ID, SPECIAL_IDS = SPECIAL_TOKENS.index("[MASK]"), list(range(len(SPECIAL_TOKENS)))


def _unwrap(model: nn.Module) -> EViLM:
    return model.module if hasattr(model, "module") else model


def masked_ce(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, sel: torch.Tensor):
    """Cross-entropy of `head` over the selected positions only (eq. 3: mean over masked items).
    The head runs on the selected features alone (an MVM head over every region would be
    [B, T*g*g, 9420]); with nothing selected the loss is an exact zero that still reaches the
    head, so every rank's backward touches the same parameters."""
    if not bool(sel.any()):
        zero = head(feats[:, :1]).sum() * 0.0
        return zero, zero.detach()
    logits = head(feats[sel]).float()  # [n_selected, classes]
    target = labels[sel]
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


class PretrainTask:
    def __init__(self, recipe: PretrainRecipe, vocab: list[str], val: PretrainDataset | None, tokenizer=None):
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

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        w, m = self.recipe.loss, self.recipe.masking
        pixels, ids, attn = batch["pixels"], batch["input_ids"], batch["attention_mask"]
        clean_ids, clean_attn = ids, attn  # each clip's own caption, unmasked (contrastive term)
        b, t = pixels.shape[:2]
        grid = self.recipe.model.grid
        match = torch.ones(b, dtype=torch.long, device=pixels.device)
        if w.vtm > 0:
            source, match = vtm_pairs(batch["caption"], gen, m.vtm_negatives)
            ids, attn, match = ids[source.to(ids.device)], attn[source.to(ids.device)], match.to(ids.device)
        mlm_labels = None
        if w.mlm > 0:
            ids, mlm_labels = mlm_mask(ids, attn, m.text_ratio, MASK_ID, len(self.vocab), SPECIAL_IDS, gen)
            mlm_labels[match == 0] = -100
        regions = None
        if w.mvm > 0 and ("mvm_targets" in batch or self.tokenizer is not None):
            regions = video_mask(b, t, grid, m.video_ratio, gen, m.min_block).to(pixels.device)  # [B, T, g, g]
            targets = batch["mvm_targets"] if "mvm_targets" in batch else self._online_targets(pixels)
            masked_pixels = mask_pixels(pixels, regions)
        else:
            masked_pixels = pixels
        if w.vtc > 0:  # one forward either way, so DDP sees a single call per step
            out = model(masked_pixels, ids, attn, mode="pretrain", clean_ids=clean_ids, clean_mask=clean_attn)
        else:
            out = model(masked_pixels, ids, attn)
        heads = _unwrap(model).heads
        parts, loss = {}, pixels.new_zeros(())
        if w.vtc > 0:
            positives = same_caption(batch["caption"], pixels.device)
            parts["vtc_loss"] = contrastive_loss(out["video_emb"], out["text_emb"], _unwrap(model).logit_scale,
                                                 positives)
            loss = loss + w.vtc * parts["vtc_loss"]
        vtm_logits = heads["vtm"](out["cls"])
        if w.vtm > 0:
            parts["vtm_loss"] = F.cross_entropy(vtm_logits.float(), match)
            parts["vtm_acc"] = (vtm_logits.argmax(-1) == match).float().mean()
            loss = loss + w.vtm * parts["vtm_loss"]
        if mlm_labels is not None:
            sel = mlm_labels != -100
            parts["mlm_loss"], parts["mlm_acc"] = masked_ce(heads["mlm"], out["text"], mlm_labels, sel)
            loss = loss + w.mlm * parts["mlm_loss"]
        if regions is not None:
            # region (t, i, j) is video token t*g*g + i*g + j, the same flattening as the mask and targets
            sel = regions.flatten(1) & (match == 1)[:, None]  # [B, T*g*g]
            parts["mvm_loss"], parts["mvm_acc"] = masked_ce(heads["mvm"], out["video"], targets.flatten(1), sel)
            loss = loss + w.mvm * parts["mvm_loss"]
        parts = {k: float(v.detach()) for k, v in parts.items()}
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
        loader = DataLoader(self.val, batch_size=d.batch_size, collate_fn=collate_clips, num_workers=d.num_workers,
                            multiprocessing_context="spawn" if d.num_workers else None)
        sums, n = {}, 0
        for i, batch in enumerate(loader):
            if batch["size"] == 0:
                continue
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            _, parts = self.loss(model, batch, torch.Generator().manual_seed(i))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * batch["size"]
            n += batch["size"]
        return {f"val_{k}": v / max(1, n) for k, v in sums.items()}

    def export(self, model: nn.Module, directory: Path) -> Path:
        """Final checkpoint: the whole model + its config (rebuilds without the recipe) + vocab."""
        net = _unwrap(model)
        return ckpt.write_checkpoint(directory, net.state_dict(), {"format": "evilm-model/1", "model": net.cfg},
                                     self.vocab)


def _vocab(recipe: PretrainRecipe, captions: list[str]) -> list[str]:
    """vocab_file, else the tokenizer's vocab.txt (one vocabulary for both stages), else built."""
    if recipe.vocab_file:
        return read_vocab(recipe.vocab_file)
    if recipe.mvm.tokenizer:
        from evilm_core.tokenizer.train import resolve_tokenizer_dir

        return read_vocab(resolve_tokenizer_dir(recipe.mvm.tokenizer))
    return build_vocab(captions)


def _mvm_sources(recipe: PretrainRecipe, device: torch.device):
    """-> (label cache or None, tokenizer model or None) after checking they fit the recipe."""
    if recipe.loss.mvm <= 0:
        return None, None
    from evilm_core.tokenizer.train import load_tokenizer

    tokenizer, info = None, None
    if recipe.mvm.tokenizer:
        tokenizer, info = load_tokenizer(recipe.mvm.tokenizer, device)
        if info["image_size"] != recipe.data.image_size:
            raise EvilmError(f"tokenizer {info['dir']} works on {info['image_size']} px frames but data.image_size is "
                             f"{recipe.data.image_size}: the MVM grid would not line up")
        if info["codebook_size"] != recipe.model.codebook_size:
            raise EvilmError(f"model.codebook_size ({recipe.model.codebook_size}) differs from the tokenizer's "
                             f"codebook ({info['codebook_size']}, {info['dir']})")
    if recipe.mvm.targets == "online":
        if tokenizer is None:
            raise EvilmError("mvm.targets is 'online': set mvm.tokenizer to a tokenizer checkpoint")
        return None, tokenizer  # the tokenizer also gives validation targets when the cache lacks them
    if not recipe.mvm.labels:
        raise EvilmError("mvm.targets is 'cache': set mvm.labels to a label cache (`evilm label --out DIR`)")
    cache = open_label_cache(recipe.mvm.labels, info, recipe.data.image_size, recipe.mvm.candidates,
                             need_flips=recipe.data.hflip)
    if cache.meta["codebook_size"] != recipe.model.codebook_size:
        raise EvilmError(f"model.codebook_size ({recipe.model.codebook_size}) differs from the label cache's "
                         f"({cache.meta['codebook_size']}, {recipe.mvm.labels})")
    return cache, tokenizer


def build_datasets(recipe: PretrainRecipe, vocab_dir: Path, cache) -> tuple[PretrainDataset, PretrainDataset | None]:
    d = recipe.data
    text = TextTokens(vocab_dir, recipe.model.max_text_len)
    train = PretrainDataset(read_manifest(d.train, d.format), video_root(d.root, d.train), d.num_frames, d.image_size,
                            ClipTransform(train=True, hflip=d.hflip, color_jitter=d.color_jitter), text, cache, recipe.seed)
    val = None
    if d.val:
        records = read_manifest(d.val, d.format)
        # Validation clips are usually not in the training label cache: then they are sampled
        # plainly and their MVM targets come from the tokenizer online (if one is configured).
        val_cache = cache if cache is not None and all(r.video in cache for r in records) else None
        val = PretrainDataset(records, video_root(d.root, d.val), d.num_frames, d.image_size,
                              ClipTransform(train=False), text, val_cache, recipe.seed)
    return train, val


def train_pretrain(recipe: PretrainRecipe, resume: bool = False, progress: Callable | None = None) -> dict:
    """Pre-train per the recipe; returns {checkpoint, step, skipped, metrics}."""
    d = recipe.data
    if not d.train:
        raise EvilmError("recipe key data.train is not set: it must name the training manifest")
    info = init_distributed(recipe.train.device)
    seed_everything(recipe.seed + info.rank)
    vocab = _vocab(recipe, [r.caption or "" for r in read_manifest(d.train, d.format)])
    recipe.model.vocab_size = len(vocab)
    run_dir = Path(recipe.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        save_vocab(vocab, run_dir)
    barrier()  # the other ranks read run_dir/vocab.txt
    cache, tokenizer = _mvm_sources(recipe, info.device)
    train, val = build_datasets(recipe, run_dir, cache)
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    task = PretrainTask(recipe, vocab, val, tokenizer)
    if recipe.init.checkpoint and not resume:
        missing, unexpected = task.model.load_state_dict(ckpt.read_weights(recipe.init.checkpoint), strict=False)
        log.info("initialised from %s (%d missing, %d unexpected keys)", recipe.init.checkpoint, len(missing),
                 len(unexpected))
    log.info("pretrain: %d clips, %.2fM trunk parameters, losses mlm=%g vtm=%g mvm=%g vtc=%g (%s targets)",
             len(train), task.model.trunk_parameters() / 1e6, recipe.loss.mlm, recipe.loss.vtm, recipe.loss.mvm,
             recipe.loss.vtc, recipe.mvm.targets)
    return Trainer(recipe, task, train, info, progress).fit(resume=resume)
