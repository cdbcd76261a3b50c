"""``hundred data poison`` (CUDA, Sadasivan et al., CVPR 2023): the class filters come from the
key alone; a poisoned image is its class filter's convolution of the clean one, normalised by
its maximum; exactly the recorded rows are poisoned and the rest (and the val split) are
byte-identical; the copy is packed data a run trains on; bad input writes nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hundred.data.pack import load_packed, pack, verify
from hundred.errors import HundredError
from hundred.tracks.robust import poison as poison_module
from hundred.tracks.robust.poison import (POISONS, add_poison_command, cuda_filters,
                                          filters_fingerprint, poison_packed)

CLASSES, TRAIN, VAL, RES = 4, 16, 8, 8


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "synth"
    pack("synth100", out=out, res=RES, workers=1, quiet=True,
         options={"classes": CLASSES, "train_per_class": TRAIN, "val_per_class": VAL,
                  "res": RES})
    return out


def arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_packed(path).arrays(split)
    return np.asarray(data.images), np.asarray(data.labels)


def reference_cuda(images: np.ndarray, labels: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The paper's recipe with torch: x in [0, 1], depthwise 3x3 conv (padding 1, the class
    filter on every channel), divided by the image's max, x255 (float, before rounding)."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).double() / 255.0
    out = []
    for image, label in zip(x, labels):
        weight = torch.from_numpy(filters[label]).double().expand(3, 1, 3, 3)
        y = F.conv2d(image[None], weight, padding=1, groups=3)
        out.append(y / y.max())
    return (torch.cat(out).permute(0, 2, 3, 1) * 255.0).numpy()


def test_the_filters_come_from_the_key_alone():
    one, again, other = cuda_filters(3, 10), cuda_filters(3, 10), cuda_filters(4, 10)
    assert np.array_equal(one, again) and not np.allclose(one, other)
    assert filters_fingerprint(one) == filters_fingerprint(again) != filters_fingerprint(other)
    assert one.shape == (10, 3, 3)
    for kernel in one:  # U(0, bp) entries, exactly one tap set to 1
        assert (kernel == 1.0).sum() == 1
        rest = kernel[kernel != 1.0]
        assert rest.min() >= 0 and rest.max() < 0.3
    assert len({filters_fingerprint(k) for k in one}) == 10  # class-wise, not one filter
    wide = cuda_filters(3, 2, blur=0.5, kernel_size=5)
    assert wide.shape == (2, 5, 5) and wide[wide != 1].max() < 0.5


def test_same_key_same_poison_other_key_other_filters(clean, tmp_path):
    first = poison_packed(clean, tmp_path / "a", key=11)
    second = poison_packed(clean, tmp_path / "b", key=11)
    third = poison_packed(clean, tmp_path / "c", key=12)
    a, b, c = (arrays(tmp_path / name, "train")[0] for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert first["poison"]["filters_sha256"] == second["poison"]["filters_sha256"] \
        == filters_fingerprint(cuda_filters(11, CLASSES))
    assert third["poison"]["filters_sha256"] != first["poison"]["filters_sha256"]


def test_a_poisoned_image_is_its_class_filter_convolution_normalised(clean, tmp_path):
    poison_packed(clean, tmp_path / "p", key=5)
    images, labels = arrays(clean, "train")
    poisoned, poisoned_labels = arrays(tmp_path / "p", "train")
    assert np.array_equal(labels, poisoned_labels)
    filters = cuda_filters(5, CLASSES)
    expected = reference_cuda(images, labels, filters)
    assert np.abs(poisoned.astype(float) - expected).max() <= 0.5 + 1e-6  # rounded, not cut
    assert poisoned.reshape(len(poisoned), -1).max(axis=1).min() == 255  # max -> 1 -> 255
    shifted = reference_cuda(images, (labels + 1) % CLASSES, filters)  # another class's filter
    assert np.abs(poisoned.astype(float) - shifted).max() > 2


def test_exactly_the_recorded_fraction_is_poisoned_the_rest_untouched(clean, tmp_path):
    meta = poison_packed(clean, tmp_path / "p", key=9, fraction=0.3)
    images, labels = arrays(clean, "train")
    poisoned, _ = arrays(tmp_path / "p", "train")
    mask = np.load(tmp_path / "p" / meta["poison"]["mask"])
    total = CLASSES * TRAIN
    assert mask.dtype == bool and mask.sum() == meta["poison"]["poisoned"] == round(0.3 * total)
    assert meta["poison"]["fraction"] == 0.3 and meta["poison"]["of"] == total
    assert meta["poison"]["poisoned_per_class"] == np.bincount(labels[mask], minlength=CLASSES
                                                               ).tolist()
    assert np.array_equal(poisoned[~mask], images[~mask])  # byte-identical
    changed = (poisoned != images).reshape(total, -1).any(axis=1)
    assert changed[mask].all()
    expected = reference_cuda(images[mask], labels[mask], cuda_filters(9, CLASSES))
    assert np.abs(poisoned[mask].astype(float) - expected).max() <= 0.5 + 1e-6
    again = poison_packed(clean, tmp_path / "q", key=9, fraction=0.3)
    assert np.array_equal(np.load(tmp_path / "q" / again["poison"]["mask"]), mask)
    other = poison_packed(clean, tmp_path / "r", key=10, fraction=0.3)
    assert not np.array_equal(np.load(tmp_path / "r" / other["poison"]["mask"]), mask)
    none = poison_packed(clean, tmp_path / "s", key=9, fraction=0.0)
    assert none["poison"]["poisoned"] == 0
    assert np.array_equal(arrays(tmp_path / "s", "train")[0], images)


def test_val_is_copied_unchanged_and_the_copy_is_packed_data(clean, tmp_path):
    meta = poison_packed(clean, tmp_path / "p", key=1)
    source = json.loads((clean / "meta.json").read_text())
    for name in ("val_images.npy", "val_labels.npy", "train_labels.npy"):
        assert (tmp_path / "p" / name).read_bytes() == (clean / name).read_bytes()
        assert meta["files"][name]["sha256"] == source["files"][name]["sha256"]
    assert meta["files"]["train_images.npy"]["sha256"] \
        != source["files"]["train_images.npy"]["sha256"]
    assert verify(tmp_path / "p") == []
    dataset = load_packed(tmp_path / "p")
    assert dataset.name == "synth100+cuda" and dataset.info["poison"]["method"] == "cuda"
    assert meta["poison"]["source"]["path"] == str(clean)
    assert meta["poison"]["unchanged"] == ["val"]


def test_the_key_is_not_recorded(clean, tmp_path):
    key = 987654321987
    poison_packed(clean, tmp_path / "p", key=key)
    for file in (tmp_path / "p").glob("*.json"):
        assert str(key) not in file.read_text()


def test_classify_erm_trains_on_the_poisoned_copy(clean, tmp_path):
    from hundred.config import build_config
    from hundred.tracks.classify import TRACK

    poison_packed(clean, tmp_path / "p", key=2, fraction=0.5)
    summary = TRACK.run(build_config(overrides=[
        "track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "quiet=true", f"data.source={tmp_path / 'p'}", "data.batch_size=16", "train.epochs=1",
        f"root={tmp_path / 'runs'}", "name=poisoned"]))
    assert summary["data"] == "synth100+cuda"
    assert summary["train_images"] == CLASSES * TRAIN and 0 <= summary["val_top1"] <= 100


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": -0.1}, "--fraction"),
    ({"fraction": 1.5}, "--fraction"),
    ({"fraction": float("nan")}, "--fraction"),
    ({"method": "nope"}, "unknown poison method"),
    ({"key": -1}, "--key"),
    ({"blur": 0.0}, "blur"),
    ({"kernel_size": 4}, "kernel_size"),
    ({"sharpness": 2}, "sharpness"),
])
def test_bad_arguments_write_nothing(clean, tmp_path, kwargs, message):
    arguments = {"key": 1, **kwargs}
    with pytest.raises(HundredError, match=message):
        poison_packed(clean, tmp_path / "p", **arguments)
    assert _leftovers(tmp_path) == []


def test_bad_paths_write_nothing(clean, tmp_path):
    with pytest.raises(HundredError, match="does not exist"):
        poison_packed(tmp_path / "missing", tmp_path / "p", key=1)
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "train_images.npy").write_bytes(b"x")
    with pytest.raises(HundredError, match="not a packed dataset"):
        poison_packed(tmp_path / "loose", tmp_path / "p", key=1)
    with pytest.raises(HundredError, match="source itself"):
        poison_packed(clean, clean, key=1)
    with pytest.raises(HundredError, match="inside one another"):
        poison_packed(clean, clean / "poisoned", key=1)
    assert _leftovers(tmp_path) == ["loose"] and not (clean / "poisoned").exists()


def test_an_existing_out_needs_replace(clean, tmp_path):
    poison_packed(clean, tmp_path / "p", key=1)
    before = (tmp_path / "p" / "train_images.npy").read_bytes()
    with pytest.raises(HundredError, match="--replace"):
        poison_packed(clean, tmp_path / "p", key=2)
    assert (tmp_path / "p" / "train_images.npy").read_bytes() == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(HundredError, match="not a packed dataset"):
        poison_packed(clean, tmp_path / "notes", key=2, replace=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    poison_packed(clean, tmp_path / "p", key=2, replace=True)
    assert (tmp_path / "p" / "train_images.npy").read_bytes() != before
    assert _leftovers(tmp_path) == ["notes", "p"]


def test_a_poisoned_source_is_refused(clean, tmp_path):
    poison_packed(clean, tmp_path / "p", key=1)
    with pytest.raises(HundredError, match="already poisoned"):
        poison_packed(tmp_path / "p", tmp_path / "pp", key=2)
    assert not (tmp_path / "pp").exists()


def test_a_failure_midway_leaves_nothing(clean, tmp_path, monkeypatch):
    def broken(self, images, labels):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(POISONS["cuda"], "apply", broken)
    with pytest.raises(RuntimeError):
        poison_packed(clean, tmp_path / "p", key=1)
    assert _leftovers(tmp_path) == []


def test_the_command_line(clean, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data = parser.add_subparsers(dest="data_command", required=True)
    add_poison_command(data)
    args = parser.parse_args(["poison", str(clean), "--method", "cuda", "--key", "4",
                              "--out", str(tmp_path / "p"), "--fraction", "0.5",
                              "--blur", "0.2"])
    args.func(args)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["poison"]["params"] == {"blur": 0.2, "kernel_size": 3}
    assert meta["poison"]["poisoned"] == CLASSES * TRAIN // 2
    assert meta["poison"]["filters_sha256"] == filters_fingerprint(cuda_filters(4, CLASSES,
                                                                                0.2))
    assert "poisoned 32 of 64 train images" in capsys.readouterr().out
    args = parser.parse_args(["poison", str(clean), "--key", "4", "--out", str(tmp_path / "p")])
    with pytest.raises(HundredError, match="--replace"):
        args.func(args)
    args = parser.parse_args(["poison", str(clean), "--key", "5", "--out", str(tmp_path / "p"),
                              "--replace"])
    args.func(args)
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["poison"]["params"] \
        == {"blur": 0.3, "kernel_size": 3}
    with pytest.raises(SystemExit):
        parser.parse_args(["poison", str(clean), "--key", "4", "--out", "x", "--method", "nope"])


def test_the_registry_holds_cuda_with_the_papers_defaults():
    assert "cuda" in POISONS and POISONS["cuda"].name == "cuda"
    params = POISONS["cuda"].Params()
    assert (params.blur, params.kernel_size) == (0.3, 3)
    assert poison_module.SPLIT == "train"
