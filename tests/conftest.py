"""Test-wide set-up: 8 simulated CPU devices (set before jax is imported) and shared paths."""
import functools
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from repsim_jax.data import LazyArray  # noqa: E402  (after XLA_FLAGS)

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("REPSIM_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared()
    if not (path / "reference").is_dir():
        pytest.fail(f"shared reference data not found at {path} (set REPSIM_SHARED)")
    return path


def _item(array, i):
    return array[i]


class RecordingSource(LazyArray):
    """``array`` seen as a lazy source; ``requests`` lists the items of every read
    (``__getitem__``: its item count; single-item decodes by the stream workers count 1).
    Reading it as a whole (``np.asarray``) fails the test."""

    def __init__(self, array):
        array = np.asarray(array)
        super().__init__(len(array), array.shape[1:], array.dtype,
                         functools.partial(_item, array), workers=1, name="recorded")
        self.requests: list[int] = []

    def __getitem__(self, key):
        k = key[0] if isinstance(key, tuple) else key
        self.requests.append(1 if isinstance(k, (int, np.integer)) else len(self._indices(k)))
        return super().__getitem__(key)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole source was materialised")

    def check_bounded(self, limit: int) -> None:
        """Every read asked for at most ``limit`` items, none for the whole set."""
        assert self.requests, "the source was never read"
        assert max(self.requests) <= limit, (max(self.requests), limit)
        assert max(self.requests) < self.n


@pytest.fixture
def recording():
    """The lazy source that records every read (the streaming tests of cladec, summaries
    and the sweep)."""
    return RecordingSource
