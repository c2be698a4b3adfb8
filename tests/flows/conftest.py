"""Fixtures of the flow tests: Prefect's test harness (a temporary API and database), and scratch
copies of the session's built project (tests/project.py). Prefect's home is a temporary folder,
set before prefect is imported."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME  # before anything imports prefect
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def harness() -> Iterator[None]:
    """Prefect's test harness: a temporary database and API (about 7 s), once per session (pytest-xdist
    may interleave the flow modules on one worker: a module-scoped one would start again)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
