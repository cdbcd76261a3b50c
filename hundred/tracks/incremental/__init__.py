"""Class-incremental learning: classes arrive in tasks; after each task the model is
evaluated on every class seen so far, without task identity at test time."""

from hundred.track import Metric, ReportSpec, Shortcut, StepSeries, Track
from hundred.tracks.incremental.config import IncrementalConfig

TRACK = Track(
    name="incremental",
    package=__name__,
    about="class-incremental learning: B<base>-Inc<step> tasks, exemplar memory, NME",
    runner=".scenario:run",
    method_base=".method:IncrementalMethod",
    section=IncrementalConfig,
    # Cha & Cho (TMLR 2025) tune and report average incremental accuracy.
    report=ReportSpec(
        descriptors=("memory",),
        metrics=(Metric("avg_incremental_accuracy", "avg incremental acc"),
                 Metric("last_accuracy", "last acc"),
                 Metric("avg_forgetting", "avg forgetting", higher_is_better=False),
                 Metric("nme_avg_incremental_accuracy", "NME avg incremental acc"),
                 # C-GCD runs (CGCD-* scenarios): clustering accuracy after the last stage
                 Metric("cgcd_last_old", "last old (C-GCD)"),
                 Metric("cgcd_last_new", "last new (C-GCD)")),
        required=("avg_incremental_accuracy", "last_accuracy"),
        always_shown=("protocol",),
        terminal_hidden=("NME avg incremental acc",),
        steps=StepSeries(
            steps="classes_per_step", steps_label="number of classes",
            curve="step_top1", curve_label="top-1 accuracy on seen classes (%)",
            matrix="accuracy_matrix", matrix_row_label="after training task",
            matrix_column_label="evaluated on the classes of task",
            optional_curves=("nme_step_top1",), optional_matrices=("nme_accuracy_matrix",),
            figure_names=("accuracy_curve", "accuracy_matrix"))),
    shortcuts=(
        Shortcut("scenario", "incremental.scenario",
                 help="class-incremental split, e.g. B0-Inc10, B50-Inc10; or continual "
                      "category discovery, CGCD-<known>-<stages>x<new>, e.g. CGCD-50-5x10"),
        Shortcut("memory", "incremental.memory", int,
                 help="exemplars in total (0: exemplar-free)"),
    ),
    scenario_key="incremental.scenario",
    protocol_fixed={"incremental": "the scenario (tasks, class order, memory) is the same in "
                                   "both phases"},
    check_methods=("finetune", "replay", "wa"),
    # the quick tuning budget's memory: 10 exemplars a class on synth100 at 100 images a class
    budget_base={"quick": ("incremental.memory=500",)},
)
