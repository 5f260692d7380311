"""Schedules are checked when loaded (each error names its entry), carry a time zone and a work
pool, and pass ``teacher_preset`` through for official weights. No Prefect server needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from hyperkd import defaults
from hyperkd.flows.params import PipelineParams

REPO = Path(__file__).resolve().parents[1]
GOOD = "{region: demo, sources: [enmap-dlr], start: '2024-01-01', end: '2024-02-01', out: /tmp/x"


def _file(tmp_path: Path, params: str, extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "deployments:\n"
        "  - {name: fine, cron: '0 3 * * 1', parameters: " + GOOD + "}}\n"
        "  - {name: broken, cron: '0 3 * * 1', " + extra + "parameters: " + GOOD + params + "}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("params", "extra", "message"),
    [
        (", region: kanssas", "", "region: unknown region 'kanssas'"),
        (", sources: [enmap-dlrr]", "", "source: unknown source 'enmap-dlrr'"),
        (", student_preset: huge", "", "unknown student preset 'huge'"),
        (", teacher_preset: huge", "", "unknown teacher preset 'huge'"),
        (", teacher: /nope.pt", "", "official checkpoint /nope.pt does not exist"),
        (", teacher: /nope", "", "neither a .pt file nor a train-teacher run folder"),
        (", stages: [ingest, foo]", "", "stages.1: Input should be"),
        (", storage_options: {secret: x}", "", "must not hold credentials (secret)"),
        ("", "timezone: Mars/Olympus, ", "unknown timezone 'Mars/Olympus'"),
        ("", "pool: gpu, ", "unknown keys ['pool']"),
    ],
)
def test_a_bad_entry_is_refused_at_load_and_named(
    tmp_path: Path, params: str, extra: str, message: str
) -> None:
    from hyperkd.flows.serve import load_schedules

    with pytest.raises(ValueError) as err:
        load_schedules(_file(tmp_path, params, extra))
    text = str(err.value)
    assert "deployment 'broken'" in text and message in text, text
    assert "\n" not in text


def test_an_official_pt_needs_its_architecture(tmp_path: Path) -> None:
    from hyperkd.flows.serve import load_schedules

    pt = tmp_path / "Prithvi_EO_V2_300M.pt"
    pt.write_bytes(b"")  # existence is what loading checks; the weights are read by the run
    path = _file(tmp_path, f", teacher: {pt}, teacher_preset: tiny")
    with pytest.raises(ValueError, match=r"deployment 'broken'.*must be one of"):
        load_schedules(path)
    runs = load_schedules(_file(tmp_path, f", teacher: {pt}, teacher_preset: prithvi-eo-2.0-300m"))
    assert runs[1].parameters.teacher_architecture == "prithvi-eo-2.0-300m"
    runs = load_schedules(_file(tmp_path, f", teacher: {pt}"))
    assert runs[1].parameters.teacher_architecture == defaults.OFFICIAL_TEACHER_PRESET
    assert runs[0].parameters.teacher_architecture == defaults.PRETRAIN_TEACHER_PRESET


def test_the_official_teacher_preset_reaches_the_student_task(tmp_path: Path) -> None:
    """The .pt's architecture is passed to distillation and names the run folder."""
    import inspect

    from hyperkd.flows import tasks
    from hyperkd.flows.flows import run_dir_of
    from hyperkd.flows.records import TileRecord

    assert "teacher_preset" in inspect.signature(tasks.distill_student.fn).parameters
    tiles = TileRecord("t.zarr", 4, {"train": 4}, "abc")
    base = dict(region="demo", sources=("enmap-dlr",), start="2024-01-01", end="2024-02-01",
                out="/tmp/x", teacher="/w/p.pt")  # fmt: skip
    v1 = PipelineParams(**base, teacher_preset="prithvi-eo-1.0-100m")
    v2 = PipelineParams(**base, teacher_preset="prithvi-eo-2.0-300m")
    assert run_dir_of(v1, tiles, "/w/p.pt", "r") != run_dir_of(v2, tiles, "/w/p.pt", "r")


def test_the_spectral_factorisation_names_its_own_run_folder() -> None:
    """Students that differ only in spectral_dim or basis never share (and skip) a run folder;
    a full-band student's folder keeps the name it had before the options existed."""
    import hashlib
    import json

    from hyperkd.flows.flows import run_dir_of
    from hyperkd.flows.records import TileRecord

    tiles = TileRecord("t.zarr", 4, {"train": 4}, "abc")
    base = dict(region="demo", sources=("enmap-dlr",), start="2024-01-01", end="2024-02-01",
                out="/tmp/x")  # fmt: skip
    variants = [
        PipelineParams(**base),
        PipelineParams(**base, spectral_dim=16),
        PipelineParams(**base, spectral_dim=16, spectral_basis="fixed"),
    ]
    dirs = {run_dir_of(p, tiles, "t0", "r") for p in variants}
    assert len(dirs) == 3
    with pytest.raises(ValueError, match="needs spectral_dim"):
        PipelineParams(**base, spectral_basis="fixed")  # refused when loaded, not at training
    p = variants[0]
    old = [tiles.fingerprint, "t0", p.student_preset, p.masking, p.loss, p.student_steps,
           p.batch_size, p.seed, p.lr]  # fmt: skip
    key = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert run_dir_of(p, tiles, "t0", "r") == f"r/runs/{key}"


def test_the_example_schedules_load_with_pools_and_time_zones() -> None:
    from hyperkd.flows.serve import deployments, load_schedules

    runs = load_schedules(REPO / "examples" / "schedules.yaml")
    pools = {r.name: r.pool() for r in runs}
    assert pools == {
        "weekly-ingest-california": defaults.CPU_POOL,
        "weekly-ingest-colorado": defaults.CPU_POOL,
        "weekly-ingest-kansas": defaults.CPU_POOL,
        "monthly-retrain-kansas": defaults.GPU_POOL,
    }
    found = {d.name: d for d in deployments(runs, ("cpu", "gpu"))}
    retrain = found["monthly-retrain-kansas"]
    assert retrain.work_pool_name == "gpu"
    assert retrain.entrypoint == "hyperkd.flows.flows.hyperkd_pipeline"
    assert [s.schedule.timezone for s in retrain.schedules] == ["America/Chicago"]
    assert found["weekly-ingest-kansas"].work_pool_name == "cpu"


def test_cli_and_flow_defaults_agree() -> None:
    """One set of defaults: the pipeline command, the flow's parameters, demo and demo-data."""
    from hyperkd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices

    def default(command: str, dest: str) -> object:
        return next(a.default for a in sub[command]._actions if a.dest == dest)

    fields = PipelineParams.model_fields
    assert default("pipeline", "steps") == fields["student_steps"].default == defaults.STEPS
    assert default("pipeline", "teacher_preset") is fields["teacher_preset"].default is None
    assert default("pipeline", "preset") == fields["student_preset"].default
    assert default("pipeline", "tile_size") == fields["tile_size"].default
    assert default("demo", "size") == default("demo-data", "size") == defaults.DEMO_SIZE
    assert default("train", "teacher_preset") == defaults.OFFICIAL_TEACHER_PRESET
    assert default("train-teacher", "preset") == defaults.PRETRAIN_TEACHER_PRESET


def test_the_flows_choices_are_the_declared_ones() -> None:
    """The parameter model's Literal choices (what the Prefect UI offers) are the CLI's."""
    fields = PipelineParams.model_fields
    assert get_args(fields["loss"].annotation) == defaults.LOSSES
    assert get_args(fields["masking"].annotation) == defaults.MASKINGS
    assert get_args(fields["spectral_basis"].annotation) == defaults.SPECTRAL_BASES
    assert fields["loss"].default == defaults.LOSS
