"""Dataset condensation (distillation): learn a few synthetic images per class on which a
freshly initialised network reaches as much of the full data's accuracy as possible; the
set is evaluated by training fresh networks on it, N times per labelled setting."""

from hundred.space import Choice
from hundred.track import Metric, ReportSpec, RunImage, Shortcut, Track
from hundred.tracks.condense.config import CondenseConfig

# What ``hundred tune`` varies for every condense method (the training grid of the other
# tracks — epochs, batch, lr of the network — does not apply: the images are the
# parameters); methods add their own entries (e.g. their pixel learning rate).
_GRID = {"condense.image_momentum": Choice((0.5, 0.9)),
         "condense.real_batch": Choice((64, 128, 256))}

TRACK = Track(
    name="condense",
    package=__name__,
    about="dataset condensation: IPC synthetic images per class, evaluated by training fresh "
          "networks on them (mean ± std of their top-1 on val)",
    runner=".scenario:run",
    method_base=".method:CondenseMethod",
    section=CondenseConfig,
    report=ReportSpec(
        metrics=(Metric("eval_top1", "eval top-1"),
                 Metric("eval_top1_std", "± (networks)", higher_is_better=False),
                 Metric("eval_nodsa_top1", "eval top-1, no DSA"),
                 Metric("eval_hard_top1", "eval top-1, hard labels")),
        required=("eval_top1",), always_shown=("model",), descriptors=("ipc",),
        images=(RunImage("synthetic.png", "the learned synthetic set (one row per class)"),)),
    shortcuts=(
        Shortcut("ipc", "condense.ipc", int, help="synthetic images per class"),
        Shortcut("iterations", "condense.iterations", int, help="optimisation steps of the set"),
    ),
    protocol_fixed={"condense.ipc": "the images per class are the experiment itself",
                    "condense.eval_runs": "the evaluation protocol is the same in both phases",
                    "condense.eval_epochs": "the evaluation protocol is the same in both phases",
                    "condense.eval_augment": "the evaluation protocol is the same in both "
                                             "phases",
                    "condense.eval_labels": "the evaluation protocol is the same in both phases"},
    check_methods=("dm", "datadam"),
    grid={"quick": {"condense.image_momentum": Choice((0.5, 0.9)),
                    "condense.real_batch": Choice((16, 32))},
          "paper": _GRID},
    # CPU scale: ConvNet-D3 at width 16 on synth100 at 16 px, IPC 1, short optimisation and
    # evaluation
    budget_base={"quick": ("model.name=convnet_d3", "model.options={width: 16}",
                           "condense.ipc=1", "condense.iterations=20",
                           "condense.eval_runs=2", "condense.eval_epochs=30",
                           "condense.eval_augment=[none]", "condense.checkpoint_every=10")},
    commands=".cli:add_commands",
)
