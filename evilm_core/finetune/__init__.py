"""Stage 3: downstream tasks on a pre-trained E-ViLM (paper 4.2, Tables 1-4).

- `config.py`: the `finetune` recipe (task qa | mc | retrieval | probe and its settings).
- `loading.py`: checkpoints in (resolve a run dir, model config + vocab from a checkpoint, task
  heads rebuilt from the saved weights) and out (fine-tuned `final/`).
- `data.py`: per-task datasets (clip + question / options / caption / label).
- `tasks.py`: the three Trainer tasks (qa, mc, retrieval): losses and scoring.
- `probe.py`: the linear probe (frozen backbone, cached features, a linear classifier).
- `evaluate.py`: each task's metrics on a split; `evilm evaluate` for any checkpoint.
- `train.py`: `evilm finetune`.
"""
