"""The robust section: ε in pixel units, written as 8/255 if one likes, refused outside
[0, 1]; and adversarial fine-tuning's schedule: slow start, fast decay, zero at the last
step (a pure function of the step, like every schedule of the trainer)."""

from __future__ import annotations

import pytest

from hundred.config import build_config
from hundred.engine.trainer import lr_factor
from hundred.errors import HundredError
from hundred.registry import get_method
from hundred.tracks.robust.config import eps_label, parse_eps


def test_eps_takes_fractions_and_refuses_values_outside_pixel_range():
    config = build_config(overrides=["track=robust", "robust.eps=4/255",
                                     "robust.step_size=1/255"])
    assert config.robust.eps == pytest.approx(4 / 255)
    assert config.robust.step_size == pytest.approx(1 / 255)
    assert config.robust.label() == "Linf 4/255" and eps_label(0.5) == "0.5"
    for bad in ("8", "-0.01", "nan", "8/0", "eight"):
        with pytest.raises(HundredError, match="robust.eps"):
            build_config(overrides=["track=robust", f"robust.eps={bad}"])
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        parse_eps(255 / 8)


def factors(epochs: int = 10, steps_per_epoch: int = 7, peak: float = 0.5) -> list[float]:
    config = build_config(overrides=["track=robust", "method=adv_finetune",
                                     f"train.epochs={epochs}",
                                     f"method_params={{peak_fraction: {peak}}}"])
    method = get_method("robust", "adv_finetune")(config.method_params, config)
    schedule = method.schedule(config)
    total = epochs * steps_per_epoch
    return [lr_factor(step, steps_per_epoch, epochs, schedule) for step in range(total)]


@pytest.mark.parametrize("peak", [0.3, 0.5])
def test_adv_finetune_schedule_starts_slow_decays_fast_and_ends_at_zero(peak):
    values = factors(peak=peak)
    top = values.index(max(values))
    assert max(values) == pytest.approx(1.0)
    assert top == pytest.approx(peak * len(values), abs=1)
    assert values[0] < 0.05  # slow start: from (almost) zero ...
    assert all(b > a for a, b in zip(values[:top], values[1:top + 1]))  # ... rising to the peak
    assert all(b < a for a, b in zip(values[top:], values[top + 1:]))  # then falling ...
    assert values[-1] == 0.0  # ... to exactly zero at the last step
    # linear on both sides: constant slopes
    rises = {round(b - a, 9) for a, b in zip(values[:top], values[1:top + 1])}
    falls = {round(a - b, 9) for a, b in zip(values[top:], values[top + 1:])}
    assert len(rises) == 1 and len(falls) == 1


def test_the_linear_schedule_without_warmup_also_ends_at_zero():
    config = build_config(overrides=["schedule.name=linear", "schedule.min_lr_ratio=0.1"])
    values = [lr_factor(step, 5, 2, config.schedule) for step in range(10)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.1)
