"""The flows' typed parameters: one pydantic model per flow, validated by Prefect at the edge.

Prefect renders these as forms in the UI and coerces JSON (schedules, API calls) into them.
Inside, flows hand plain values and URLs to ``pipeline``/``model`` functions.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hyperkd import defaults

Stage = Literal["ingest", "tiles", "teacher", "student", "evaluate", "report"]
ALL_STAGES: tuple[Stage, ...] = ("ingest", "tiles", "teacher", "student", "evaluate", "report")

_RELATIVE = re.compile(r"^-(\d+)d$")


def resolve_date(value: str | dt.date, today: dt.date | None = None) -> dt.date:
    """``YYYY-MM-DD``, ``today`` or ``-Nd`` (N days before today) as a date."""
    if isinstance(value, dt.date):
        return value
    today = today or dt.datetime.now(dt.UTC).date()
    text = value.strip()
    if text == "today":
        return today
    if m := _RELATIVE.match(text):
        return today - dt.timedelta(days=int(m.group(1)))
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid date {value!r}: use YYYY-MM-DD, 'today' or '-Nd'") from None


class RegionParams(BaseModel):
    """What to ingest: a region, a date range and the STAC sources."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = Field(
        description="minlon,minlat,maxlon,maxlat, a GeoJSON path, or a named region"
    )
    sources: tuple[str, ...] = Field(
        description="source names (catalogs/sources) or catalog.json paths/URLs"
    )
    start: str = Field(description="YYYY-MM-DD, 'today' or '-Nd'")
    end: str = Field(description="YYYY-MM-DD, 'today' or '-Nd'")
    max_cloud: float | None = Field(default=None, ge=0, le=100)
    pair_window_days: int = Field(default=10, ge=0)
    allow_hrefs: tuple[str, ...] = Field(
        default=(),
        description="asset href globs to read beyond the href policy (--allow-href)",
    )

    @field_validator("start", "end")
    @classmethod
    def _valid_date(cls, value: str) -> str:
        resolve_date(value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> RegionParams:
        if resolve_date(self.start) > resolve_date(self.end):
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class PipelineParams(RegionParams):
    """The whole chain for one region: ingest -> tiles -> teacher -> student -> evaluate -> report."""

    out: str = Field(description="root URL; the cube, tiles and run go under it")
    name: str | None = Field(
        default=None, description="folder name under `out`; default from the region"
    )
    stages: tuple[Stage, ...] = ALL_STAGES
    tile_size: int = Field(default=defaults.TILE_SIZE, gt=0)
    patch_size: int = Field(default=defaults.PATCH_SIZE, gt=0)
    stride: int | None = None
    train_stride: int | None = Field(
        default=None,
        gt=0,
        description="step of train tiles (a divisor of the stride); None = the stride",
    )
    min_valid: float = Field(default=0.5, ge=0, le=1)
    split_block_px: int | None = Field(
        default=None, gt=0, description="spatial split blocks; None = 4 tiles"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="label name -> raster path/URL"
    )
    teacher: str | None = Field(
        default=None,
        description="teacher checkpoint: a train-teacher run folder or an official Prithvi .pt; "
        "None pretrains one on the region's tiles",
    )
    teacher_preset: str | None = Field(
        default=None,
        description=f"teacher architecture; None = {defaults.PRETRAIN_TEACHER_PRESET} to "
        f"pretrain, {defaults.OFFICIAL_TEACHER_PRESET} for an official .pt",
    )
    student_preset: str = defaults.STUDENT_PRESET
    spectral_dim: int = Field(
        default=defaults.SPECTRAL_DIM,
        ge=0,
        description="spectral components per pixel of the student's embedding and head; 0 = "
        "every band",
    )
    spectral_basis: Literal["learned", "fixed"] = Field(
        default=defaults.SPECTRAL_BASIS,
        description="learn the spectral components from their PCA start, or keep them fixed at "
        "the PCA (the loss then runs on the components, about 4x cheaper steps)",
    )
    teacher_steps: int = Field(default=defaults.STEPS, gt=0)
    student_steps: int = Field(default=defaults.STEPS, gt=0)
    masking: Literal["random", "gabor", "wavelet"] = "gabor"
    loss: Literal["mse", "mse+ssim", "mse+kld", "mse+ssim+kld"] = defaults.LOSS
    batch_size: int = Field(default=defaults.BATCH_SIZE, gt=0)
    lr: float | None = Field(
        default=None, gt=0, description="peak learning rate; None = MAE recipe"
    )
    optimizer: Literal["adamw", "muon"] = Field(
        default=defaults.OPTIMIZER,
        description="adamw, or muon on the transformer blocks' matrices with adamw on the rest",
    )
    seed: int = defaults.SEED
    dask_address: str | None = Field(
        default=None,
        description="dask scheduler (tcp://host:port) or 'local' for a LocalCluster; "
        "None = threads of this process",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of `out` (e.g. an S3 endpoint_url); credentials come from "
        "the environment, never from here",
    )
    results: str | None = Field(
        default=None,
        description=f"fsspec URL of Prefect's task results (the cache shared across machines); "
        f"None = <out>/{defaults.RESULTS_DIR}",
    )

    @field_validator("student_preset")
    @classmethod
    def _student_preset(cls, value: str) -> str:
        if value not in defaults.STUDENT_PRESETS:
            raise ValueError(f"unknown student preset {value!r}: one of {defaults.STUDENT_PRESETS}")
        return value

    @field_validator("teacher_preset")
    @classmethod
    def _teacher_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in defaults.TEACHER_PRESETS:
            raise ValueError(f"unknown teacher preset {value!r}: one of {defaults.TEACHER_PRESETS}")
        return value

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is not None:
            from hyperkd.pipeline.ingest.pool import check_dask_address

            check_dask_address(value)
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return no_credentials(value)

    @model_validator(mode="after")
    def _tile_geometry(self) -> PipelineParams:
        if self.tile_size % self.patch_size:
            raise ValueError(
                f"tile size {self.tile_size} is not a multiple of patch size {self.patch_size}"
            )
        if self.official_teacher and self.teacher_preset == "tiny":
            raise ValueError(
                f"teacher {self.teacher} is an official .pt: teacher_preset must be one of "
                f"{defaults.OFFICIAL_TEACHER_PRESETS}, not 'tiny'"
            )
        if self.spectral_basis == "fixed" and not self.spectral_dim:
            raise ValueError("a fixed spectral basis needs spectral_dim > 0")
        return self

    @property
    def official_teacher(self) -> bool:
        """The teacher is an official Prithvi ``.pt`` (its architecture comes from the preset)."""
        return bool(self.teacher) and str(self.teacher).endswith(".pt")

    @property
    def teacher_architecture(self) -> str:
        """The teacher preset in effect: the one named, else the default for the teacher kind."""
        if self.teacher_preset is not None:
            return self.teacher_preset
        if self.official_teacher:
            return defaults.OFFICIAL_TEACHER_PRESET
        return defaults.PRETRAIN_TEACHER_PRESET

    @property
    def results_url(self) -> str:
        """Where Prefect's task results (the cache) go: ``results``, else beside the outputs."""
        return self.results or f"{self.out.rstrip('/')}/{defaults.RESULTS_DIR}"

    def check_inputs(self) -> None:
        """Checks that read the world, kept out of validation (a flow run re-validates its
        parameters on whichever worker runs it): the region and every source resolve, and a
        local teacher exists (a run folder with ``config.json``, or a ``.pt`` file).

        Raises ``ValueError`` with one line naming the field.
        """
        from hyperkd.pipeline.stac.regions import parse_region
        from hyperkd.pipeline.stac.sources import resolve_source

        try:
            parse_region(self.region)
        except ValueError as exc:
            raise ValueError(f"region: {exc}") from None
        for source in self.sources:
            if "://" in source and not source.startswith(("http://", "https://")):
                continue  # an object-store catalog: read when the search runs
            try:
                resolve_source(source)
            except ValueError as exc:
                raise ValueError(f"source: {exc}") from None
        if self.teacher and "://" not in self.teacher:
            _check_teacher(self.teacher)


_SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def _secret_keys(options: Any) -> list[str]:
    if not isinstance(options, dict):
        return []
    found = [str(k) for k in options if _SECRET.search(str(k))]
    return found + [k for v in options.values() for k in _secret_keys(v)]


def no_credentials(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` unchanged; ``ValueError`` when they hold credentials, which belong in the
    environment: flow parameters are stored by the Prefect server and shown in its UI."""
    secret = sorted(_secret_keys(options))
    if secret:
        raise ValueError(
            f"storage options must not hold credentials ({', '.join(secret)}): "
            "set them in the environment (AWS_* etc.)"
        )
    return options


def _check_teacher(teacher: str) -> None:
    from pathlib import Path

    path = Path(teacher).expanduser()
    if teacher.endswith(".pt"):
        if not path.is_file():
            raise ValueError(f"teacher: official checkpoint {teacher} does not exist")
    elif not (path / "config.json").is_file():
        raise ValueError(
            f"teacher: {teacher} is neither a .pt file nor a train-teacher run folder "
            "(no config.json)"
        )


def one_line(exc: Exception) -> str:
    """A pydantic ``ValidationError`` (or any error) as one line: ``field: message; ...``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = []
    for err in errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if isinstance(err.get("input"), str | int | float) and err.get("type") != "value_error":
            msg += f" (got {err['input']!r})"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
