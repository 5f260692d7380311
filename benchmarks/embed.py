"""``hyperkd embed`` throughput against the model's own forward pass (the floor).

Builds a cube with the scene factory (218 valid of 224 bands, 128-px chunks) and a student run
(random weights: speed does not depend on them), then, in turns, several times (medians):

* ``floor``: ``backbone.embed(x)`` on in-memory reflectance batches of the same shape and
  batch size (normalisation + encoder, nothing read, nothing written);
* ``embed``: ``embed_cube`` into a fresh store: open the cube, read every window, encode,
  write the chunks, commit every scene; the whole command as a user runs it (store creation
  and model loading included).

Prints patches/s of both and the ratio; the last line is ``embed/floor=<r>``.

    .venv/bin/python benchmarks/embed.py [--size 512] [--scenes 2] [--preset small]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TILE, PATCH = 128, 16


def build_inputs(work: Path, size: int, scenes: int, preset: str) -> tuple[str, str]:
    import torch
    from tile_helpers import factory_cube

    from hyperkd.model.nets.mae import StudentMAE, student_config
    from hyperkd.model.train.checkpoint import save_run
    from hyperkd.pipeline.cube import open_cube
    from hyperkd.pipeline.synthetic.factory import RegionSpec

    cube, run = str(work / "cube.zarr"), work / f"student-{preset}"
    if not Path(cube).exists():
        factory_cube(cube, RegionSpec(size_px=size, n_scenes=scenes, seed=3), scenes, TILE)
    enmap = open_cube(cube)["enmap"].to_dataset()
    keep = np.asarray(enmap["valid_band"].values, dtype=bool)
    config = student_config(preset, img_size=TILE, patch_size=PATCH, in_chans=int(keep.sum()))
    torch.manual_seed(0)
    stats = {
        "n_bands": config.in_chans,
        "student_mean": [1500.0] * config.in_chans,
        "student_std": [900.0] * config.in_chans,
        "band_wavelength": enmap["wavelength"].values[keep].tolist(),
    }
    if not (run / "config.json").exists():
        save_run(
            run,
            StudentMAE(config).state_dict(),
            {"kind": "student", "model": config.to_dict(), "run": {}, "tile_store": stats},
        )
    return cube, str(run)


def time_floor(checkpoint: str, n_windows: int, batch: int, device: str) -> float:
    """Seconds for ``n_windows`` windows through ``embed`` on in-memory batches (on the
    device already), results copied back to the host like the real run does."""
    import torch

    from hyperkd.model import load_student

    backbone = load_student(checkpoint, device=device)
    g = torch.Generator().manual_seed(0)
    x = 0.05 + 0.4 * torch.rand(batch, backbone.config.in_chans, TILE, TILE, generator=g)
    x = x.to(device)
    valid = torch.ones(batch, TILE, TILE, dtype=torch.bool, device=device)
    with torch.no_grad():
        backbone.embed(x[:1], valid[:1])  # warm-up
        t = time.perf_counter()
        done = 0
        while done < n_windows:
            n = min(batch, n_windows - done)
            backbone.embed(x[:n], valid[:n]).patches.cpu().numpy()
            done += n
    return time.perf_counter() - t


def time_embed(checkpoint: str, cube: str, out: Path, batch: int, device: str) -> tuple[float, int]:
    from hyperkd.model.embed import EmbedConfig, embed_cube
    from hyperkd.pipeline.store.guard import check_output

    # --workdir may be the user's folder: replace only an embeddings store (the last repeat's).
    check_output(str(out), "embeddings", [cube, checkpoint])
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    result = embed_cube(EmbedConfig(checkpoint, cube, str(out), batch_size=batch, device=device))
    return time.perf_counter() - t, int(result["patches"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="scene edge, px")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workdir", default=None, help="keep inputs here (reused)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hyperkd-embed-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cube, checkpoint = build_inputs(work, args.size, args.scenes, args.preset)
    n_windows = args.scenes * (args.size // TILE) ** 2
    per_window = (TILE // PATCH) ** 2
    floors, embeds, cpu_floor, cpu_embed = [], [], [], []
    for _ in range(args.repeats):  # turns, so drift in machine load hits both alike
        out = work / f"emb-{args.preset}-{args.device}.zarr"
        cpu = time.process_time()  # every thread of this process: robust to other load
        seconds, patches = time_embed(checkpoint, cube, out, args.batch_size, args.device)
        cpu_embed.append(time.process_time() - cpu)
        assert patches == n_windows * per_window, (patches, n_windows)
        embeds.append(patches / seconds)
        cpu = time.process_time()
        floor_s = time_floor(checkpoint, n_windows, args.batch_size, args.device)
        cpu_floor.append(time.process_time() - cpu)
        floors.append(n_windows * per_window / floor_s)
    floor, embed = statistics.median(floors), statistics.median(embeds)
    print(
        f"{args.device}: preset {args.preset}, {args.scenes} scenes of {args.size} px, {n_windows} windows of "
        f"{TILE} px, batch {args.batch_size}, {args.repeats} repeats (medians)"
    )
    print(f"floor (forward on in-memory batches): {floor:,.0f} patches/s")
    print(f"embed (cube -> store, whole command):  {embed:,.0f} patches/s")
    cpu_ratio = statistics.median(cpu_floor) / statistics.median(cpu_embed)
    print(f"CPU seconds (all threads), floor/embed: {cpu_ratio:.2f}")
    print(f"embed/floor={embed / floor:.2f}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
