"""Self-supervised pre-training: a backbone learns from unlabelled views of the train split;
it is evaluated as the SSL papers do, by a linear probe and a weighted kNN on its frozen
features of the held-out split (and by the online probe during pre-training)."""

from hundred.track import EpochHistogram, Metric, ReportSpec, Track
from hundred.tracks.ssl.config import SSLConfig

TRACK = Track(
    name="ssl",
    package=__name__,
    about="self-supervised pre-training: views without labels; linear-probe and kNN accuracy "
          "of the frozen features on val",
    runner=".scenario:run",
    method_base=".method:SSLMethod",
    section=SSLConfig,
    report=ReportSpec(
        metrics=(Metric("linear_top1", "linear probe top-1"),
                 Metric("knn20_top1", "kNN-20 top-1"),
                 Metric("knn200_top1", "kNN-200 top-1"),
                 Metric("online_top1", "online probe top-1")),
        required=("linear_top1",), always_shown=("model",),
        # the pair-score distributions of Zhu et al. (ICCV 2021) that MoCo-style methods log
        # per epoch (hundred.tracks.ssl.methods.moco.ScoreHistogram)
        histograms=(
            EpochHistogram("score_hist", "pair score (cosine similarity)",
                           "positive and negative pair scores", name="scores"),
            EpochHistogram("score_hist_transformed", "pair score after the transformation",
                           "pair scores after the feature transformation",
                           name="scores_transformed"))),
    check_methods=("simclr", "moco", "moco_ft"),
    # the quick tuning budget: a short offline probe
    budget_base={"quick": ("ssl.probe_epochs=20", "ssl.augment=simclr-small")},
)
