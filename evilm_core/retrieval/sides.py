"""The two towers retrieval runs, from either source: a checkpoint (PyTorch, the video or the
text side only) or an `evilm export` directory (onnxruntime, OpenVINO or torch.export programs).
Both give the same `model_hash` (the sha256 of the checkpoint's weights), so an index built from
one is queried from the other. Each tower says what runs it and in what arithmetic (`runtime`,
`precision`): what an index records. Also the ANN index of an index directory, when it has one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evilm_core.checkpoints.resolve import EXPORT_META, resolve_checkpoint
from evilm_core.errors import EvilmError
from evilm_core.settings import RunSettings

if TYPE_CHECKING:  # torch is imported by the checkpoint side only: a query over an ONNX export never loads it
    import torch

log = logging.getLogger("evilm.retrieval")


@dataclass
class Tower:
    kind: str  # "torch" (a checkpoint) | "export" (an evilm export directory)
    directory: Path  # the checkpoint or export directory (its vocab.txt tokenizes the queries)
    model_hash: str  # sha256 of the checkpoint's model.safetensors
    embed_dim: int  # E
    image_size: int  # frames are resized to image_size x image_size
    max_text_len: int  # tokens per query
    max_frames: int  # the most frames the video side takes
    embed: Callable[..., torch.Tensor]  # pixels -> [B, E], or (ids, mask) -> [B, E]
    model: torch.nn.Module | None = None  # the PyTorch module (None for an export)
    fixed_frames: int | None = None  # an export takes exactly this many frames
    runtime: str = "torch"  # what computes: torch | onnxruntime | openvino | torch.export
    precision: str = "fp32"  # its arithmetic: fp32 | bf16 (an export in onnxruntime: always fp32)

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed(ids, mask)

    def embed_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels)

    def to(self, device: torch.device) -> Tower:
        if self.model is not None:
            self.model.to(device).eval()
        elif device.type != "cpu":
            raise EvilmError(f"{self.directory} is an export run by {self.runtime} on the CPU; use --device cpu, or "
                             "index with the checkpoint itself to use the GPU")
        return self


def _towers(source: str | Path, given: bool = True) -> Path:
    """The checkpoint or export directory `source` names (checkpoints/resolve.py)."""
    try:
        return resolve_checkpoint(source, "towers")
    except EvilmError as err:
        hint = "" if given else " (the checkpoint the index records; pass --checkpoint if it moved)"
        raise EvilmError(f"{err}{hint}") from None


def _export(directory: Path, side: str, settings: RunSettings, text_int8: bool = False) -> Tower | None:
    if not (directory / EXPORT_META).is_file():
        return None
    from evilm_core.export.runtime import ExportedTowers

    towers = ExportedTowers.open(directory, settings.threads, settings.runtime, settings.precision, text_int8)
    embed = towers.embed_video if side == "video" else towers.embed_text
    return Tower("export", directory, towers.model_hash, towers.embed_dim, towers.image_size, towers.max_text_len,
                 towers.num_frames, embed, fixed_frames=towers.num_frames, runtime=towers.runtime,
                 precision=towers.precision)


def open_text_side(source: str | Path, settings: RunSettings, given: bool = True, text_int8: bool = False) -> Tower:
    """The text tower of a checkpoint (its text side only, models/loading.py for_precision) or of
    an export directory (run by settings.runtime on settings.threads threads; `text_int8`: its
    int8 text tower in onnxruntime). `given`: the user named it (else the index did)."""
    directory = _towers(source, given)
    exported = _export(directory, "text", settings, text_int8)
    if exported is not None:
        return exported
    if text_int8:
        raise EvilmError(f"--text-int8 runs the text tower of an ONNX export; {directory} is a checkpoint (make an "
                         f"export with `evilm export {directory} --out DIR` and query with --checkpoint DIR)")
    from evilm_core.checkpoints import files as ckpt
    from evilm_core.models.loading import for_precision, load_text_side

    model, directory = load_text_side(directory)
    cfg = for_precision(model, settings.precision, settings.device).cfg
    return Tower("torch", directory, ckpt.file_sha256(directory / ckpt.WEIGHTS), cfg.embed_dim, cfg.image_size,
                 cfg.max_text_len, cfg.max_frames, model.embed_text, model=model, precision=settings.precision)


def open_video_side(source: str | Path, settings: RunSettings, load: bool = True) -> Tower:
    """The video tower of a checkpoint (the whole model is loaded, models/loading.py
    for_precision) or of an export directory (run by settings.runtime). load=False gives a
    checkpoint's description only (hash and sizes, no model; `embed` raises): what a process
    needs whose loader workers embed (engine/workers.py, ComputeInWorker)."""
    directory = _towers(source)
    exported = _export(directory, "video", settings)
    if exported is not None:
        return exported
    from evilm_core.checkpoints import files as ckpt
    from evilm_core.models.pretrained import checkpoint_model_config

    model, embed = None, _not_loaded
    if load:
        from evilm_core.models.loading import for_precision, load_checkpoint

        model = for_precision(load_checkpoint(directory).model, settings.precision, settings.device)
        cfg, embed = model.cfg, model.embed_video
    else:
        cfg = checkpoint_model_config(directory)
        ckpt.read_weights(directory)  # a damaged file fails here, before an index records its hash
    return Tower("torch", directory, ckpt.file_sha256(directory / ckpt.WEIGHTS), cfg.embed_dim, cfg.image_size,
                 cfg.max_text_len, cfg.max_frames, embed, model=model, precision=settings.precision)


def _not_loaded(*_):
    raise RuntimeError("open_video_side(..., load=False) describes the tower; open it with load=True to embed")


def open_ann(index, threads: int = 1):
    """The ANN index of an IndexView, or None (none built, or it no longer covers every row).
    `threads`: FAISS's share of the cores (the thread policy's count)."""
    if not (index.directory / "ann.json").is_file():
        return None
    from evilm_core.retrieval.ann import AnnIndex

    ann = AnnIndex.open(index.directory, threads=threads)
    if ann is None:
        return None
    if ann.count != len(index):
        log.warning("index %s: its %s index covers %d of %d videos (videos were added after it was built); "
                    "searching exactly. Run `evilm retrieve index` on it again to rebuild the ANN index",
                    index.directory, ann.kind, ann.count, len(index))
        return None
    return ann
