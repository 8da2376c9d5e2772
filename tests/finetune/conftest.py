"""One intra-op thread for these tests: on a busy 2-core machine, two OpenMP threads per
process make the tiny models' steps ~100x slower than one."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
