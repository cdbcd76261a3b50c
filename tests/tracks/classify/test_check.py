"""classify is tunable: `hundred check classify` tunes ERM on one half of the classes and
evaluates it on the other, ranking by top-1 (the track's primary metric)."""

import json

from hundred.cli import main
from hundred.registry import get_track

TINY = "data.options={classes: 8, train_per_class: 8, val_per_class: 4, res: 8}"


def test_check_classify_prints_both_leaderboards(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: [1]\ndata.batch_size: [16]\noptim.lr: [0.05, 0.1]\n")
    out = tmp_path / "check"
    assert main(["check", "classify", "--methods", "erm", "--trials", "2", "--seeds", "1",
                 "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", TINY, "--set", "model.name=convnet_d3"]) == 0
    printed = capsys.readouterr().out
    assert "Conventional: tuned and reported on synth100[0-3]" in printed
    assert "Tune-then-evaluate: tuned on synth100[0-3], evaluated on synth100[4-7]" in printed
    assert "top-1" in printed and "conventional rank" in printed
    best = next((out / "best").glob("*.yaml")).read_text()
    assert f"objective: {get_track('classify').primary.key}" in best
    evaluation = json.loads(next((out / "classify/erm").glob("eval-*/summary.json")).read_text())
    assert evaluation["phase"] == "evaluation" and evaluation["tuned_on"] == "synth100[0-3]"
    assert 0 <= evaluation["val_top1"] <= 100
