"""The start of every training run (tokenizer, pre-training, fine-tuning), in one place: the
recipe names its training data, the process joins its group, every stream is seeded, the
training manifest is read once, and rank 0 writes the run's vocabulary before the others read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evilm_core.data.manifest import read_manifest
from evilm_core.data.record import ClipRecord
from evilm_core.data.vocab import save_vocab
from evilm_core.engine.distributed import DistInfo, barrier, init_distributed
from evilm_core.engine.seed import seed_everything
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text


@dataclass
class RunStart:
    info: DistInfo  # this process's rank, world size and device
    records: list[ClipRecord]  # the training manifest, read once for the whole start-up
    run_dir: Path  # output.dir


def start_run(recipe: Any) -> RunStart:
    """Check data.train, join the process group, seed (recipe.seed + rank), read the manifest."""
    d = recipe.data
    if not d.train:
        raise EvilmError("recipe key data.train is not set: it must name the training manifest")
    info = init_distributed(recipe.train.device)
    seed_everything(recipe.seed + info.rank)
    return RunStart(info, read_manifest(d.train, d.format), Path(recipe.output.dir))


def write_run_files(run: RunStart, vocab: list[str], files: dict[str, str] | None = None) -> None:
    """Rank 0 writes vocab.txt (and e.g. answers.txt) into the run directory; all ranks wait."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if run.info.is_main:
        save_vocab(vocab, run.run_dir)
        for name, text in (files or {}).items():
            atomic_write_text(run.run_dir / name, text, fsync=False)
    barrier()  # the other ranks read run_dir/vocab.txt


def resolved(recipe: Any, model: Any = None, **model_values: Any) -> Any:
    """A copy of `recipe` whose model section is `model` (default: the recipe's) with `model_values`
    set: what the run saves as its config.yaml. The recipe the caller passed in is left as it was."""
    return dataclasses.replace(recipe, model=dataclasses.replace(model or recipe.model, **model_values))
