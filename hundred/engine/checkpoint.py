"""Atomic checkpoints: weights as safetensors, the rest as a tensors-only state file.

A checkpoint for epoch ``k`` is two files, ``epoch-k.safetensors`` (model weights, EMA
weights under an ``ema.`` prefix, the method's trainable and stateful modules under
``method.``) and ``epoch-k.state.pt`` (optimiser, method and RNG state, loader position),
each written atomically; then ``latest.json`` is atomically pointed at
them. A kill at any moment leaves the previous ``latest.json`` valid. State files are read
with ``torch.load(weights_only=True)``: no pickled code ever runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

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


# what every state file holds (written by the trainer); a file without them is not resumable
STATE_KEYS = ("epoch", "optimizer", "method", "torch_rng", "cuda_rng", "loader")


def _read_checkpoint(directory: Path, stem: str) -> tuple[int, dict[str, torch.Tensor],
                                                          dict[str, Any]]:
    """Checkpoint ``stem`` of ``directory``; ValueError says which file is wrong and how."""
    weights_path, state_path = directory / f"{stem}.safetensors", directory / f"{stem}.state.pt"
    try:
        weights = load_safetensors(weights_path.read_bytes())
    except Exception as error:  # safetensors raises its own error types for bad bytes
        raise ValueError(f"{weights_path.name} is unreadable ({_first_line(error)})") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code, a truncated zip, a missing file ...
        raise ValueError(f"{state_path.name} is unreadable ({_first_line(error)})") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{state_path.name} lacks {', '.join(missing)}")
    if not weights:
        raise ValueError(f"{weights_path.name} holds no weights")
    return int(state["epoch"]), weights, state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _candidates(directory: Path) -> list[str]:
    """Checkpoint stems, newest first: the one ``latest.json`` names, then every other."""
    stems = sorted((p.name[: -len(".safetensors")] for p in directory.glob("epoch-*.safetensors")),
                   reverse=True)
    pointer = directory / LATEST
    try:
        latest = str(json.loads(pointer.read_text())["weights"])[: -len(".safetensors")]
        stems = [latest] + [stem for stem in stems if stem != latest]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no or a broken pointer: the files themselves say what exists
    return stems


def load_checkpoint(directory: Path, warn: Callable[[str], None] | None = None
                    ) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(epoch, weights, state)`` of the newest checkpoint of ``directory`` that loads, or
    None if there is none. An unreadable newer one (truncated, a pickle, a missing key, a
    broken ``latest.json``) is skipped for an older one, and ``warn`` hears which and why;
    when none loads, HundredError names every file and its problem."""
    if not directory.is_dir():
        return None
    problems = []
    for stem in _candidates(directory):
        try:
            found = _read_checkpoint(directory, stem)
        except ValueError as error:
            problems.append(str(error))
            continue
        if problems and warn is not None:
            warn(f"{'; '.join(problems)}: resuming from the older {stem} instead")
        return found
    if problems:
        raise HundredError(f"no checkpoint in {directory} can be resumed: {'; '.join(problems)}. "
                           "Start the run again with --replace (or keep more checkpoints: "
                           "train.keep_checkpoints)")
    return None


def strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``weights`` under ``prefix`` (e.g. ``method.``), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
