"""Generation: class-conditional diffusion and flow models trained with the engine, their
samplers (DDPM, DDIM, classifier-free guidance, Euler / Heun / FlowTurbo, Skip-Tuning, SFD's
asynchronous denoising, PPGN's iterative sampling), and sample quality measured with a
classifier the project trained (feature Fréchet distance, precision/recall, accuracy on the
samples) or with a user-supplied Inception file (FID, IS)."""

from hundred.track import Metric, ReportSpec, RunImage, Shortcut, Track
from hundred.tracks.generate.config import GenerateConfig

TRACK = Track(
    name="generate",
    package=__name__,
    about="generation: class-conditional diffusion / flow models and their samplers; sample "
          "quality as a feature Fréchet distance on a classifier hundred trained (not FID), "
          "precision / recall, the classifier's accuracy on the samples, images/s and NFE",
    runner=".scenario:run",
    method_base=".method:GenerateMethod",
    section=GenerateConfig,
    report=ReportSpec(
        metrics=(Metric("fd", "FD (evaluator features)", higher_is_better=False),
                 Metric("precision", "precision"),
                 Metric("recall", "recall"),
                 Metric("sample_top1", "top-1 on samples"),
                 Metric("fid", "FID", higher_is_better=False),
                 Metric("inception_score", "IS"),
                 Metric("images_per_second", "images/s"),
                 Metric("nfe", "NFE / sample", higher_is_better=False)),
        required=("fd", "sample_top1", "images_per_second", "nfe"),
        always_shown=("model", "steps", "guidance"),
        descriptors=("steps", "guidance", "eta", "latent"),
        images=(RunImage("samples.png", "samples, one row per class"),)),
    shortcuts=(
        Shortcut("steps", "generate.steps", int, help="sampling steps"),
        Shortcut("guidance", "generate.guidance", float,
                 help="classifier-free guidance scale w (1: conditional, 0: unconditional)"),
        Shortcut("init", "generate.init", help="a finished generate run whose networks are "
                 "reused (sampling only)"),
    ),
    protocol_fixed={
        "generate.samples_per_class": "the measurement is the same in both phases",
        "generate.evaluator_epochs": "the measurement is the same in both phases",
        "generate.denoiser": "the network is the experiment's, not a sampler setting",
        "generate.denoiser_options": "the network is the experiment's, not a sampler setting"},
    check_methods=("ddim_cfg", "flowturbo"),
    phase_setup=".protocol:phase_generators",
    # the upstream runs an experiment takes one of per seed: a sampling run's trained network,
    # its VAE, PPGN's condition classifier, SFD's encoder (report rows average over seeds)
    seed_paired=("generate.init", "generate.latent", "method_params.condition",
                 "method_params.encoder"),
    commands=".cli:add_commands",
)
