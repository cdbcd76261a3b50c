"""The generate track end to end, tiny: a run trains the denoiser, samples every class and
measures the samples (feature Fréchet distance on a cached evaluator, accuracy on samples,
NFE, images/s, a grid); a second run reuses the first one's networks (generate.init) without
training; a VAE trained by ``hundred generate vae`` carries latent diffusion; bad input (a
missing weights file, a negative guidance scale, zero steps, an init of the wrong objective)
gives a clear error and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hundred.cli import main

TINY = "data.options={classes: 3, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "data.batch_size=16", "train.epochs=1", "quiet=true", "optim.name=adamw",
            "optim.lr=0.001", "generate.denoiser_options={block_out_channels: [8, 16], "
            "attention: [false, false]}", "generate.samples_per_class=2", "generate.steps=3",
            "generate.evaluator_epochs=1", "generate.grid_per_class=2"]


def common(root: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", *(p for s in [*SETTINGS, *extra, f"root={root}"]
                                 for p in ("--set", s))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generate")
    main(["run", "generate", "ddim_cfg", "--name", "cfg", *common(root)])
    return root


def test_a_run_trains_samples_and_measures(trained):
    run_dir = trained / "generate" / "ddim_cfg" / "cfg"
    summary = summary_of(run_dir)
    assert summary["model"] == "unet" and summary["objective"] == "ddpm"
    assert summary["samples"] == 3 * 2 and summary["steps"] == 3
    assert summary["guidance"] == 2.0 and summary["nfe"] == 2 * 3  # guided: 2 NFE a step
    assert summary["fd"] >= 0 and 0 <= summary["sample_top1"] <= 100
    assert "not FID" in summary["fd_label"]
    assert summary["images_per_second"] > 0 and summary["train_seconds"] > 0
    assert (run_dir / "samples.png").is_file() and (run_dir / "denoiser.safetensors").is_file()
    # the evaluator was trained once and is cached for every run on this data
    evaluators = list((trained / "generate" / "evaluators").rglob("summary.json"))
    assert len(evaluators) == 1 and Path(summary["evaluator_dir"]) == evaluators[0].parent


def test_init_reuses_the_networks_without_training(trained):
    first = trained / "generate" / "ddim_cfg" / "cfg"
    # a sampling-only run builds no training loader: a batch larger than the data is fine
    evaluator = summary_of(first)["evaluator_dir"]
    main(["run", "generate", "ddim", "--name", "reuse", "--init", str(first),
          *common(trained, "data.batch_size=512", f"generate.evaluator={evaluator}")])
    summary = summary_of(trained / "generate" / "ddim" / "reuse")
    assert summary["train_seconds"] == 0 and summary["init"] == str(first)
    assert summary["nfe"] == 3  # conditional DDIM: one evaluation a step
    assert not (trained / "generate" / "ddim" / "reuse" / "denoiser.safetensors").exists()


@pytest.mark.parametrize("extra,message", [
    (["generate.inception_weights=/no/such/inception.pt"], "does not exist"),
    (["generate.guidance=-1"], "guidance"),
    (["generate.steps=0"], "steps"),
    (["generate.init=/no/such/run"], "does not exist"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, capsys, extra, message):
    assert main(["run", "generate", "ddim_cfg", "--name", "bad",
                 *common(tmp_path, *extra)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "generate").exists()


def test_an_init_of_another_objective_is_refused(trained, tmp_path, capsys):
    first = trained / "generate" / "ddim_cfg" / "cfg"
    assert main(["run", "generate", "flow_euler", "--name", "bad", "--init", str(first),
                 *common(tmp_path)]) == 2
    assert "objective" in capsys.readouterr().err
    assert not (tmp_path / "generate").exists()


def test_latent_diffusion_with_a_vae_trained_by_hundred(trained):
    vae_dir = trained / "vae"
    main(["generate", "vae", "--data", "synth100", "--out", str(vae_dir), "--epochs", "1",
          "--device", "cpu", "--set", TINY, "--set", "data.batch_size=16",
          "--set", "quiet=true"])
    meta = json.loads((vae_dir / "hundred-vae.json").read_text())
    assert meta["scaling_factor"] > 0 and meta["val_mse"] >= 0
    from hundred.tracks.generate.vae import Codec

    codec = Codec.load(vae_dir)
    assert codec.latent_shape(8) == (4, 4, 4)
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    assert codec.decode(codec.encode(pixels)).shape == pixels.shape
    main(["run", "generate", "ddim", "--name", "latent",
          *common(trained, f"generate.latent={vae_dir}",
                  "generate.denoiser_options={block_out_channels: [8, 16], "
                  "attention: [false, false], norm_num_groups: 4}")])
    summary = summary_of(trained / "generate" / "ddim" / "latent")
    assert summary["latent"] == str(vae_dir) and summary["fd"] >= 0


def test_runs_differing_only_in_their_per_seed_upstream_run_share_a_settings_digest():
    from hundred.config import build_config
    from hundred.engine.run import settings_digest

    def digest(*overrides: str) -> str:
        return settings_digest(build_config(overrides=["track=generate", "method=ddim",
                                                       *overrides]))

    assert digest("generate.init=a/ddpm-s0", "seed=0") == digest("generate.init=a/ddpm-s1",
                                                                "seed=1")
    assert digest("generate.init=a/ddpm-s0") != digest("generate.init=a/ddpm-s0",
                                                       "generate.steps=10")


def test_a_killed_run_resumes_to_the_same_denoiser_and_samples(tmp_path, monkeypatch):
    """Exact resume through the engine: EMA (with warm-up), label dropout and the noise draws
    continue where the checkpoint left them, so the resumed run's denoiser and samples equal
    an uninterrupted run's."""
    from safetensors.torch import load_file

    from hundred.config import build_config
    from hundred.tracks.generate import TRACK
    from hundred.tracks.generate.methods.ddim_cfg import DDIMCFG

    def config(name: str):
        return build_config(overrides=["track=generate", "method=ddim_cfg", "train.device=cpu",
                                       *SETTINGS, "train.epochs=2", "train.ema_decay=0.99",
                                       "train.ema_warmup=true", f"root={tmp_path}",
                                       f"name={name}"])

    reference = TRACK.run(config("reference"))

    class Killed(Exception):
        pass

    def die_at_epoch_1(self, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(DDIMCFG, "on_epoch_start", die_at_epoch_1, raising=False)
    with pytest.raises(Killed):
        TRACK.run(config("killed"))
    monkeypatch.undo()
    killed = tmp_path / "generate" / "ddim_cfg" / "killed"
    resumed = TRACK.run(config("killed"), resume_dir=killed)
    ours, theirs = (load_file(Path(run) / "denoiser.safetensors")
                    for run in (reference["run_dir"], killed))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed["fd"] == reference["fd"]
