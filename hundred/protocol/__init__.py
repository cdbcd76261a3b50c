"""The tune-then-evaluate protocol (Cha & Cho, "Hyperparameters in Continual Learning: a
Reality Check", TMLR 2025): hyperparameters are tuned on one dataset, frozen, and evaluated
on a different dataset with the same scenario, over several seeds.

* :mod:`.space` — search spaces (the shared grid per budget + each method's own entries);
* :mod:`.tune` — ``hundred tune``: an Optuna study on the tuning data, best params to YAML;
* :mod:`.evaluate` — ``hundred evaluate``: frozen parameters on the evaluation data;
* :mod:`.check` — ``hundred check``: both phases for several methods, both leaderboards.

Importing this package imports neither torch nor Optuna (methods import :mod:`.space`).
"""

# Defaults of ``hundred tune/evaluate/check``: the built-in synth100 split into class-disjoint
# halves (as the paper splits CIFAR-100); small enough for a CPU. The methods a check compares
# by default and the scenario are the track's (``Track.check_methods``, its config section).
DEFAULT_TUNE_DATA = "synth100[0-49]"
DEFAULT_EVAL_DATA = "synth100[50-99]"
DEFAULT_TRIALS = 5
DEFAULT_SEEDS = 2
