"""The robust track end to end at CPU scale: `hundred run robust at` trains on PGD examples and
reports robust top-1 with its threat model; adversarial training leaves batch-norm running
statistics to the clean forward passes; adv_finetune starts from the whole pre-trained model
on its own schedule and refuses to run without one; `hundred attack` writes into a finished
run's summary (and `hundred report` shows it) and refuses bad input writing nothing; QuScore
through `hundred attack` records its success rate and query counts;
`hundred check robust` trains one pre-trained model per phase for adv_finetune."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.registry import get_method
from hundred.tracks.robust import TRACK

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
COMMON = ["--device", "cpu", "--set", TINY, "--set", "model.name=resnet20",
          "--set", "model.options={width: 4}", "--set", "data.batch_size=16",
          "--set", "train.epochs=1", "--set", "quiet=true"]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def erm_run(tmp_path_factory) -> Path:
    """A finished robust/erm run (the pre-trained model of the fine-tuning tests)."""
    root = tmp_path_factory.mktemp("erm")
    assert main(["run", "robust", "erm", *COMMON, "--set", f"root={root}",
                 "--set", "name=erm"]) == 0
    return root / "robust" / "erm" / "erm"


def test_run_robust_at_end_to_end_records_the_threat_model(tmp_path):
    assert main(["run", "robust", "at", *COMMON, "--eps", "4/255", "--set", f"root={tmp_path}",
                 "--set", "name=at", "--set", "robust.steps=3"]) == 0
    summary = summary_of(tmp_path / "robust" / "at" / "at")
    assert summary["threat_model"] == "Linf 4/255"
    assert summary["eval_attack"] == "pgd-20, step 2/255"
    assert summary["train_threat"]["steps"] == 3 and summary["train_threat"]["eps_label"] == "4/255"
    [entry] = summary["attacks"]
    assert entry["attack"] == "pgd" and entry["steps"] == 20 and entry["restarts"] == 1
    assert entry["eps"] == pytest.approx(4 / 255) and entry["torchattacks"] == "3.3.0"
    assert summary["robust_top1"] == entry["robust_top1"] <= entry["clean_top1"]
    assert entry["clean_top1"] == pytest.approx(summary["val_top1"])


def test_at_crafts_examples_without_moving_batch_norm_statistics():
    config = build_config(overrides=["track=robust", "method=at", "train.device=cpu",
                                     "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"])
    method = get_method("robust", "at")(config.method_params, config)
    from hundred.models import create

    model = create("resnet20", 4, width=4).train()
    method.setup(model, SetupContext(config, torch.device("cpu"), 1, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(8, 3, 8, 8).clamp(-2, 2)
    adversarial = method.adversarial_examples(images, torch.arange(8) % 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # crafted in train mode, handed back in train mode
    step = (adversarial - images).abs().max() * 0.25  # pixel units
    assert 0 < step <= config.robust.eps + 1e-5


def test_adv_finetune_refuses_to_run_without_a_pretrained_model(tmp_path):
    config = build_config(overrides=["track=robust", "method=adv_finetune", f"root={tmp_path}",
                                     "train.device=cpu", TINY])
    with pytest.raises(HundredError, match="--init RUN_DIR"):
        TRACK.run(config)
    assert not (tmp_path / "robust").exists()


def test_adv_finetune_continues_the_whole_pretrained_model_on_its_schedule(tmp_path, erm_run):
    config = build_config(overrides=[
        "track=robust", "method=adv_finetune", f"root={tmp_path}", "name=ft", "quiet=true",
        "train.device=cpu", TINY, "model.name=resnet20", "model.options={width: 4}",
        "data.batch_size=16", "train.epochs=2", "robust.steps=2", f"robust.init={erm_run}"])
    method = get_method("robust", "adv_finetune")(config.method_params, config)
    seen: dict = {}
    original = method.setup

    def setup(model, ctx):
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        original(model, ctx)

    method.setup = setup
    summary = TRACK.run(config, method=method)
    from safetensors.torch import load_file

    checkpoints = erm_run / "checkpoints"
    pretrained = load_file(checkpoints / json.loads(
        (checkpoints / "latest.json").read_text())["weights"])
    assert all(torch.equal(seen[k], pretrained[k]) for k in seen)  # head included
    assert summary["init_weights"] == "model" and summary["init"] == str(erm_run)
    stored = yaml.safe_load((tmp_path / "robust/adv_finetune/ft/config.yaml").read_text())
    assert stored["schedule"]["name"] == "linear"
    assert stored["schedule"]["warmup_epochs"] == pytest.approx(1.0)  # half of 2 epochs
    lrs = [json.loads(line)["lr"] for line in
           (tmp_path / "robust/adv_finetune/ft/metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == 0.0  # the last step's learning rate


def test_hundred_attack_writes_into_a_classify_summary_and_report_shows_it(tmp_path, capsys):
    assert main(["run", "classify", "erm", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=plain"]) == 0
    run_dir = tmp_path / "classify" / "erm" / "plain"
    before = summary_of(run_dir)
    assert main(["attack", str(run_dir), "--eps", "8/255", "--steps", "5", "--device",
                 "cpu"]) == 0
    after = summary_of(run_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # the rest is kept
    [entry] = after["attacks"]
    assert entry["source"] == "hundred attack" and entry["steps"] == 5
    assert entry["step_size"] == pytest.approx(2 / 255) and entry["eps_label"] == "8/255"
    assert after["pgd_top1"] == entry["robust_top1"] <= entry["clean_top1"]
    assert after["pgd_threat"] == "Linf 8/255, pgd-5, step 2/255"
    capsys.readouterr()
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "PGD top-1" in printed and "Linf 8/255, pgd-5, step 2/255" in printed


def test_hundred_attack_refuses_bad_input_and_writes_nothing(tmp_path, capsys, erm_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(erm_run, run_dir)
    original = (run_dir / "summary.json").read_bytes()
    for args, message in (
            (["--eps", "1.5"], "outside [0, 1]"), (["--eps=-1/255"], "outside [0, 1]"),
            (["--attack", "nope"], "unknown attack 'nope'"),
            (["--steps", "0"], "--steps must be >= 1")):
        assert main(["attack", str(run_dir), "--device", "cpu", *args]) == 2
        assert message in capsys.readouterr().err
        assert (run_dir / "summary.json").read_bytes() == original
    shutil.rmtree(run_dir / "checkpoints")
    assert main(["attack", str(run_dir), "--device", "cpu"]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert (run_dir / "summary.json").read_bytes() == original
    assert main(["attack", str(tmp_path / "missing"), "--eps", "8/255"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hundred_attack_quscore_records_success_rate_and_queries(tmp_path, capsys, erm_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(erm_run, run_dir)
    assert main(["attack", str(run_dir), "--attack", "quscore", "--eps", "16/255",
                 "--interpreter", "cam", "--max-queries", "30", "-o", "pop_size=4",
                 "--surrogate", str(erm_run), "--device", "cpu"]) == 0
    assert "median queries" in capsys.readouterr().out
    summary = summary_of(run_dir)
    entry = summary["attacks"][-1]  # after the end-of-run PGD
    assert entry["attack"] == "quscore" and entry["interpreter"] == "cam"
    assert entry["max_queries"] == 30 and entry["params"]["pop_size"] == 4
    assert entry["surrogate"] == str(erm_run) and entry["images"] == 32
    attacked = entry["attacked"]
    assert attacked == round(entry["clean_top1"] * 32 / 100) > 0
    # every image costs its benign query; an attacked one also the population of 4, and at
    # most its budget of 30 in all
    assert 32 + attacked * 4 <= entry["total_queries"] <= 32 - attacked + attacked * 30
    if attacked:
        fooled = round(entry["success_rate"] * attacked)
        assert entry["robust_top1"] == pytest.approx(100 * (attacked - fooled) / 32)
        assert fooled == 0 or 5 <= entry["median_queries"] <= 30
    assert summary["quscore_top1"] == entry["robust_top1"]
    original = (run_dir / "summary.json").read_bytes()
    for args, message in (
            (["--attack", "pgd", "--interpreter", "cam"], "has no option interpreter"),
            (["--attack", "quscore", "-o", "pop_size=1"], "pop_size"),
            (["--attack", "quscore", "-o", "colour=red"], "has no option colour"),
            (["--attack", "quscore", "--max-queries", "0"], "max_queries"),
            (["--attack", "autoattack", "--surrogate", str(erm_run)], "takes no surrogate"),
            (["--attack", "quscore", "--surrogate", str(tmp_path / "none")], "does not exist")):
        assert main(["attack", str(run_dir), "--device", "cpu", "--limit", "2", *args]) == 2
        assert message in capsys.readouterr().err
        assert (run_dir / "summary.json").read_bytes() == original


def test_check_robust_trains_one_pretrained_model_per_phase_for_adv_finetune(tmp_path):
    space = tmp_path / "space.yaml"
    # epochs and batch size leave the search, so that the phases' pre-training (the base
    # settings) is as small as the trials
    space.write_text("train.epochs: null\ndata.batch_size: null\noptim.lr: [0.05]\n")
    out = tmp_path / "check"
    assert main(["check", "robust", "--methods", "at,adv_finetune", "--trials", "1",
                 "--seeds", "1", "--tune-data", "synth100[0-3]", "--eval-data",
                 "synth100[4-7]", "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", "data.options={classes: 8, train_per_class: 16, val_per_class: 4, "
                 "res: 8}", "--set", "model.name=resnet20", "--set", "model.options={width: 4}",
                 "--set", "robust.steps=2", "--set", "robust.eval_steps=3",
                 "--set", "train.epochs=1", "--set", "data.batch_size=16"]) == 0
    inits = sorted((out / "init/robust/erm").glob("init-*/summary.json"))
    assert len(inits) == 2
    tuned = summary_of(next((out / "robust/adv_finetune").glob("tune-*")))
    evaluated = summary_of(next((out / "robust/adv_finetune").glob("eval-*")))
    assert {tuned["init"], evaluated["init"]} == {str(p.parent) for p in inits}
    assert evaluated["init_weights"] == "model"
    at = summary_of(next((out / "robust/at").glob("eval-*")))
    assert at["init"] is None and 0 <= at["robust_top1"] <= at["val_top1"]
