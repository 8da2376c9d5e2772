"""Recipe sections every recipe shares, so scripts can override the same keys everywhere
(`--set data.train=... --set output.dir=...`). Model sections live next to their models."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from evilm_core.config.loader import path_field

# The valid values of the run settings every command shares (docs/design.md, "Run settings");
# evilm_core/settings.py resolves them, once per run.
DECODERS = ("auto", "pyav", "decord", "torchcodec")  # auto: the first of the others that works here (fastest first)
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware computes in it natively
RUNTIMES = ("auto", "onnxruntime", "openvino")  # what runs an ONNX export (auto: settings.py resolve_runtime)
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"  # auto: this rank's GPU where CUDA exists, else the CPU
MAX_VIDEO_BYTES = 4 << 30  # data.max_video_bytes' default: a bigger video is skipped and counted, never read


def at_least(section, name: str, **minimums: float) -> None:
    """Each named field of `section` must be >= its minimum; the error names the key and value."""
    for key, low in minimums.items():
        value = getattr(section, key)
        if value < low:
            raise ValueError(f"{name}.{key} must be >= {low}, got {value}")


@dataclass
class DataConfig:
    train: str | None = path_field()  # training manifest (JSONL or any reader format)
    val: str | None = path_field()  # validation manifest
    test: str | None = path_field()  # test manifest
    root: str | None = path_field()  # where relative video paths resolve (default: cwd)
    format: str = "auto"  # manifest format, see `evilm data check --help`
    num_frames: int = 4  # T frames sampled per clip, one per equal segment
    image_size: int = 256  # frames are resized to image_size x image_size in the decoder
    batch_size: int = 32  # clips per step per process
    num_workers: int = 2  # DataLoader decode workers per process
    hflip: bool = True  # random horizontal flip in training (targets are mirrored)
    color_jitter: float = 0.0  # brightness/contrast/saturation jitter strength in training
    decoder: str = "auto"  # video decoder: auto (fastest that works here) | decord | pyav | torchcodec (docs/data.md)
    max_video_bytes: int = MAX_VIDEO_BYTES  # a bigger video file or tar member is skipped and counted, never read

    def __post_init__(self):
        at_least(self, "data", batch_size=1, num_workers=0, max_video_bytes=1)
        if self.color_jitter < 0:
            raise ValueError(f"data.color_jitter must be >= 0, got {self.color_jitter}")
        if self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.decoder not in DECODERS:
            raise ValueError(f"data.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"data.image_size must be a positive multiple of 32, got {self.image_size}")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # applied to 2-D+ weights only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    grad_clip: float = 1.0  # max global grad norm (0 disables)

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        at_least(self, "optim", weight_decay=0, warmup_steps=0, grad_clip=0)


@dataclass
class TrainConfig:
    epochs: int = 1  # passes over the training manifest
    max_steps: int = 0  # stop after this many optimizer steps (0: epochs decide)
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # bf16 autocast; auto: bf16 where native (docs/performance.md)
    threads: int = 0  # torch CPU threads (0: auto, the cores idle at start; docs/performance.md)
    log_every: int = 10  # steps between metrics.jsonl rows
    eval_every: int = 0  # steps between evaluations (0: at the end of each epoch)
    save_every: int = 0  # steps between checkpoints (0: at the end of each epoch)
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 10  # consecutive steps with a NaN/Inf loss or gradient (skipped) before the run stops
    compile: bool = False  # torch.compile the training model (after DDP); the first steps compile (docs/performance.md)

    def __post_init__(self):
        at_least(self, "train", epochs=0, max_steps=0, grad_accum=1, log_every=1, eval_every=0, save_every=0,
                 keep_checkpoints=0, max_nonfinite=1, threads=0)
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError("train.epochs and train.max_steps are both 0: the run would train nothing")
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class OutputConfig:
    dir: str = path_field("runs/default")  # the run directory


@dataclass
class LoggingConfig:
    """Where a run's metrics go besides metrics.jsonl, the source of truth (docs/tracking.md)."""

    tensorboard: bool = False  # also write TensorBoard events to RUN_DIR/tensorboard/ (evilm[tensorboard])
    # also log to Weights & Biases (evilm[wandb]): off | offline (files under RUN_DIR/wandb/, `wandb sync` later)
    # | online. A bare YAML `off` reads as false: accepted as "off".
    wandb: Literal["off", "offline", "online"] | bool = "off"
    wandb_project: str = "evilm"  # the W&B project
    run_name: str | None = None  # the W&B run's name (default: output.dir's name; TensorBoard names runs by directory)

    def __post_init__(self):
        if self.wandb is False:
            self.wandb = "off"
        elif self.wandb is True:
            raise ValueError("logging.wandb must be off, offline or online, got true (ambiguous)")


@dataclass
class InitConfig:
    # starting weights: a checkpoint dir, a run dir (its final/, else its newest step_*) or a Hub id
    # hf-hub:ORG/NAME[@REV] (docs/hub.md); the
    # optimiser starts fresh. Fine-tuning also takes the model config and vocab.txt from it.
    checkpoint: str | None = path_field()


@dataclass
class RunSections:
    """Fields shared by training recipes; concrete recipes subclass it."""

    kind: str = ""  # recipe kind (tokenizer, pretrain, finetune)
    seed: int = 0  # global seed (python, numpy, torch, data order)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # TensorBoard, W&B (docs/tracking.md)


def check_model_fits_data(model, data: DataConfig) -> None:
    """The frames the data section gives must be the frames the model takes: the region grid of
    the model, the tokenizer and the label cache all follow from data.image_size (docs/design.md,
    "Region grid"). `model` needs `image_size` and `max_frames`; raises ValueError naming both values."""
    if model.image_size != data.image_size:
        raise ValueError(f"model.image_size ({model.image_size}) differs from data.image_size ({data.image_size})")
    if data.num_frames > model.max_frames:
        raise ValueError(f"data.num_frames ({data.num_frames}) exceeds model.max_frames ({model.max_frames})")
