"""Run settings (evilm_core/settings.py): device, precision, threads and decoder, each resolved once
where a run starts; no decision kept in process-global state; the commands' named policies."""

from __future__ import annotations

import pytest
import torch

from evilm_core import settings
from evilm_core.errors import EvilmError
from evilm_core.settings import (
    ProcessPlan,
    RunSettings,
    autocast,
    index_plan,
    label_plan,
    resolve_device,
    resolve_settings,
)


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_explicit_count_is_used_as_given():
    assert settings.resolve_threads(3) == (3, "as asked")
    assert RunSettings(threads=1).apply().threads == 1 and torch.get_num_threads() == 1


def test_auto_takes_the_idle_cores_each_time_it_is_asked(monkeypatch):
    """No hidden state: a process that wants one decision resolves once and passes it down."""
    monkeypatch.setattr(settings, "physical_cores", lambda: 8)
    monkeypatch.setattr(settings, "idle_cores", lambda sample_s=0.1: 0.3)  # a busy machine: at least one thread
    assert settings.resolve_threads(0)[0] == 1
    monkeypatch.setattr(settings, "idle_cores", lambda sample_s=0.1: 5.6)
    assert settings.resolve_threads(0)[0] == 6


def test_auto_is_capped_by_the_physical_cores(monkeypatch):
    monkeypatch.setattr(settings, "idle_cores", lambda sample_s=0.1: 1000.0)
    n, why = settings.resolve_threads(0)
    assert n == settings.physical_cores() and "idle" in why and "physical" in why


def test_physical_cores_counts_cores_not_hyperthreads(monkeypatch):
    text = "".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t: {cpu // 2}\n\n" for cpu in range(4))
    monkeypatch.setattr(settings, "_affinity", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(settings.Path, "read_text", lambda self: text)
    settings.physical_cores.cache_clear()
    try:
        assert settings.physical_cores() == 2
    finally:
        settings.physical_cores.cache_clear()


def test_omp_num_threads_wins_over_auto(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert settings.resolve_threads(0) == (2, "OMP_NUM_THREADS")


def test_idle_cores_is_within_the_machine():
    assert 0.0 <= settings.idle_cores(0.05) <= 4096


def test_precision_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(settings, "native_bf16", lambda device: True)
    assert settings.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(settings, "native_bf16", lambda device: False)
    assert settings.resolve_precision("auto", "cpu") == "fp32"
    assert settings.resolve_precision("bf16", "cpu") == "bf16" and settings.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(EvilmError, match="auto, fp32, bf16.*'fp16'"):
        settings.resolve_precision("fp16", "cpu")


def test_cpu_flags_decide_native_bf16(monkeypatch):
    def cpuinfo(flags):
        monkeypatch.setattr(settings.Path, "read_text", lambda self: f"processor\t: 0\nflags\t\t: {flags}\n")
        settings.cpu_has_bf16.cache_clear()

    monkeypatch.setattr(settings.platform, "system", lambda: "Linux")
    try:
        cpuinfo("fpu sse avx2 avx512f")
        assert not settings.cpu_has_bf16()
        cpuinfo("fpu avx512f avx512_bf16")
        assert settings.cpu_has_bf16()
        cpuinfo("fpu amx_bf16 amx_tile")
        assert settings.cpu_has_bf16()
    finally:
        settings.cpu_has_bf16.cache_clear()


def test_device_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu" and resolve_device("auto", local_rank=3) == "cpu"


@pytest.mark.parametrize("name", ["foo", "gpu", "cuda:x", ""])
def test_device_rejects_unknown_names(name):
    with pytest.raises(EvilmError, match=f"device must be auto, cpu, cuda or cuda:N, got {name!r}"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_device_cuda_without_a_gpu_is_a_user_error(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvilmError, match=f"device {name!r}: CUDA is not available on this machine; use cpu"):
        resolve_device(name)


def test_device_gives_each_rank_its_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only names are built, nothing runs on it
    assert resolve_device("auto", local_rank=2) == "cuda:2" and resolve_device("cuda", local_rank=1) == "cuda:1"
    assert resolve_device("cuda:3", local_rank=1) == "cuda:3"  # an explicit index is kept


def test_resolve_settings_gives_concrete_values(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(settings, "native_bf16", lambda device: False)
    s = resolve_settings("auto", "auto", 2, "auto")
    assert s == RunSettings("cpu", "fp32", 2, "pyav")  # PyAV is a dependency: auto's first choice
    assert resolve_settings("cpu", "bf16", 1, None).decoder is None  # a run that decodes nothing
    with pytest.raises(EvilmError, match="--decoder: unknown decoder 'ffmpeg'"):
        resolve_settings("cpu", "fp32", 1, "ffmpeg")


def test_autocast_takes_a_resolved_precision_only():
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="resolved precision"):
        autocast("auto", "cpu")


def test_label_plan_leaves_the_decoders_their_cores(monkeypatch):
    monkeypatch.setattr(settings.os, "cpu_count", lambda: 8)
    assert label_plan(RunSettings(threads=8), 2) == ProcessPlan(2, 1, 6)
    assert label_plan(RunSettings(threads=8), 0) == ProcessPlan(0, 1, 8)
    assert label_plan(RunSettings(device="cuda:0", threads=8), 2).main_threads == 8


def test_index_plan_shares_the_threads_out_among_cpu_workers():
    assert index_plan(RunSettings(threads=8), None) == ProcessPlan(8, 1, 1)  # one worker per thread
    assert index_plan(RunSettings(threads=16), None).workers == settings.MAX_AUTO_WORKERS
    assert index_plan(RunSettings(threads=8), 2) == ProcessPlan(2, 4, 1)
    assert index_plan(RunSettings(threads=8), 0) == ProcessPlan(0, 8, 8)
    assert index_plan(RunSettings(device="cuda:0", threads=4), None) == ProcessPlan(settings.GPU_AUTO_WORKERS, 1, 4)


def test_runtime_auto_is_openvino_only_in_bf16_where_installed(monkeypatch):
    import importlib.util

    from evilm_core.errors import EvilmError
    from evilm_core.settings import resolve_runtime

    real = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, on=installed: (real("json") if on else None) if name == "openvino"
                            else real(name))
        assert resolve_runtime("auto", "bf16") == ("openvino" if installed else "onnxruntime")
        assert resolve_runtime("auto", "fp32") == "onnxruntime"
        assert resolve_runtime("onnxruntime", "bf16") == "onnxruntime"
    with pytest.raises(EvilmError, match=r"pip install 'evilm\[openvino\]'"):
        resolve_runtime("openvino", "bf16")  # not installed (still patched)
    with pytest.raises(EvilmError, match="--runtime must be one of auto, onnxruntime, openvino"):
        resolve_runtime("tensorrt", "fp32")
