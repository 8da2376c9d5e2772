"""Run an `evilm export` directory: the towers `evilm export` wrote, behind the same two calls
as EViLM (`embed_video`, `embed_text`), so retrieval treats an export like a checkpoint.

Only the tower asked for is loaded, on first use: a query process never reads the video tower.
An ONNX export runs in the run's runtime (settings.RunSettings.runtime): onnxruntime, in fp32,
or OpenVINO (export/openvino.py), in the run's precision. Either takes its intra-op thread count
from the project's thread policy (evilm_core/settings.py) when it is created; inter-op
parallelism stays at 1 (one tower is one sequential graph). The ONNX towers run on NumPy
arrays: given arrays, nothing here imports torch (a query over an ONNX export starts in about a
second); given tensors, they return tensors (the index build path).

A text tower exported with a dynamic length (export.json "text_length": "dynamic") runs on ids
and mask cut to the batch's longest real length (trim_text): a caption of 11 tokens costs 0.4x
of the 40-token padded pass (docs/benchmarks.md, "Runtimes"). An export without that key has
a fixed length and is run padded to max_text_len, as before.

The constants here (file names, format string) are the contract between the exporter
(towers.py) and every reader; they live in this light module so a reader imports no exporter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from evilm_core.checkpoints.resolve import EXPORT_META
from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.export")
META = EXPORT_META  # written last: its presence marks a complete export
FORMAT = "evilm-export/1"
KINDS = ("onnx", "torch")
FILES = {"onnx": {"video": "video.onnx", "text": "text.onnx"}, "torch": {"video": "video.pt2", "text": "text.pt2"}}
ONNX_EXTRA = "--format onnx needs the onnx extra: pip install 'evilm[onnx]'"
RUNTIME_CACHE = ".runtime-cache"  # in the export: what runtimes derive from it (removed and replaced with it)
DYNAMIC_LENGTH = "dynamic"  # export.json "text_length" of a text tower that takes any length up to max_text_len
MIN_TEXT_LEN = 2  # the shortest length such a tower takes (torch.export specialises sizes 0 and 1)
# What one more text-tower call costs, in padded token positions: a call's fixed overhead in
# onnxruntime (~0.15 ms) over one position's share of a batch (~0.03 ms), quickstart model,
# one thread (docs/performance.md, "Text batches by length"); larger models make it smaller.
GROUP_CALL_COST = 6
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


def cache_dir(export: Path) -> Path:
    """Where what a runtime derives from an export is kept (OpenVINO's compiled models, the int8
    text tower): the export's RUNTIME_CACHE when the export is writable, else
    $XDG_CACHE_HOME/evilm/exports/<its path's hash>."""
    if os.access(export, os.W_OK):
        return export / RUNTIME_CACHE
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "evilm" / "exports" / hashlib.sha256(str(export.absolute()).encode()).hexdigest()[:16]


def int8_text_tower(text_onnx: Path) -> Path:
    """The text tower with its MatMul/Gemm weights in int8 (onnxruntime dynamic quantization:
    activations quantized per call), made once and kept in the cache: 0.43x of fp32's time for
    one query, at cosine 0.999 to fp32, which swaps near ties (the quickstart's top-10 keys are
    fp32's for 93% of its captions; docs/benchmarks.md, "Runtimes"): opt-in."""
    out = cache_dir(text_onnx.parent) / f"{text_onnx.stem}.int8.onnx"
    if out.is_file() and out.stat().st_mtime >= text_onnx.stat().st_mtime:
        return out
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise EvilmError(f"the int8 text tower: {ONNX_EXTRA}") from None
    from evilm_core.fs import atomic_path

    hint = logging.Filter("evilm")  # the quantizer's "consider pre-processing" note goes to the root logger
    logging.getLogger().addFilter(hint)
    try:
        with atomic_path(out) as tmp:
            quantize_dynamic(str(text_onnx), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.getLogger().removeFilter(hint)
    log.info("export %s: made the int8 text tower %s", text_onnx.parent, out)
    return out


def _onnx_runner(path: Path, names: list[str], output: str, threads: int) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EvilmError(f"{path.parent} is an ONNX export: {ONNX_EXTRA}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the run's resolved count (evilm_core/settings.py)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: its constant-folding notes are not the user's business
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(*arrays: np.ndarray) -> np.ndarray:
        feeds = {n: np.ascontiguousarray(a) for n, a in zip(names, arrays)}
        return session.run([output], feeds)[0]

    return run


def _torch_runner(path: Path) -> Callable:
    import torch

    program = torch.export.load(str(path)).module()

    def run(*arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(*map(torch.from_numpy, arrays)).float().numpy()

    return run


def trim_text(ids: np.ndarray, mask: np.ndarray, min_len: int = MIN_TEXT_LEN) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask [B, L] cut to the columns up to the batch's last real token (at least
    `min_len`, zero-padded up to it if L is shorter): the same embeddings as the padded pass,
    since the model attends to no masked position, for a fraction of its arithmetic."""
    real = np.flatnonzero(mask.any(axis=0))  # columns where some row has a real token
    length = max(min_len, int(real[-1]) + 1 if real.size else 0)
    if length >= ids.shape[1]:
        extra = ((0, 0), (0, length - ids.shape[1]))
        return (np.pad(ids, extra), np.pad(mask, extra)) if extra[1][1] else (ids, mask)
    return np.ascontiguousarray(ids[:, :length]), np.ascontiguousarray(mask[:, :length])


def length_groups(lengths: np.ndarray, call_cost: int = GROUP_CALL_COST) -> list[np.ndarray]:
    """Rows of a batch of texts with real lengths `lengths` [B], split into groups each run as
    one trimmed call: contiguous runs of the rows sorted by length, chosen to minimise the
    padded positions computed (a group costs its size x its longest length) plus `call_cost` per
    call. A batch of queries of 10-17 tokens runs as two calls instead of one padded to 17
    (docs/performance.md, "Text batches by length")."""
    order = np.argsort(lengths, kind="stable")
    ranked = [int(lengths[i]) for i in order]
    best, cut = [0] + [0] * len(ranked), [0] * (len(ranked) + 1)  # best[j]: cheapest split of the first j
    for j in range(1, len(ranked) + 1):
        best[j], cut[j] = min((best[i] + (j - i) * ranked[j - 1] + call_cost, i) for i in range(j))
    groups, j = [], len(ranked)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _as_array(x, dtype) -> tuple[np.ndarray, bool]:
    """(a contiguous CPU array of `x`, whether `x` was a torch tensor)."""
    if hasattr(x, "detach"):
        return np.ascontiguousarray(x.detach().cpu().numpy().astype(dtype, copy=False)), True
    return np.ascontiguousarray(np.asarray(x, dtype=dtype)), False


def _like(rows: np.ndarray, tensor: bool):
    if not tensor:
        return rows
    import torch

    return torch.from_numpy(rows)


class ExportedTowers:
    """The towers of one export directory; `open` it, then embed. Same shapes and semantics as
    EViLM.embed_video / embed_text: l2-normalised float32 [B, E], on the CPU."""

    def __init__(self, directory: str | Path, meta: dict, threads: int = 1, runtime: str = "onnxruntime",
                 precision: str = "fp32", text_int8: bool = False):
        self.directory, self.meta, self.threads = Path(directory), meta, threads
        self.kind: str = meta["format_kind"]
        self.text_int8 = text_int8  # the text tower in onnxruntime dynamic int8 (int8_text_tower)
        # what computes, and in what arithmetic: an index records both (retrieval/index.py)
        self.runtime: str = {"torch": "torch.export"}.get(self.kind, runtime)
        self.precision: str = precision if self.runtime == "openvino" else "fp32"
        self.model_hash: str = meta["model_hash"]
        self.embed_dim: int = int(meta["embed_dim"])
        self.num_frames: int = int(meta["num_frames"])
        self.image_size: int = int(meta["image_size"])
        self.max_text_len: int = int(meta["max_text_len"])
        # a dynamic-length text tower runs on trimmed ids (trim_text); an older export is fixed at max_text_len
        self.min_text_len: int | None = (int(meta.get("min_text_len", MIN_TEXT_LEN))
                                         if meta.get("text_length") == DYNAMIC_LENGTH else None)
        self._runners: dict[str, Callable] = {}

    @classmethod
    def open(cls, directory: str | Path, threads: int = 1, runtime: str = "onnxruntime",
             precision: str = "fp32", text_int8: bool = False) -> ExportedTowers:
        """`threads`: the runtime's intra-op threads (the run's settings.threads); `runtime` and
        `precision`: the run's resolved settings.runtime and settings.precision (onnxruntime runs
        fp32); `text_int8`: the text tower in int8 (an ONNX export in onnxruntime only)."""
        towers = cls(directory, read_meta(directory), threads, runtime, precision, text_int8)
        if text_int8 and (towers.kind != "onnx" or towers.runtime != "onnxruntime"):
            raise EvilmError(f"--text-int8 runs an ONNX export's text tower in onnxruntime; {directory} is "
                             f"{'a ' + towers.kind + ' export' if towers.kind != 'onnx' else 'run by ' + runtime} "
                             "(give --runtime onnxruntime, or leave --text-int8 out)")
        return towers

    def _runner(self, tower: str) -> Callable:
        """The tower's program, loaded on first use only."""
        if tower not in self._runners:
            path = self.directory / self.meta.get("files", FILES[self.kind])[tower]
            if not path.is_file():
                raise EvilmError(f"{self.directory}: {path.name} is missing; export again with "
                                 f"`evilm export CKPT --out {self.directory} --format {self.kind}`")
            names = [i["name"] for i in self.meta["inputs"][tower]]
            if self.runtime == "openvino":
                from evilm_core.export.openvino import openvino_runner

                runner = openvino_runner(path, names, self.threads, self.precision, static_batch=tower == "video",
                                         cache=cache_dir(path.parent) / "openvino")
            elif self.kind == "onnx":
                if tower == "text" and self.text_int8:
                    path = int8_text_tower(path)
                runner = _onnx_runner(path, names, self.meta["outputs"][tower][0]["name"], self.threads)
            else:
                runner = _torch_runner(path)
            log.debug("export %s: loaded the %s tower (%s, %s %s)", self.directory, tower, path.name, self.runtime,
                      self.precision)
            self._runners[tower] = runner
        return self._runners[tower]

    def embed_video(self, pixels):
        """Normalised frames [B, T, 3, H, W] (T = num_frames, H = W = image_size) -> [B, E]; an
        array in, an array out; a tensor in, a tensor out."""
        x, tensor = _as_array(pixels, np.float32)  # [B, T, 3, H, W]
        want = (self.num_frames, 3, self.image_size, self.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise EvilmError(f"the export {self.directory} takes pixels [B, {', '.join(map(str, want))}], got "
                             f"{list(x.shape)}; for another frame count export again with --frames")
        if x.shape[0] == 0:
            return _like(np.zeros((0, self.embed_dim), np.float32), tensor)
        return _like(self._runner("video")(x).astype(np.float32, copy=False), tensor)

    def embed_text(self, input_ids, attention_mask):
        """Token ids and mask [B, L] (L = max_text_len, as evilm_core.text.tokens pads; a dynamic-
        length export also takes a shorter L) -> [B, E]; arrays in, an array out; tensors in, a
        tensor out."""
        ids, tensor = _as_array(input_ids, np.int64)  # [B, L]
        mask, _ = _as_array(attention_mask, np.int64)  # [B, L]
        dynamic = self.min_text_len is not None
        if (ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] > self.max_text_len
                or (not dynamic and ids.shape[1] != self.max_text_len)):
            want = f"at most {self.max_text_len}" if dynamic else str(self.max_text_len)
            raise EvilmError(f"the export {self.directory} takes ids and mask [B, L] with L {want}, got "
                             f"{list(ids.shape)} and {list(mask.shape)}")
        if ids.shape[0] == 0:
            return _like(np.zeros((0, self.embed_dim), np.float32), tensor)
        if not dynamic:
            return _like(self._runner("text")(ids, mask).astype(np.float32, copy=False), tensor)
        real = np.where(mask.any(axis=1), mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1), 0)  # [B]
        out = np.empty((ids.shape[0], self.embed_dim), np.float32)
        for rows in length_groups(real):  # similar lengths together, each group trimmed to its longest
            out[rows] = self._runner("text")(*trim_text(ids[rows], mask[rows], self.min_text_len))
        return _like(out, tensor)

    @property
    def loaded(self) -> list[str]:
        """The towers loaded so far (a query process should show only "text")."""
        return sorted(self._runners)
