"""`hundred check incremental` accepts every method of issue 15: the exemplar-free ones
(`--memory 0`), a method with language targets, and the discovery methods on a C-GCD
scenario; each is tuned on one half of the classes and evaluated on the other."""

import json

import pytest

from hundred.cli import main

DATA = "data.options={classes: 8, train_per_class: 8, val_per_class: 4, res: 16}"


@pytest.mark.parametrize("methods, extra", [
    ("napa_vq,finetune", ["--scenario", "B0-Inc2", "--memory", "0"]),
    ("gcab_cfdc", ["--scenario", "B0-Inc2", "--memory", "0",
                   "--set", "model.name=convit_ca_tiny", "--set", "model.options={}"]),
    ("replay", ["--scenario", "B0-Inc2", "--memory", "8",
                "--set", "incremental.language_targets=true"]),
    ("simgcd,happy", ["--scenario", "CGCD-2-1x2", "--set", "method_params.projector_hidden=32",
                      # an unlabelled stage holds 80 % of its new classes' images
                      "--set", DATA.replace("train_per_class: 8", "train_per_class: 32")]),
], ids=["exemplar-free", "gcab_cfdc", "language-targets", "discovery"])
def test_check_incremental_accepts_the_method(tmp_path, capsys, methods, extra):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: [1]\ndata.batch_size: [16]\n")
    out = tmp_path / "check"
    assert main(["check", "incremental", "--methods", methods, "--trials", "1", "--seeds", "1",
                 "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", DATA, *extra]) == 0
    assert "conventional rank" in capsys.readouterr().out
    for method in methods.split(","):
        summary = json.loads(next((out / "incremental" / method).glob("eval-*/summary.json"))
                             .read_text())
        assert summary["phase"] == "evaluation" and summary["tuned_on"] == "synth100[0-3]"
        assert 0 <= summary["avg_incremental_accuracy"] <= 100
