"""Write an `evilm export` directory: the video and text towers of an E-ViLM checkpoint as
standalone programs, plus what a server needs to feed them (vocab.txt, export.json).

    DIR/video.onnx | video.pt2   pixels [B, T, 3, H, W] float32 -> video_embedding [B, E]
    DIR/text.onnx  | text.pt2    input_ids, attention_mask [B, L] int64 -> text_embedding [B, E]
    DIR/vocab.txt                the checkpoint's vocabulary (queries are tokenized with it)
    DIR/export.json              evilm-export/1: model_hash, shapes, input normalisation, check

The batch dimension is dynamic, and so is the text length (2 to the model's max_text_len,
export.json "text_length": "dynamic"): runtime.py cuts a batch of queries to its longest real
length (about 0.4x of the padded pass's time for a caption; docs/benchmarks.md, "Runtimes"). The
frame count (--frames) is fixed, as an index samples a fixed number of frames. Everything is
written in a temporary directory beside DIR, checked against PyTorch there (an export that
does not reproduce the model is never published), export.json written last, and the directory
swapped in whole: a crash leaves the previous export or none.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from evilm_core.errors import EvilmError
from evilm_core.export.runtime import (
    DYNAMIC_LENGTH,
    FILES,
    FORMAT,
    KINDS,
    META,
    MIN_TEXT_LEN,
    ONNX_EXTRA,
    ExportedTowers,
)
from evilm_core.fs import atomic_dir, atomic_write_text, clean_stale_temps
from evilm_core.models.evilm import EViLM
from evilm_core.models.loading import LoadedCheckpoint, load_checkpoint
from evilm_core.models.tokenizer import EXPORT_FORMAT as TOKENIZER_FORMAT
from evilm_core.text.vocab import VOCAB_FILE

log = logging.getLogger("evilm.export")
TOLERANCE = 1e-4  # max |exported - PyTorch| over a random batch; float32 graphs agree to ~1e-7
CHECK_BATCHES = (2, 1)  # 2: the traced size; 1: proves the batch dimension really is dynamic
VIDEO_INPUTS, TEXT_INPUTS = ("pixels",), ("input_ids", "attention_mask")
OUTPUTS = {"video": "video_embedding", "text": "text_embedding"}  # "embedding" clashes with a BERT node name
LEGACY_OPSET = 17  # the TorchScript exporter's opset when the dynamo one fails


def tower_model(model: EViLM, tower: str) -> EViLM:
    """A copy of `model` without the parts `tower` never runs (the other encoder, the heads):
    torch.export saves every parameter of the module it is given, used or not, so a text.pt2 of
    the whole model would carry the video encoder. The dropped modules are never copied (the
    deepcopy memo maps them to None); `model` itself is left whole."""
    drop = (model.heads, model.text if tower == "video" else model.video)
    return copy.deepcopy(model, {id(m): None for m in drop if m is not None}).eval()


class VideoTower(nn.Module):
    """EViLM.embed_video as a module with one input: what the exporters trace."""

    def __init__(self, model: EViLM):
        super().__init__()
        self.model = tower_model(model, "video")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, T, 3, H, W] -> [B, E]
        return self.model.embed_video(pixels)


class TextTower(nn.Module):
    """EViLM.embed_text as a module with two inputs, without the video encoder."""

    def __init__(self, model: EViLM):
        super().__init__()
        self.model = tower_model(model, "text")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, E]
        return self.model.embed_text(input_ids, attention_mask)


def check_onnx_installed() -> None:
    """Before minutes of loading and tracing: the three packages the ONNX path needs."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise EvilmError(f"{ONNX_EXTRA} (missing: {', '.join(missing)})")


def load_evilm(checkpoint: str | Path) -> LoadedCheckpoint:
    """load_checkpoint, with a clear word for the one wrong checkpoint people pass: a tokenizer's."""
    directory = resolve_checkpoint(checkpoint)
    raw = ckpt.read_config(directory)
    if raw.get("format") == TOKENIZER_FORMAT or raw.get("kind") == "tokenizer":  # final/ or a step_*
        raise EvilmError(f"{directory} is a tokenizer checkpoint; export an E-ViLM checkpoint (pretrain/finetune "
                         "output)")
    return load_checkpoint(directory)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvilmError(f"--out {out} is a file; name a new or empty directory (or an existing export)")
    if out.is_dir() and not (out / META).is_file() and any(out.iterdir()):
        raise EvilmError(f"--out {out} exists and is not an evilm export (no {META}); choose a new or empty "
                         "directory (an existing export is replaced as a whole)")


def example_inputs(model: EViLM, num_frames: int, batch: int, seed: int = 0) -> dict[str, tuple]:
    """Random inputs for both towers: frames ~ N(0, 1) (already normalised), word ids after the
    special tokens with [CLS] first and a padded tail, as evilm_core.text.tokens produces."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, num_frames, 3, cfg.image_size, cfg.image_size, generator=g)  # [B, T, 3, H, W]
    length = cfg.max_text_len
    ids = torch.randint(5, max(6, cfg.vocab_size), (batch, length), generator=g)  # [B, L]
    mask = torch.ones_like(ids)
    ids[:, 0] = 2  # [CLS]
    pad = torch.randint(1, max(2, length - 1), (batch,), generator=g)
    for i, n in enumerate(pad.tolist()):  # a different padded tail per row
        ids[i, length - n:], mask[i, length - n:] = 0, 0
    return {"video": (pixels,), "text": (ids, mask)}


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' tracer warnings and onnxscript's constant-folding notes are about graph
    internals, not anything the user can act on; the numeric check below is what counts."""
    chatty = logging.getLogger("onnxscript")
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        chatty.setLevel(level)


def _dynamic(names: tuple[str, ...], max_text_len: int) -> dict:
    """The dynamic dimensions of a tower's inputs: the batch, and for the text tower the length
    (traced at max_text_len with padded tails; one Dim per kind: the inputs share them)."""
    batch = torch.export.Dim("batch", min=1)
    if names != TEXT_INPUTS:
        return {n: {0: batch} for n in names}
    length = torch.export.Dim("length", min=MIN_TEXT_LEN, max=max_text_len)
    return {n: {0: batch, 1: length} for n in names}


def _export_onnx(tower: nn.Module, args: tuple, names: tuple[str, ...], output: str, path: Path,
                 opset: int | None, dims: dict) -> dict:
    """The one place the ONNX exporter is chosen. First torch.onnx's dynamo exporter
    (torch.export + onnxscript): it is the supported one, its dynamic batch comes from
    torch.export's symbolic shapes (checked, not assumed) and opset None means its own default.
    If it fails (a torch or onnxscript version that cannot translate some op), the TorchScript
    exporter, deprecated but still shipped, at opset LEGACY_OPSET. The numeric check runs on
    whichever produced the file, and export.json records which one it was."""
    try:
        with _quiet():
            torch.onnx.export(tower, args, str(path), input_names=list(names), output_names=[output], dynamo=True,
                              dynamic_shapes=dims, opset_version=opset, external_data=False,
                              verbose=False)
        exporter = "torch.onnx dynamo"
    except Exception as err:  # anything the tracer or translator raises: try the other exporter
        log.warning("the dynamo ONNX exporter failed (%s); using the TorchScript exporter",
                    str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__)
        path.unlink(missing_ok=True)
        axes = {output: {0: "batch"}, **{n: {a: d.__name__ for a, d in dims[n].items()} for n in names}}
        with _quiet():
            torch.onnx.export(tower, args, str(path), input_names=list(names), output_names=[output], dynamo=False,
                              dynamic_axes=axes, opset_version=opset or LEGACY_OPSET)
        exporter = "torch.onnx torchscript"
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {"exporter": exporter, "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                                                None)}


def _export_torch(tower: nn.Module, args: tuple, path: Path, dims: dict) -> dict:
    with _quiet():
        program = torch.export.export(tower, args, dynamic_shapes=dims)
        torch.export.save(program, str(path))
    return {"exporter": "torch.export", "opset": None}


def _io_specs(model: EViLM, num_frames: int) -> tuple[dict, dict]:
    cfg = model.cfg
    inputs = {"video": [{"name": "pixels", "shape": ["batch", num_frames, 3, cfg.image_size, cfg.image_size],
                         "dtype": "float32"}],
              "text": [{"name": n, "shape": ["batch", "length"], "dtype": "int64"} for n in TEXT_INPUTS]}
    outputs = {t: [{"name": OUTPUTS[t], "shape": ["batch", cfg.embed_dim], "dtype": "float32"}] for t in OUTPUTS}
    return inputs, outputs


def _metadata(loaded: LoadedCheckpoint, fmt: str, num_frames: int, how: dict) -> dict:
    cfg = loaded.model.cfg
    inputs, outputs = _io_specs(loaded.model, num_frames)
    return {
        "format": FORMAT,
        "model_hash": ckpt.file_sha256(loaded.directory / ckpt.WEIGHTS),  # what retrieval indexes record
        "checkpoint": str(loaded.directory.absolute()),
        "format_kind": fmt,
        "files": FILES[fmt],
        **how,
        "image_size": cfg.image_size,
        "num_frames": num_frames,
        "max_text_len": cfg.max_text_len,
        "text_length": DYNAMIC_LENGTH,  # the text tower takes min_text_len..max_text_len (runtime.py trim_text)
        "min_text_len": MIN_TEXT_LEN,
        "embed_dim": cfg.embed_dim,
        # pixels: RGB frames resized (no crop) to image_size x image_size by the decoder, /255, then (x - mean) / std
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "inputs": inputs,
        "outputs": outputs,
        "torch_version": torch.__version__,
        "model": dataclasses.asdict(cfg),
    }


def _text_checks(model: EViLM, num_frames: int) -> list[tuple]:
    """The (ids, mask) the text tower is checked on: CHECK_BATCHES with padded tails (run trimmed
    to their longest real length, a length the trace never saw), and one query without padding
    (the whole max_text_len)."""
    cases = [example_inputs(model, num_frames, b, seed=100 + i)["text"] for i, b in enumerate(CHECK_BATCHES)]
    ids, mask = example_inputs(model, num_frames, 1, seed=99)["text"]
    ids[mask == 0] = 7  # a word where the padding was
    return [*cases, (ids, torch.ones_like(mask))]


def _diff(tower: str, got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise EvilmError(f"the exported {tower} tower gives shape {list(got.shape)} for batch {len(want)}, "
                         f"PyTorch {list(want.shape)}; report this with `evilm --debug export ...`")
    return float((got - want).abs().max())


def verify(towers: ExportedTowers, model: EViLM, num_frames: int) -> dict:
    """Run the exported towers as a server would (runtime.ExportedTowers: the text tower on
    trimmed ids) and compare with PyTorch on padded ones; an export off by more than TOLERANCE
    is an error, never a published directory."""
    diffs = {"video": 0.0, "text": 0.0}
    for seed, batch in enumerate(CHECK_BATCHES):
        pixels = example_inputs(model, num_frames, batch, seed=100 + seed)["video"]
        with torch.inference_mode():
            want = model.embed_video(*pixels)
        diffs["video"] = max(diffs["video"], _diff("video", towers.embed_video(*pixels), want))
    lengths = []
    for ids, mask in _text_checks(model, num_frames):
        with torch.inference_mode():
            want = model.embed_text(ids, mask)
        diffs["text"] = max(diffs["text"], _diff("text", towers.embed_text(ids, mask), want))
        lengths.append(int(mask.any(0).nonzero().max()) + 1)
    check = {"video_max_abs_diff": diffs["video"], "text_max_abs_diff": diffs["text"], "tolerance": TOLERANCE,
             "batch_sizes": list(CHECK_BATCHES), "text_lengths": lengths}
    bad = [t for t, d in diffs.items() if not d <= TOLERANCE]  # `not <=`: a NaN diff fails too
    if bad:
        raise EvilmError(f"the exported {' and '.join(bad)} tower differs from PyTorch by "
                         f"{max(diffs[t] for t in bad):.3g} (> {TOLERANCE}); nothing was written. Try the other "
                         "--format, or report this with `evilm --debug export ...`")
    return check


def _write(loaded: LoadedCheckpoint, tmp: Path, fmt: str, num_frames: int, opset: int | None) -> dict:
    model = loaded.model.eval()
    inputs = example_inputs(model, num_frames, batch=CHECK_BATCHES[0])
    how = {}
    for name, tower, names in (("video", VideoTower(model), VIDEO_INPUTS), ("text", TextTower(model), TEXT_INPUTS)):
        start, path = time.monotonic(), tmp / FILES[fmt][name]
        dims = _dynamic(names, model.cfg.max_text_len)
        if fmt == "onnx":
            how = _export_onnx(tower.eval(), inputs[name], names, OUTPUTS[name], path, opset, dims)
        else:
            how = _export_torch(tower.eval(), inputs[name], path, dims)
        log.info("exported the %s tower to %s in %.1f s (%s)", name, path.name, time.monotonic() - start,
                 how["exporter"])
    shutil.copyfile(loaded.directory / VOCAB_FILE, tmp / VOCAB_FILE)
    meta = _metadata(loaded, fmt, num_frames, how)
    meta["check"] = verify(ExportedTowers(tmp, meta), model, num_frames)
    atomic_write_text(tmp / META, json.dumps(meta, indent=2) + "\n")  # last: it marks the export complete
    return meta


def export_towers(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", opset: int | None = None,
                  num_frames: int = 4) -> dict:
    """Export both retrieval towers of `checkpoint` to `out` and check them; returns a summary
    (out, format, files, model_hash, checkpoint, exporter, opset, num_frames, check, seconds)."""
    start, out = time.monotonic(), Path(out)
    if fmt not in KINDS:
        raise EvilmError(f"--format {fmt!r}: expected one of {', '.join(KINDS)}")
    if fmt == "onnx":
        check_onnx_installed()
    _check_out(out)
    loaded = load_evilm(checkpoint)
    max_frames = loaded.model.cfg.max_frames
    if not 1 <= num_frames <= max_frames:
        raise EvilmError(f"--frames {num_frames}: the model of {loaded.directory} takes 1 to {max_frames} frames")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)  # what an export killed on this host left behind
    with atomic_dir(out) as tmp:
        meta = _write(loaded, tmp, fmt, num_frames, opset)
    seconds = round(time.monotonic() - start, 2)
    log.info("export %s: %s towers of %s in %.1f s (max |diff| video %.2g, text %.2g)", out, fmt,
             loaded.directory, seconds, meta["check"]["video_max_abs_diff"], meta["check"]["text_max_abs_diff"])
    keys = ("files", "model_hash", "checkpoint", "exporter", "opset", "num_frames", "check")
    return {"out": str(out.absolute()), "format": fmt, **{k: meta[k] for k in keys}, "seconds": seconds}
