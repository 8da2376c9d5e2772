"""The thread and precision policy (evilm_core/machine.py)."""

from __future__ import annotations

import pytest
import torch

from evilm_core import machine
from evilm_core.errors import EvilmError


@pytest.fixture(autouse=True)
def fresh_decision(monkeypatch):
    monkeypatch.setattr(machine, "_DECIDED", {})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_explicit_count_is_used_as_given():
    assert machine.choose_threads(3) == (3, "as asked")
    assert machine.apply_threads(1) == 1 and torch.get_num_threads() == 1


def test_auto_takes_the_idle_cores_once_per_process(monkeypatch):
    monkeypatch.setattr(machine, "idle_cores", lambda sample_s=0.1: 0.3)  # a busy machine: at least one thread
    assert machine.choose_threads(0)[0] == 1
    monkeypatch.setattr(machine, "idle_cores", lambda sample_s=0.1: 64.0)
    assert machine.choose_threads(0)[0] == 1  # decided once: a later stage's own load is not someone else's


def test_auto_is_capped_by_torch_default(monkeypatch):
    monkeypatch.setattr(machine, "idle_cores", lambda sample_s=0.1: 1000.0)
    n, why = machine.choose_threads(0)
    assert n == torch.get_num_threads() and "idle" in why


def test_omp_num_threads_wins_over_auto(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert machine.choose_threads(0) == (2, "OMP_NUM_THREADS")


def test_idle_cores_is_within_the_machine():
    free = machine.idle_cores(0.05)
    assert 0.0 <= free <= (torch.get_num_threads() + 1000)


def test_precision_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda device: True)
    assert machine.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(machine, "native_bf16", lambda device: False)
    assert machine.resolve_precision("auto", "cpu") == "fp32"
    assert machine.resolve_precision("bf16", "cpu") == "bf16" and machine.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(EvilmError, match="auto, fp32, bf16.*'fp16'"):
        machine.resolve_precision("fp16", "cpu")


def test_cpu_flags_decide_native_bf16(monkeypatch):
    def cpuinfo(flags):
        monkeypatch.setattr(machine.Path, "read_text", lambda self: f"processor\t: 0\nflags\t\t: {flags}\n")

    monkeypatch.setattr(machine.platform, "system", lambda: "Linux")
    cpuinfo("fpu sse avx2 avx512f")
    assert not machine._cpu_has_bf16()
    cpuinfo("fpu avx512f avx512_bf16")
    assert machine._cpu_has_bf16()
    cpuinfo("fpu amx_bf16 amx_tile")
    assert machine._cpu_has_bf16()
