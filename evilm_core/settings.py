"""Run settings (docs/design.md, "Run settings"; docs/performance.md): the device, the numeric
precision, torch's CPU threads and the video decoder of a run, each resolved once where the run
starts (`resolve_settings`) and passed down as one `RunSettings`. Nothing below that point
resolves a setting again, per clip or per step, and no decision is kept in process-global state:
a process that runs several stages (the quickstart) resolves once and hands the same RunSettings
to each. The valid values are in config/sections.py (DECODERS, PRECISIONS, DEVICE_PATTERN).

Light to import: torch is imported only when a setting needs it, so a query process over an ONNX
export never loads it.

Threads. torch starts one intra-op thread per physical core whatever else the machine runs. On a
shared lab server that oversubscribes the cores, and OpenMP threads spinning for busy cores made
the same work 6-8x slower than one thread (docs/benchmarks.md, "Threads"). The policy: an
explicit count (`--threads N`, recipe key `train.threads`, or OMP_NUM_THREADS) is used as given;
`auto` (0) takes the cores that are idle now, sampled from /proc/stat (the 1-minute load average
elsewhere), at most the physical cores this process may use and at least 1. Commands that split
work across processes share the count out by the named policies at the end (`label_plan`,
`index_plan`).

Precision. `auto` is bf16 autocast where the hardware computes in bf16 natively (CUDA GPUs that
support it; x86 CPUs with AVX512-BF16 or AMX; ARM CPUs with the BF16 extension) and fp32
elsewhere, where bf16 is emulated and slower than fp32.

Decoder. `auto` is the first backend that works here (data/video/read.py, resolve_decoder).

Runtime (what runs the towers of an ONNX export; a checkpoint always runs in PyTorch). `auto` is
OpenVINO where it is installed (extra `evilm[openvino]`) and the run computes in bf16, else
onnxruntime: OpenVINO's CPU plugin in bf16 embeds a paper-size clip in 0.47-0.51x of
onnxruntime's fp32 time (0.58x of PyTorch's bf16 path), while in fp32 the two are within 3-7%,
either way round (docs/benchmarks.md, "Runtimes"), and onnxruntime starts a query process faster.

PyTorch on the CPU in bf16 stores the encoders in bf16 (models/loading.py for_precision) under
autocast: 0.87-0.95x of autocast alone's time at the same cosine to fp32 (docs/benchmarks.md,
"Runtimes").
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from evilm_core.config.sections import DEVICE_PATTERN, PRECISIONS, RUNTIMES
from evilm_core.data.video.read import resolve_decoder
from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.settings")
MAX_AUTO_WORKERS = 8  # CPU index workers each hold a model and a batch of frames (~0.5 GB for the paper model)
GPU_AUTO_WORKERS = 2  # decode workers feeding a GPU


@dataclass(frozen=True)
class RunSettings:
    """The resolved settings of one run: concrete values only (no `auto`)."""

    device: str = "cpu"  # "cpu", "cuda:0", ...
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    threads: int = 1  # torch's intra-op threads (onnxruntime's and FAISS's in a torch-free process)
    decoder: str | None = "pyav"  # the video backend: "pyav" | "decord" | "torchcodec"; None: the run decodes nothing
    runtime: str = "onnxruntime"  # what runs an ONNX export: "onnxruntime" | "openvino" (a checkpoint: PyTorch)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @property
    def is_cpu(self) -> bool:
        return self.device == "cpu"

    def apply(self) -> RunSettings:
        """Give torch this run's thread count (the one setting torch keeps per process)."""
        set_torch_threads(self.threads)
        return self

    def autocast(self):
        """bf16 autocast for precision bf16, else a no-op context (the forward passes of a run)."""
        return autocast(self.precision, self.device)

    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}"
        return ", ".join([self.device, self.precision, threads] + ([f"decoder {self.decoder}"] if self.decoder else []))


def resolve_settings(device: str = "auto", precision: str = "auto", threads: int = 0, decoder: str | None = "auto",
                     local_rank: int | None = None, decoder_key: str = "--decoder",
                     runtime: str = "auto") -> RunSettings:
    """Resolve each setting of a run once (the five rules in the module docstring), log why, and
    return the concrete values. `local_rank` picks this process's GPU (default: LOCAL_RANK);
    `decoder` None: the run decodes no video (a query, frames from a shard set)."""
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    dev = resolve_device(device, rank)
    n, why = resolve_threads(threads)
    backend = resolve_decoder(decoder, decoder_key) if decoder is not None else None
    resolved = resolve_precision(precision, dev)
    settings = RunSettings(dev, resolved, n, backend, resolve_runtime(runtime, resolved))
    log.info("run settings: %s (threads: %s)", settings.describe(), why)
    return settings


# ---------------------------------------------------------------------------- device


def resolve_device(name: str = "auto", local_rank: int = 0) -> str:
    """auto | cpu | cuda | cuda:N -> a device name; 'auto' and a bare 'cuda' take this rank's GPU."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise EvilmError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "cpu":
        return name  # no torch needed: an ONNX query process never loads it
    import torch

    if name == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise EvilmError(f"device {name!r}: CUDA is not available on this machine; use cpu")
    return name if ":" in name else f"cuda:{local_rank}"


# ---------------------------------------------------------------------------- precision


def resolve_precision(precision: str, device: str) -> str:
    """auto | fp32 | bf16 -> the precision used on `device` ('fp32' or 'bf16')."""
    if precision not in PRECISIONS:
        raise EvilmError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bf16 natively (not emulated)."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_bf16()


@functools.cache
def cpu_has_bf16() -> bool:
    """A fact about this machine, read once per process."""
    if platform.system() == "Darwin":
        import subprocess

        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return out.stdout.strip() == "1"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def autocast(precision: str, device):
    """bf16 autocast for a resolved precision 'bf16', a no-op context for 'fp32'."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"autocast takes a resolved precision (fp32 or bf16), got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------- runtime

OPENVINO_EXTRA = "--runtime openvino needs the openvino extra: pip install 'evilm[openvino]'"


def resolve_runtime(runtime: str, precision: str) -> str:
    """auto | onnxruntime | openvino -> what runs an ONNX export, given the run's resolved precision."""
    if runtime not in RUNTIMES:
        raise EvilmError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    has_openvino = importlib.util.find_spec("openvino") is not None
    if runtime == "openvino" and not has_openvino:
        raise EvilmError(OPENVINO_EXTRA)
    if runtime == "auto":
        return "openvino" if has_openvino and precision == "bf16" else "onnxruntime"
    return runtime


# ---------------------------------------------------------------------------- threads


def resolve_threads(requested: int = 0) -> tuple[int, str]:
    """-> (intra-op threads, why). requested > 0 is used as given; 0 is the policy above."""
    if requested > 0:
        return requested, "as asked"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    default, free = physical_cores(), idle_cores()
    n = max(1, min(default, int(free + 0.5)))
    return n, f"auto: {free:.1f} of {os.cpu_count()} cores idle, {default} physical"


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def current_threads() -> int:
    """torch's intra-op thread count now in force (1 where torch is not loaded)."""
    torch = sys.modules.get("torch")
    return max(1, torch.get_num_threads()) if torch is not None else 1


def _affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


@functools.cache
def physical_cores() -> int:
    """The physical cores among the CPUs this process may use (torch's own default thread count):
    distinct (package, core) pairs of /proc/cpuinfo, else the CPUs themselves. A machine fact."""
    cpus = _affinity()
    try:
        blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
    except OSError:
        return len(cpus)
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and int(fields["processor"]) in cpus:
            cores.add((fields.get("physical id"), fields.get("core id", fields["processor"])))
    return max(1, len(cores)) if cores else len(cpus)


def idle_cores(sample_s: float = 0.1) -> float:
    """Cores not busy right now: from two /proc/stat readings `sample_s` apart (Linux), else
    cores minus the 1-minute load average."""
    cores = len(_affinity())
    first = _cpu_times()
    if first is not None:
        time.sleep(sample_s)
        second = _cpu_times()
        total, idle = second[0] - first[0], second[1] - first[1]
        if total > 0:
            return min(cores, (os.cpu_count() or cores) * idle / total)
    try:
        return max(0.0, cores - os.getloadavg()[0])
    except (OSError, AttributeError):
        return float(cores)


def _cpu_times() -> tuple[int, int] | None:
    """(all jiffies, idle + iowait jiffies) of the machine, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        values = [int(v) for v in fields[:8]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values), values[3] + values[4]


# ---------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class ProcessPlan:
    """How a command shares its threads out between this process and its loader workers."""

    workers: int  # loader processes (0: everything in this process)
    worker_threads: int  # torch threads of each worker
    main_threads: int  # torch threads of this process


def label_plan(settings: RunSettings, workers: int) -> ProcessPlan:
    """`evilm label`: the workers decode on one thread each; on the CPU the tokenizer, in this
    process, gets the cores they leave (oversubscribed intra-op threads make small models many
    times slower)."""
    main = settings.threads
    if settings.is_cpu and workers > 0:
        main = max(1, min(settings.threads, (os.cpu_count() or 1) - workers))
    return ProcessPlan(workers, 1, main)


def index_plan(settings: RunSettings, workers: int | None) -> ProcessPlan:
    """`evilm retrieve index` and `evilm predict`. On the CPU each worker decodes and embeds its
    own batches: auto is one worker per thread the policy gives, at most MAX_AUTO_WORKERS, the
    threads shared out among them, and this process, which only writes results, keeps one: intra-op
    threads competing with decoders for the same cores slow both (docs/performance.md, "Indexing
    on the CPU"). With a GPU the workers decode (auto: GPU_AUTO_WORKERS) and this process embeds."""
    if not settings.is_cpu:
        return ProcessPlan(GPU_AUTO_WORKERS if workers is None else workers, 1, settings.threads)
    workers = min(settings.threads, MAX_AUTO_WORKERS) if workers is None else workers
    if workers == 0:
        return ProcessPlan(0, settings.threads, settings.threads)
    return ProcessPlan(workers, max(1, settings.threads // workers), 1)
