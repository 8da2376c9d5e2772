"""Model cards: the README.md of a model export (docs/hub.md, "Model card"). YAML front matter
(library_name: evilm, tags from the task, license when known, and an `evilm:` block with the
final metrics, so a refresh keeps them), then what the model is, the recipe it was trained with
(a yaml code block), the final validation metrics and how to load it.

The recipe and metrics come from the run directory a `final/` is written into: its config.yaml
(the resolved recipe) and the last validation row of its metrics.jsonl, written just before the
export at the end of training. A checkpoint away from its run keeps those of its existing card."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yaml

from evilm_core.checkpoints import files as ckpt
from evilm_core.fs import atomic_write_text

log = logging.getLogger("evilm.checkpoints")
PLACEHOLDER = "ORG/NAME"  # the repo id in a card written before any push
TASK_TAGS = {"retrieval": ["video-text-retrieval", "text-to-video-retrieval"],
             "qa": ["video-question-answering"], "mc": ["video-multiple-choice"],
             "probe": ["video-classification"], None: ["feature-extraction", "video-text-retrieval"]}
TASK_WHAT = {"retrieval": "fine-tuned for text-to-video retrieval",
             "qa": "fine-tuned for open-ended video question answering (answer classification)",
             "mc": "fine-tuned for multiple-choice video question answering",
             "probe": "with a linear probe (video classification) on its frozen features",
             None: "pre-trained (MLM, VTM, MVM), without a task head"}
ARCH_KEYS = ("video_encoder", "image_size", "max_frames", "text_layers", "text_hidden", "max_text_len",
             "fusion_layers", "fusion_dim", "embed_dim", "codebook_size", "vocab_size")
_RECIPE_BLOCK = re.compile(r"## Training recipe\n.*?```yaml\n(.*?)```", re.S)


def run_inputs(directory: Path) -> tuple[dict | None, dict | None]:
    """(recipe, final validation row) of the run a checkpoint belongs to, or None for each that is
    not there: the run dir's config.yaml (a recipe: it has `kind`) and metrics.jsonl."""
    directory = Path(directory)
    recipe = None
    for candidate in (directory / ckpt.CONFIG, directory.parent / ckpt.CONFIG):  # a step_* holds its recipe
        try:
            raw = yaml.safe_load(candidate.read_text(encoding="utf-8")) if candidate.is_file() else None
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            raw = None
        if isinstance(raw, dict) and "kind" in raw:
            recipe = raw
            break
    return recipe, _final_row(directory.parent / "metrics.jsonl")


def _final_row(path: Path) -> dict | None:
    """The last `split: val` row of a metrics.jsonl (a torn or damaged line is passed over)."""
    if not path.is_file():
        return None
    final = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("split") == "val":
            final = row
    return final


def card_text(config: dict, recipe: dict | None, final: dict | None, repo: str | None = None,
              license: str | None = None) -> str:
    """The model card of a checkpoint whose config (config.json / config.yaml) is `config`."""
    task = config.get("task") if config.get("format") == "evilm-finetune/1" else None
    repo = repo or PLACEHOLDER
    metrics = {k: v for k, v in (final or {}).items() if k not in ("step", "epoch", "split")}
    front = {"library_name": ckpt.LIBRARY, **({"license": license} if license else {}),
             "tags": ["evilm", "video-language", "pytorch", "safetensors", *TASK_TAGS.get(task, [])],
             "evilm": {"format": config.get("format"), "task": task,
                       **({"final": {"step": final.get("step"), "split": "val", "metrics": metrics}} if final else {})}}
    model = config.get("model") or {}
    parts = [f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n",
             f"# {repo.split('/')[-1] if repo != PLACEHOLDER else 'E-ViLM'}\n",
             f"An E-ViLM (efficient video-language model) checkpoint {TASK_WHAT.get(task, '')}: "
             "an EdgeNeXt video encoder, a tiny BERT text encoder and a multi-modal fusion decoder, written by "
             f"evilm {config.get('evilm_version', '')}".rstrip() + ".\n",
             "Architecture (the `model` section of config.json):\n\n| key | value |\n|---|---|\n"
             + "".join(f"| {k} | {model[k]} |\n" for k in ARCH_KEYS if k in model),
             "## Training recipe\n", _recipe_section(recipe), "## Final metrics\n", _metrics_section(final, metrics),
             "## How to load\n", _usage(repo, task)]
    return "\n".join(parts)


def _recipe_section(recipe: dict | None) -> str:
    if recipe is None:
        return "The recipe was not recorded with this checkpoint.\n"
    return ("The resolved recipe (`evilm " + ("pretrain" if recipe.get("kind") == "pretrain" else "finetune")
            + " RECIPE` reproduces the run):\n\n```yaml\n" + yaml.safe_dump(recipe, sort_keys=False) + "```\n")


def _metrics_section(final: dict | None, metrics: dict) -> str:
    if not metrics:
        return "No validation metrics were recorded (the recipe has no data.val).\n"
    rows = "".join(f"| {k} | {v:.4g} |\n" if isinstance(v, float) else f"| {k} | {v} |\n" for k, v in metrics.items())
    return (f"On the validation split at the end of training (step {final.get('step')}); accuracies and recalls "
            f"are percentages.\n\n| metric | value |\n|---|---|\n{rows}")


def _usage(repo: str, task: str | None) -> str:
    cli = {"retrieval": "evilm retrieve index --checkpoint hf-hub:{r} --videos DIR --out INDEX",
           None: "evilm retrieve index --checkpoint hf-hub:{r} --videos DIR --out INDEX"}.get(
        task, "evilm evaluate RECIPE --checkpoint hf-hub:{r}").format(r=repo)
    return ("With evilm installed:\n\n```python\nfrom evilm_core.models.evilm import EViLM\n\n"
            f'model = EViLM.from_pretrained("hf-hub:{repo}")  # or a local directory\n'
            'model.save_pretrained("my-copy")\n```\n\n'
            f"From the command line (any `--checkpoint` takes the id):\n\n```\n{cli}\n```\n")


def previous_inputs(directory: Path) -> tuple[dict | None, dict | None, str | None]:
    """(recipe, final row, license) an existing card of `directory` records; Nones without one."""
    path = Path(directory) / ckpt.CARD
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    try:
        front = yaml.safe_load(match.group(1)) if match else None
        block = _RECIPE_BLOCK.search(text)
        recipe = yaml.safe_load(block.group(1)) if block else None
    except yaml.YAMLError:
        return None, None, None
    front = front if isinstance(front, dict) else {}
    final = (front.get("evilm") or {}).get("final") if isinstance(front.get("evilm"), dict) else None
    row = None
    if isinstance(final, dict):
        row = {"step": final.get("step"), "split": "val", **(final.get("metrics") or {})}
    return recipe if isinstance(recipe, dict) else None, row, front.get("license")


def refresh_card(directory: Path, repo: str | None = None, license: str | None = None) -> Path:
    """Write or rewrite a checkpoint's README.md: the run's recipe and final metrics where the run
    directory is there, else those the existing card records; `repo` fills in the load example."""
    directory = Path(directory)
    recipe, final = run_inputs(directory)
    old_recipe, old_final, old_license = previous_inputs(directory)
    text = card_text(ckpt.read_config(directory), recipe or old_recipe, final or old_final, repo,
                     license or old_license)
    log.info("model card %s", directory / ckpt.CARD)
    return atomic_write_text(directory / ckpt.CARD, text, fsync=False)
