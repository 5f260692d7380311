"""Batch buffers that are reused instead of page-faulted afresh for every batch.

A 4-tile batch of 218-band 128 px float32 tiles is 57 MB. glibc serves blocks over 32 MB with
a fresh ``mmap`` and unmaps them when freed, so every batch would first-touch 57 MB of new
pages: on the 2-core benchmark machine that cost 5-25 ms per batch, depending on whether
transparent huge pages were available at that moment (benchmarks/RESULTS.md). A buffer handed
out here goes back to its pool when the last tensor viewing it is freed, so a steady training
loop writes into warm pages.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["BufferPool"]


class BufferPool:
    """Uninitialised CPU tensors whose memory is recycled once nothing references it.

    At most ``max_spare`` released buffers of each size are kept (a loop holding one batch
    while the next is filled needs one); the rest are freed. One pool per dataset and
    process: a pickled or forked pool starts empty.
    """

    def __init__(self, max_spare: int = 2) -> None:
        self.max_spare = max_spare
        self._reset()

    def _reset(self) -> None:
        self._spare: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_spare": self.max_spare}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_spare = state["max_spare"]
        self._reset()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``, possibly in recycled memory."""
        if self._pid != os.getpid():  # a forked child: the parent's lock may be held
            self._reset()
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        nbytes = int(np.prod(shape)) * np_dtype.itemsize
        with self._lock:
            spare = self._spare.get(nbytes)
            raw = spare.pop() if spare else None
        if raw is None:
            raw = np.empty(nbytes, dtype=np.uint8)
        view = raw.view(np_dtype).reshape(shape)
        # torch.from_numpy keeps ``view`` alive for as long as any tensor shares its memory,
        # so ``view`` dying is the moment ``raw`` is free again.
        weakref.finalize(view, self._give, raw, self._pid)
        return torch.from_numpy(view)

    def _give(self, raw: np.ndarray, pid: int) -> None:
        if pid != os.getpid():
            return
        with self._lock:
            spare = self._spare.setdefault(raw.nbytes, [])
            if len(spare) < self.max_spare:
                spare.append(raw)
