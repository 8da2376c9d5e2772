"""The start of every training run (tokenizer, pre-training, fine-tuning), in one place: the
recipe names its training data, the run's settings are resolved (or taken from a caller that
resolved them, the quickstart), the process joins its group, every stream is seeded, the
training clips are opened once (a manifest, held compactly in the run directory, or a shard set;
docs/data.md), and rank 0 writes the run's vocabulary before the others read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.records.record import ClipRecord
from evilm_core.data.records.table import RecordTable, write_record_table
from evilm_core.engine.distributed import DistInfo, barrier, init_distributed, this_local_rank
from evilm_core.engine.seed import seed_everything
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text
from evilm_core.settings import RunSettings, resolve_settings
from evilm_core.text.vocab import save_vocab


@dataclass
class RunStart:
    info: DistInfo  # this process's rank, world size and device
    records: Sequence[ClipRecord]  # the training records (a RecordTable: one file, memory-mapped)
    run_dir: Path  # output.dir
    source: ClipSource  # where the records and their frames come from
    settings: RunSettings  # device, precision, threads and decoder, resolved once


def run_settings(recipe: Any, settings: RunSettings | None = None) -> RunSettings:
    """A training recipe's settings: `settings` when the caller resolved them, else resolved now
    from train.device, train.precision, train.threads and data.decoder; applied to torch."""
    if settings is None:
        t = recipe.train
        settings = resolve_settings(t.device, t.precision, t.threads, recipe.data.decoder,
                                    local_rank=this_local_rank(), decoder_key="data.decoder")
    return settings.apply()


def start_run(recipe: Any, settings: RunSettings | None = None) -> RunStart:
    """Check data.train, resolve the settings, join the process group, seed (recipe.seed + rank),
    open the clips."""
    d = recipe.data
    if not d.train:
        raise EvilmError("recipe key data.train is not set: it must name the training manifest or shard directory")
    settings = run_settings(recipe, settings)
    info = init_distributed(settings.device)
    seed_everything(recipe.seed + info.rank)
    source, run_dir = open_clips(d.train, d.format, d.root), Path(recipe.output.dir)
    if source.shards is None:
        source.records = compact_records(source.records, run_dir / RECORDS_DIR, info.is_main)
    return RunStart(info, source.records, run_dir, source, settings)


RECORDS_DIR = "records"  # a run's training manifest as a record table (evilm_core/data/records/table.py)


def compact_records(records: Sequence[ClipRecord], directory: Path, is_main: bool) -> RecordTable:
    """The manifest's records as a memory-mapped RecordTable (rank 0 writes it; all ranks open
    it): DataLoader workers then share one copy in the page cache instead of each holding a
    pickled list of Python objects (docs/data.md, "Memory at scale")."""
    if is_main:
        write_record_table(((r, -1) for r in records), directory)
    barrier()
    return RecordTable(directory)


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
