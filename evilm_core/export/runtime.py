"""Run an `evilm export` directory: the towers `evilm export` wrote, behind the same two calls
as EViLM (`embed_video`, `embed_text`), so retrieval treats an export like a checkpoint.

Only the tower asked for is loaded, on first use: a query process never reads the video tower.
onnxruntime sessions take their intra-op thread count from torch.get_num_threads() when they
are created, so the project's thread policy (evilm_core/engine/machine.py) applies to them
too; inter-op parallelism stays at 1 (one tower is one sequential graph).

The constants here (file names, format string) are the contract between the exporter
(towers.py) and every reader; they live in this light module so a reader imports no exporter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.export")
META = "export.json"  # written last: its presence marks a complete export
FORMAT = "evilm-export/1"
KINDS = ("onnx", "torch")
FILES = {"onnx": {"video": "video.onnx", "text": "text.onnx"}, "torch": {"video": "video.pt2", "text": "text.pt2"}}
ONNX_EXTRA = "--format onnx needs the onnx extra: pip install 'evilm[onnx]'"
_REQUIRED = ("model_hash", "format_kind", "image_size", "num_frames", "max_text_len", "embed_dim", "inputs",
             "outputs")


def _not_export(directory: Path, why: str) -> EvilmError:
    return EvilmError(f"{directory} is not an evilm export ({why}); make one with "
                      f"`evilm export CKPT --out {directory}`")


def read_meta(directory: str | Path) -> dict:
    """export.json of `directory`, checked: the format, the keys readers rely on, the tower files."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        raise _not_export(directory, f"no {META}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _not_export(directory, f"{META} is not readable JSON: {str(err)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _not_export(directory, f"{META} format is {found!r}, expected {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing or meta["format_kind"] not in KINDS:
        raise _not_export(directory, f"{META} lacks {missing or ['a valid format_kind']}")
    return meta


def is_export_dir(path: str | Path) -> bool:
    """Whether `path` holds a complete evilm export (a valid export.json); never raises."""
    try:
        read_meta(path)
    except (EvilmError, OSError):
        return False
    return True


def _onnx_runner(path: Path, names: list[str], output: str) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EvilmError(f"{path.parent} is an ONNX export: {ONNX_EXTRA}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())  # the project's thread policy, read now
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: its constant-folding notes are not the user's business
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        feeds = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, tensors)}
        return torch.from_numpy(session.run([output], feeds)[0])

    return run


def _torch_runner(path: Path) -> Callable:
    program = torch.export.load(str(path)).module()

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return program(*tensors)

    return run


class ExportedTowers:
    """The towers of one export directory; `open` it, then embed. Same shapes and semantics as
    EViLM.embed_video / embed_text: l2-normalised float32 [B, E], on the CPU."""

    def __init__(self, directory: str | Path, meta: dict):
        self.directory, self.meta = Path(directory), meta
        self.model_hash: str = meta["model_hash"]
        self.embed_dim: int = int(meta["embed_dim"])
        self.num_frames: int = int(meta["num_frames"])
        self.image_size: int = int(meta["image_size"])
        self.max_text_len: int = int(meta["max_text_len"])
        self.kind: str = meta["format_kind"]
        self._runners: dict[str, Callable] = {}

    @classmethod
    def open(cls, directory: str | Path) -> ExportedTowers:
        return cls(directory, read_meta(directory))

    def _runner(self, tower: str) -> Callable:
        """The tower's program, loaded on first use only."""
        if tower not in self._runners:
            path = self.directory / self.meta.get("files", FILES[self.kind])[tower]
            if not path.is_file():
                raise EvilmError(f"{self.directory}: {path.name} is missing; export again with "
                                 f"`evilm export CKPT --out {self.directory} --format {self.kind}`")
            if self.kind == "onnx":
                names = [i["name"] for i in self.meta["inputs"][tower]]
                runner = _onnx_runner(path, names, self.meta["outputs"][tower][0]["name"])
            else:
                runner = _torch_runner(path)
            log.debug("export %s: loaded the %s tower (%s)", self.directory, tower, path.name)
            self._runners[tower] = runner
        return self._runners[tower]

    def embed_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised frames [B, T, 3, H, W] (T = num_frames, H = W = image_size) -> [B, E]."""
        want = (self.num_frames, 3, self.image_size, self.image_size)
        if pixels.dim() != 5 or tuple(pixels.shape[1:]) != want:
            raise EvilmError(f"the export {self.directory} takes pixels [B, {', '.join(map(str, want))}], got "
                             f"{list(pixels.shape)}; for another frame count export again with --frames")
        if pixels.shape[0] == 0:
            return torch.empty(0, self.embed_dim)
        x = pixels.detach().to("cpu", torch.float32).contiguous()  # [B, T, 3, H, W]
        return self._runner("video")(x).float()

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] (L = max_text_len, as evilm_core.data.text pads) -> [B, E]."""
        if input_ids.dim() != 2 or input_ids.shape[1] != self.max_text_len or input_ids.shape != attention_mask.shape:
            raise EvilmError(f"the export {self.directory} takes ids and mask [B, {self.max_text_len}], got "
                             f"{list(input_ids.shape)} and {list(attention_mask.shape)}")
        if input_ids.shape[0] == 0:
            return torch.empty(0, self.embed_dim)
        ids = input_ids.detach().to("cpu", torch.int64).contiguous()  # [B, L]
        mask = attention_mask.detach().to("cpu", torch.int64).contiguous()  # [B, L]
        return self._runner("text")(ids, mask).float()

    @property
    def loaded(self) -> list[str]:
        """The towers loaded so far (a query process should show only "text")."""
        return sorted(self._runners)
