"""How a process uses the machine it runs on: torch's CPU threads and the numeric precision
(docs/performance.md). Light to import: torch is imported only when a setting is applied.

Threads. torch starts one intra-op thread per physical core whatever else the machine runs.
On a shared lab server that oversubscribes the cores, and OpenMP threads spinning for busy
cores made the same work 6-8x slower than one thread (docs/benchmarks.md, "Threads"). The
policy: an explicit count (`--threads N`, recipe key `train.threads`, or OMP_NUM_THREADS) is
used as given; `auto` (0) takes the cores that are idle now, sampled once per process from
/proc/stat (the 1-minute load average elsewhere), at most torch's own default and at least 1.
Sampling once matters: a later stage of the same process must not see its own load as
someone else's.

Precision. `auto` is bf16 autocast where the hardware computes in bf16 natively (CUDA GPUs
that support it; x86 CPUs with AVX512-BF16 or AMX; ARM CPUs with the BF16 extension) and fp32
elsewhere, where bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path

log = logging.getLogger("evilm.engine")
PRECISIONS = ("auto", "fp32", "bf16")
_DECIDED: dict[str, int] = {}  # the thread count this process chose (auto is decided once)


def idle_cores(sample_s: float = 0.1) -> float:
    """Cores not busy right now: from two /proc/stat readings `sample_s` apart (Linux), else
    cores minus the 1-minute load average."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
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


def _default_threads() -> int:
    """torch's own default (one per core it may use), without importing torch where it is not
    loaded: a query process over an ONNX export never imports it (docs/performance.md, "Start-up")."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(requested: int = 0) -> tuple[int, str]:
    """-> (intra-op threads, why). requested > 0 is used as given; 0 is the policy above. Used
    as is (without torch) by onnxruntime and FAISS; apply_threads gives it to torch."""
    if requested > 0:
        _DECIDED.setdefault("auto", requested)  # later stages of this process that say auto keep it
        return requested, "as asked"
    if "auto" in _DECIDED:
        return _DECIDED["auto"], "auto, decided earlier in this process"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    default = _DECIDED.setdefault("torch_default", _default_threads())
    free = idle_cores()
    n = max(1, min(default, int(free + 0.5)))
    _DECIDED["auto"] = n
    return n, f"auto: {free:.1f} of {os.cpu_count()} cores idle, default {default}"


def current_threads() -> int:
    """The intra-op thread count now in force: torch's where torch is loaded (apply_threads set
    it), else the policy's choice (a process that never imports torch: onnxruntime, FAISS)."""
    torch = sys.modules.get("torch")
    return max(1, torch.get_num_threads() if torch is not None else choose_threads()[0])


def apply_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads by the policy above; returns the count."""
    import torch

    n, why = choose_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n


def native_bf16(device) -> bool:
    """Whether `device` computes in bf16 natively (not emulated)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
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


def resolve_precision(precision: str, device) -> str:
    """auto | fp32 | bf16 -> the precision used on `device` ('fp32' or 'bf16')."""
    if precision not in PRECISIONS:
        from evilm_core.errors import EvilmError

        raise EvilmError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device):
    """bf16 autocast for precision 'bf16' (and 'auto' where bf16 is native), a no-op context otherwise."""
    import torch

    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")
