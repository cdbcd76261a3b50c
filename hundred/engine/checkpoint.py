"""Atomic checkpoints: weights as safetensors, the rest as a tensors-only state file.

A checkpoint for epoch ``k`` is two files, ``epoch-k.safetensors`` (model weights, EMA
weights under an ``ema.`` prefix, the method's trainable modules under ``method.``) and
``epoch-k.state.pt`` (optimiser, method and RNG state,
loader position), each written atomically; then ``latest.json`` is atomically pointed at
them. A kill at any moment leaves the previous ``latest.json`` valid. State files are read
with ``torch.load(weights_only=True)``: no pickled code ever runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from hundred.errors import HundredError
from hundred.io import atomic_open, write_json

LATEST = "latest.json"


def save_checkpoint(directory: Path, epoch: int, weights: dict[str, torch.Tensor],
                    state: dict[str, Any], keep: int = 1) -> None:
    """Write checkpoint ``epoch`` into ``directory`` and keep only the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    with atomic_open(directory / f"{stem}.safetensors", "wb") as handle:
        handle.write(save_safetensors(tensors))
    with atomic_open(directory / f"{stem}.state.pt", "wb") as handle:
        torch.save(state, handle)
    write_json(directory / LATEST, {"epoch": epoch, "weights": f"{stem}.safetensors",
                                     "state": f"{stem}.state.pt"})
    stems = sorted(p.name[: -len(".safetensors")] for p in directory.glob("epoch-*.safetensors"))
    for old in stems[:-keep]:
        for suffix in (".safetensors", ".state.pt"):
            (directory / f"{old}{suffix}").unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(epoch, weights, state)`` of the newest complete checkpoint, or None if there is none."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    latest = json.loads(pointer.read_text())
    try:
        weights = load_safetensors((directory / latest["weights"]).read_bytes())
        state = torch.load(directory / latest["state"], map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, KeyError) as error:
        raise HundredError(f"checkpoint in {directory} is unreadable: {error}") from None
    return int(latest["epoch"]), weights, state


def strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``weights`` under ``prefix`` (e.g. ``method.``), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors weight file (safe for untrusted files: no code is executed)."""
    if not path.is_file():
        raise HundredError(f"weights file not found: {path}")
    return load_safetensors(path.read_bytes())
