"""What a checkpoint can answer, read without building its model: its task, the classes of its
head, the probe's feature and the model's input sizes. The main process of a CPU run only
describes the checkpoint; its loader workers load the model (engine/workers.py).

| checkpoint | head predict runs | inputs it takes |
|---|---|---|
| qa (fine-tuned) | `heads.qa` over answers.txt | a question per clip |
| mc (fine-tuned) | `heads.vtm` match score per option | options per clip (and a question) |
| probe | `heads.probe` over labels.txt | the videos alone |
| retrieval | unimodal embeddings, cosine | texts to rank (`--texts`, `--labels`) |
| pre-trained | VTM (zero-shot mc) or embeddings (zero-shot texts) | options, or texts to rank |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.errors import EvilmError
from evilm_core.models.config import EViLMConfig
from evilm_core.models.heads import CLASS_FILES, HEAD_OUT, read_class_file
from evilm_core.models.pretrained import FORMAT, checkpoint_model_config

# what each kind of checkpoint answers with, and the inputs it takes (the errors quote these)
ACCEPTS = {
    "qa": "a question per clip: --question TEXT (the same for every clip) or a manifest whose records have a "
          "'question'; it answers with its top -k answers and their probabilities",
    "mc": "options per clip: --options 'a|b|c' (with an optional --question paired with each) or a manifest whose "
          "records have 'options'; it answers with each option's match score and the chosen one",
    "probe": "the videos alone (no --question, --options, --texts or --labels); it answers with its top -k "
             "labels and their probabilities",
    "retrieval": "texts to rank for each clip: --texts FILE (one per line) or --labels 'a|b|c' with an optional "
                 "--template 'a video of {}'; it answers with the texts ranked by similarity",
    "pretrained": "options per clip (--options 'a|b|c' or a manifest's 'options': zero-shot multiple choice with "
                  "its matching head) or texts to rank for each clip (--texts FILE, or --labels 'a|b|c' with an "
                  "optional --template: zero-shot classification)",
}


@dataclass
class CheckpointInfo:
    directory: Path  # the resolved checkpoint directory
    task: str  # qa | mc | probe | retrieval | pretrained
    model: EViLMConfig  # its model config (image size, frames, text length)
    classes: list[str] | None  # the head's answers (qa) or labels (probe), in head order
    feature: str  # the probe's input feature: cls | embed

    def describe(self) -> str:
        """'checkpoint DIR is a qa checkpoint (31 answers)': what every input error says of it."""
        what = {"qa": f"a qa checkpoint ({len(self.classes or [])} answers)",
                "probe": f"a linear-probe checkpoint ({len(self.classes or [])} labels)",
                "mc": "a multiple-choice checkpoint", "retrieval": "a retrieval checkpoint",
                "pretrained": "a pre-trained checkpoint"}[self.task]
        return f"checkpoint {self.directory} is {what}"

    def refuse(self, problem: str) -> EvilmError:
        """The one-paragraph error for input this checkpoint cannot take: the problem, then the
        checkpoint's task and what it takes."""
        return EvilmError(f"{problem}. The {self.describe()}: it takes {ACCEPTS[self.task]}")


def describe_checkpoint(spec: str | Path) -> CheckpointInfo:
    """Resolve a checkpoint argument and say what it can answer (no model is built)."""
    directory = resolve_checkpoint(spec)
    config = ckpt.read_config(directory)
    model = checkpoint_model_config(directory, config)
    heads = _head_weights(directory)
    task = _task(config, heads)
    classes = None
    if task in CLASS_FILES:
        if task not in heads:
            raise EvilmError(f"checkpoint {directory} says it was fine-tuned for {task} but has no {task} head "
                             f"({HEAD_OUT[task]} is not in {ckpt.WEIGHTS})")
        classes = read_class_file(directory, task)
        if classes is None:
            raise EvilmError(f"checkpoint {directory} has a {task} head but no {CLASS_FILES[task]} (the names of its "
                             "outputs) beside it or in its run directory")
    return CheckpointInfo(directory, task, model, classes, str(config.get("feature", "cls")))


def _task(config: dict, heads: set[str]) -> str:
    """The checkpoint's task: a fine-tuned export says it, a fine-tuning step_* holds its recipe,
    a head of its own tells the rest; otherwise it is pre-trained."""
    if config.get("format") == FORMAT or config.get("kind") == "finetune":
        return str(config.get("task"))
    for task in HEAD_OUT:
        if task in heads:
            return task
    return "pretrained"


def _head_weights(directory: Path) -> set[str]:
    """The task heads (qa, probe) whose weights the checkpoint holds, from the safetensors header."""
    try:
        with safe_open(str(directory / ckpt.WEIGHTS), framework="pt") as fh:
            names = set(fh.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise ckpt.damaged(directory / ckpt.WEIGHTS, err) from None
    return {task for task, key in HEAD_OUT.items() if key in names}
