"""Packing: exact round trips, bad files skipped and reported, atomicity, verify, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hundred.cli import main
from hundred.data import ArraySplit, Dataset, load
from hundred.data import decode as decode_module
from hundred.data.decode import MAX_PIXELS, decode_image, resize_array
from hundred.data.pack import is_packed, load_packed, pack, print_info, verify
from hundred.errors import HundredError


def array_dataset(res: int = 8, train: int = 20, val: int = 6, classes: int = 3) -> Dataset:
    rng = np.random.default_rng(0)

    def split(n: int) -> ArraySplit:
        return ArraySplit(images=rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8),
                          labels=rng.integers(0, classes, n).astype(np.int64))

    return Dataset(name="toy", class_ids=[f"c{i}" for i in range(classes)],
                   class_names=[f"class {i}" for i in range(classes)],
                   splits={"train": split(train), "val": split(val)}, info={"seed": np.int64(3)})


def leftovers(out: Path) -> list[str]:
    """Names next to ``out`` that a pack created (partial or old directories)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


# ---------------------------------------------------------------------------------- decode


def test_decode_converts_modes_and_composites_alpha_over_white(tmp_path: Path, images) -> None:
    for mode, fmt in (("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"),
                      ("LA", "PNG"), ("I;16", "PNG")):
        path = images.write(tmp_path / f"x_{mode.replace(';', '')}.{fmt.lower()}", 24, 24,
                            mode=mode, fmt=fmt)
        result = decode_image(path, 12)
        assert isinstance(result, np.ndarray), (mode, result)
        assert result.shape == (12, 12, 3) and result.dtype == np.uint8
    rgba = decode_image(tmp_path / "x_RGBA.png", 12)
    assert (rgba[:, :5] == 255).all()  # the transparent left half is white, not black
    wide = decode_image(tmp_path / "x_L.jpeg", 12, resize="stretch")
    assert wide.shape == (12, 12, 3)
    assert (wide[..., 0] == wide[..., 1]).all()  # grey stays grey


def test_decode_skips_bad_files_without_raising(tmp_path: Path, images, monkeypatch) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    reasons = {
        "empty": decode_image(tmp_path / "empty.jpg", 16),
        "text": decode_image(tmp_path / "text.jpg", 16),
        "truncated": decode_image(images.truncated_jpeg(tmp_path / "t.jpg"), 16),
        "huge": decode_image(images.huge_png(tmp_path / "h.png"), 16),
        "over_limit": decode_image(images.huge_png(tmp_path / "w.png", 10_000, 10_000), 16),
        "missing": decode_image(tmp_path / "missing.jpg", 16),
    }
    assert all(isinstance(reason, str) for reason in reasons.values()), reasons
    assert "empty" in reasons["empty"] and "not an image" in reasons["text"]
    assert "truncated" in reasons["truncated"]
    assert "bomb" in reasons["huge"] and "bomb" in reasons["over_limit"]
    assert reasons["missing"].startswith("unreadable")
    # Even with Pillow's own limits switched off, the header check refuses before allocating.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert f"over the {MAX_PIXELS} limit" in decode_image(tmp_path / "h.png", 16)
    # Pillow's lenient mode, switched on elsewhere, is not honoured and is restored after.
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert "truncated" in decode_image(tmp_path / "t.jpg", 16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_draft_mode_matches_full_decode(tmp_path: Path, images) -> None:
    path = images.write(tmp_path / "big.jpg", 640, 480)
    fast, full = decode_image(path, 32, draft=True), decode_image(path, 32, draft=False)
    assert fast.shape == full.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3
    with Image.open(path) as img:  # draft really shrinks the decode, but never below R
        img.draft("RGB", (32, 32))
        assert min(img.size) >= 32 and img.size[0] < 640


def test_shorter_crop_equals_resize_then_centre_crop(images) -> None:
    image = images.gradient(60, 20, seed=1)
    reference = Image.fromarray(image).resize((15, 5), Image.Resampling.BICUBIC).crop((5, 0, 10, 5))
    cropped = resize_array(image, 5)
    assert np.abs(cropped.astype(int) - np.asarray(reference, dtype=int)).max() <= 3
    stretched = resize_array(image, 5, "stretch")
    reference = Image.fromarray(image).resize((5, 5), Image.Resampling.BICUBIC)
    assert np.abs(stretched.astype(int) - np.asarray(reference, dtype=int)).max() <= 3
    assert resize_array(cropped, 5) is cropped  # already R x R: untouched


# ------------------------------------------------------------------------------ round trip


def test_pack_array_dataset_round_trip_is_exact(tmp_path: Path) -> None:
    dataset = array_dataset()
    out = tmp_path / "packed"
    meta = pack(dataset, out=out, res=8, quiet=True)

    assert is_packed(out) and verify(out) == []
    assert leftovers(out) == []
    loaded = load_packed(out)
    for name in ("train", "val"):
        original, packed = dataset.arrays(name), loaded.arrays(name)
        assert isinstance(packed.images, np.memmap)
        np.testing.assert_array_equal(packed.images, original.images)
        np.testing.assert_array_equal(packed.labels, original.labels)
        assert packed.labels.dtype == np.int64
    assert loaded.class_ids == dataset.class_ids and loaded.class_names == dataset.class_names
    assert loaded.info["seed"] == 3 and loaded.info["packed"]["resolution"] == 8
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert on_disk["splits"]["train"]["class_counts"] == np.bincount(
        dataset.arrays("train").labels, minlength=3).tolist()
    assert set(on_disk["files"]) == {"train_images.npy", "train_labels.npy",
                                     "val_images.npy", "val_labels.npy"}
    assert load(out).arrays("val").images.shape == (6, 8, 8, 3)  # via hundred.data.load
    assert not isinstance(load_packed(out, mmap=False).arrays("train").images, np.memmap)


def test_pack_resizes_arrays_of_another_resolution(tmp_path: Path) -> None:
    meta = pack(array_dataset(res=8), out=tmp_path / "up", res=16, resize="stretch", quiet=True)
    assert meta["files"]["train_images.npy"]["shape"] == [20, 16, 16, 3]
    assert verify(tmp_path / "up") == []


def test_verify_catches_damage(tmp_path: Path) -> None:
    out = tmp_path / "packed"
    pack(array_dataset(), out=out, res=8, quiet=True)
    with open(out / "train_images.npy", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    np.save(out / "stray.npy", np.zeros(2))
    problems = verify(out)
    assert any("train_images.npy: sha256 mismatch" in p for p in problems)
    assert any("stray.npy" in p for p in problems)
    (out / "val_labels.npy").unlink()
    assert any("missing val_labels.npy" in p for p in verify(out))
    (out / "meta.json").unlink()
    assert "no meta.json" in verify(out)[0] and not is_packed(out)
    assert verify(tmp_path / "nothing") != []


# ------------------------------------------------------------------------- bad image trees


@pytest.mark.parametrize("draft", [True, False])
def test_pack_messy_tree_skips_and_reports(messy_tree: Path, tmp_path: Path, capsys,
                                           draft: bool) -> None:
    out = tmp_path / f"out-{draft}"
    meta = pack(f"imagefolder:{messy_tree}", out=out, res=16, draft=draft, workers=1, quiet=True)

    assert verify(out) == []
    skipped = {Path(entry["file"]).name: entry for entry in meta["skipped"]}
    assert set(skipped) == {"b_truncated.jpg", "c_empty.jpg", "d_text.jpg", "e_huge.png"}
    assert all(entry["split"] == "train" for entry in skipped.values())
    assert "truncated" in skipped["b_truncated.jpg"]["reason"]
    assert "bomb" in skipped["e_huge.png"]["reason"]
    assert meta["draft"] is draft
    # class ids sort "bad" < "good": 1 surviving bad image, 5 converted good ones
    assert meta["class_ids"] == ["bad", "good"]
    assert meta["splits"]["train"]["class_counts"] == [1, 5]
    data = load_packed(out).arrays("train")
    assert data.images.shape == (6, 16, 16, 3)
    assert data.labels.tolist() == [0, 1, 1, 1, 1, 1]  # aligned after dropping the bad rows
    grey = data.images[2]  # good/b_gray.jpg
    assert (grey[..., 0] == grey[..., 1]).all()
    err = capsys.readouterr().err
    assert "skipped 4 file(s)" in err and "e_huge.png" in err


def test_parallel_pack_equals_serial_pack(messy_tree: Path, tmp_path: Path) -> None:
    serial = pack(f"imagefolder:{messy_tree}", out=tmp_path / "serial", res=16, workers=1,
                  quiet=True)
    parallel = pack(f"imagefolder:{messy_tree}", out=tmp_path / "parallel", res=16, workers=2,
                    quiet=True)
    assert serial["files"] == parallel["files"]  # same bytes, same sha256
    assert serial["skipped"] == parallel["skipped"]


def test_class_without_images_is_a_warning(tree_factory, images, tmp_path: Path, capsys) -> None:
    root = tree_factory(["a", "b"], train=1, val=1)
    for file in [*(root / "train" / "b").iterdir(), *(root / "val").rglob("*.jpg")]:
        file.write_bytes(b"")
    meta = pack(f"imagefolder:{root}", out=tmp_path / "out", res=8, workers=1, quiet=True)
    assert meta["warnings"] == ["train: 1 class(es) have no images: b",
                                "val: 2 class(es) have no images: a, b"]
    assert "no images: b" in capsys.readouterr().err
    assert verify(tmp_path / "out") == []
    assert load_packed(tmp_path / "out").arrays("val").images.shape == (0, 8, 8, 3)


# ------------------------------------------------------------------- validation, atomicity


def test_inputs_are_validated_before_any_work(tmp_path: Path, tree_factory) -> None:
    root = tree_factory(["a"], train=1, val=1)
    out = tmp_path / "out"
    for kwargs, message in (({"res": 2}, "--res"), ({"res": 8, "resize": "squash"}, "--resize"),
                            ({"res": 8, "workers": 0}, "--workers")):
        with pytest.raises(HundredError, match=message):
            pack(f"imagefolder:{root}", out=out, quiet=True, **kwargs)
    with pytest.raises(HundredError, match="does not exist"):
        pack(f"imagefolder:{tmp_path / 'missing'}", out=out, res=8, quiet=True)
    with pytest.raises(HundredError, match="no option"):
        pack("imagefolder:" + str(root), out=out, res=8, options={"colour": "1"}, quiet=True)
    assert not out.exists() and leftovers(out) == []


def test_existing_output_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "packed"
    pack(array_dataset(), out=out, res=8, quiet=True)
    with pytest.raises(HundredError, match="already exists"):
        pack(array_dataset(), out=out, res=8, quiet=True)
    meta = pack(array_dataset(), out=out, res=16, force=True, quiet=True)
    assert meta["resolution"] == 16 and verify(out) == [] and leftovers(out) == []

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(HundredError, match="not a packed dataset"):
        pack(array_dataset(), out=precious, res=8, force=True, quiet=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("workers", [
    1,
    pytest.param(2, marks=pytest.mark.skipif(
        multiprocessing.get_start_method() != "fork",
        reason="the patched decoder reaches worker processes only when they are forked")),
])
def test_failure_midway_leaves_nothing(messy_tree: Path, tmp_path: Path, monkeypatch,
                                       workers: int) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(decode_module, "decode_image", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="decoder crashed"):
        pack(f"imagefolder:{messy_tree}", out=out, res=16, workers=workers, quiet=True)
    assert not out.exists() and leftovers(out) == []


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from hundred.data import decode, pack as pack_module

    root, out, where = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    real, seen = decode.decode_image, []

    def dying_decode(*args, **kwargs):
        seen.append(1)
        if where == "decode" and len(seen) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    def dying_publish(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    decode.decode_image = dying_decode
    pack_module._publish = dying_publish
    pack_module.pack(f"imagefolder:{root}", out=out, res=16, workers=1, quiet=True)
""")


@pytest.mark.parametrize("where", ["decode", "publish"])
def test_killed_pack_leaves_nothing_verify_accepts(messy_tree: Path, tmp_path: Path, capsys,
                                                   where: str) -> None:
    """SIGKILL (no cleanup runs) while decoding, or after meta.json but before the rename."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", KILLER, str(messy_tree), str(out), where],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not out.exists() and not is_packed(out) and verify(out) != []
    partial = [tmp_path / name for name in leftovers(out)]
    assert len(partial) == 1 and ".partial-" in partial[0].name
    assert (partial[0] / "meta.json").exists() == (where == "publish")
    # the next pack is not disturbed by the leftover, and points at it
    pack(f"imagefolder:{messy_tree}", out=out, res=16, workers=1, quiet=True)
    assert verify(out) == []
    assert partial[0].name in capsys.readouterr().err


# ------------------------------------------------------------------------------------ CLI


def test_cli_pack_verify_info(tree_factory, tmp_path: Path, capsys) -> None:
    root = tree_factory(["n01440764", "n01443537"], train=2, val=1)
    out = tmp_path / "out"
    assert main(["data", "pack", f"imagefolder:{root}", "--res", "32", "--out", str(out),
                 "--workers", "1"]) == 0
    assert "packed imagefolder:tree (train 4, val 2) at 32x32" in capsys.readouterr().out
    assert main(["data", "verify", str(out)]) == 0
    assert main(["data", "info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "imagefolder:tree" in shown and "tench" in shown and "32x32" in shown
    assert main(["data", "info", f"imagefolder:{root}"]) == 0
    assert "decoded when packed" in capsys.readouterr().out
    # refusal and failures are clean errors (exit 2 / 1), not tracebacks
    assert main(["data", "pack", f"imagefolder:{root}", "--res", "32", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (out / "meta.json").unlink()
    with pytest.raises(SystemExit) as failed:
        main(["data", "verify", str(out)])
    assert failed.value.code == 1
    assert main(["data", "info", str(out)]) == 2


def test_print_info_of_a_packed_dataset_with_a_list(tmp_path: Path, tree_factory, capsys) -> None:
    root = tree_factory(["n01440764", "n01443537", "n01484850"], train=1, val=1)
    listed = tmp_path / "two.txt"
    listed.write_text("n01484850\nn01440764\n")
    out = tmp_path / "in100"
    meta = pack(f"imagenet100:{listed}:{root}", out=out, res=8, workers=1, quiet=True)
    assert meta["name"] == "imagenet100:two" and meta["list"] == "two"
    assert meta["info"]["list_order"] == ["n01484850", "n01440764"]
    print_info(out)
    assert "great white shark" in capsys.readouterr().out
