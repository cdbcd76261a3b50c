"""DDP on CPU: 2 processes with the same global batch match one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

COMMON = ["--set", "model.name=convnet_d3", "--set", "train.device=cpu",
          "--set", "data.options={classes: 4, train_per_class: 32, val_per_class: 4, res: 16}",
          "--set", "data.batch_size=16", "--set", "train.epochs=2", "--set", "data.augment=none",
          "--set", "optim.lr=0.05", "-q"]


def weights(run_dir: Path) -> dict:
    return load_file(next((run_dir / "checkpoints").glob("*.safetensors")))


def test_two_process_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = ["-m", "hundred.cli", "run", "classify", "erm", "--root", str(tmp_path)]
    subprocess.run([sys.executable, *cli, "--name", "single", *COMMON], check=True, env=env,
                   capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *cli, "--name", "ddp", *COMMON], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    single = weights(tmp_path / "classify/erm/single")
    ddp = weights(tmp_path / "classify/erm/ddp")
    assert single.keys() == ddp.keys()
    for key in single:
        assert torch.allclose(single[key], ddp[key], atol=1e-5, rtol=1e-4), key
    assert not any(p.name.startswith("ddp-") for p in (tmp_path / "classify/erm").iterdir())
