"""The options several commands share, each declared once here: --device, --precision, --threads,
--decoder, --runtime, --max-video-bytes and --json. Commands differ only in their defaults, and every
default is in the one table below. None means "the recipe's value" (train.device, train.precision, train.threads,
data.decoder): a recipe command passes the flag on as an override only when it is given.
The core resolves each value once, where the run starts (evilm_core/settings.py)."""

from __future__ import annotations

import typer

# command -> its default for each shared setting it takes
DEFAULTS: dict[str, dict[str, str | int | None]] = {
    "label": {"device": "auto", "precision": "fp32", "threads": 0, "decoder": "auto"},
    "retrieve index": {"device": "auto", "precision": "auto", "threads": 0, "decoder": "auto", "runtime": "auto"},
    "retrieve query": {"precision": "fp32", "threads": 0, "runtime": "auto"},
    "predict": {"device": "auto", "precision": "auto", "threads": 0, "decoder": "auto"},
    "data check": {"decoder": "auto"},
    "data shards": {"decoder": "auto"},
    "evaluate": {"precision": None, "threads": None},
    "tokenize-train": {"threads": None},
    "pretrain": {"threads": None},
    "finetune": {"threads": None},
    "profile": {"threads": None},
    "quickstart": {"threads": 0},
    "serve": {"device": "auto", "precision": "fp32", "threads": 0, "runtime": "auto"},
}

_HELP = {
    "device": "auto, cpu, cuda or cuda:N (auto: this process's GPU where CUDA exists).",
    "precision": "auto, fp32 or bf16 autocast (auto: bf16 where the hardware has it natively; docs/performance.md).",
    "threads": "torch CPU threads (0: auto, the cores idle at start; docs/performance.md).",
    "decoder": "Video decoder: auto (the fastest that works here), pyav, decord or torchcodec (docs/data.md, "
               "\"Decoders\").",
    "runtime": "What runs an ONNX export: auto, onnxruntime or openvino (pip install 'evilm[openvino]'; auto: "
               "OpenVINO where installed and the precision is bf16, else onnxruntime; docs/performance.md, "
               "\"Runtimes\"). A checkpoint always runs in PyTorch.",
}
_RECIPE_KEY = {"device": "train.device", "precision": "train.precision", "threads": "train.threads",
               "decoder": "data.decoder"}


def _option(name: str, command: str, **kwargs):
    default = DEFAULTS[command][name]
    help = _HELP[name]
    if default is None:
        help += f" [default: the recipe's {_RECIPE_KEY[name]}]"
    return typer.Option(default, f"--{name}", help=help, show_default=default is not None, **kwargs)


def device(command: str):
    return _option("device", command)


def precision(command: str):
    return _option("precision", command)


def threads(command: str):
    return _option("threads", command, min=0)


def decoder(command: str):
    return _option("decoder", command)


def max_video_bytes():
    """--max-video-bytes (recipe key data.max_video_bytes): the data commands' bound on what one
    video may cost (docs/reliability.md, "Bounded reading")."""
    from evilm_core.config.sections import MAX_VIDEO_BYTES

    return typer.Option(MAX_VIDEO_BYTES, "--max-video-bytes", min=1, show_default=False,
                        help="A video file or tar member bigger than this many bytes is skipped and counted, never "
                        "read [default: 4 GiB; recipes: data.max_video_bytes].")


def runtime(command: str):
    return _option("runtime", command)


def json_out(what: str = "the summary", help: str | None = None):
    """--json: `what` is printed as one JSON object on stdout (docs/design.md, "CLI conventions");
    `help` replaces the sentence for a command that streams JSON lines instead."""
    return typer.Option(False, "--json", help=help or f"Print {what} as JSON on stdout.")
