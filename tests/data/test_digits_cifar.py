"""The digits and CIFAR sources, and the safe unpickler that guards every CIFAR file.

CIFAR tests write small fake files in the official format (pickled dicts with bytes keys,
protocol 2, rows of 3072 channel-first bytes), so nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import tarfile
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hundred.data.safe_pickle import safe_load_pickle
from hundred.data.sources import open_source
from hundred.data.sources.cifar import open_cifar10, open_cifar100
from hundred.data.sources.digits import open_digits
from hundred.errors import HundredError

# ----------------------------------------------------------------------------- safe pickle


class _Reduce:
    """Pickles as ``func(*args)``: the shape of every pickle exploit."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


class _Custom:
    """An ordinary user class: harmless here, but not plain data."""

    def __init__(self) -> None:
        self.value = 1


def _load(data: bytes, what: str = "test.pkl") -> Any:
    return safe_load_pickle(io.BytesIO(data), what=what)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file that an exploit would create; it must never exist."""
    return tmp_path / f"pwned_{uuid.uuid4().hex}"


def _exploits(marker: Path) -> dict[str, Any]:
    touch = f"touch {marker}"
    return {
        "os.system": _Reduce(os.system, (touch,)),
        "eval": _Reduce(eval, (f"__import__('os').system({touch!r})",)),
        "exec": _Reduce(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess": _Reduce(subprocess.call, (["touch", str(marker)],)),
        # hidden one level down inside a legitimate-looking batch
        "nested": {b"data": np.zeros((1, 3072), np.uint8),
                   b"labels": [_Reduce(os.system, (touch,))]},
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess", "nested"])
def test_exploits_are_refused_without_running(marker: Path, kind: str, protocol: int) -> None:
    data = pickle.dumps(_exploits(marker)[kind], protocol=protocol)
    with pytest.raises(HundredError, match=r"refusing to unpickle evil\.pkl") as info:
        _load(data, what="evil.pkl")
    assert "system" in str(info.value) or "eval" in str(info.value) \
        or "exec" in str(info.value) or "call" in str(info.value)
    assert not marker.exists()


def test_refusal_names_the_global(marker: Path) -> None:
    with pytest.raises(HundredError, match=r"(posix|os|nt)\.system"):
        _load(pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2))
    with pytest.raises(HundredError, match=r"builtins\.eval"):
        _load(pickle.dumps(_Reduce(eval, ("1",)), protocol=4))
    assert not marker.exists()


@pytest.mark.parametrize("raw", [
    # hand-written protocol 0, the way exploits are usually shipped
    b"cos\nsystem\n(S'touch {m}'\ntR.",
    b"c__builtin__\neval\n(S'__import__(\"os\").system(\"touch {m}\")'\ntR.",
    # getattr(__import__('os'), 'system')('touch ...')
    b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR(S'touch {m}'\ntR.",
    # a numpy helper that exec()s a string: numpy globals are allow-listed one by one
    b"cnumpy.testing._private.utils\nrunstring\n(S'open(\"{m}\", \"w\")'\n(dtR.",
    b"cnumpy\nload\n(S'{m}'\ntR.",
    b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\nc__builtin__\nobject\nNtR.",
])
def test_handwritten_exploits_are_refused(marker: Path, raw: bytes) -> None:
    with pytest.raises(HundredError, match="refusing to unpickle"):
        _load(raw.replace(b"{m}", str(marker).encode()))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("obj", [OrderedDict(a=1), _Custom(), Path("/tmp"), range(3),
                                 np.ma.masked_array([1, 2], mask=[0, 1])],
                         ids=["OrderedDict", "custom", "Path", "range", "masked"])
def test_non_data_classes_are_refused(obj: Any, protocol: int) -> None:
    with pytest.raises(HundredError, match="refusing to unpickle"):
        _load(pickle.dumps(obj, protocol=protocol))


def test_codecs_encode_only_for_latin1() -> None:
    assert _load(b"c_codecs\nencode\n(Vab\nVlatin1\ntR.") == b"ab"
    with pytest.raises(HundredError, match="latin-1"):
        _load(b"c_codecs\nencode\n(Vab\nVrot13\ntR.")


def test_malformed_pickles_are_clear_errors() -> None:
    with pytest.raises(HundredError, match="cannot unpickle broken.pkl"):
        _load(pickle.dumps({b"a": [1, 2, 3]}, protocol=2)[:-5], what="broken.pkl")
    with pytest.raises(HundredError, match="cannot unpickle"):
        _load(b"not a pickle at all")


_plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4) | st.integers(), inner,
                      max_size=4)
    | st.frozensets(st.integers() | st.binary(max_size=4), max_size=4)
    | st.sets(st.text(max_size=4), max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(obj=_plain, protocol=st.integers(0, 5))
def test_plain_containers_round_trip(obj: Any, protocol: int) -> None:
    assert _load(pickle.dumps(obj, protocol=protocol)) == obj


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_arrays_and_scalars_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        b"u8": rng.integers(0, 256, (5, 3072), dtype=np.uint8),
        b"f32": rng.standard_normal((3, 4)).astype(np.float32),
        b"f64_fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        b"strided": np.arange(20, dtype=np.int64)[::3],
        b"bool": np.array([True, False]),
        b"zero_d": np.array(7, dtype=np.int16),
        b"empty": np.zeros((0, 3), np.uint8),
        b"big_endian": np.arange(4, dtype=">i4"),
    }
    scalars = {b"f32": np.float32(1.5), b"i64": np.int64(-3)}
    doc = {b"arrays": arrays, b"scalars": scalars, b"misc": [bytearray(b"x"), b"", {1, 2}]}
    data = pickle.dumps(doc, protocol=protocol)
    loaded, reference = _load(data), pickle.loads(data)  # the same result as plain pickle
    for key, array in arrays.items():
        # (numpy itself turns '>i4' into native int32 under protocols < 5)
        assert loaded[b"arrays"][key].dtype == reference[b"arrays"][key].dtype
        assert loaded[b"arrays"][key].shape == array.shape
        np.testing.assert_array_equal(loaded[b"arrays"][key], array)
    for key, scalar in scalars.items():
        assert type(loaded[b"scalars"][key]) is type(scalar) and loaded[b"scalars"][key] == scalar
    assert loaded[b"misc"] == [bytearray(b"x"), b"", {1, 2}]


def test_python2_style_pickle_with_numpy_1_names() -> None:
    """What the official CIFAR files look like: Python 2 ``str`` and ``numpy.core`` names."""
    py2 = (b"\x80\x02}(U\x04data"
           b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
           b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
           b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
           b"\x89U\x06\x00\x01\x02\x03\x04\x05tb"
           b"U\x06labels](K\x01K\x02eu.")
    loaded = _load(py2)
    assert loaded[b"labels"] == [1, 2]
    np.testing.assert_array_equal(loaded[b"data"], np.arange(6, dtype=np.uint8).reshape(2, 3))


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Any:
    return open_digits(None)


def test_digits_shapes_and_values(digits: Any) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.class_ids == [str(i) for i in range(10)]
    assert digits.class_names[0] == "zero" and digits.class_names[9] == "nine"
    assert digits.info == {"res": 32, "seed": 0, "val_fraction": 0.25,
                           "origin": "sklearn.datasets.load_digits"}
    train, val = digits.arrays("train"), digits.arrays("val")
    assert len(train) + len(val) == 1797 and len(val) == 450
    for split in (train, val):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
        assert split.labels.dtype == np.int64 and set(split.labels.tolist()) == set(range(10))
        assert (split.images[..., 0] == split.images[..., 1]).all()
        assert (split.images[..., 0] == split.images[..., 2]).all()
        assert split.images.min() == 0 and split.images.max() > 200


def test_digits_split_is_stratified(digits: Any) -> None:
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    train = np.bincount(digits.arrays("train").labels, minlength=10)
    val = np.bincount(digits.arrays("val").labels, minlength=10)
    np.testing.assert_array_equal(train + val, totals)
    assert (np.abs(val - 0.25 * totals) <= 1).all()


def test_digits_native_resolution_is_an_exact_partition() -> None:
    from sklearn.datasets import load_digits

    dataset = open_digits(None, res=8)
    images = np.concatenate([dataset.arrays("train").images, dataset.arrays("val").images])
    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    got = images[..., 0].reshape(len(images), -1)
    want = expected.reshape(len(expected), -1)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])


def test_digits_split_depends_only_on_seed(digits: Any) -> None:
    again = open_digits(None)
    other = open_digits(None, seed=1)
    for split in ("train", "val"):
        np.testing.assert_array_equal(digits.arrays(split).images, again.arrays(split).images)
        np.testing.assert_array_equal(digits.arrays(split).labels, again.arrays(split).labels)
    assert not np.array_equal(digits.arrays("val").images, other.arrays("val").images)


def test_digits_through_registry_converts_string_options() -> None:
    dataset = open_source("digits", res="16", val_fraction="0.5", seed="3")
    assert dataset.arrays("train").images.shape[1:] == (16, 16, 3)
    assert dataset.info == {"res": 16, "seed": 3, "val_fraction": 0.5,
                            "origin": "sklearn.datasets.load_digits"}
    assert abs(len(dataset.arrays("val")) - 1797 / 2) <= 1


@pytest.mark.parametrize("argument, options, message", [
    ("some/path", {}, "takes no argument"),
    (None, {"res": 0}, "res=0"),
    (None, {"res": 5000}, "res=5000"),
    (None, {"val_fraction": 0.0}, "val_fraction"),
    (None, {"val_fraction": 1.5}, "val_fraction"),
    (None, {"val_fraction": 0.001}, "val_fraction"),  # fewer val samples than classes
    (None, {"seed": -1}, "seed=-1"),
])
def test_digits_rejects_bad_options(argument: str | None, options: dict, message: str) -> None:
    with pytest.raises(HundredError, match=message):
        open_digits(argument, **options)


def test_digits_unknown_option_via_registry() -> None:
    with pytest.raises(HundredError, match="no option 'colour'"):
        open_source("digits", colour="red")


# ----------------------------------------------------------------------------- CIFAR fakes

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


def _pattern(n: int, offset: int) -> np.ndarray:
    """Distinct HWC images: every pixel, row, column and channel is told apart."""
    i, h, w, c = np.indices((n, 32, 32, 3))
    return ((i * 37 + h * 7 + w * 3 + c * 101 + offset) % 256).astype(np.uint8)


def _official_rows(images: np.ndarray) -> np.ndarray:
    """The official layout, built plane by plane: 1024 red, then green, then blue bytes."""
    rows = np.empty((len(images), 3072), np.uint8)
    for channel in range(3):
        plane = images[..., channel].reshape(len(images), 1024)
        rows[:, channel * 1024:(channel + 1) * 1024] = plane
    return rows


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)  # as the originals


def _make_cifar10(root: Path, per_batch: int = 4, test: int = 6) -> dict[str, Any]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images, train_labels = [], []
    for b in range(1, 6):
        images = _pattern(per_batch, offset=b)
        labels = [(b + k) % 10 for k in range(per_batch)]
        _dump(folder / f"data_batch_{b}", {b"batch_label": b"training batch %d of 5" % b,
                                           b"labels": labels, b"data": _official_rows(images),
                                           b"filenames": [b"x.png"] * per_batch})
        train_images.append(images)
        train_labels += labels
    test_images, test_labels = _pattern(test, offset=99), [k % 10 for k in range(test)]
    _dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
                                  b"data": _official_rows(test_images)})
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                    b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return {"folder": folder, "train": np.concatenate(train_images), "train_labels": train_labels,
            "val": test_images, "val_labels": test_labels}


def _make_cifar100(root: Path) -> dict[str, Any]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: dict[str, Any] = {"folder": folder}
    for member, n, offset in (("train", 20, 5), ("test", 8, 50)):
        images = _pattern(n, offset)
        fine = [(offset + 13 * k) % 100 for k in range(n)]
        coarse = [f % 20 for f in fine]
        _dump(folder / member, {b"filenames": [b"y.png"] * n, b"batch_label": member.encode(),
                                b"fine_labels": fine, b"coarse_labels": coarse,
                                b"data": _official_rows(images)})
        out[member] = (images, fine, coarse)
    _dump(folder / "meta", {b"fine_label_names": [b"fine_%d" % i for i in range(100)],
                            b"coarse_label_names": [b"coarse_%d" % i for i in range(20)]})
    return out


def _tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def cifar10(tmp_path: Path) -> dict[str, Any]:
    return _make_cifar10(tmp_path / "data")


def test_cifar_pixel_layout_is_channels_first(cifar10: dict[str, Any]) -> None:
    """Spot-check the layout against raw row offsets, independent of any reshape."""
    row = _official_rows(cifar10["val"][:1])[0]
    image = open_cifar10(str(cifar10["folder"])).arrays("val").images[0]
    assert image[0, 0].tolist() == [row[0], row[1024], row[2048]]
    assert image[0, 1, 0] == row[1]  # the column index runs fastest within a plane
    assert image[1, 0, 0] == row[32]
    assert image[31, 31, 2] == row[3071]


@pytest.mark.parametrize("where", ["folder", "parent", "archive", "parent_of_archive"])
def test_cifar10_round_trips(cifar10: dict[str, Any], tmp_path: Path, where: str) -> None:
    folder: Path = cifar10["folder"]
    if where == "folder":
        path = folder
    elif where == "parent":
        path = folder.parent
    else:
        in_parent = where == "parent_of_archive"
        target = tmp_path / "dl" / "cifar-10-python.tar.gz" if in_parent else tmp_path / "my.tar.gz"
        target.parent.mkdir(exist_ok=True)
        archive = _tar(folder, target)
        shutil.rmtree(folder)  # from here on only the archive holds the data
        path = archive.parent if in_parent else archive
    dataset = open_cifar10(str(path))
    assert dataset.name == "cifar10"
    assert dataset.class_ids == CIFAR10_NAMES and dataset.class_names == CIFAR10_NAMES
    train, val = dataset.arrays("train"), dataset.arrays("val")
    np.testing.assert_array_equal(train.images, cifar10["train"])
    np.testing.assert_array_equal(val.images, cifar10["val"])
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == cifar10["train_labels"]
    assert val.labels.tolist() == cifar10["val_labels"]
    assert train.images.flags["C_CONTIGUOUS"] and val.images.flags["C_CONTIGUOUS"]
    if where not in ("folder", "parent"):  # read in memory, never extracted
        assert not list(tmp_path.rglob("data_batch_1"))


@pytest.mark.parametrize("label", ["fine", "coarse"])
@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar100_round_trips(tmp_path: Path, label: str, as_archive: bool) -> None:
    made = _make_cifar100(tmp_path / "data")
    path = made["folder"]
    if as_archive:
        path = _tar(path, tmp_path / "cifar-100-python.tar.gz")
    dataset = open_cifar100(str(path), label=label)
    assert dataset.name == ("cifar100" if label == "fine" else "cifar100-coarse")
    assert dataset.num_classes == (100 if label == "fine" else 20)
    assert dataset.class_ids[3] == f"{label}_3" and dataset.class_ids == dataset.class_names
    assert dataset.info["label"] == label
    column = 1 if label == "fine" else 2
    for split, member in (("train", "train"), ("val", "test")):
        np.testing.assert_array_equal(dataset.arrays(split).images, made[member][0])
        assert dataset.arrays(split).labels.tolist() == made[member][column]


def test_cifar_through_registry(cifar10: dict[str, Any], tmp_path: Path) -> None:
    dataset = open_source("cifar10:" + str(cifar10["folder"].parent))
    assert len(dataset.arrays("train")) == 20 and len(dataset.arrays("val")) == 6
    made = _make_cifar100(tmp_path / "c100")
    assert open_source("cifar100:" + str(made["folder"]), label="coarse").num_classes == 20
    with pytest.raises(HundredError, match="label='medium'"):
        open_source("cifar100:" + str(made["folder"]), label="medium")
    with pytest.raises(HundredError, match="no option 'label'"):
        open_source("cifar10:" + str(cifar10["folder"]), label="fine")


def test_cifar_missing_path_and_argument(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(HundredError, match=f"no such file or folder {missing}.*cifar-10-batches"):
        open_source(f"cifar10:{missing}")
    with pytest.raises(HundredError, match=r"needs a path: cifar100:PATH"):
        open_source("cifar100")
    with pytest.raises(HundredError, match="files missing in .*data_batch_1.*batches.meta"):
        open_cifar10(str(tmp_path))  # an existing folder without the files


def test_cifar_missing_member(cifar10: dict[str, Any], tmp_path: Path) -> None:
    (cifar10["folder"] / "data_batch_3").unlink()
    with pytest.raises(HundredError, match="missing in .*: data_batch_3;"):
        open_cifar10(str(cifar10["folder"]))
    archive = _tar(cifar10["folder"], tmp_path / "c.tar.gz")
    with pytest.raises(HundredError, match=r"missing in .*c\.tar\.gz: data_batch_3;"):
        open_cifar10(str(archive))


def _rewrite(path: Path, **changes: Any) -> None:
    with open(path, "rb") as handle:
        content = pickle.load(handle, encoding="bytes")
    content.update({key.encode(): value for key, value in changes.items()})
    _dump(path, content)


@pytest.mark.parametrize("change, message", [
    ({"data": np.zeros((4, 3000), np.uint8)},
     r"data_batch_2: expected b'data' as a uint8 array of shape \(N, 3072\).*\(4, 3000\)"),
    ({"data": np.zeros((4, 3072), np.float32)}, r"data_batch_2: .*got float32"),
    ({"data": [1, 2, 3]}, r"data_batch_2: .*got list"),
    ({"labels": [0, 1, 2]}, r"data_batch_2: expected b'labels' to hold 4 integer labels"),
    ({"labels": [0, 1, 2, 10]}, r"data_batch_2: labels in b'labels' must lie in 0\.\.9.*0\.\.10"),
    ({"labels": [b"a", b"b", b"c", b"d"]}, r"data_batch_2: expected b'labels' to hold 4 integer"),
])
def test_cifar_bad_batches_name_the_file(
    cifar10: dict[str, Any], change: dict, message: str
) -> None:
    _rewrite(cifar10["folder"] / "data_batch_2", **change)
    with pytest.raises(HundredError, match=message):
        open_cifar10(str(cifar10["folder"]))


def test_cifar_bad_meta_and_non_archive(cifar10: dict[str, Any], tmp_path: Path) -> None:
    _dump(cifar10["folder"] / "batches.meta", {b"names": []})
    with pytest.raises(HundredError, match=r"batches\.meta: expected a dict with key b'label_n"):
        open_cifar10(str(cifar10["folder"]))
    not_tar = tmp_path / "cifar.tar.gz"
    not_tar.write_text("hello")
    with pytest.raises(HundredError, match="cannot read .*cifar.tar.gz as a tar archive"):
        open_cifar10(str(not_tar))


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar_malicious_batch_is_refused(cifar10: dict[str, Any], tmp_path: Path,
                                          marker: Path, as_archive: bool) -> None:
    _dump(cifar10["folder"] / "data_batch_4", _exploits(marker)["nested"])
    path = _tar(cifar10["folder"], tmp_path / "evil.tar.gz") if as_archive else cifar10["folder"]
    with pytest.raises(HundredError, match=r"refusing to unpickle .*data_batch_4.*system"):
        open_cifar10(str(path))
    assert not marker.exists()
