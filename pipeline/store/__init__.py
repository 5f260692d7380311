"""Where stores live and how they are committed: fsspec locations, atomic writes, the writer
lock, and the local build-then-rename commit. Shared by the cube and the tile store.
"""

from hyperkd.pipeline.store.commit import commit, partial_path, sweep_killed_partials
from hyperkd.pipeline.store.guard import OutputError, check_output
from hyperkd.pipeline.store.location import CubeLock, CubeLockedError, CubeStore

__all__ = [
    "CubeLock",
    "CubeLockedError",
    "CubeStore",
    "OutputError",
    "check_output",
    "commit",
    "partial_path",
    "sweep_killed_partials",
]
