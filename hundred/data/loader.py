"""The batch loader: packed uint8 arrays -> augmented, normalised batches on the device.

One :class:`BatchLoader` replaces ``Dataset`` + ``DataLoader`` + worker processes for packed
data (docs/design.md, principle 3). Reading a batch is a fancy-index into a uint8 array;
everything per-pixel (conversion, augmentation, normalisation) runs batched on the device.

Two ways to feed the device:

* **resident** — when the (selected) images fit ``device_budget_bytes`` they are moved to the
  device once and each batch is an ``index_select`` there: no host work per batch at all.
  On CPU, arrays already in memory are used as they are (zero copy); a memory-mapped split
  is read into RAM once if it fits.
* **streamed** — otherwise a background thread gathers the next batches on the host (indices
  sorted within a batch, which turns random reads of a memory map into forward scans), into
  pinned memory when the device is CUDA, and the main thread copies them with
  ``non_blocking=True`` while the previous batch computes.

Order and randomness are pure functions of ``(seed, epoch, rank, batch)``: the epoch's
permutation is drawn from ``(seed, epoch)``, and each batch's augmentation generator is
seeded from ``(seed, epoch, rank, batch)`` (and the view index, for multi-view batches). So
two loaders with one seed give identical batches, and a loader restored from
:meth:`BatchLoader.state_dict` mid-epoch yields exactly the batches an uninterrupted one
would have, without reading the skipped ones.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np
import torch

from hundred.data.augment import IMAGENET_MEAN, IMAGENET_STD, Augment, AugmentSpec, build_augment
from hundred.data.dataset import ArraySplit
from hundred.errors import HundredError

PREFETCH_THREAD_NAME = "hundred-prefetch"

Batch = tuple[torch.Tensor, torch.Tensor]
#: what iteration yields: ``(images, labels)``, or ``(views, labels)`` with a list of K views
LoaderBatch = tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]
T = TypeVar("T")


class BatchLoader:
    """Iterate ``(images, labels)``: float ``(B, 3, H, W)`` normalised, and int64 ``(B,)``, on ``device``.

    With ``views=K > 1`` (or ``view_augments``) iteration yields ``(views, labels)`` instead:
    ``views`` is a list of K such image tensors.

    Args:
        source: an :class:`ArraySplit` (in memory or memory-mapped) or ``(images, labels)``
            with images uint8 ``(N, H, W, 3)``.
        batch_size: samples per batch *per rank*.
        indices: optional subset of sample indices (e.g. from ``class_subset_indices``); the
            arrays are not copied.
        shuffle: draw a fresh permutation each epoch (from ``seed`` and the epoch).
        seed: the one seed for order and augmentation (>= 0).
        drop_last: see *Sharding and the last batch* below.
        augment: a preset name, step list or :class:`Augment` (see ``build_augment``);
            ``None`` only converts and normalises.
        train: ``False`` builds the evaluation view instead of ``augment`` (no randomness).
        views: independently augmented views of each image per batch, all with ``augment``
            (see *Multiple views* below).
        view_augments: one augmentation spec per view, for asymmetric views (e.g. BYOL's two
            pipelines); its length is the number of views (``views`` must then be 1 or equal
            to it) and ``augment`` must be ``None``.
        out_size: model input size; defaults to the packed resolution.
        mean, std: normalisation in ``[0, 1]`` pixel units (ImageNet's by default).
        device: where batches are produced (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        rank, world_size: this process's place in a DDP group.
        prefetch: host batches gathered ahead by the background thread (0: no thread).
        device_budget_bytes: the most image bytes to keep resident on ``device``; default 25%
            of free device memory (CUDA) or of available RAM (CPU).
        resident: force (``True``) or forbid (``False``) residency instead of the budget rule.
        epoch, start_batch: the starting position (skipped batches are never read); the same
            as :meth:`seek` or :meth:`load_state_dict`.

    Sharding and the last batch: each epoch's permutation is cut into ``world_size``
    interleaved shards of equal size (``perm[rank::world_size]``). With ``drop_last=False``
    the permutation is first extended by wrapping around to a multiple of ``world_size`` (at
    most ``world_size - 1`` samples are seen twice per epoch, as with torch's
    ``DistributedSampler``) and the last, smaller batch is kept; with ``drop_last=True`` the
    tail is dropped instead and every batch is full. With one rank and ``drop_last=False``
    every sample is seen exactly once per epoch.

    Multiple views: self-supervised methods (SimCLR, BYOL, MoCo, DINO) and some distillation
    methods compare K differently augmented copies of the same images. Each batch is gathered
    once (one uint8 batch, never copied K times on the host) and augmented K times on the
    device, each view from its own generator seed: view 0 uses the single-view seed (so view 0
    is exactly the batch a single-view loader with the same seed yields) and view ``k`` a seed
    drawn from ``(seed, epoch, rank, batch, k)``, so views are reproducible and resume exactly.
    The evaluation view (``train=False``) has no randomness: its K views are equal.

    Position: the loader is a cursor ``(epoch, batch)``. Iterating continues from the cursor;
    finishing an epoch moves it to ``(epoch + 1, 0)``. :meth:`set_epoch` moves it to a new
    epoch (and keeps the position when called with the current epoch, so a loop that calls
    ``set_epoch(e)`` after :meth:`load_state_dict` resumes mid-epoch); :meth:`seek` sets both.
    """

    def __init__(
        self,
        source: ArraySplit | tuple[np.ndarray, np.ndarray],
        batch_size: int,
        *,
        indices: np.ndarray | Sequence[int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        augment: AugmentSpec | None = None,
        train: bool = True,
        views: int = 1,
        view_augments: Sequence[AugmentSpec] | None = None,
        out_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        device_budget_bytes: int | None = None,
        resident: bool | None = None,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        images, labels = _arrays(source)
        if batch_size < 1:
            raise HundredError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise HundredError(f"seed must be >= 0, got {seed}")
        if not 0 <= rank < world_size:
            raise HundredError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if prefetch < 0:
            raise HundredError(f"prefetch must be >= 0, got {prefetch}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

        self._indices = _checked_indices(indices, len(labels))
        if len(self) == 0:
            raise HundredError(
                f"{len(self._indices)} samples give no batch of {batch_size} on {world_size} rank(s)"
                + (" with drop_last" if drop_last else "")
            )
        size = out_size if out_size is not None else (images.shape[1], images.shape[2])
        specs = _view_specs(augment, views, view_augments)
        #: one pipeline per view; ``augment`` is view 0's (the only one for a single view)
        self.augments: tuple[Augment, ...] = tuple(
            build_augment(spec, size, mean, std, train=train) for spec in specs
        )
        self.augment: Augment = self.augments[0]
        self._epoch = 0
        self._next_batch = 0
        self.seek(epoch, start_batch)
        self._setup_storage(images, labels, device_budget_bytes, resident)

    # ------------------------------------------------------------------ storage

    def _setup_storage(
        self, images: np.ndarray, labels: np.ndarray, budget: int | None, resident: bool | None
    ) -> None:
        """Decide residency; set ``_store`` (torch tensor if resident, else the numpy array),
        ``_labels`` and ``_rows`` (position in ``_indices`` -> row of ``_store``)."""
        labels = np.asarray(labels, dtype=np.int64)
        in_memory_cpu = self.device.type == "cpu" and not _is_memmap(images)
        needed = len(self._indices) * int(np.prod(images.shape[1:]))
        if resident is None:
            resident = in_memory_cpu or needed <= (budget if budget is not None else self._default_budget())
        self.resident = bool(resident)
        self._image_shape = tuple(images.shape[1:])
        if not self.resident:
            self._store: np.ndarray | torch.Tensor = images
            self._labels: np.ndarray | torch.Tensor = labels
            self._rows = self._indices
            self._sort_reads = _is_memmap(images)
            return
        full = len(self._indices) == len(images)
        if in_memory_cpu or full:
            # whole array: rows are the indices themselves; on CPU in memory nothing is copied
            host_images, host_labels, self._rows = images, labels, self._indices
        else:
            # only the selected subset moves, read in ascending order (forward scans of a memory
            # map); rows map each position in _indices to its row of the subset
            order = np.argsort(self._indices, kind="stable")
            host_images, host_labels = images[self._indices[order]], labels[self._indices[order]]
            self._rows = np.empty(len(order), dtype=np.int64)
            self._rows[order] = np.arange(len(order))
        with warnings.catch_warnings():  # read-only memmaps/arrays: torch warns, we never write
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(host_images))
        if self.device.type != "cpu":
            tensor = tensor.to(self.device)
        elif _is_memmap(host_images):
            tensor = tensor.clone()  # read the memory map into RAM once
        self._store = tensor
        self._labels = torch.from_numpy(np.ascontiguousarray(host_labels)).to(self.device)
        self._sort_reads = False

    def _default_budget(self) -> int:
        """25% of free device memory (CUDA) or of available RAM (CPU), in bytes."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free // 4
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        except (ValueError, OSError, AttributeError):
            return 1 << 30

    # ------------------------------------------------------------------ order

    @property
    def num_samples(self) -> int:
        """Samples selected (all ranks together), before sharding."""
        return len(self._indices)

    @property
    def samples_per_rank(self) -> int:
        """Samples in this rank's shard of one epoch (equal on every rank)."""
        n, world = len(self._indices), self.world_size
        return n // world if self.drop_last else -(-n // world)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        per_rank = self.samples_per_rank
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's sample indices (into the source arrays) for ``epoch``, in batch order."""
        return self._indices[self._shard_positions(self._epoch if epoch is None else epoch)][
            : self._used_per_epoch()
        ]

    def _used_per_epoch(self) -> int:
        return min(len(self) * self.batch_size, self.samples_per_rank)

    def _shard_positions(self, epoch: int) -> np.ndarray:
        """Positions into ``_indices`` of this rank's shard of ``epoch``'s permutation."""
        n = len(self._indices)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        total = self.samples_per_rank * self.world_size
        order = order[:total] if total <= n else np.resize(order, total)  # np.resize wraps around
        return order[self.rank :: self.world_size]

    def _augment_seed(self, epoch: int, batch: int, view: int = 0) -> int:
        """A 63-bit seed that is a pure function of (seed, epoch, rank, batch, view).

        View 0 keeps the single-view seed (so adding views leaves view 0's batches as they
        were); view ``k > 0`` is the ``k``-th child stream (``spawn_key``) of the same entropy.
        """
        entropy = [self.seed, epoch, self.rank, batch]
        sequence = np.random.SeedSequence(entropy, spawn_key=(view,) if view else ())
        words = sequence.generate_state(2, np.uint32)
        return (int(words[0]) << 31) ^ int(words[1])

    @property
    def num_views(self) -> int:
        """Augmented views per batch: 1 yields an image tensor, K > 1 a list of K."""
        return len(self.augments)

    # ------------------------------------------------------------------ position

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (batch 0); a no-op for the current epoch, so a resumed position survives."""
        if epoch != self._epoch:
            self.seek(epoch, 0)

    def seek(self, epoch: int, batch: int = 0) -> None:
        """Set the cursor: the next iteration starts at batch ``batch`` of ``epoch``."""
        if epoch < 0 or not 0 <= batch <= len(self):
            raise HundredError(f"cannot seek to epoch {epoch}, batch {batch} (0..{len(self)})")
        self._epoch, self._next_batch = epoch, batch

    def _normalised_cursor(self) -> tuple[int, int]:
        if self._next_batch >= len(self):
            return self._epoch + 1, 0
        return self._epoch, self._next_batch

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the next batch to yield, and what fixes the batch boundaries."""
        epoch, batch = self._normalised_cursor()
        return {
            "epoch": epoch,
            "batch": batch,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position from :meth:`state_dict`; refuses a state from a different selection."""
        for key in ("num_samples", "batch_size", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise HundredError(
                    f"loader state was saved with {key}={state[key]}, this loader has {getattr(self, key)}; "
                    "resuming would not reproduce the same batches"
                )
        self.seed = int(state["seed"])
        self.seek(int(state["epoch"]), int(state["batch"]))

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[LoaderBatch]:
        self._epoch, self._next_batch = self._normalised_cursor()
        epoch, start = self._epoch, self._next_batch
        rows = self._rows[self._shard_positions(epoch)][: self._used_per_epoch()]
        batches = range(start, len(self))
        feed = self._resident_feed(rows, batches) if self.resident else self._streamed_feed(rows, batches)
        generator = torch.Generator(device=self.device)
        try:
            for batch, (images, labels) in zip(batches, feed):
                output = self._make_batch(images, labels, epoch, batch, generator)
                self._next_batch = batch + 1
                yield output
            self._epoch, self._next_batch = epoch + 1, 0
        finally:
            feed.close()  # stops the prefetch thread on break, exception or garbage collection

    def _make_batch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int,
                    generator: torch.Generator) -> LoaderBatch:
        """What iteration yields for batch ``batch`` of ``epoch``, from its uint8 ``images``
        and ``labels`` on the device: the augmented view(s) and the labels. A subclass may
        yield something else (its sample indices are ``epoch_indices(epoch)`` sliced by
        ``batch``); it must draw its randomness from ``(seed, epoch, ...)`` alone, and
        ``generator`` is reseeded per view from ``(seed, epoch, rank, batch, view)``."""
        outputs = []
        for view, augment in enumerate(self.augments):  # one uint8 batch, K draws
            generator.manual_seed(self._augment_seed(epoch, batch, view))
            outputs.append(augment(images, generator))
        return (outputs[0] if len(outputs) == 1 else outputs), labels

    def _slice(self, rows: np.ndarray | torch.Tensor, batch: int) -> Any:
        return rows[batch * self.batch_size : (batch + 1) * self.batch_size]

    def _resident_feed(self, rows: np.ndarray, batches: range) -> Iterator[Batch]:
        assert isinstance(self._store, torch.Tensor) and isinstance(self._labels, torch.Tensor)
        rows_on_device = torch.from_numpy(rows).to(self.device)
        for batch in batches:
            index = self._slice(rows_on_device, batch)
            yield self._store.index_select(0, index), self._labels.index_select(0, index)

    def _streamed_feed(self, rows: np.ndarray, batches: range) -> Iterator[Batch]:
        produce: Callable[[int], _HostBatch] = lambda batch: self._gather(self._slice(rows, batch))
        if self.prefetch == 0:
            for batch in batches:
                yield self._to_device(produce(batch))
            return
        prefetcher = _Prefetcher(produce, batches, depth=self.prefetch)
        try:
            for host_batch in prefetcher:
                yield self._to_device(host_batch)
        finally:
            prefetcher.close()

    def _gather(self, rows: np.ndarray) -> _HostBatch:
        """Read one batch on the host (runs in the prefetch thread)."""
        assert isinstance(self._store, np.ndarray) and isinstance(self._labels, np.ndarray)
        pin = self.device.type == "cuda"
        images = torch.empty((len(rows), *self._image_shape), dtype=torch.uint8, pin_memory=pin)
        labels = torch.empty(len(rows), dtype=torch.int64, pin_memory=pin)
        labels.numpy()[:] = self._labels[rows]
        restore: torch.Tensor | None = None
        if self._sort_reads:
            # memory map: read in ascending order, put back in batch order afterwards
            order = np.argsort(rows, kind="stable")
            np.take(self._store, rows[order], axis=0, out=images.numpy())
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            restore = torch.from_numpy(inverse)
            if pin:  # CUDA: reorder on the device after the copy
                restore = restore.pin_memory()
            else:  # CPU: reorder here, off the main thread
                images, restore = images[restore], None
        else:
            np.take(self._store, rows, axis=0, out=images.numpy())
        return _HostBatch(images, labels, restore)

    def _to_device(self, host: _HostBatch) -> Batch:
        if self.device.type == "cpu":
            return host.images, host.labels
        images = host.images.to(self.device, non_blocking=True)
        labels = host.labels.to(self.device, non_blocking=True)
        if host.restore is not None:
            images = images[host.restore.to(self.device, non_blocking=True)]
        return images, labels

    def __repr__(self) -> str:
        mode = "resident" if self.resident else f"streamed(prefetch={self.prefetch})"
        views = f", {self.num_views} views" if self.num_views > 1 else ""
        return (
            f"BatchLoader({self.num_samples} samples, batch {self.batch_size}, {len(self)} batches/epoch"
            f"{views}, rank {self.rank}/{self.world_size}, {self.device}, {mode})"
        )


class _HostBatch:
    """A batch gathered on the host; ``restore`` re-orders a sorted read (or is None)."""

    __slots__ = ("images", "labels", "restore")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, restore: torch.Tensor | None) -> None:
        self.images, self.labels, self.restore = images, labels, restore


class _End:
    """Put on the prefetch queue after an epoch's last batch."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Prefetcher(Generic[T]):
    """Runs ``produce(i)`` for each ``i`` in a background thread, ``depth`` results ahead.

    The thread is a daemon (never blocks interpreter exit), checks a stop flag between puts,
    and hands any exception to the consumer. :meth:`close` stops and joins it.
    """

    def __init__(self, produce: Callable[[int], T], items: range, depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(produce, items), name=PREFETCH_THREAD_NAME, daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce: Callable[[int], T], items: range) -> None:
        try:
            for index in items:
                if self._stop.is_set() or not self._put(produce(index)):
                    return
            self._put(_End())
        except BaseException as error:  # handed to the consumer, re-raised there
            self._put(_Failure(error))

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without finishing") from None
                continue
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10.0)


def _arrays(source: ArraySplit | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``source``, validated by :class:`ArraySplit`."""
    if isinstance(source, (tuple, list)) and len(source) == 2:
        source = ArraySplit(np.asarray(source[0]), np.asarray(source[1]))
    if not isinstance(source, ArraySplit):
        raise HundredError(f"a loader reads an ArraySplit or (images, labels), got {type(source).__name__}")
    return source.images, source.labels


def _view_specs(
    augment: AugmentSpec | None, views: int, view_augments: Sequence[AugmentSpec] | None
) -> list[AugmentSpec]:
    """One augmentation spec per view, from ``augment`` x ``views`` or from ``view_augments``."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise HundredError(f"views must be an integer >= 1, got {views!r}")
    if view_augments is None:
        return [augment if augment is not None else "none"] * int(views)
    if isinstance(view_augments, (str, Augment)):
        raise HundredError(
            f"view_augments takes one spec per view (a list), got a single spec {view_augments!r}"
        )
    specs = list(view_augments)
    if not specs:
        raise HundredError("view_augments must give at least one view's spec")
    if views not in (1, len(specs)):
        raise HundredError(
            f"views={views} does not match the {len(specs)} specs of view_augments "
            "(pass views=1 or its length)"
        )
    if augment is not None:
        raise HundredError(
            "give either augment (the same for every view) or view_augments, not both"
        )
    for spec in specs:
        if not isinstance(spec, (str, Augment)) and not (
            isinstance(spec, Sequence) and all(isinstance(step, (str, dict)) for step in spec)
        ):
            raise HundredError(
                "each view_augments item is a preset name, a list of steps or an Augment, "
                f"got {spec!r}"
            )
    return specs


def _checked_indices(indices: np.ndarray | Sequence[int] | None, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1:
        raise HundredError(f"indices must be one-dimensional, got shape {indices.shape}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise HundredError(f"indices must lie in [0, {n}), got [{indices.min()}, {indices.max()}]")
    return indices


def _is_memmap(array: np.ndarray) -> bool:
    """Whether ``array`` (or an array it views) is backed by a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None:
            return True
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


__all__ = ["BatchLoader", "PREFETCH_THREAD_NAME"]
