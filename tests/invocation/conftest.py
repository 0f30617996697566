"""The `start_runtime` fixture: the in-container runtime as a local process (tests/runtime_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import StartRuntime, runtime_starter


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    yield from runtime_starter(tmp_path)
