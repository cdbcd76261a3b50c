"""Supervised classification: one training phase on the train split, evaluated on val."""

from hundred.track import ACCURACY_REPORT, Track

TRACK = Track(
    name="classify",
    package=__name__,
    about="supervised classification: train on the train split, top-1/top-5 on val",
    runner=".scenario:run",
    method_base="hundred.engine.method:Method",
    report=ACCURACY_REPORT,
    check_methods=("erm",),
)
