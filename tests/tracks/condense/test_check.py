"""condense is tunable: `hundred check condense` tunes on one half of the classes and
evaluates the frozen parameters on the other, ranking by the evaluated accuracy of the
learned set (the track's primary metric), over the track's own grid (pixel updates, not
training epochs)."""

import json

from hundred.cli import main
from hundred.protocol.space import space_for
from hundred.registry import get_method, get_track


def test_the_track_grid_replaces_the_training_grid():
    space = space_for(get_method("condense", "dm"), "quick")
    assert "condense.image_momentum" in space and "condense.image_lr" in space
    assert "train.epochs" not in space and "data.batch_size" not in space


def test_check_condense_ranks_by_evaluated_accuracy(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("condense.image_lr: [1.0]\ncondense.real_batch: [4]\n")
    out = tmp_path / "check"
    assert main(["check", "condense", "--methods", "dm,datadam", "--trials", "1",
                 "--seeds", "1", "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", "data.options={classes: 8, train_per_class: 6, val_per_class: 3, "
                 "res: 8}", "--set", "model.options={width: 8}",
                 "--set", "condense.iterations=2", "--set", "condense.eval_epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "eval top-1" in printed and "conventional rank" in printed
    assert get_track("condense").primary.key == "eval_top1"
    best = next((out / "best").glob("*.yaml")).read_text()
    assert "objective: eval_top1" in best
    evaluation = json.loads(next((out / "condense/datadam").glob("eval-*/summary.json"))
                            .read_text())
    assert evaluation["phase"] == "evaluation" and evaluation["tuned_on"] == "synth100[0-3]"
    assert evaluation["ipc"] == 1 and 0 <= evaluation["eval_top1"] <= 100
