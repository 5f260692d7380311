"""Readers never write: tiling a read-only cube (an S3 user without write permission on a moto
server with IAM enforced) at patch 8 and 16, in either order, leaves it byte-identical."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tile_helpers import factory_cube

from hyperkd.pipeline.features.preprocess import PreprocessConfig, preprocess_cube
from hyperkd.pipeline.features.significance import SignificanceConfig
from hyperkd.pipeline.store.location import CubeStore
from hyperkd.pipeline.synthetic import RegionSpec
from hyperkd.pipeline.tiles.build import TileConfig, build_tiles, verify_tiles

BUCKET = "team-cubes"
READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        }
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _digest(store: CubeStore) -> dict[str, str]:
    """sha256 of every object under the cube, by key."""
    store.invalidate()
    keys = store.fs.find(store.root)
    return {k: hashlib.sha256(bytes(store.fs.cat_file(k))).hexdigest() for k in keys}


@pytest.fixture(scope="module")
def readonly_cube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """A cube with stored patch-16 products on an S3 bucket, and storage options of a user
    that may only read it (IAM enforced by a moto server of this module's own)."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    tmp = tmp_path_factory.mktemp("readonly")
    local = str(tmp / "cube.zarr")
    factory_cube(local, RegionSpec(size_px=128, n_scenes=2, seed=11, cloud_cover=0.2))
    p16 = PreprocessConfig(significance=SignificanceConfig(patch_size=16, chunk_px=64))
    preprocess_cube(local, p16)

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto server did not start within 30 s")
                time.sleep(0.1)
        admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1", **admin}
        s3 = boto3.client("s3", **kw)
        s3.create_bucket(Bucket=BUCKET)
        for path in Path(local).rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), BUCKET, f"cube.zarr/{path.relative_to(local)}")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="reader")
        iam.put_user_policy(
            UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(READ_ONLY)
        )
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        # From here on moto checks every request against IAM.
        reset = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(reset, timeout=10).close()
        options = {
            "endpoint_url": endpoint,
            "key": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
        }
        yield f"s3://{BUCKET}/cube.zarr", options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("order", [(8, 16), pytest.param((16, 8), marks=pytest.mark.slow)])
def test_tiling_a_readonly_cube_at_two_patch_sizes_leaves_it_byte_identical(
    readonly_cube: tuple[str, dict], tmp_path: Path, order: tuple[int, int]
) -> None:
    url, options = readonly_cube
    store = CubeStore(url, options)
    with pytest.raises(PermissionError):  # the user really cannot write
        store.fs.pipe_file(store.path("probe"), b"x")
    before = _digest(store)
    assert f"{store.root}/enmap/significance_gabor_p16/zarr.json" in before
    assert not any("_p8" in k for k in before)  # patch 8 must be computed on the fly
    outs = {}
    for patch in order:
        cfg = TileConfig(
            tile_size=32,
            patch_size=patch,
            split_block_px=32,
            min_valid=0.3,
            allow_empty_splits=True,
        )
        out = str(tmp_path / f"tiles_p{patch}.zarr")
        summary = build_tiles(url, out, cfg, storage_options=options)
        assert summary.n_tiles > 0
        outs[patch] = out
    assert _digest(store) == before
    for patch, out in outs.items():
        assert verify_tiles(out) == [], patch
    import zarr

    g8, g16 = (zarr.open_group(outs[p], mode="r") for p in (8, 16))
    assert g8["significance_gabor"].shape[1:] == (4, 4)
    assert g16["significance_gabor"].shape[1:] == (2, 2)
    assert (g8["teacher"][:] == g16["teacher"][:]).all()
