"""Backward-compatible representation learning: an old embedding model trained on part of the
classes, a new one trained on all of them by the method, then image retrieval on val (each
val image a query against all the others, cosine distance) with gallery and queries embedded
by the old model (old/old), the gallery by the old and the queries by the new model (new/old:
backward compatibility) and both by the new model (new/new). The new model is compatible
when new/old beats old/old (Shen et al., CVPR 2020)."""

from hundred.track import Metric, ReportSpec, Shortcut, Track
from hundred.tracks.compat.config import CompatConfig

TRACK = Track(
    name="compat",
    package=__name__,
    about="backward-compatible representations: retrieval top-1/mAP old/old, new/old, new/new "
          "on val; compatible when new/old beats old/old",
    runner=".scenario:run",
    method_base=".method:CompatMethod",
    section=CompatConfig,
    report=ReportSpec(
        metrics=(Metric("newold_top1", "new/old top-1"),
                 Metric("newold_map", "new/old mAP"),
                 Metric("oldold_top1", "old/old top-1"),
                 Metric("oldold_map", "old/old mAP"),
                 Metric("newnew_top1", "new/new top-1"),
                 Metric("newnew_map", "new/new mAP"),
                 Metric("compat_gain_top1", "new/old - old/old top-1"),
                 Metric("val_top1", "new model top-1")),
        required=("newold_top1", "newold_map", "oldold_top1", "oldold_map", "newnew_top1",
                  "newnew_map"),
        always_shown=("model", "old_classes"),
        descriptors=("old_classes", "embed_dim")),
    shortcuts=(Shortcut("old", "compat.old",
                        help="reuse the old model of this finished compat run (RUN_DIR)"),
               Shortcut("old-classes", "compat.old_classes", float,
                        help="share of the classes the old model is trained on, in (0, 1)")),
    scenario_key="compat.old_classes",
    protocol_fixed={
        "compat.old_classes": "the old/new class split is the experiment itself",
        "compat.embed_dim": "the old model's embedding is part of the scenario",
        "compat.old_epochs": "the old model is part of the scenario"},
    check_methods=("independent", "oca"),
)
