"""Image folders and ImageNet-100 class lists: listing, labels, names, and clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from hundred.data.dataset import FileSplit
from hundred.data.sources import open_source
from hundred.data.sources.imagefolder import (class_names_for, named_lists, open_imagefolder,
                                              open_imagenet100, read_class_list)
from hundred.errors import HundredError

TENCH, GOLDFISH, SHARK = "n01440764", "n01443537", "n01484850"


def test_imagefolder_lists_sorted_classes_files_and_wnid_names(tree_factory, images) -> None:
    root = tree_factory([GOLDFISH, "zebra_custom", TENCH], train=3, val=2)
    (root / "train" / TENCH / ".DS_Store").write_bytes(b"junk")  # hidden: never listed
    (root / "train" / ".hidden_class").mkdir()
    images.write(root / "train" / TENCH / "nested" / "deep.png", fmt="PNG")

    dataset = open_source(f"imagefolder:{root}")

    assert dataset.name == "imagefolder:tree"
    assert dataset.class_ids == [TENCH, GOLDFISH, "zebra_custom"]
    assert dataset.class_names == ["tench", "goldfish", "zebra_custom"]
    train = dataset.splits["train"]
    assert isinstance(train, FileSplit)
    assert len(train) == 10 and len(dataset.splits["val"]) == 6
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    tench_files = [f.relative_to(root / "train" / TENCH).as_posix() for f in train.files[:4]]
    assert tench_files == ["000.jpg", "001.jpg", "002.jpg", "nested/deep.png"]
    assert all(not f.name.startswith(".") for f in train.files)
    assert dataset.info["root"] == str(root.resolve())
    # deterministic: a second listing is identical
    again = open_imagefolder(str(root))
    assert again.splits["train"].files == train.files


def test_repeated_imagenet_names_get_their_wnid() -> None:
    assert class_names_for(["n02012849", "n03126707", "n01440764"]) == [
        "crane (n02012849)", "crane (n03126707)", "tench"]
    assert class_names_for(["cats", "n99999999"]) == ["cats", "n99999999"]  # unknown wnid


def test_imagefolder_custom_split_dirs_via_options(tree_factory) -> None:
    root = tree_factory(["a", "b"], train=1, val=1)
    (root / "train").rename(root / "training")
    dataset = open_source(f"imagefolder:{root}", train_dir="training")
    assert dataset.class_ids == ["a", "b"] and dataset.info["train_dir"] == "training"


def test_imagefolder_errors_name_the_problem(tmp_path: Path, tree_factory, images) -> None:
    with pytest.raises(HundredError, match="nowhere"):
        open_imagefolder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HundredError, match="no train/"):
        open_imagefolder(str(tmp_path / "empty"))
    with pytest.raises(HundredError, match="imagefolder:PATH"):
        open_imagefolder(None)

    root = tree_factory(["a", "b"], train=1, val=1)
    images.write(root / "val" / "c" / "x.jpg")
    with pytest.raises(HundredError, match="missing from train/: c"):
        open_imagefolder(str(root))

    flat = tree_factory(["a"], train=1, val=0, name="flat")
    (flat / "val").mkdir()
    images.write(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(HundredError, match="no class folders"):
        open_imagefolder(str(flat))


def test_imagenet100_custom_list_restricts_and_records_order(tmp_path: Path, tree_factory) -> None:
    root = tree_factory([TENCH, GOLDFISH, SHARK, "n01491361"], train=2, val=1)
    list_file = tmp_path / "mine.txt"
    list_file.write_text(f"# my subset\n{SHARK}\n\n{TENCH}  # the fish\n")

    dataset = open_source(f"imagenet100:{list_file}:{root}")

    assert dataset.name == "imagenet100:mine"
    assert dataset.class_ids == [TENCH, SHARK]  # labels in sorted-wnid order
    assert dataset.class_names == ["tench", "great white shark"]
    assert dataset.info["list_order"] == [SHARK, TENCH]  # the list's own order
    assert dataset.info["list"] == "mine"
    assert dataset.info["list_sha256"] == hashlib.sha256(list_file.read_bytes()).hexdigest()
    assert dataset.splits["train"].labels.tolist() == [0, 0, 1, 1]
    assert {f.parent.name for f in dataset.splits["val"].files} == {TENCH, SHARK}


def test_imagenet100_named_list_with_missing_classes_names_them(tree_factory) -> None:
    root = tree_factory([TENCH, GOLDFISH], train=1, val=1)
    with pytest.raises(HundredError, match="n01514668"):  # seed1993's first wnid
        open_imagenet100(f"seed1993:{root}")


def test_imagenet100_argument_errors(tmp_path: Path, tree_factory, images) -> None:
    root = tree_factory([TENCH], train=1, val=1)
    for bad in (None, "seed1993", f":{root}", "seed1993:"):
        with pytest.raises(HundredError, match="LIST:PATH"):
            open_imagenet100(bad)
    with pytest.raises(HundredError, match="unknown class list"):
        open_imagenet100(f"nosuchlist:{root}")
    repeated = tmp_path / "twice.txt"
    repeated.write_text(f"{TENCH}\n{TENCH}\n")
    with pytest.raises(HundredError, match="repeats"):
        open_imagenet100(f"{repeated}:{root}")
    missing_in_val = tree_factory([TENCH, GOLDFISH], train=1, val=0, name="noval")
    (missing_in_val / "val" / TENCH).mkdir(parents=True)
    images.write(missing_in_val / "val" / TENCH / "x.jpg")
    listed = tmp_path / "two.txt"
    listed.write_text(f"{TENCH}\n{GOLDFISH}\n")
    with pytest.raises(HundredError, match=GOLDFISH):
        open_imagenet100(f"{listed}:{missing_in_val}")


def test_shipped_lists_are_100_distinct_wnids() -> None:
    assert named_lists() == ["cmc", "gcd", "seed1993", "seed1993b", "sorted100"]
    lists = {name: read_class_list(name) for name in named_lists()}
    for name, (list_name, wnids, sha) in lists.items():
        assert list_name == name and len(wnids) == len(set(wnids)) == 100 and len(sha) == 64
    assert not set(lists["seed1993"][1]) & set(lists["seed1993b"][1])  # disjoint by design
    assert lists["sorted100"][1] == sorted(lists["sorted100"][1])


def test_the_gcd_list_is_the_category_discovery_papers_recipe() -> None:
    """GCD (Vaze et al., CVPR 2022) and Happy: np.random.seed(0); choice(1000, 100, replace=
    False) over the sorted 1000 wnids, then sorted."""
    import numpy as np
    from timm.data import ImageNetInfo

    wnids = sorted(ImageNetInfo().label_names())
    np.random.seed(0)
    chosen = np.sort(np.random.choice(range(1000), size=(100,), replace=False))
    assert read_class_list("gcd")[1] == [wnids[i] for i in chosen]
