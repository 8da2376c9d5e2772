"""Checkpoint directories (docs/design.md, "Checkpoints"; docs/hub.md): `model.safetensors`,
`config.json` (a model export, Hugging Face Hub layout) or `config.yaml` (a trainer `step_*`, a
tokenizer), `vocab.txt`, `trainer_state.pt`.
Written under a temporary name and renamed, so a crash never leaves a half checkpoint; a full
disk leaves the previous one and no temporary (docs/reliability.md).
`trainer_state.pt` holds only tensors and plain values and is read with `weights_only=True`, so
loading never unpickles arbitrary objects. A damaged file is an EvilmError naming it and what
to do, never a traceback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import SafetensorError

from evilm_core import __version__
from evilm_core.config.loader import check_expansion, save_yaml, to_dict
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_dir, read_text, temp_sibling
from evilm_core.text.vocab import VOCAB_FILE, read_vocab, save_vocab

if TYPE_CHECKING:  # torch is imported where tensors are read or written: resolving a path needs none
    import torch

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.yaml", "trainer_state.pt"
CONFIG_JSON, CARD = "config.json", "README.md"  # the Hub layout of a model export (docs/hub.md)
LIBRARY = "evilm"  # config.json's model_type / library_name, the model card's library_name
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared/non-contiguous storage: give each tensor its own
    save_file({k: v.detach().contiguous().cpu().clone() for k, v in state.items()}, str(path))


def write_checkpoint(directory: str | Path, weights: dict[str, torch.Tensor], config: Any,
                     vocab: list[str] | None = None, trainer_state: dict | None = None,
                     extra_files: dict[str, str] | None = None, hub: bool = False) -> Path:
    """Write a complete checkpoint directory atomically (temp dir, then rename); `extra_files`
    ({name: text}, e.g. a task's answers.txt, the model card) go in before the rename. `hub`: the
    config goes to config.json (Hub layout, with what a loader needs besides), else to config.yaml.
    A full disk or an I/O error removes the temporary directory and raises an EvilmError naming
    the space needed."""
    needed = sum(t.numel() * t.element_size() for t in weights.values())
    with atomic_dir(directory, needed) as tmp:
        _write_files(tmp, weights, config, vocab, trainer_state, extra_files, hub)
    return Path(directory)


def _write_files(tmp: Path, weights, config, vocab, trainer_state, extra_files, hub) -> None:
    save_weights(weights, tmp / WEIGHTS)
    if hub:
        (tmp / CONFIG_JSON).write_text(json.dumps(hub_config(config), indent=2) + "\n", encoding="utf-8")
    else:
        save_yaml(config, tmp / CONFIG)
    if vocab is not None:
        save_vocab(vocab, tmp)
    if trainer_state is not None:
        import torch

        buffer = io.BytesIO()  # serialised in memory: torch.save hides a full disk behind a C++ assertion,
        torch.save(trainer_state, buffer)  # a plain write reports it as ENOSPC
        (tmp / STATE).write_bytes(buffer.getbuffer())
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")  # inside the temporary dir: renamed with it


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of `state` holding a NaN or an infinity."""
    import torch

    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def hub_config(config: Any) -> dict:
    """config.json of a model export: the config ({format, task, model, ...}) plus what a loader
    needs besides: the vocabulary file and the evilm version that wrote it."""
    plain = to_dict(config)
    return {"model_type": LIBRARY, "evilm_version": __version__, "format": plain.pop("format", None),
            "task": plain.pop("task", None), "vocab_file": VOCAB_FILE, **plain}


def is_checkpoint(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / WEIGHTS).is_file() and ((d / CONFIG_JSON).is_file() or (d / CONFIG).is_file())


def is_hub_layout(directory: str | Path) -> bool:
    """A checkpoint with config.json (written by this version or a later one: docs/hub.md)."""
    return (Path(directory) / WEIGHTS).is_file() and (Path(directory) / CONFIG_JSON).is_file()


def config_file(directory: str | Path) -> Path:
    """The file a checkpoint's config is read from: config.json, else (step_*, tokenizers) config.yaml."""
    d = Path(directory)
    return d / CONFIG_JSON if (d / CONFIG_JSON).is_file() else d / CONFIG


def read_config(directory: str | Path) -> dict:
    """A checkpoint's config: config.json (Hub layout), else config.yaml (step_*, tokenizers)."""
    path = Path(directory) / CONFIG_JSON
    if not path.is_file():
        return read_yaml_config(directory)
    try:
        raw = json.loads(read_text(path, "checkpoint config"))
    except json.JSONDecodeError as err:
        raise damaged(path, f"not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise damaged(path, f"expected a JSON object, got {type(raw).__name__}")
    return raw


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    if not is_checkpoint(directory):
        raise EvilmError(f"{directory} is not a checkpoint directory (needs {WEIGHTS} and {CONFIG_JSON} or "
                         f"{CONFIG})")
    from safetensors.torch import load_file

    try:
        return load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise damaged(directory / WEIGHTS, err) from None


HEADER_LIMIT = 100 << 20  # the largest safetensors header read (a header is ~100 bytes per tensor)


def safetensors_header(path: str | Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file, read without its tensors; a header longer
    than HEADER_LIMIT or the file is damage, never an allocation."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{len(head)} bytes: shorter than a header")
        size = int.from_bytes(head, "little")
        if size > min(HEADER_LIMIT, path.stat().st_size - 8):
            raise ValueError(f"a header of {size} bytes in a file of {path.stat().st_size}")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return size, header


def weight_shapes(directory: str | Path) -> dict[str, list[int]]:
    """{tensor name: shape} of a checkpoint's model.safetensors, from its header alone."""
    path = Path(directory) / WEIGHTS
    try:
        _, header = safetensors_header(path)
        return {k: [int(n) for n in v["shape"]] for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(path, err) from None


def build_checked(build, directory: str | Path, what: str = "model"):
    """`build()` (a model from a checkpoint's config) made first on torch's `meta` device, where
    nothing is allocated, and compared with the shapes in the weights' header: a config.json with
    absurd sizes is refused, naming a tensor and both shapes, before a byte is allocated; then
    built for real."""
    import torch

    shapes = weight_shapes(directory)
    with torch.device("meta"):
        skeleton = build()
    wrong = [(k, list(t.shape), shapes[k]) for k, t in skeleton.state_dict().items() if k in shapes
             and list(t.shape) != shapes[k]]
    if wrong:
        name, config, weights = wrong[0]
        raise EvilmError(f"{config_file(directory)} does not describe the {what} in {Path(directory) / WEIGHTS}: "
                         f"{len(wrong)} tensors differ in shape (e.g. {name}: {config} by the config, {weights} in "
                         "the weights); the checkpoint is damaged or assembled from two models, get it again")
    del skeleton
    return build()


def read_trainer_state(directory: str | Path) -> dict:
    import torch

    path = Path(directory) / STATE
    if not path.is_file():
        raise EvilmError(f"{directory} has no {STATE}; it cannot be resumed from")
    try:
        with warnings.catch_warnings():  # torch warns before refusing an unsafe pickle: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects other than tensors and plain values: never loaded
        raise damaged(path, "it holds objects other than tensors and plain values, so it was not written by "
                            "evilm; loading it could run code, and it was refused") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise damaged(path, err) from None
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise damaged(path, "it is not an evilm trainer state (no step / optimizer)")
    return state


def read_checkpoint_vocab(directory: str | Path) -> list[str]:
    return read_vocab(Path(directory) / VOCAB_FILE)


def read_yaml_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise EvilmError(f"{directory} has no {CONFIG}")
    try:
        raw = yaml.safe_load(read_text(path, "checkpoint config")) or {}
        check_expansion(raw, str(path))
    except yaml.YAMLError as err:
        raise damaged(path, f"not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise damaged(path, f"expected a mapping, got {type(raw).__name__}")
    return raw


def damaged(path: Path, why: Any) -> EvilmError:
    """The error for a checkpoint file that cannot be read, with what to do: resume from an older
    step checkpoint of the same run where there is one, else re-create the checkpoint."""
    path = Path(path)
    run_dir, name = path.parent.parent, path.parent.name
    older = [d for d in step_checkpoints(run_dir) if d.name < name] if _STEP_DIR.match(name) else []
    if older:
        todo = (f"move {path.parent} aside (e.g. `mv {path.parent} {run_dir}/damaged-{name}`) and run the same "
                f"command with --resume to continue from {older[-1].name}")
    elif _STEP_DIR.match(name):
        todo = "no older checkpoint of this run is complete; start the run again in a new output.dir"
    else:
        todo = "re-create it (re-run the command that wrote it, or copy it again)"
    return EvilmError(f"{path} is damaged or truncated ({str(why).splitlines()[0][:300]}); {todo}")


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete `step_XXXXXXXX` checkpoints in a run directory, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [d for d in run_dir.iterdir() if _STEP_DIR.match(d.name) and is_checkpoint(d)]
    return sorted(found, key=lambda d: int(_STEP_DIR.match(d.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def find_checkpoint(path: str | Path, steps: bool = True) -> Path | None:
    """The checkpoint a path names: the directory itself, a run directory's `final/`, else (with
    `steps`) its newest complete `step_*`; None when there is none."""
    path = Path(path)
    for candidate in (path, path / "final"):
        if is_checkpoint(candidate):
            return candidate
    return latest_checkpoint(path) if steps else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` step checkpoints; each is renamed to a temporary name
    first, so a kill in the middle of the removal leaves debris the next run cleans, never a
    half-deleted `step_*` (fs.clean_stale_temps)."""
    for old in step_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        doomed = temp_sibling(old)
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
