"""ssl is tunable: `hundred check ssl` tunes on one half of the classes and evaluates the
frozen parameters on the other, ranking by linear-probe top-1 (the track's primary metric)."""

import json

from hundred.cli import main
from hundred.registry import get_track


def test_check_ssl_ranks_by_the_linear_probe(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: [1]\ndata.batch_size: [16]\n")
    out = tmp_path / "check"
    assert main(["check", "ssl", "--methods", "simclr,moco_ft", "--trials", "1", "--seeds", "1",
                 "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", "data.options={classes: 8, train_per_class: 16, val_per_class: 4, "
                 "res: 16}", "--set", "model.options={width: 4}",
                 "--set", "ssl.probe_epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "linear probe top-1" in printed and "conventional rank" in printed
    assert get_track("ssl").primary.key == "linear_top1"
    best = next((out / "best").glob("*.yaml")).read_text()
    assert "objective: linear_top1" in best
    evaluation = json.loads(next((out / "ssl/moco_ft").glob("eval-*/summary.json")).read_text())
    assert evaluation["phase"] == "evaluation" and evaluation["tuned_on"] == "synth100[0-3]"
    assert 0 <= evaluation["linear_top1"] <= 100
