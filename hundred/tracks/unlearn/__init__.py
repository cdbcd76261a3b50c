"""Machine unlearning: train (or load) the original model, choose a forget set (random, or
the worst-case set of Fan et al., ECCV 2024), unlearn it with one method, and measure
unlearning accuracy (UA = 100 - forget-set top-1), remaining accuracy (RA), testing accuracy
(TA, on val), MIA-efficacy and the run time; with a retrain reference, each metric's gap to
retraining and their average (``avg_gap``, the primary metric: lower is better)."""

from hundred.track import Metric, ReportSpec, Shortcut, Track
from hundred.tracks.unlearn.config import UnlearnConfig

TRACK = Track(
    name="unlearn",
    package=__name__,
    about="machine unlearning: forget a random or worst-case part of the train split; UA, "
          "RA, TA, MIA-efficacy, and the gap to retraining on the same forget set",
    runner=".scenario:run",
    method_base=".method:UnlearnMethod",
    section=UnlearnConfig,
    report=ReportSpec(
        # the primary metric: the papers' "Avg. Gap" to retraining on the same forget set
        # (null without unlearn.reference; UA alone would reward destroying the model)
        metrics=(Metric("avg_gap", "avg gap to retrain", higher_is_better=False),
                 Metric("ua", "UA (forget, %)"), Metric("ra", "RA (retain)"),
                 Metric("ta", "TA (val)"), Metric("mia", "MIA-efficacy"),
                 Metric("mia_svc", "MIA-efficacy (SVC)"),
                 Metric("unlearn_seconds", "unlearn time (s)", higher_is_better=False)),
        required=("ua", "ra", "ta", "mia"),
        always_shown=("model", "forget", "forget_count"),
        descriptors=("forget", "forget_count"),
        terminal_hidden=("MIA-efficacy (SVC)",)),
    shortcuts=(Shortcut("forget", "unlearn.forget", help="random or worst_case"),
               Shortcut("forget-fraction", "unlearn.forget_fraction", float,
                        help="share of the train split to forget, in (0, 1)"),
               Shortcut("init", "unlearn.init",
                        help="the original model: a finished run (RUN_DIR) on the same data"),
               Shortcut("reference", "unlearn.reference",
                        help="the retrain run (RUN_DIR) with the same forget set")),
    scenario_key="unlearn.forget",
    protocol_fixed={
        "unlearn.forget": "the forget set is the experiment itself",
        "unlearn.forget_fraction": "the forget set is the experiment itself"},
)
