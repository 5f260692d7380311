"""Which optional extra a command needs: ``pip install hyperkd`` is the pipeline (STAC, cubes,
tile stores); ``hyperkd[model]`` adds torch/timm for training and evaluation, ``hyperkd[flows]``
adds Prefect (and the model). A command that needs an extra imports it inside the command, so
a missing one surfaces as a ``ModuleNotFoundError`` that :func:`missing_extra` turns into one
line naming the extra.
"""

from __future__ import annotations

EXTRA_OF = {
    "torch": "model",
    "torchvision": "model",
    "timm": "model",
    "safetensors": "model",
    "matplotlib": "model",
    "numba": "model",
    "prefect": "flows",
}
"""Top-level package -> the extra that installs it (pyproject.toml ``optional-dependencies``)."""


def missing_extra(exc: BaseException) -> str | None:
    """The one-line message for an extra's package that is not installed, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    package = exc.name.split(".")[0]
    extra = EXTRA_OF.get(package)
    if extra is None:
        return None
    return (
        f"this command needs the '{extra}' extra ({package} is not installed): "
        f"pip install 'hyperkd[{extra}]'"
    )
