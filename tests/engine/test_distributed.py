"""DDP on CPU: 2 processes with the same global batch match one process.

Floating-point sums reduce in a different order across two processes, and that order changes
between torch versions, so the weights are compared with tolerances, never bit for bit:
after the first optimiser step they agree to float32 rounding (scaled to each tensor's
size), and after several steps they stay close.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# 16 images, global batch 16: one optimiser step per epoch, a checkpoint after each
COMMON = ["--set", "model.name=convnet_d3", "--set", "train.device=cpu",
          "--set", "data.options={classes: 4, train_per_class: 4, val_per_class: 4, res: 16}",
          "--set", "data.batch_size=16", "--set", "train.epochs=6", "--set", "data.augment=none",
          "--set", "optim.lr=0.05", "--set", "train.keep_checkpoints=6", "-q"]


def checkpoint(run_dir: Path, epoch: int) -> dict:
    return load_file(run_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors")


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the tensor's scale (its largest magnitude, at least 1e-3)."""
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-3))


def test_two_process_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = ["-m", "hundred.cli", "run", "classify", "erm", "--root", str(tmp_path)]
    subprocess.run([sys.executable, *cli, "--name", "single", *COMMON], check=True, env=env,
                   capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *cli, "--name", "ddp", *COMMON], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    single_dir, ddp_dir = tmp_path / "classify/erm/single", tmp_path / "classify/erm/ddp"
    first_single, first_ddp = checkpoint(single_dir, 0), checkpoint(ddp_dir, 0)
    assert first_single.keys() == first_ddp.keys()
    initial_moves = 0
    for key in first_single:  # after one step: float32 rounding of the gradient all-reduce
        assert relative_gap(first_single[key], first_ddp[key]) < 1e-5, key
    last_single, last_ddp = checkpoint(single_dir, 5), checkpoint(ddp_dir, 5)
    for key in last_single:  # after six steps: still the same training run
        assert relative_gap(last_single[key], last_ddp[key]) < 1e-4, key
        initial_moves += not torch.equal(first_single[key], last_single[key])
    assert initial_moves > 0  # training changed the weights, so the comparison means something
    assert not any(p.name.startswith("ddp-") for p in (tmp_path / "classify/erm").iterdir())
