"""Under `torchrun --nproc_per_node=2` (gloo), the trainer's own loader (engine/trainer.py:
ResumableSampler + persistent spawned workers) over a shard set gives every rank and worker
disjoint samples, each sample exactly once per epoch, and a different order in each epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers.cli import REPO

WORKER = r'''
import json, sys
import torch.distributed as dist
from evilm_core.config.sections import DataConfig, OptimConfig, OutputConfig, RunSections, TrainConfig
from evilm_core.data.dataset import clip_dataset
from evilm_core.data.clips import open_clips
from evilm_core.engine.distributed import init_distributed
from evilm_core.engine.trainer import Trainer
from evilm_core.settings import RunSettings
from tests.engine.test_trainer import ToyTask

def main():
    shards, out = sys.argv[1], sys.argv[2]
    info = init_distributed("cpu")
    source = open_clips(shards)
    dataset = clip_dataset(source.records, source.root, 2, 64, train=True, frames=source.frames(2, 64))
    recipe = RunSections(kind="toy", seed=5, data=DataConfig(batch_size=3, num_workers=2, image_size=64),
                         optim=OptimConfig(lr=0.1), train=TrainConfig(epochs=2, device="cpu"),
                         output=OutputConfig(dir=out))
    trainer = Trainer(recipe, ToyTask(), dataset, info, RunSettings())
    seen = {}
    for epoch in range(2):
        trainer.pos.epoch, trainer.pos.batch = epoch, 0
        seen[epoch] = [i for batch in trainer._loader() for i in batch["index"].tolist()]
    gathered = [None] * info.world
    dist.all_gather_object(gathered, seen)
    if info.rank == 0:
        print(json.dumps({"ranks": gathered, "workers_persist": trainer._train_loader._iterator is not None}))
    dist.destroy_process_group()


if __name__ == "__main__":  # spawned loader workers import this file again
    main()
'''


def test_two_ranks_read_disjoint_samples_once_per_epoch(synth_dir, tmp_path):
    from evilm_core.data.shards.writer import ShardSettings
    from evilm_core.prepare.shards import ShardRequest, build_shards

    shards = tmp_path / "shards"
    build_shards(ShardRequest(input=str(synth_dir / "train.jsonl"), out=str(shards),
                              settings=ShardSettings(candidates=4, size=64), samples_per_shard=10))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
                           str(script), str(shards), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ranks, n = result["ranks"], 28  # 28 training clips: 14 per rank, no padding
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == n // 2 and not set(a) & set(b), epoch  # disjoint ranks
        assert sorted(a + b) == list(range(n)), epoch  # every sample once
    assert ranks[0]["0"] != ranks[0]["1"]  # reshuffled each epoch
    assert result["workers_persist"]  # the same workers served both epochs
