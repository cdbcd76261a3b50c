"""`hundred check generate --methods ddim_cfg,flowturbo` tunes sampler settings on one class
half and evaluates on the other: each phase trains one denoiser per objective (noise
prediction, velocity) on its own classes, every run of the phase samples that denoiser
(generate.init), and the leaderboards rank by the feature Fréchet distance."""

from __future__ import annotations

import json

from hundred.cli import main

METHODS = "ddim_cfg,flowturbo"


def test_check_generate_tunes_samplers_on_one_half_and_evaluates_on_the_other(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("generate.guidance: [1.5, 3.0]\ngenerate.eta: null\n")
    out = tmp_path / "check"
    assert main(["check", "generate", "--methods", METHODS, "--trials", "2", "--seeds", "1",
                 "--tune-data", "synth100[0-2]", "--eval-data", "synth100[3-5]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", "data.options={classes: 6, train_per_class: 16, val_per_class: 4, "
                 "res: 8}", "--set", "train.epochs=1", "--set", "data.batch_size=16",
                 "--set", "optim.name=adamw", "--set", "optim.lr=0.001",
                 "--set", "generate.denoiser_options={block_out_channels: [8, 16], "
                 "attention: [false, false]}", "--set", "generate.samples_per_class=2",
                 "--set", "generate.steps=3", "--set", "generate.evaluator_epochs=1"]) == 0
    generators = {path.parent.name: json.loads(path.read_text())
                  for path in (out / "generators" / "generate").glob("*/generator-*/summary.json")}
    # one denoiser per phase and objective, trained on that phase's classes
    assert sorted(s["objective"] for s in generators.values()) == ["ddpm", "ddpm", "flow",
                                                                   "flow"]
    for method in METHODS.split(","):
        tuned = [json.loads(p.read_text())
                 for p in (out / "generate" / method).glob("tune-*/summary.json")]
        [evaluation] = [json.loads(p.read_text())
                        for p in (out / "generate" / method).glob("eval-*/summary.json")]
        assert len(tuned) == 2 and all(t["data"] == "synth100[0-2]" for t in tuned)
        assert evaluation["data"] == "synth100[3-5]"
        assert evaluation["tuned_on"] == "synth100[0-2]"
        for summary in (*tuned, evaluation):  # sampling only, from the phase's denoiser
            trained = generators[summary["init"].rstrip("/").split("/")[-1]]
            assert trained["data"] == summary["data"]
        assert evaluation["fd"] >= 0
