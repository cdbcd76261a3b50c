"""The class-incremental commands run unchanged on a packed ImageNet-style image folder."""

import json

import numpy as np
from PIL import Image

from hundred.cli import main
from hundred.data.pack import pack


def write_tree(root, classes=4, per_split={"train": 12, "val": 4}):
    rng = np.random.default_rng(0)
    for c in range(classes):
        wnid = f"n0{c:07d}"
        for split, count in per_split.items():
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.full((40, 30, 3), 60 * c, np.uint8)  # class-dependent colour
                noise = rng.integers(0, 40, base.shape, dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{i}.jpg")


def test_incremental_run_on_a_packed_image_folder(tmp_path):
    write_tree(tmp_path / "tree")
    pack(f"imagefolder:{tmp_path / 'tree'}", out=tmp_path / "packed", res=16, quiet=True)
    code = main(["run", "incremental", "replay", "--data", str(tmp_path / "packed"),
                 "--scenario", "B0-Inc2", "--memory", "8", "--model", "resnet20", "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--root", str(tmp_path / "runs"),
                 "--name", "packed", "-q", "--set", "model.options={width: 8}"])
    assert code == 0
    summary = json.loads((tmp_path / "runs/incremental/replay/packed/summary.json").read_text())
    assert summary["classes_per_step"] == [2, 4]
    assert summary["data"].startswith("imagefolder")
    assert len(summary["accuracy_matrix"]) == 2
