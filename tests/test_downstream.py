"""Downstream evaluation: probes and metrics on known answers, then ``hyperkd downstream`` on the
demo tiles (land cover, crop type, SOC from the scene factory's truth) and on the real Potsdam
EnMAP tiles with their real land-cover labels."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eval_helpers import demo_run, demo_tiles, potsdam_run, torch_threads, train_student

from hyperkd.cli import main
from hyperkd.model.evaluate import pixels, probes
from hyperkd.model.nets.mae import StudentMAE, student_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_classification_metrics_by_hand() -> None:
    truth = np.array([1, 1, 2, 2, 3, 3])
    pred = np.array([1, 2, 2, 2, 3, 1])
    m = probes.classification_metrics(truth, pred)
    # class 1: tp 1 fp 1 fn 1 -> 0.5; class 2: tp 2 fp 1 fn 0 -> 0.8; class 3: tp 1 fp 0 fn 1 -> 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_regression_metrics_by_hand() -> None:
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    assert probes.regression_metrics(truth, truth) == {"r2": 1.0, "rmse": 0.0}
    m = probes.regression_metrics(truth, np.full(4, 2.5))
    assert m["r2"] == pytest.approx(0.0)
    assert m["rmse"] == pytest.approx(np.sqrt(1.25))


def test_logistic_probe_separates_classes() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    y = rng.integers(0, 3, 600)
    x = centres[y] + rng.normal(0, 0.5, (600, 3))
    codes = np.array([2, 5, 6])[y]  # class codes need not be contiguous
    probe = probes.fit_logistic(x[:400], codes[:400])
    acc = probes.classification_metrics(codes[400:], probe.predict(x[400:]))["accuracy"]
    assert acc > 0.97
    assert set(np.unique(probe.predict(x))) <= {2, 5, 6}


def test_ridge_probe_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)) * [1.0, 10.0, 0.1, 3.0] + [5, -2, 0, 1]
    y = x @ np.array([0.5, -0.1, 3.0, 0.0]) + 7.0
    probe = probes.fit_ridge(x, y, alpha=1e-8)
    np.testing.assert_allclose(probe.predict(x), y, atol=1e-3)


def test_sample_pixels_skips_unlabelled_and_invalid_and_caps() -> None:
    labels = [np.array([[0, 1], [2, 3]]), np.array([[4, 4], [4, 0]])]
    valids = [np.array([[True, True], [False, True]]), np.ones((2, 2), bool)]
    s = probes.sample_pixels(labels, valids, classes=True, max_pixels=100, seed=0)
    assert sorted(zip(s.tiles.tolist(), s.pixels.tolist(), strict=True)) == [
        (0, 1),
        (0, 3),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert 0 not in s.target
    capped = probes.sample_pixels(labels, valids, classes=True, max_pixels=3, seed=0)
    assert len(capped) <= 3 and set(capped.tiles.tolist()) == {0, 1}
    soc = [np.array([[np.nan, 1.5], [2.5, 3.5]], np.float32)]
    assert (
        len(probes.sample_pixels(soc, [np.ones((2, 2), bool)], classes=False, max_pixels=9, seed=0))
        == 3
    )


def test_pixel_features_and_lp_ft_head_agree_with_the_probe() -> None:
    """The fine-tune head starts as the probe: same predictions on the same pixels."""
    torch.manual_seed(0)
    model = StudentMAE(student_config("tiny", img_size=16, patch_size=8, in_chans=5)).eval()
    imgs = torch.randn(3, 5, 16, 16)
    with torch.no_grad():
        feats = probes.pixel_features(model, imgs)  # (B, D, T, T)
    assert feats.shape == (3, 64, 16, 16)
    x = feats.permute(0, 2, 3, 1).reshape(-1, 64).numpy()
    y = np.where(x[:, 0] > np.median(x[:, 0]), 1, 2) + (x[:, 1] > 0) * 2
    probe = probes.fit_logistic(x, y)
    head = probes.SegmentationHead(model, len(probe.classes))
    head.init_from_probe(probe)
    with torch.no_grad():
        out = head(imgs).permute(0, 2, 3, 1).reshape(-1, len(probe.classes)).numpy()
    np.testing.assert_array_equal(probe.classes[out.argmax(1)], probe.predict(x))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return demo_run(tmp_path_factory.mktemp("demo"))


def _downstream(run: dict[str, str], out: Path, task: str, *extra: str) -> dict:
    argv = ["downstream", "--checkpoint", run["student"], "--task", task, "--data", run["tiles"]]
    argv += [
        "--out",
        str(out),
        "--max-train-pixels",
        "3000",
        "--max-eval-pixels",
        "3000",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / f"downstream_{task}.json").read_text())


def _check_classification(result: dict, steps: int, methods: tuple[str, ...]) -> None:
    modes = {(r["method"], r["mode"]) for r in result["results"]}
    for method in methods:
        assert {(method, "linear probe"), (method, f"fine-tune {steps} steps")} <= modes
    spectra = {("raw-spectra", "linear probe"), ("patch-mean-spectra", "linear probe")}
    assert spectra <= modes and len(modes) == 2 * len(methods) + 2
    assert result["eval_split"] in ("test", "val") and result["n_eval_pixels"] > 0
    assert set(result["classes"]) <= {1, 2, 3, 4, 5, 6} and len(result["classes"]) >= 2
    for r in result["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0


def test_downstream_landcover_on_demo_tiles(demo: dict[str, str], tmp_path: Path) -> None:
    baseline = train_student(
        demo["tiles"], Path(demo["root"]) / "no-teacher", teacher=None, steps=2
    )
    result = _downstream(
        demo, tmp_path, "landcover", "--finetune-steps", "3", "--baseline-checkpoint", baseline
    )
    _check_classification(result, 3, ("hyperkd", "no-teacher", "random-init"))
    by = {(r["method"], r["mode"]): r for r in result["results"]}
    # Raw spectra separate the factory's land cover far better than chance.
    assert by[("raw-spectra", "linear probe")]["accuracy"] > 2.0 / len(result["classes"])
    table = (tmp_path / "downstream_landcover.md").read_text()
    assert "| raw-spectra | linear probe |" in table and "macro-F1" in table


def test_downstream_crop_and_soc_on_demo_tiles(demo: dict[str, str], tmp_path: Path) -> None:
    crop = _downstream(demo, tmp_path, "crop", "--finetune-steps", "1")
    _check_classification(crop, 1, ("hyperkd", "random-init"))
    assert crop["label"] == "label_crop_type"
    soc = _downstream(demo, tmp_path, "soc", "--finetune-steps", "2")
    assert soc["kind"] == "regression" and soc["metrics"] == ["r2", "rmse"]
    assert {r["method"] for r in soc["results"]} == {
        "hyperkd", "random-init", "raw-spectra", "patch-mean-spectra"
    }  # fmt: skip
    assert all(np.isfinite(r["rmse"]) and r["rmse"] > 0 for r in soc["results"])
    assert any("no-teacher baseline skipped" in n for n in soc["notes"])
    # SOC on bare soil only (land cover 5), written next to the all-pixel result
    argv = ["downstream", "--checkpoint", demo["student"], "--task", "soc", "--data", demo["tiles"]]
    argv += ["--out", str(tmp_path), "--finetune-steps", "0", "--device", "cpu"]
    assert main([*argv, "--only", "landcover=5"]) == 0
    soil = json.loads((tmp_path / "downstream_soc_landcover5.json").read_text())
    assert soil["only"] == {"label": "label_landcover", "classes": [5]}
    everything = json.loads((tmp_path / "downstream_soc.json").read_text())  # not overwritten
    assert everything["only"] is None and everything["config"]["finetune_steps"] == 2
    assert 0 < soil["n_eval_pixels"] < everything["n_eval_pixels"]
    assert main([*argv, "--only", "landcover=soil"]) == 2
    # Patch-level labels: written beside the per-pixel result, every method scored again.
    assert main([*argv, "--label-level", "patch"]) == 0
    patchwise = json.loads((tmp_path / "downstream_soc_patch.json").read_text())
    assert patchwise["label_level"] == "patch" and everything["label_level"] == "pixel"
    assert {r["method"] for r in patchwise["results"]} == {r["method"] for r in soc["results"]}


def test_downstream_landcover_on_real_potsdam_tiles(
    sample_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real EnMAP L2A tiles and their real land cover, through ingest -> tiles -> train."""
    run = potsdam_run(sample_data, tmp_path_factory.mktemp("potsdam"))
    out = tmp_path_factory.mktemp("potsdam-downstream")
    result = _downstream(run, out, "landcover", "--finetune-steps", "2")
    _check_classification(result, 2, ("hyperkd", "random-init"))
    assert result["n_train_pixels"] > 1000


def test_downstream_missing_label_is_one_line_error(
    demo: dict[str, str], tmp_path: Path, capsys
) -> None:
    landcover_only = demo_tiles(
        Path(demo["root"]), labels=("landcover",), name="landcover-only.zarr"
    )
    argv = [
        "downstream",
        "--checkpoint",
        demo["student"],
        "--task",
        "crop",
        "--data",
        landcover_only,
    ]
    capsys.readouterr()  # drop the tiles command's progress bar
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"hyperkd downstream: error: tile store {landcover_only} has no label_crop_type (labels: ['landcover'])"
    ]
    assert not (tmp_path / "out").exists()


def test_downstream_shows_progress_after_checking_its_input(
    demo: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import sys

    argv = ["downstream", "--checkpoint", demo["student"], "--task", "soc", "--tiles", demo["tiles"],
            "--finetune-steps", "0", "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar draws on terminals only
    # refused inside the evaluation, after the tile store was opened
    assert main([*argv, "--only", "nolabel=5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no label_nolabel" in err and "%|" not in err, err
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    err = capsys.readouterr().err
    # hyperkd, random-init, raw-spectra and patch-mean-spectra probes (no baseline, no
    # fine-tune): 4 results
    assert "downstream:   0%|" in err and "4/4 [" in err and "result/s" in err, err


def test_patch_labels_take_the_majority_class_or_the_mean_of_each_patch() -> None:
    label = np.array(
        [
            [1, 1, 2, 2],
            [1, 3, 2, 3],
            [0, 0, 4, 5],
            [0, 0, 5, 4],
        ]
    )
    use = np.ones((4, 4), bool)
    use[1, 1] = False  # an invalid pixel does not vote
    got = pixels.patch_labels(label, use, 2, classes=True)
    want = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 4, 4], [0, 0, 4, 4]])
    np.testing.assert_array_equal(got, want)  # unlabelled patch stays 0; 4/5 tie -> 4
    unlabelled = pixels.patch_labels(np.zeros((4, 4), int), use, 2, classes=True)
    assert not unlabelled.any()  # a tile without any label (crop type outside fields)
    values = np.array([[1.0, 3.0], [np.nan, 5.0]], np.float32)
    mean = pixels.patch_labels(
        torch.from_numpy(values)[None], torch.ones(1, 2, 2, dtype=torch.bool), 2, classes=False
    )
    assert isinstance(mean, torch.Tensor) and torch.allclose(mean, torch.full((1, 2, 2), 3.0))


def test_patch_mean_spectra_average_each_patch_at_the_encoders_resolution() -> None:
    imgs = torch.zeros(1, 2, 8, 8)
    imgs[:, 0] = 3.0
    imgs[:, 1, :4, :4] = torch.arange(16.0).reshape(4, 4)  # one patch of 4 px, mean 7.5
    out = pixels.patch_mean_spectra(imgs, 4)
    assert out.shape == imgs.shape and torch.allclose(out[:, 0], torch.full((1, 8, 8), 3.0))
    assert out[0, 1, 0, 0] == 7.5 and out[0, 1, 7, 7] == 0.0  # far corners keep their patch


def test_a_killed_result_write_leaves_the_previous_result_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hyperkd.model.evaluate import downstream_results
    from hyperkd.model.train import checkpoint

    def result(macro_f1: float) -> dict[str, Any]:
        row = {"method": "raw-spectra", "mode": "linear probe", "accuracy": 0.5,
               "macro_f1": macro_f1, "seconds": 1.0}  # fmt: skip
        return {"name": "landcover", "task": "landcover", "label": "label_landcover",
                "data": "tiles.zarr", "n_train_pixels": 10, "train_split": "train",
                "n_eval_pixels": 5, "eval_split": "test", "metrics": ["accuracy", "macro_f1"],
                "results": [row], "notes": []}  # fmt: skip

    downstream_results.write_results(tmp_path, result(0.25))
    real_replace = os.replace

    def killed_at_the_json(src: str, dst: Any) -> None:
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_at_the_json)
    with pytest.raises(KeyboardInterrupt):
        downstream_results.write_results(tmp_path, result(0.75))
    kept = json.loads((tmp_path / "downstream_landcover.json").read_text())
    assert kept["results"][0]["macro_f1"] == 0.25  # the previous record, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "downstream_landcover.json",
        "downstream_landcover.md",
    ]  # no temporary file left behind
