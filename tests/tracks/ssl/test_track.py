"""The ssl track's contract: pre-training reads images only (labels reach nothing but the
detached online probe), NT-Xent is the SimCLR loss, and a run ends with the offline linear
probe and kNN of its frozen backbone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.registry import get_method, get_track


def tiny(root: Path, *extra: str):
    return build_config(overrides=[
        "track=ssl", "model.name=resnet20", "model.options={width: 4}", "train.device=cpu",
        "quiet=true", "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}",
        "data.batch_size=16", "train.epochs=1", "ssl.probe_epochs=2", "ssl.augment=simclr-small",
        f"root={root}", *extra])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "checkpoints").glob("**/*.safetensors"))
    return load_file(files[-1])


def test_labels_reach_only_the_online_probe(tmp_path, monkeypatch):
    """Shuffling the training labels changes the online probe, never the backbone."""
    first = get_track("ssl").run(tiny(tmp_path, "method=simclr", "name=labels"))
    from hundred.data import dataset as dataset_module

    original = dataset_module.Dataset.arrays

    def shuffled(self, split):
        arrays = original(self, split)
        if split == "train":
            labels = np.random.default_rng(0).permutation(np.asarray(arrays.labels))
            arrays = dataclasses.replace(arrays, labels=labels)
        return arrays

    monkeypatch.setattr(dataset_module.Dataset, "arrays", shuffled)
    second = get_track("ssl").run(tiny(tmp_path, "method=simclr", "name=shuffled"))
    a, b = _weights(Path(first["run_dir"])), _weights(Path(second["run_dir"]))
    backbone = [k for k in a if k.startswith(("backbone.", "method.projector."))]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert not torch.equal(a["head.weight"], b["head.weight"])  # the probe did see labels


def test_nt_xent_matches_a_hand_computed_value():
    """SimCLR's loss (Chen et al. 2020, Eq. 1) on 4 images: the mean over the 8 ordered
    positive pairs of -log(exp(s_ij/t) / sum_{k != i} exp(s_ik/t))."""
    method = get_method("ssl", "simclr")({"temperature": 0.5})
    from hundred.tracks.ssl.methods.simclr import _nt_xent

    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / method.params.temperature
    losses = []
    for i in range(8):
        j = (i + 4) % 8
        others = [k for k in range(8) if k != i]
        losses.append(-(sim[i, j] - torch.logsumexp(sim[i, others], 0)))
    expected = torch.stack(losses).mean()
    assert torch.allclose(_nt_xent(0.5)(z1, z2), expected, atol=1e-6)


def test_a_run_reports_the_linear_probe_knn_and_online_probe(tmp_path):
    summary = get_track("ssl").run(tiny(tmp_path, "method=simclr", "name=eval"))
    for key in ("linear_top1", "knn20_top1", "knn200_top1", "online_top1"):
        assert 0 <= summary[key] <= 100, key
    weights = _weights(Path(summary["run_dir"]))
    assert any(k.startswith("backbone.") for k in weights)  # what classify --init reads
    assert any(k.startswith("method.projector.") for k in weights)


def test_random_init_trains_only_the_probe():
    """The random-initialisation baseline: no gradient reaches the backbone."""
    from hundred.models import create

    model = create("resnet20", 4, width=4)
    method = get_method("ssl", "random")()
    method.setup(model, None)  # freezes the backbone (DDP refuses never-used parameters)
    loss = method.loss(model, torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
