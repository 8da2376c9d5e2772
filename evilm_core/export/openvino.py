"""OpenVINO as the runtime of an ONNX export (`--runtime openvino`, extra `evilm[openvino]`;
docs/performance.md, "Runtimes"). The CPU plugin runs the export's graph in bf16 where the CPU
computes in it (INFERENCE_PRECISION_HINT, the run's resolved precision), else in fp32.

Start-up stays short: compiled models are cached on disk (OpenVINO's CACHE_DIR), in the export's
runtime cache (runtime.py cache_dir, passed in: in the export when it is writable, else the
user's); the second process to open a tower reads the compiled blob instead of compiling
(about 0.1 s instead of 0.4 s, docs/benchmarks.md, "Runtimes"). The video tower is compiled once per batch size it is given (static
shapes run about 13% faster than the export's dynamic batch; an index gives it one or two sizes),
the text tower once with its dynamic batch and length (a query stream gives it every size from 1
to --batch, each cut to its longest query: runtime.py trim_text; one blob, no per-call reshape).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.settings import OPENVINO_EXTRA

log = logging.getLogger("evilm.export")
PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}  # the run's precision -> OpenVINO's inference precision


def _core():
    try:
        import openvino as ov
    except ImportError:
        raise EvilmError(OPENVINO_EXTRA) from None
    return ov.Core()


def openvino_runner(path: Path, names: list[str], threads: int, precision: str, static_batch: bool,
                    cache: Path) -> Callable:
    """A tower run by OpenVINO's CPU plugin: arrays in (in `names` order), its one output out.
    `static_batch`: compile once per batch size seen (the video tower), else once, dynamic.
    `cache`: where compiled blobs are kept (OpenVINO keys each by the model and its settings)."""
    core = _core()
    # no pinning: two index workers (one thread each) ran 0.7-0.9x as fast pinned (docs/benchmarks.md,
    # "Runtimes"); the thread policy (settings.py) already shares the cores out
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": PRECISION_HINT[precision], "ENABLE_CPU_PINNING": False}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        config["CACHE_DIR"] = str(cache)
    except OSError as err:  # no writable cache anywhere: compile in every process (slower start, same results)
        log.warning("openvino: no compiled-model cache (%s); each process compiles its towers", err)
    compiled: dict[int | None, object] = {}

    def request(batch: int | None):
        if batch not in compiled:
            model = str(path)  # from a path, a cached blob is loaded without reading the ONNX file at all
            if batch is not None:
                model = core.read_model(model)
                model.reshape({n: [batch] + [d.get_length() for d in list(model.input(n).get_partial_shape())[1:]]
                               for n in names})  # the export's other dimensions are fixed already
            try:
                compiled[batch] = core.compile_model(model, "CPU", config).create_infer_request()
            except RuntimeError as err:  # OpenVINO raises RuntimeError for graphs or settings it cannot take
                raise EvilmError(f"OpenVINO could not compile {path} ({str(err).strip().splitlines()[0][:200]}); "
                                 "run it with --runtime onnxruntime") from None
            log.debug("openvino: compiled %s for batch %s in %s (cache %s)", path.name, batch or "dynamic", precision,
                      cache)
        return compiled[batch]

    def run(*arrays: np.ndarray) -> np.ndarray:
        infer = request(len(arrays[0]) if static_batch else None)
        result = infer.infer({n: a for n, a in zip(names, arrays)})
        return np.array(result[0], copy=True)  # the request's buffer is reused by its next call

    return run
