"""Federated long-tailed partitions: pure functions of the labels and a seed.

The setting of FedLoGe (Xiao et al., ICLR 2024) and of the federated long-tail literature it
follows (CReFF, FedRoD): the training split is first made long-tailed over classes with an
imbalance factor IF (the CIFAR-LT recipe of Cao et al., NeurIPS 2019: class ``c`` keeps
``n_c = n_max * IF ** (-c / (C - 1))`` samples, class 0 the most, class C-1 ``n_max / IF``),
then split over clients with a Dirichlet(alpha) draw per class (Hsu et al., 2019): every kept
sample lands on exactly one client. Generic accuracy is measured on the balanced val split;
each client's personalised test set is drawn from val so that it follows the client's own
training class distribution.

Nothing here touches torch; bad input is a :class:`~hundred.errors.HundredError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hundred.errors import HundredError

# the many/medium/few-shot thresholds of the long-tail literature (Liu et al., OLTR, CVPR
# 2019), on CIFAR-100-LT whose head class has n_max = 500 training images: many > 100,
# few < 20. They are used here as shares of n_max, so that they scale with the data.
MANY_SHARE = 100 / 500
FEW_SHARE = 20 / 500


def long_tailed_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Samples kept per class: ``floor(n_max * imbalance ** (-c / (C - 1)))``, at least 1."""
    if imbalance < 1:
        raise HundredError(f"federated.imbalance={imbalance} must be >= 1 (the ratio of the "
                           "largest to the smallest class; 1 keeps the split balanced)")
    if n_max < 1 or num_classes < 1:
        raise HundredError(f"need at least one class and one sample per class, got "
                           f"{num_classes} classes with at most {n_max} samples")
    steps = np.arange(num_classes) / max(1, num_classes - 1)
    return np.maximum(1, np.floor(n_max * imbalance ** (-steps) + 1e-9)).astype(np.int64)


def long_tailed_indices(labels: np.ndarray, num_classes: int, imbalance: float,
                        seed: int) -> np.ndarray:
    """Indices of the train split kept by the long-tailed profile (sorted). ``n_max`` is the
    smallest class count of ``labels`` (synthetic and CIFAR splits are balanced); which
    samples of a class are kept is a seeded draw."""
    labels = np.asarray(labels)
    present = np.bincount(labels, minlength=num_classes)
    counts = long_tailed_counts(int(present.min()), num_classes, imbalance)
    rng = np.random.default_rng([seed, 0])
    kept = [rng.permutation(np.flatnonzero(labels == c))[:counts[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(kept))


def dirichlet_split(labels: np.ndarray, indices: np.ndarray, clients: int, alpha: float,
                    seed: int, min_size: int = 1, tries: int = 1000) -> list[np.ndarray]:
    """Split ``indices`` (positions into ``labels``) over ``clients``: for every class, the
    shares of the clients are a Dirichlet(alpha) draw. Draws are repeated (up to ``tries``)
    until every client holds at least ``min_size`` samples, as the reference implementations
    do; each sample lands on exactly one client. Returns one sorted index array per client."""
    if alpha <= 0 or not np.isfinite(alpha):
        raise HundredError(f"federated.alpha={alpha} must be > 0 (the Dirichlet "
                           "concentration; 0.5 in FedLoGe, smaller = more heterogeneous)")
    if clients < 1:
        raise HundredError(f"federated.clients={clients} must be >= 1")
    indices = np.asarray(indices, dtype=np.int64)
    if clients * max(1, min_size) > len(indices):
        raise HundredError(f"{clients} clients with at least {max(1, min_size)} samples each "
                           f"need {clients * max(1, min_size)} training samples; the "
                           f"long-tailed train split has {len(indices)}: use fewer clients, a "
                           "lower imbalance factor or more data")
    rng = np.random.default_rng([seed, 1])
    classes = np.unique(labels[indices])
    for _ in range(tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in classes:
            members = rng.permutation(indices[labels[indices] == c])
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                parts[client].append(piece)
        split = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in split) >= min_size:
            return split
    raise HundredError(f"no Dirichlet({alpha}) split in {tries} draws gave every one of "
                       f"{clients} clients {min_size} samples: use fewer clients or a larger "
                       "federated.alpha")


def local_test_indices(val_labels: np.ndarray, client_counts: np.ndarray, seed: int
                       ) -> list[np.ndarray]:
    """One personalised test set per client, drawn from the val split so that it follows the
    client's training class distribution (``client_counts``: clients x classes): class ``c``
    gets ``round(n_val_c * n_ic / max_c n_ic)`` val samples (the client's largest class takes
    all its val samples, a class it never saw none)."""
    val_labels = np.asarray(val_labels)
    rng = np.random.default_rng([seed, 2])
    by_class = [np.flatnonzero(val_labels == c) for c in range(client_counts.shape[1])]
    tests = []
    for counts in client_counts:
        top = max(1, int(counts.max()))
        chosen = [rng.permutation(by_class[c])[:int(round(len(by_class[c]) * n / top))]
                  for c, n in enumerate(counts) if n > 0]
        tests.append(np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64))
    return tests


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Class ids of the many-shot (> n_max * 100/500), medium and few-shot (< n_max * 20/500)
    groups of the long-tailed training counts: at CIFAR-100-LT's n_max = 500 exactly the
    usual > 100 / 20-100 / < 20."""
    n_max = float(np.max(train_counts))
    many, few = MANY_SHARE * n_max, FEW_SHARE * n_max
    return {"many": np.flatnonzero(train_counts > many),
            "medium": np.flatnonzero((train_counts <= many) & (train_counts >= few)),
            "few": np.flatnonzero(train_counts < few)}


@dataclass(frozen=True)
class Partition:
    """The federated data of one run: per-client train and local-test indices, the class
    counts of the long-tailed train split and its shot groups."""

    clients: list[np.ndarray]
    local_tests: list[np.ndarray]
    train_counts: np.ndarray
    client_counts: np.ndarray
    groups: dict[str, np.ndarray]

    def record(self) -> dict[str, object]:
        """Summary entries describing the partition."""
        sizes = [len(c) for c in self.clients]
        return {"lt_train_images": int(self.train_counts.sum()),
                "lt_class_counts": self.train_counts.tolist(),
                "measured_imbalance": float(self.train_counts.max() / self.train_counts.min()),
                "client_sizes": sizes,
                "local_test_sizes": [len(t) for t in self.local_tests],
                "shot_groups": {k: v.tolist() for k, v in self.groups.items()}}


def make_partition(train_labels: np.ndarray, val_labels: np.ndarray, num_classes: int,
                   clients: int, alpha: float, imbalance: float, seed: int,
                   min_client_samples: int = 1) -> Partition:
    """Long-tailed train split, Dirichlet split over ``clients``, local test sets from val."""
    train_labels = np.asarray(train_labels)
    kept = long_tailed_indices(train_labels, num_classes, imbalance, seed)
    split = dirichlet_split(train_labels, kept, clients, alpha, seed, min_client_samples)
    client_counts = np.stack([np.bincount(train_labels[p], minlength=num_classes)
                              for p in split])
    train_counts = np.bincount(train_labels[kept], minlength=num_classes)
    return Partition(split, local_test_indices(val_labels, client_counts, seed), train_counts,
                     client_counts, shot_groups(train_counts))
