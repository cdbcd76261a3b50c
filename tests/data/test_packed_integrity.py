"""Tampered or malformed packed data is refused at load, by every command, with a clear error.

Each test packs a tiny dataset itself, then damages it the way a disk, a copy or a hand edit
would: a flipped byte, labels out of range, wrong dtypes and shapes, pickled arrays, a
garbled or incomplete ``meta.json``, no ``meta.json`` at all, a path that does not exist.
The checksum cache (``verified.json``) is tested too: a second load does not hash again,
and any change to an array invalidates its entry.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from hundred.cli import main
from hundred.data import ArraySplit, Dataset, load, load_selection
from hundred.data import pack as pack_module
from hundred.data.pack import load_packed, pack, print_info, verify
from hundred.errors import HundredError
from hundred.io import sha256_file

CLASSES = 3
VERIFIED = getattr(pack_module, "VERIFIED", "verified.json")  # the checksum cache


def toy(train: int = 20, val: int = 6, res: int = 8) -> Dataset:
    rng = np.random.default_rng(0)

    def split(n: int) -> ArraySplit:
        return ArraySplit(images=rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8),
                          labels=np.arange(n, dtype=np.int64) % CLASSES)

    return Dataset(name="toy", class_ids=[f"c{i}" for i in range(CLASSES)],
                   class_names=[f"class {i}" for i in range(CLASSES)],
                   splits={"train": split(train), "val": split(val)})


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One packed toy dataset; tests damage copies of it (see ``packed``)."""
    out = tmp_path_factory.mktemp("master") / "packed"
    pack(toy(), out=out, res=8, quiet=True)
    return out


@pytest.fixture
def packed(master: Path, tmp_path: Path) -> Path:
    """A fresh copy of the packed toy dataset, its checksum cache removed."""
    out = tmp_path / "packed"
    shutil.copytree(master, out)
    (out / VERIFIED).unlink(missing_ok=True)
    return out


def edit_meta(out: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads((out / "meta.json").read_text())
    change(meta)
    (out / "meta.json").write_text(json.dumps(meta))


def replace_array(out: Path, name: str, array: np.ndarray, *, pickled: bool = False,
                  shape_in_meta: bool = False) -> None:
    """Overwrite ``name`` and record its new sha256 and size in meta.json, so that the
    check under test, not the checksum, is what fires."""
    with open(out / name, "wb") as handle:
        np.save(handle, array, allow_pickle=pickled)

    def update(meta: dict[str, Any]) -> None:
        facts = meta["files"][name]
        facts["sha256"] = sha256_file(out / name)
        facts["bytes"] = (out / name).stat().st_size
        if shape_in_meta:
            facts["shape"] = list(array.shape)
            facts["dtype"] = str(array.dtype)

    edit_meta(out, update)


def flip_last_byte(file: Path) -> None:
    with open(file, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))


def refused(spec: Path | str, *patterns: str) -> str:
    """Load ``spec`` through both library entries; both must raise one-line HundredErrors
    containing every pattern. Returns the message."""
    messages = []
    for entry in (lambda: load(spec), lambda: load_selection(str(spec), "0-1")):
        with pytest.raises(HundredError) as error:
            entry()
        messages.append(str(error.value))
    for message in messages:
        assert "\n" not in message, message
        for pattern in patterns:
            assert pattern in message, (pattern, message)
    return messages[0]


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files the loader hashes (the real hash still runs)."""
    calls: list[str] = []
    real = pack_module.sha256_file

    def counting(path: Any, *args: Any, **kwargs: Any) -> str:
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pack_module, "sha256_file", counting)
    return calls


def run_classify(data: Path | str, root: Path) -> list[str]:
    return ["run", "classify", "erm", "--data", str(data), "--epochs", "1", "--batch-size", "4",
            "--model", "resnet20", "--device", "cpu", "--root", str(root), "-q",
            "--set", "model.options={width: 4}"]


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------- checksums


def test_flipped_byte_is_refused_at_load_naming_the_array(packed: Path) -> None:
    flip_last_byte(packed / "train_images.npy")
    refused(packed, "train_images.npy", "sha256")
    assert any("train_images.npy: sha256 mismatch" in p for p in verify(packed))


def test_flipped_byte_after_a_verified_load_is_refused(packed: Path) -> None:
    """The cache is keyed by size, mtime and ctime: an in-place change invalidates it, even
    when the mtime is put back."""
    assert len(load(packed).arrays("train")) == 20  # verified and cached
    assert (packed / VERIFIED).is_file()
    file = packed / "val_images.npy"
    before = file.stat()
    flip_last_byte(file)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the write's mtime
    refused(packed, "val_images.npy", "sha256")


def test_truncated_array_is_refused_naming_it(packed: Path) -> None:
    file = packed / "train_images.npy"
    file.write_bytes(file.read_bytes()[:-100])
    refused(packed, "train_images.npy")


def test_missing_array_is_refused_naming_it(packed: Path) -> None:
    (packed / "val_labels.npy").unlink()
    refused(packed, "val_labels.npy", "missing")


def test_unreadable_array_is_refused_naming_it(packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied, an I/O error: one clean error, not an OSError from a hashing thread."""
    real = pack_module.sha256_file

    def failing(path: Any, *args: Any, **kwargs: Any) -> str:
        if Path(path).name == "val_images.npy":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pack_module, "sha256_file", failing)
    refused(packed, "val_images.npy", "Permission denied")
    assert any("val_images.npy" in p and "Permission denied" in p for p in verify(packed))


def test_cli_run_refuses_a_tampered_pack_before_training(
        packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flip_last_byte(packed / "train_images.npy")
    line = cli_error(capsys, run_classify(packed, tmp_path / "runs"))
    assert "train_images.npy" in line and "sha256" in line


# ------------------------------------------------------------------------ the checksum cache


def test_second_load_does_not_hash_again(packed: Path, hash_calls: list[str]) -> None:
    load(packed)
    assert sorted(hash_calls) == ["train_images.npy", "train_labels.npy",
                                  "val_images.npy", "val_labels.npy"]
    cache = json.loads((packed / VERIFIED).read_text())
    assert set(cache["files"]) == set(hash_calls)
    hash_calls.clear()
    load(packed)
    load_selection(str(packed), "0-1")
    assert hash_calls == []


def test_pack_seeds_the_cache(tmp_path: Path, hash_calls: list[str]) -> None:
    out = tmp_path / "fresh"
    pack(toy(), out=out, res=8, quiet=True)
    assert (out / VERIFIED).is_file()
    hash_calls.clear()  # pack hashes what it writes, once
    load(out)
    assert hash_calls == []


def test_touched_array_is_hashed_again(packed: Path, hash_calls: list[str]) -> None:
    load(packed)
    hash_calls.clear()
    os.utime(packed / "val_labels.npy")  # touch: same bytes, new mtime
    load(packed)
    assert hash_calls == ["val_labels.npy"]
    hash_calls.clear()
    load(packed)
    assert hash_calls == []


def test_changed_meta_checksum_is_not_served_from_the_cache(packed: Path) -> None:
    load(packed)
    edit_meta(packed, lambda m: m["files"]["train_labels.npy"].update(sha256="0" * 64))
    refused(packed, "train_labels.npy", "sha256")


@pytest.mark.parametrize("garbage", ["", "{not json", "[]", '{"format": "x"}',
                                     '{"format": "hundred-verified", "version": 1, "files": 5}'])
def test_garbled_cache_is_ignored_and_rewritten(packed: Path, hash_calls: list[str],
                                                garbage: str) -> None:
    (packed / VERIFIED).write_text(garbage)
    load(packed)
    assert len(hash_calls) == 4
    assert set(json.loads((packed / VERIFIED).read_text())["files"]) == set(hash_calls)


def test_read_only_directory_still_verifies_without_a_cache(
        packed: Path, hash_calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(pack_module, "write_json", read_only)
    for _ in range(2):
        hash_calls.clear()
        assert len(load(packed).arrays("val")) == 6
        assert len(hash_calls) == 4  # verified every time, no cache to remember it
    assert not (packed / VERIFIED).exists()
    flip_last_byte(packed / "val_labels.npy")
    refused(packed, "val_labels.npy", "sha256")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_directory_by_permissions(packed: Path, hash_calls: list[str]) -> None:
    packed.chmod(0o555)
    try:
        assert len(load(packed).arrays("train")) == 20
        assert len(hash_calls) == 4 and not (packed / VERIFIED).exists()
    finally:
        packed.chmod(0o755)


def test_verify_always_hashes_and_refreshes_the_cache(packed: Path, hash_calls: list[str]) -> None:
    load(packed)
    hash_calls.clear()
    assert verify(packed) == []
    assert len(hash_calls) == 4
    flip_last_byte(packed / "train_labels.npy")
    problems = verify(packed)
    assert any("train_labels.npy: sha256 mismatch" in p for p in problems)


def test_the_cache_is_not_an_array(packed: Path) -> None:
    load(packed)
    assert verify(packed) == []  # verified.json is neither unexpected nor an array


# -------------------------------------------------------------------------- labels, shapes


@pytest.mark.parametrize("value", [CLASSES, 99, -1, np.iinfo(np.int64).max])
def test_label_out_of_range_is_refused_with_index_and_value(packed: Path, value: int) -> None:
    labels = np.load(packed / "train_labels.npy")
    labels[7] = value
    replace_array(packed, "train_labels.npy", labels)
    message = refused(packed, "train_labels.npy", "index 7", str(value), f"[0, {CLASSES})")
    assert "sha256" not in message
    assert any("index 7" in p for p in verify(packed))


def test_every_label_out_of_range_names_the_first(packed: Path) -> None:
    replace_array(packed, "val_labels.npy", np.full(6, 50, np.int64))
    refused(packed, "val_labels.npy", "index 0", "50", "6 labels")


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.bool_])
def test_labels_of_another_dtype_are_refused(packed: Path, dtype: Any) -> None:
    labels = np.load(packed / "train_labels.npy").astype(dtype)
    replace_array(packed, "train_labels.npy", labels)
    refused(packed, "train_labels.npy", str(np.dtype(dtype)), "int64")


def test_float_labels_are_refused_even_when_meta_agrees(packed: Path) -> None:
    labels = np.load(packed / "train_labels.npy").astype(np.float64) + 0.5
    replace_array(packed, "train_labels.npy", labels, shape_in_meta=True)
    refused(packed, "train_labels.npy", "float64")


def test_fewer_labels_than_images_are_refused(packed: Path) -> None:
    labels = np.load(packed / "train_labels.npy")[:15]
    replace_array(packed, "train_labels.npy", labels)
    refused(packed, "train_labels.npy", "[15]", "[20]")
    replace_array(packed, "train_labels.npy", labels, shape_in_meta=True)
    refused(packed, "train_labels.npy", "15")  # meta.json no longer agrees with itself


@pytest.mark.parametrize("array", [
    np.zeros((20, 8, 8, 3), np.float32),
    np.zeros((20, 8, 8, 4), np.uint8),
    np.zeros((20, 8, 8), np.uint8),
    np.zeros((20, 4, 4, 3), np.uint8),
])
def test_images_of_another_dtype_or_shape_are_refused(packed: Path, array: np.ndarray) -> None:
    replace_array(packed, "train_images.npy", array)
    refused(packed, "train_images.npy", "uint8 [20, 8, 8, 3]")
    replace_array(packed, "train_images.npy", array, shape_in_meta=True)
    refused(packed, "train_images.npy")


def test_per_class_counts_must_match_meta(packed: Path) -> None:
    labels = np.zeros(20, np.int64)  # in range, but not the recorded class balance
    replace_array(packed, "train_labels.npy", labels)
    refused(packed, "train", "class_counts")


def test_dataset_refuses_labels_outside_its_classes() -> None:
    """Any source, not just packed data: a Dataset never holds a label it has no class for."""
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(HundredError, match=r"toy/train: label 5 at index 2 .*\[0, 3\)"):
        Dataset("toy", ["a", "b", "c"], ["a", "b", "c"],
                {"train": ArraySplit(images, np.array([0, 1, 5, 2]))})
    with pytest.raises(ValueError, match="integer"):
        ArraySplit(images, np.array([0.0, 1.0, 2.0, 0.5]))


# ----------------------------------------------------------------------------- pickles


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["train_images.npy", "train_labels.npy"])
def test_pickled_object_arrays_stay_refused(packed: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "unpickled"
    array = np.array([Payload(marker)] * 20, dtype=object)
    replace_array(packed, name, array, pickled=True)
    assert b"mkdir" in (packed / name).read_bytes()  # the payload is really in there
    refused(packed, name, "pickle")
    assert verify(packed) and not marker.exists()
    replace_array(packed, name, array, pickled=True, shape_in_meta=True)
    refused(packed, name, "pickle")
    assert not marker.exists()


def test_pickle_protocol_payload_in_labels_file(packed: Path, tmp_path: Path) -> None:
    """A raw pickle (not even an .npy) under an array's name."""
    marker = tmp_path / "unpickled"
    (packed / "val_labels.npy").write_bytes(pickle.dumps(Payload(marker)))
    edit_meta(packed, lambda m: m["files"]["val_labels.npy"].update(
        sha256=sha256_file(packed / "val_labels.npy"),
        bytes=(packed / "val_labels.npy").stat().st_size))
    refused(packed, "val_labels.npy")
    assert not marker.exists()


# ------------------------------------------------------------------------------ meta.json


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda meta: meta.pop(key)


def _set(value: Any, *keys: str) -> Callable[[dict[str, Any]], Any]:
    def change(meta: dict[str, Any]) -> None:
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


META_DAMAGE: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("no format", _drop("format"), "format"),
    ("other format", _set("numpy", "format"), "format"),
    ("no format_version", _drop("format_version"), "format_version"),
    ("format_version str", _set("1", "format_version"), "format_version"),
    ("format_version bool", _set(True, "format_version"), "format_version"),
    ("no name", _drop("name"), "name"),
    ("no num_classes", _drop("num_classes"), "num_classes"),
    ("num_classes str", _set("3", "num_classes"), "num_classes"),
    ("num_classes zero", _set(0, "num_classes"), "num_classes"),
    ("num_classes float", _set(3.0, "num_classes"), "num_classes"),
    ("no class_ids", _drop("class_ids"), "class_ids"),
    ("class_ids short", _set(["a"], "class_ids"), "class_ids"),
    ("class_ids not str", _set([1, 2, 3], "class_ids"), "class_ids"),
    ("class_names dict", _set({"a": 1}, "class_names"), "class_names"),
    ("no resolution", _drop("resolution"), "resolution"),
    ("resolution negative", _set(-8, "resolution"), "resolution"),
    ("no splits", _drop("splits"), "splits"),
    ("splits list", _set([1], "splits"), "splits"),
    ("splits empty", _set({}, "splits"), "splits"),
    ("split not object", _set(5, "splits", "train"), "splits.train"),
    ("split bad name", lambda m: m["splits"].update({"../x": m["splits"].pop("val")}), "splits"),
    ("no count", lambda m: m["splits"]["train"].pop("count"), "splits.train.count"),
    ("count str", _set("x", "splits", "train", "count"), "splits.train.count"),
    ("count negative", _set(-1, "splits", "val", "count"), "splits.val.count"),
    ("class_counts short", _set([1], "splits", "train", "class_counts"),
     "splits.train.class_counts"),
    ("class_counts sum", _set([1, 1, 1], "splits", "train", "class_counts"),
     "splits.train.class_counts"),
    ("images not str", _set(3, "splits", "train", "images"), "splits.train.images"),
    ("images escapes", _set("../../etc/passwd", "splits", "train", "images"),
     "splits.train.images"),
    ("labels unlisted", _set("other.npy", "splits", "val", "labels"), "splits.val.labels"),
    ("no files", _drop("files"), "files"),
    ("files list", _set([], "files"), "files"),
    ("file facts str", _set("x", "files", "train_images.npy"), "train_images.npy"),
    ("no sha256", lambda m: m["files"]["val_images.npy"].pop("sha256"), "sha256"),
    ("sha256 int", _set(5, "files", "train_images.npy", "sha256"), "sha256"),
    ("sha256 short", _set("abc", "files", "train_images.npy", "sha256"), "sha256"),
    ("shape str", _set("big", "files", "train_images.npy", "shape"), "shape"),
    ("shape of floats", _set([20.0, 8, 8, 3], "files", "train_images.npy", "shape"), "shape"),
    ("shape vs count", _set([21, 8, 8, 3], "files", "train_images.npy", "shape"), "shape"),
    ("dtype int", _set(8, "files", "train_labels.npy", "dtype"), "dtype"),
    ("dtype other", _set("float32", "files", "train_images.npy", "dtype"), "dtype"),
    ("bytes str", _set("many", "files", "val_labels.npy", "bytes"), "bytes"),
    ("info list", _set([1], "info"), "info"),
    ("skipped str", _set("none", "skipped"), "skipped"),
    ("warnings of ints", _set([1], "warnings"), "warnings"),
]


@pytest.mark.parametrize("change,field", [(c, f) for _, c, f in META_DAMAGE],
                         ids=[name for name, _, _ in META_DAMAGE])
def test_malformed_meta_is_one_clear_error_naming_the_field(
        packed: Path, change: Callable[[dict[str, Any]], Any], field: str) -> None:
    edit_meta(packed, change)
    message = refused(packed, "meta.json", field)
    assert "unknown data source" not in message and "Error:" not in message, message
    problems = verify(packed)
    assert len(problems) == 1 and field in problems[0], problems


@pytest.mark.parametrize("text,expect", [
    ("", "not valid JSON"),
    ('{"format": "hundred-packed", "splits": ', "not valid JSON"),
    ("\xff\xfe garbage", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("null", "not a JSON object"),
    ('{"format": "hundred-packed", "format_version": 1, "format_version": NaN}', "format_version"),
])
def test_garbled_meta_json_is_one_clear_error(packed: Path, text: str, expect: str) -> None:
    (packed / "meta.json").write_bytes(text.encode("latin-1"))
    message = refused(packed, "meta.json", expect)
    assert "unknown data source" not in message


def test_truncated_meta_json(packed: Path) -> None:
    text = (packed / "meta.json").read_text()
    (packed / "meta.json").write_text(text[: len(text) // 2])
    refused(packed, "meta.json", "not valid JSON", "line")


def test_meta_json_that_is_a_directory(packed: Path) -> None:
    (packed / "meta.json").unlink()
    (packed / "meta.json").mkdir()
    refused(packed, "meta.json")


def test_newer_format_version_asks_for_an_upgrade(packed: Path) -> None:
    edit_meta(packed, _set(99, "format_version"))
    refused(packed, "newer hundred")


def test_cli_run_names_the_meta_field(packed: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    edit_meta(packed, _set("3", "num_classes"))
    line = cli_error(capsys, run_classify(packed, tmp_path / "runs"))
    assert "num_classes" in line and "meta.json" in line


def test_info_names_the_meta_field(packed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_meta(packed, _drop("class_names"))
    with pytest.raises(HundredError, match="class_names"):
        print_info(packed)
    assert main(["data", "info", str(packed)]) == 2
    assert "class_names" in capsys.readouterr().err


# ------------------------------------------------------------------- not a packed dataset


def test_directory_without_meta_json(packed: Path) -> None:
    (packed / "meta.json").unlink()
    refused(packed, f"no meta.json in {packed}", "not a packed dataset", "hundred data pack")
    with pytest.raises(HundredError, match="no meta.json"):
        load_packed(packed)


def test_image_folder_is_pointed_at_packing(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory(["a", "b"], train=1, val=1)
    refused(root, "no meta.json", f"imagefolder:{root}")


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "in100-64"
    message = refused(missing, f"{missing} does not exist")
    assert "unknown data source" not in message
    refused(str(missing), f"{missing} does not exist")


def test_a_file_is_not_a_packed_dataset(tmp_path: Path) -> None:
    file = tmp_path / "data.npy"
    np.save(file, np.zeros(3))
    refused(file, str(file), "not a directory")


def test_unknown_bare_name_says_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    refused("synth1000", "synth1000 does not exist", "not a data source", "synth100")
    refused("cifar:/data", "does not exist", "'cifar' is not a data source")


def test_sources_still_win_over_plain_folders_of_that_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synth100").mkdir()  # a stray folder named like a source, no meta.json
    data = load("synth100", classes=2, train_per_class=2, val_per_class=1, res=8)
    assert data.num_classes == 2


def test_packed_directory_takes_no_options(packed: Path) -> None:
    with pytest.raises(HundredError, match="no source options"):
        load(packed, classes=2)


def test_cli_run_on_missing_meta_and_missing_path(packed: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (packed / "meta.json").unlink()
    line = cli_error(capsys, run_classify(packed, tmp_path / "runs"))
    assert f"no meta.json in {packed}" in line and "unknown data source" not in line
    missing = tmp_path / "missing"
    line = cli_error(capsys, run_classify(missing, tmp_path / "runs"))
    assert f"{missing} does not exist" in line


# ------------------------------------------------------------------------ intact data loads


def test_intact_pack_loads_and_verifies(packed: Path) -> None:
    data = load(packed)
    assert verify(packed) == []
    original = toy()
    for name in ("train", "val"):
        np.testing.assert_array_equal(data.arrays(name).images, original.arrays(name).images)
        np.testing.assert_array_equal(data.arrays(name).labels, original.arrays(name).labels)
    assert len(load_selection(str(packed), "0-1").arrays("train")) == 14


# ------------------------------------------------------------ splits the runs cannot use


def test_pack_without_a_val_split_is_a_clean_error(packed: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """meta.json and the directory agree (val removed from both): the run refuses before
    training, with one line, and the error is still a KeyError for library callers."""
    def drop_val(meta: dict[str, Any]) -> None:
        meta["splits"].pop("val")
        meta["files"].pop("val_images.npy")
        meta["files"].pop("val_labels.npy")

    edit_meta(packed, drop_val)
    (packed / "val_images.npy").unlink()
    (packed / "val_labels.npy").unlink()
    data = load(packed)
    with pytest.raises(KeyError):
        data.arrays("val")
    with pytest.raises(HundredError, match="no split 'val'"):
        data.arrays("val")
    line = cli_error(capsys, run_classify(packed, tmp_path / "runs"))
    assert "no split 'val'" in line


def test_image_folder_source_must_be_packed_first(tree_factory: Callable[..., Path],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tree_factory(["a", "b"], train=1, val=1)
    refused(f"imagefolder:{root}", "pack it first", "hundred data pack")
    with pytest.raises(TypeError):  # still a TypeError for library callers
        load(f"imagefolder:{root}")
    line = cli_error(capsys, run_classify(f"imagefolder:{root}", tmp_path / "runs"))
    assert "pack it first" in line
