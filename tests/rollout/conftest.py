from __future__ import annotations

import pytest

from tests.rollout.procs import Procs


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.close()
