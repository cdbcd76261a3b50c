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


def test_check_trains_one_teacher_per_phase_for_distillation(tmp_path, capsys):
    """Tuning and evaluation use different classes, so each phase distils from a teacher of
    its own classes, trained once (a second check with the same --out reuses it)."""
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: [1]\ndata.batch_size: [16]\n")
    out = tmp_path / "check"
    args = ["check", "classify", "--methods", "kd,erm", "--trials", "1", "--seeds", "1",
            "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
            "--space", str(space), "--out", str(out), "--device", "cpu",
            "--set", TINY, "--set", "model.name=convnet_d3",
            "--set", "data.options={classes: 8, train_per_class: 32, val_per_class: 4, res: 8}",
            "--set", "classify.teacher_model=resnet20"]
    assert main(args) == 0
    teachers = sorted((out / "teachers/classify/erm").glob("teacher-*/summary.json"))
    assert len(teachers) == 2
    data = {json.loads(t.read_text())["data"]: t.parent for t in teachers}
    classes = {json.loads((t.parent / "summary.json").read_text())["classes"] for t in teachers}
    assert classes == {4}
    tuned = json.loads(next((out / "classify/kd").glob("tune-*/summary.json")).read_text())
    evaluated = json.loads(next((out / "classify/kd").glob("eval-*/summary.json")).read_text())
    assert tuned["teacher_spec"] != evaluated["teacher_spec"]
    assert {tuned["teacher_spec"], evaluated["teacher_spec"]} == {str(d) for d in data.values()}
    assert evaluated["teacher"].startswith("resnet20 (run teacher-synth100")
    erm = json.loads(next((out / "classify/erm").glob("eval-*/summary.json")).read_text())
    assert erm["teacher"] is None and erm["teacher_spec"] is None  # only kd gets the teacher
    header = next(line for line in (out / "report" / "report.md").read_text().splitlines()
                  if line.startswith("| method |"))
    assert "| teacher |" in header
    capsys.readouterr()
    assert main(args) == 0  # resumed: the teachers are reused, not retrained
    assert capsys.readouterr().err.count("already done") >= 2
    assert sorted((out / "teachers/classify/erm").glob("teacher-*/summary.json")) == teachers


def test_check_refuses_one_teacher_for_both_phases(tmp_path, capsys):
    assert main(["check", "classify", "--methods", "kd", "--trials", "1", "--seeds", "1",
                 "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--out", str(tmp_path / "c"), "--device", "cpu", "--set", TINY,
                 "--teacher", str(tmp_path)]) == 2
    assert "one teacher per phase" in capsys.readouterr().err
    assert not (tmp_path / "c" / "classify").exists()
