"""Supervised classification: one training phase on the train split, evaluated on val; the
track of plain training, distillation from a teacher and training-signal regularisers."""

from hundred.track import (ATTACK_DESCRIPTORS, ATTACK_METRICS, Metric, ReportSpec, Shortcut,
                           Track)
from hundred.tracks.classify.config import ClassifyConfig

TRACK = Track(
    name="classify",
    package=__name__,
    about="supervised classification: train on the train split, top-1/top-5 and calibration "
          "on val",
    runner=".scenario:run",
    method_base=".method:ClassifyMethod",
    section=ClassifyConfig,
    report=ReportSpec(
        metrics=(Metric("val_top1", "top-1"), Metric("val_top5", "top-5"),
                 Metric("val_ece", "ECE", higher_is_better=False),
                 Metric("val_loss", "NLL", higher_is_better=False),
                 *ATTACK_METRICS),  # hundred attack RUN_DIR (the robust track's command)
        required=("val_top1",), always_shown=("model", "teacher", *ATTACK_DESCRIPTORS),
        descriptors=("teacher", *ATTACK_DESCRIPTORS)),
    shortcuts=(Shortcut("teacher", "classify.teacher",
                        help="teacher of distillation methods: RUN_DIR or timm:NAME:PATH"),
               Shortcut("init", "classify.init",
                        help="start from the backbone of this finished run (RUN_DIR)")),
    check_methods=("erm",),
    commands=".cli:add_commands",
    phase_setup=".protocol:phase_teacher",
)
