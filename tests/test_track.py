"""The track contract: a track written in a package outside hundred (a temporary folder on
sys.path, named in HUNDRED_TRACKS) runs through `hundred run`, `tune`, `check`, `evaluate`
and `report` without any edit to the core; track options are refused on other tracks."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml

from hundred.cli import main
from hundred.errors import HundredError
from hundred.registry import METHODS, PLUGINS_VARIABLE, get_track, methods, tracks
from hundred.track import Metric, ReportSpec, Shortcut, Track

PACKAGE = "toytrack_for_tests"
DATA = ["--set", "data.options={classes: 4, train_per_class: 2, val_per_class: 2, res: 8}"]

FILES = {
    "__init__.py": '''
        """A toy track: its scenario scores a setting without training (fast), and declares
        its own config section, a shortcut and a primary metric that is minimised."""
        from pydantic import Field

        from hundred.config import StrictModel
        from hundred.track import Metric, ReportSpec, Shortcut, Track


        class ToyConfig(StrictModel):
            target: float = Field(0.1, gt=0, description="the learning rate that scores 0")


        TRACK = Track(
            name="toy", package=__name__, about="a toy track for the contract test",
            runner=".scenario:run", method_base=".method:ToyMethod", section=ToyConfig,
            report=ReportSpec(metrics=(Metric("distance", "distance", higher_is_better=False),
                                       Metric("val_top1", "top-1")),
                              required=("distance",), always_shown=("model",)),
            shortcuts=(Shortcut("target", "toy.target", float, help="toy target"),),
            scenario_key="toy.target", protocol_fixed={"toy": "the toy scenario"},
            check_methods=("offset",))
        ''',
    "method.py": '''
        from hundred.engine.method import Method


        class ToyMethod(Method):
            """Base of the toy track's methods: a distance of its own."""

            def distance(self, lr: float, target: float) -> float:
                return abs(lr - target)

            def loss(self, model, images, labels):
                raise AssertionError("the toy scenario never trains")
        ''',
    "scenario.py": '''
        from hundred.engine.run import finish_run, load_data, start_run


        def run(config, method, resume_dir=None):
            ctx = start_run(config, resume_dir)
            dataset = load_data(config)
            summary = {"data": dataset.name, "model": config.model.name,
                       "distance": method.distance(config.optim.lr, config.toy.target)}
            return finish_run(ctx, summary, title="toy", dataset=dataset)
        ''',
    "methods/__init__.py": "",
    "methods/offset.py": '''
        from pydantic import BaseModel, ConfigDict

        from hundred.registry import register
        from hundred.space import Choice

        from ..method import ToyMethod


        class OffsetParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            offset: float = 0.0


        @register("toy", "offset")
        class Offset(ToyMethod):
            """Distance of (lr + offset) to the target."""

            Params = OffsetParams
            search_space = {"method_params.offset": Choice((0.0, 0.05))}

            def distance(self, lr, target):
                return abs(lr + self.params.offset - target)
        ''',
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy track's package written into a temporary folder and announced to hundred."""
    for name, text in FILES.items():
        path = tmp_path / "src" / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setenv(PLUGINS_VARIABLE, PACKAGE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for key in [k for k in METHODS if k[0] == "toy"]:
        del METHODS[key]
    for module in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[module]


def test_a_track_outside_the_core_is_found_with_its_methods(toy):
    assert "toy" in tracks() and {"classify", "incremental"} <= set(tracks())
    track = get_track("toy")
    assert track.primary.key == "distance" and track.direction == "minimize"
    assert list(methods("toy")) == ["offset"]


def test_run_tune_check_evaluate_and_report_on_the_toy_track(toy, capsys):
    runs = toy / "runs"
    assert main(["run", "toy", "offset", "--root", str(runs), "--name", "one", "--lr", "0.3",
                 "--target", "0.2", "-q", *DATA]) == 0
    summary = json.loads((runs / "toy/offset/one/summary.json").read_text())
    assert summary["distance"] == pytest.approx(0.1)
    assert yaml.safe_load((runs / "toy/offset/one/config.yaml").read_text())["toy"] == {"target": 0.2}

    space = toy / "space.yaml"
    space.write_text("optim.lr: [0.05, 0.1, 0.2]\ntrain.epochs: null\ndata.batch_size: null\n")
    assert main(["tune", "toy", "offset", "--data", "synth100[0-1]", "--trials", "4",
                 "--root", str(runs), "--space", str(space), "--device", "cpu", *DATA]) == 0
    best = yaml.safe_load(next((runs / "best").glob("*.yaml")).read_text())
    assert best["objective"] == "distance" and best["direction"] == "minimize"
    assert best["scenario"] == "0.1"  # the track's scenario_key, at its default
    trials = [json.loads(p.read_text())["distance"] for p in (runs / "toy/offset").glob("tune-*/summary.json")]
    assert best["value"] == min(trials)  # minimised, as the track declares

    out = toy / "check"
    assert main(["check", "toy", "--tune-data", "synth100[0-1]", "--eval-data", "synth100[2-3]",
                 "--trials", "2", "--seeds", "1", "--out", str(out), "--space", str(space),
                 "--target", "0.15", *DATA]) == 0
    printed = capsys.readouterr().out
    assert "Conventional" in printed and "Tune-then-evaluate" in printed and "offset" in printed
    evaluated = json.loads(next((out / "toy/offset").glob("eval-*/summary.json")).read_text())
    assert evaluated["phase"] == "evaluation" and evaluated["scenario"] == "0.15"
    assert yaml.safe_load(next((out / "toy/offset").glob("eval-*/config.yaml")).read_text()
                          )["toy"]["target"] == 0.15

    assert main(["report", str(runs / "toy"), "--out", str(toy / "report")]) == 0
    markdown = (toy / "report" / "report.md").read_text()
    assert "## Track: toy" in markdown and "distance" in markdown


def test_track_options_belong_to_their_track(toy, capsys):
    assert main(["run", "classify", "erm", "--target", "0.2", "--root", str(toy)]) == 2
    assert "--target is not an option of track classify" in capsys.readouterr().err
    assert main(["run", "toy", "offset", "--scenario", "B0-Inc10", "--root", str(toy)]) == 2
    assert "--scenario is not an option of track toy" in capsys.readouterr().err
    assert main(["run", "classify", "erm", "--set", "toy.target=0.2", "--root", str(toy)]) == 2
    assert "toy: unknown key" in capsys.readouterr().err


def test_a_broken_track_declaration_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PLUGINS_VARIABLE, "no_such_track_package")
    with pytest.raises(HundredError, match="no_such_track_package cannot be imported"):
        tracks()
    with pytest.raises(ValueError, match="not in its own config section"):
        Track(name="bad", package="x", about="", runner="", method_base="",
              report=ReportSpec(metrics=(Metric("m", "m"),), required=()),
              shortcuts=(Shortcut("lr", "optim.lr", float),))
