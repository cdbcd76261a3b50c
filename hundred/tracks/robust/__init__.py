"""Adversarial robustness: train (ERM, adversarial training, adversarial fine-tuning), then
attack the held-out split under a stated threat model (norm, ε in pixel units, PGD steps,
step size, restarts); robust top-1 is the primary metric, clean top-1 is reported with it.
``hundred attack RUN_DIR`` attacks any finished classifier run afterwards.

Test-time adaptation methods (tta_source, tent, eata, reservoir_tta; :mod:`.tta`) adapt a
finished model online on a stream of corrupted val domains (``robust.tta``); their
robust top-1 is the accuracy over the stream, the threat model names the stream."""

from hundred.track import (ATTACK_DESCRIPTORS, ATTACK_METRICS, Metric, ReportSpec, RunImage,
                           Shortcut, Track)
from hundred.tracks.robust.config import RobustConfig

TRACK = Track(
    name="robust",
    package=__name__,
    about="adversarial robustness: train, then PGD/AutoAttack on val; robust and clean top-1 "
          "under the stated threat model (eps in pixel units); test-time adaptation on "
          "corrupted streams (tent, eata, reservoir_tta)",
    runner=".scenario:run",
    method_base=".method:RobustMethod",
    section=RobustConfig,
    report=ReportSpec(
        metrics=(Metric("robust_top1", "robust top-1"), Metric("val_top1", "clean top-1"),
                 *ATTACK_METRICS, Metric("tta_first_cycle_top1", "TTA cycle-1 top-1"),
                 Metric("tta_last_cycle_top1", "TTA last-cycle top-1")),
        required=("robust_top1", "val_top1"),
        always_shown=("model", "threat_model", "eval_attack", *ATTACK_DESCRIPTORS),
        descriptors=("threat_model", "eval_attack", *ATTACK_DESCRIPTORS),
        images=(RunImage("samples.png", "samples drawn from the model (dat: PGD lowering "
                         "its energy from noise seeds, one row per class)"),
                RunImage("tta_stream.png", "test-time adaptation: top-1 of every domain "
                         "visit along the stream, cycle means marked"))),
    shortcuts=(Shortcut("eps", "robust.eps",
                        help="perturbation budget in pixel units, e.g. 8/255"),
               Shortcut("norm", "robust.norm", help="threat model norm: linf or l2"),
               Shortcut("init", "robust.init",
                        help="start from this finished run (RUN_DIR), e.g. for adv_finetune")),
    protocol_fixed={
        "robust.norm": "the threat model is the experiment itself",
        "robust.eps": "the threat model is the experiment itself",
        "robust.eval_attacks": "the evaluation is the same in both phases",
        "robust.eval_steps": "the evaluation is the same in both phases",
        "robust.eval_step_size": "the evaluation is the same in both phases",
        "robust.eval_restarts": "the evaluation is the same in both phases",
        "robust.eval_limit": "the evaluation is the same in both phases",
        **{f"robust.tta.{key}": "the test stream is the same in both phases"
           for key in ("schedule", "corruptions", "severities", "cycles",
                       "images_per_domain")}},
    check_methods=("erm", "at"),
    commands=".cli:add_commands",
    phase_setup=".protocol:phase_init",
)
