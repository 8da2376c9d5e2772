"""Checkpoint arguments, resolved in one place for every consumer (docs/design.md, "Checkpoints";
docs/hub.md): `--checkpoint`, `init.checkpoint`, `mvm.tokenizer`, `label --tokenizer`,
`EViLM.from_pretrained`, `evilm push` and `evilm export` all call `resolve_checkpoint`.

A checkpoint argument is the checkpoint directory itself, a run directory (its `final/`, else its
newest complete `step_*`), a Hub id `hf-hub:ORG/NAME[@REV]` (a snapshot in the local Hugging
Face cache, downloaded first where the network allows: checkpoints/hub.py) or, for what retrieval runs, an
`evilm export` directory. What is accepted depends on what the consumer needs (`kind`).
"""

from __future__ import annotations

from pathlib import Path

from evilm_core.checkpoints.files import CONFIG, CONFIG_JSON, WEIGHTS, find_checkpoint
from evilm_core.checkpoints.hub import is_hub_id, resolve_hub_checkpoint
from evilm_core.errors import EvilmError

EXPORT_META = "export.json"  # what marks an `evilm export` directory (export/runtime.py writes it last)
KINDS = ("model", "tokenizer", "towers")


def resolve_checkpoint(spec: str | Path, kind: str = "model") -> Path:
    """The directory a checkpoint argument names. `kind`:
    - "model": an E-ViLM checkpoint (a run's final/, else its newest step_*);
    - "tokenizer": an exported tokenizer (the directory or a tokenize-train run's final/; a
      trainer step_* holds the whole training model, not the tokenizer);
    - "towers": an E-ViLM checkpoint, or an `evilm export` directory (retrieval's two towers)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    local = resolve_hub_checkpoint(str(spec)) if is_hub_id(spec) else Path(spec)
    if kind == "towers" and (local / EXPORT_META).is_file():
        return local
    found = find_checkpoint(local, steps=kind != "tokenizer")
    if found is None:
        raise _not_found(spec, local, kind)
    return found


def _not_found(spec: str | Path, local: Path, kind: str) -> EvilmError:
    if is_hub_id(spec):
        return EvilmError(f"{spec} is not an E-ViLM {'tokenizer ' if kind == 'tokenizer' else ''}checkpoint: its "
                          f"snapshot {local} has no {WEIGHTS} and {CONFIG_JSON}")
    if kind == "tokenizer":
        return EvilmError(f"no tokenizer checkpoint at {local} (expected {WEIGHTS} + {CONFIG} there or in "
                          f"{local / 'final'}); train one with `evilm tokenize-train`")
    if not local.exists():
        return EvilmError(f"checkpoint {local} does not exist: it is made by the run whose output.dir it is, `evilm "
                          "pretrain RECIPE` (a pre-trained model: recipes/webvid.yaml writes runs/webvid_pretrain, "
                          "docs/pretraining.md) or `evilm finetune RECIPE`; or name an existing checkpoint directory")
    export = f", or an `evilm export` directory ({EXPORT_META})" if kind == "towers" else ""
    return EvilmError(f"{local} is not a checkpoint: expected {WEIGHTS} and {CONFIG_JSON} (or {CONFIG}) in it, in "
                      f"{local / 'final'}, or in a step_XXXXXXXX directory (a run directory of `evilm pretrain` / "
                      f"`evilm finetune`){export}")
