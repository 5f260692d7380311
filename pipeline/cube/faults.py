"""Fault injection for the kill tests: named pause points in the cube writers.

At the stage named by ``HYPERKD_TEST_PAUSE_AT`` a writer touches the file named by
``HYPERKD_TEST_PAUSE_FILE`` and sleeps, so a test can SIGKILL it there. Unset in normal use,
where every pause point is one environment lookup.
"""

from __future__ import annotations

import os
import time
from typing import Any

PAUSE_ENV = "HYPERKD_TEST_PAUSE_AT"
"""``stage`` or ``stage:k``: where a writer pauses (see :func:`pause_point`)."""

_pause_counts: dict[str, int] = {}


def pause_point(stage: str) -> None:
    """``HYPERKD_TEST_PAUSE_AT=stage[:k]`` pauses at the (k+1)-th time ``stage`` is reached."""
    want, _, skip = os.environ.get(PAUSE_ENV, "").partition(":")
    if want != stage:
        return
    seen = _pause_counts.get(stage, 0)
    _pause_counts[stage] = seen + 1
    if seen == int(skip or 0):
        marker = os.environ.get("HYPERKD_TEST_PAUSE_FILE")
        if marker:
            with open(marker, "w") as f:
                f.write(stage)
        time.sleep(3600)


class PausingTarget:
    """A zarr array target for ``dask.array.store`` that offers a pause point mid-write."""

    def __init__(self, array: Any, stage: str):
        self.array, self.stage, self.writes = array, stage, 0
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value
        self.writes += 1
        if self.writes == 1:
            pause_point(self.stage)
