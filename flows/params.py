"""The flows' typed parameters: one pydantic model per flow, validated by Prefect at the edge.

Prefect renders these as forms in the UI and coerces JSON (schedules, API calls) into them.
Inside, flows hand plain values and URLs to ``pipeline``/``model`` functions.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    tile_size: int = Field(default=128, gt=0)
    patch_size: int = Field(default=16, gt=0)
    stride: int | None = None
    min_valid: float = Field(default=0.5, ge=0, le=1)
    split_block_px: int | None = Field(
        default=None, gt=0, description="spatial split blocks; None = 4 tiles"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="label name -> raster path/URL"
    )
    teacher: str | None = Field(default=None, description="teacher checkpoint; None pretrains one")
    teacher_preset: str = "tiny"
    student_preset: str = "tiny"
    teacher_steps: int = Field(default=200, gt=0)
    student_steps: int = Field(default=200, gt=0)
    masking: Literal["random", "gabor", "wavelet"] = "gabor"
    loss: Literal["mse", "mse+ssim", "mse+ssim+kld"] = "mse+ssim+kld"
    batch_size: int = Field(default=8, gt=0)
    lr: float | None = Field(
        default=None, gt=0, description="peak learning rate; None = MAE recipe"
    )
    seed: int = 0
    dask_address: str | None = Field(
        default=None, description="dask scheduler; None = LocalCluster"
    )

    @model_validator(mode="after")
    def _tile_geometry(self) -> PipelineParams:
        if self.tile_size % self.patch_size:
            raise ValueError(
                f"tile size {self.tile_size} is not a multiple of patch size {self.patch_size}"
            )
        return self
