"""The batch loader: order, coverage, sharding, resume, residency, prefetch shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hundred.data.augment import build_augment
from hundred.data.dataset import ArraySplit, class_subset_indices
from hundred.data.loader import PREFETCH_THREAD_NAME, BatchLoader
from hundred.errors import HundredError

N, SIZE = 103, 12


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """Random images; labels are 10 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, N).astype(np.int64)
    return images, labels


@pytest.fixture(scope="module")
def numbered(arrays: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The same images, labelled by their own index, so a batch says which samples it holds."""
    return arrays[0], np.arange(N, dtype=np.int64)


def _collect(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b))


def _no_prefetch_thread(wait_s: float = 2.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not any(t.name == PREFETCH_THREAD_NAME and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("resident", [True, False])
def test_same_seed_same_batches_other_seed_or_epoch_differs(arrays, resident: bool) -> None:
    def make(seed: int) -> BatchLoader:
        return BatchLoader(arrays, 16, seed=seed, augment="rrc-flip-jitter", out_size=10, resident=resident)

    first = _collect(make(1))
    assert _same(first, _collect(make(1)))
    assert not torch.equal(first[0][0], _collect(make(2))[0][0])
    other_epoch = make(1)
    other_epoch.set_epoch(1)
    assert not torch.equal(first[0][1], _collect(other_epoch)[0][1])


def test_shapes_dtypes_and_values(arrays) -> None:
    loader = BatchLoader(arrays, 16, augment="crop-flip", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for images, labels in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
        assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
        assert images.min() >= -1.0 and images.max() <= 1.0  # (x - 0.5) / 0.5 on [0, 1]
    assert len(loader) == 7 and images.shape[0] == N - 6 * 16


@pytest.mark.parametrize("resident", [True, False])
def test_every_sample_exactly_once_and_pixels_match(numbered, resident: bool) -> None:
    images, _ = numbered
    loader = BatchLoader(numbered, 10, seed=3, resident=resident)
    normalise = build_augment("none", SIZE)
    seen = []
    for batch, labels in loader:
        seen.append(labels.numpy())
        assert torch.equal(batch, normalise(torch.from_numpy(images[labels.numpy()])))
    seen_all = np.concatenate(seen)
    assert sorted(seen_all) == list(range(N))
    assert not np.array_equal(seen_all, np.arange(N))  # shuffled


def test_no_shuffle_keeps_order_and_drop_last(numbered) -> None:
    loader = BatchLoader(numbered, 10, shuffle=False, drop_last=True)
    labels = np.concatenate([labels.numpy() for _, labels in loader])
    assert len(loader) == 10 and np.array_equal(labels, np.arange(100))


def test_class_subset_yields_exactly_those_classes(arrays) -> None:
    images, labels = arrays
    subset = class_subset_indices(labels, [1, 3, 7])
    for resident in (True, False):
        loader = BatchLoader(ArraySplit(images, labels), 8, indices=subset, resident=resident)
        seen = np.concatenate([batch_labels.numpy() for _, batch_labels in loader])
        assert set(seen) <= {1, 3, 7}
        assert sorted(seen) == sorted(labels[subset])
        assert sorted(np.concatenate([loader.epoch_indices(0)])) == sorted(subset)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(numbered, world_size: int) -> None:
    shards = []
    for rank in range(world_size):
        loader = BatchLoader(numbered, 8, seed=5, rank=rank, world_size=world_size)
        shards.append(np.concatenate([labels.numpy() for _, labels in loader]))
    sizes = {len(shard) for shard in shards}
    assert sizes == {-(-N // world_size)}  # equal, padded by wrapping around
    together = np.concatenate(shards)
    assert set(together) == set(range(N))
    assert len(together) - N == (-N) % world_size  # only the padding repeats

    dropped = [
        np.concatenate([labels.numpy() for _, labels in BatchLoader(
            numbered, 1, seed=5, rank=rank, world_size=world_size, drop_last=True)])
        for rank in range(world_size)
    ]
    together = np.concatenate(dropped)
    assert len(set(together)) == len(together) == (N // world_size) * world_size  # disjoint


def test_ranks_get_different_augmentation(arrays) -> None:
    images = np.repeat(arrays[0][:1], 8, axis=0)  # identical images: only augmentation differs
    labels = np.zeros(8, np.int64)
    loaders = [BatchLoader((images, labels), 4, rank=r, world_size=2, augment="rrc-flip") for r in (0, 1)]
    out = [next(iter(loader))[0] for loader in loaders]
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("resident", [True, False])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(arrays, resident: bool) -> None:
    def make() -> BatchLoader:
        return BatchLoader(arrays, 8, seed=11, augment="rrc-flip-jitter", out_size=10, resident=resident)

    reference = make()
    reference.set_epoch(2)
    full = _collect(reference)
    assert reference.state_dict()["epoch"] == 3 and reference.state_dict()["batch"] == 0

    interrupted = make()
    interrupted.set_epoch(2)
    for step, _ in enumerate(interrupted):
        if step == 4:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (2, 5)

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calls this every epoch: it must keep the position
    assert _same(_collect(resumed), full[5:])
    assert (resumed.epoch, resumed.state_dict()["batch"]) == (3, 0)


def test_state_from_another_selection_is_refused(arrays) -> None:
    state = BatchLoader(arrays, 8).state_dict()
    with pytest.raises(HundredError, match="batch_size"):
        BatchLoader(arrays, 16).load_state_dict(state)


def test_epochs_advance_and_seek(numbered) -> None:
    loader = BatchLoader(numbered, 10, seed=1)
    epoch0 = np.concatenate([labels.numpy() for _, labels in loader])
    epoch1 = np.concatenate([labels.numpy() for _, labels in loader])
    assert loader.epoch == 2 and not np.array_equal(epoch0, epoch1)
    loader.seek(0, 3)
    assert np.array_equal(np.concatenate([labels.numpy() for _, labels in loader]), epoch0[30:])
    assert np.array_equal(loader.epoch_indices(1), epoch1)


@pytest.mark.parametrize("resident", [True, False])
def test_memmap_reads_like_memory(tmp_path: Path, arrays, resident: bool) -> None:
    images, labels = arrays
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    subset = np.random.default_rng(1).permutation(class_subset_indices(labels, [0, 2, 4, 6]))  # unsorted
    kwargs = dict(seed=4, augment="crop-flip", indices=subset)
    in_memory = _collect(BatchLoader((images, labels), 8, **kwargs))
    from_disk = BatchLoader((mapped, labels), 8, resident=resident, **kwargs)
    assert from_disk.resident is resident
    assert _same(in_memory, _collect(from_disk))


def test_memmap_over_budget_streams(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert not BatchLoader((mapped, labels), 8, device_budget_bytes=1000).resident
    assert BatchLoader((mapped, labels), 8, device_budget_bytes=images.nbytes).resident


def test_prefetch_thread_stops_on_break_exception_and_close(arrays) -> None:
    loader = BatchLoader(arrays, 4, resident=False, prefetch=2)
    for step, _ in enumerate(loader):
        if step == 1:
            break
    assert _no_prefetch_thread()

    with pytest.raises(KeyError):
        for _ in loader:
            raise KeyError("boom")
    assert _no_prefetch_thread()

    iterator = iter(loader)
    next(iterator)
    assert any(t.name == PREFETCH_THREAD_NAME for t in threading.enumerate())
    iterator.close()
    assert _no_prefetch_thread()


def test_prefetch_errors_reach_the_consumer(arrays, monkeypatch) -> None:
    loader = BatchLoader(arrays, 4, resident=False)

    def broken(rows: np.ndarray):
        raise OSError("disk gone")

    monkeypatch.setattr(loader, "_gather", broken)
    with pytest.raises(OSError, match="disk gone"):
        next(iter(loader))
    assert _no_prefetch_thread()


def test_bad_arguments_are_clear(arrays) -> None:
    with pytest.raises(HundredError, match="rank"):
        BatchLoader(arrays, 4, rank=2, world_size=2)
    with pytest.raises(HundredError, match="indices"):
        BatchLoader(arrays, 4, indices=[0, N])
    with pytest.raises(HundredError, match="no batch"):
        BatchLoader(arrays, 200, drop_last=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False])
def test_cuda_batches(arrays, resident: bool) -> None:
    loader = BatchLoader(arrays, 16, device="cuda", augment="rrc-flip", resident=resident, seed=2)
    batches = _collect(loader)
    assert batches[0][0].device.type == "cuda" and batches[0][1].device.type == "cuda"
    cpu_labels = [labels for _, labels in BatchLoader(arrays, 16, seed=2)]
    assert all(torch.equal(a[1].cpu(), b) for a, b in zip(batches, cpu_labels))


# --------------------------------------------------------------------------- multiple views


ViewBatches = list[tuple[list[torch.Tensor], torch.Tensor]]


def _collect_views(loader: BatchLoader) -> ViewBatches:
    batches = []
    for views, labels in loader:
        assert isinstance(views, list) and len(views) == loader.num_views
        batches.append(([view.clone() for view in views], labels.clone()))
    return batches


def _same_views(a: ViewBatches, b: ViewBatches) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)) and torch.equal(i, j)
        for (x, i), (y, j) in zip(a, b)
    )


@pytest.mark.parametrize("resident", [True, False])
def test_two_views_differ_and_view_zero_is_the_single_view_batch(arrays, resident: bool) -> None:
    kwargs = dict(seed=7, augment="crop-flip", resident=resident)
    single = _collect(BatchLoader(arrays, 16, **kwargs))
    loader = BatchLoader(arrays, 16, views=2, **kwargs)
    assert loader.num_views == 2 and "2 views" in repr(loader)
    multi = _collect_views(loader)
    assert len(multi) == len(single) == len(loader)
    for (views, labels), (images, single_labels) in zip(multi, single):
        assert torch.equal(labels, single_labels)  # same samples, same order
        assert all(view.shape == images.shape and view.dtype == torch.float32 for view in views)
        assert torch.equal(views[0], images)
        assert not torch.equal(views[0], views[1])  # independent draws


def test_single_view_is_unchanged(arrays) -> None:
    loader = BatchLoader(arrays, 16, seed=7, augment="crop-flip", views=1)
    assert loader.num_views == 1 and "views" not in repr(loader)
    images, _ = next(iter(loader))
    assert isinstance(images, torch.Tensor)
    assert torch.equal(images, next(iter(BatchLoader(arrays, 16, seed=7, augment="crop-flip")))[0])


def test_views_are_a_function_of_seed_and_epoch(arrays) -> None:
    def make(epoch: int = 0) -> BatchLoader:
        return BatchLoader(
            arrays, 8, indices=range(32), seed=3, augment="rrc-flip-jitter", out_size=10, views=3,
            epoch=epoch,
        )

    first = _collect_views(make())
    assert _same_views(first, _collect_views(make()))
    assert all(not torch.equal(first[0][0][0], first[0][0][k]) for k in (1, 2))
    other_epoch = _collect_views(make(epoch=1))
    assert all(not torch.equal(a, b) for a, b in zip(first[0][0], other_epoch[0][0]))


@pytest.mark.parametrize("resident", [True, False])
def test_resume_mid_epoch_reproduces_the_remaining_views(arrays, resident: bool) -> None:
    def make() -> BatchLoader:
        return BatchLoader(
            arrays, 8, seed=11, augment="rrc-flip", out_size=10, views=2, resident=resident
        )

    reference = make()
    reference.set_epoch(1)
    full = _collect_views(reference)

    interrupted = make()
    interrupted.set_epoch(1)
    for step, _ in enumerate(interrupted):
        if step == 3:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 4)

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert _same_views(_collect_views(resumed), full[4:])


def test_view_augments_build_each_view_with_its_own_spec(numbered) -> None:
    images, _ = numbered
    loader = BatchLoader(numbered, 10, seed=2, view_augments=["none", "crop-flip"])
    assert loader.num_views == 2
    single = BatchLoader(numbered, 10, seed=2, augment="crop-flip", views=2)
    normalise = build_augment("none", SIZE)
    for (views, labels), (crop_views, crop_labels) in zip(loader, single):
        assert torch.equal(labels, crop_labels)
        assert torch.equal(views[0], normalise(torch.from_numpy(images[labels.numpy()])))  # "none"
        assert torch.equal(views[1], crop_views[1])  # "crop-flip" with view 1's seed
        assert not torch.equal(views[0], views[1])
    assert BatchLoader(numbered, 10, views=2, view_augments=["none", "flip"]).num_views == 2


def test_bad_view_arguments_are_clear(arrays) -> None:
    with pytest.raises(HundredError, match="views"):
        BatchLoader(arrays, 4, views=0)
    with pytest.raises(HundredError, match="does not match"):
        BatchLoader(arrays, 4, views=3, view_augments=["none", "crop-flip"])
    with pytest.raises(HundredError, match="one spec per view"):
        BatchLoader(arrays, 4, view_augments="crop-flip")
    with pytest.raises(HundredError, match="not both"):
        BatchLoader(arrays, 4, augment="flip", view_augments=["none", "crop-flip"])


def test_evaluation_views_are_identical(arrays) -> None:
    loader = BatchLoader(arrays, 16, augment="rrc-flip", train=False, views=2)
    for views, _ in loader:
        assert torch.equal(views[0], views[1])
