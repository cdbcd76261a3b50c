"""Compression: train (dense, and later pruned, memory-saving or spiking networks), then
measure what the model costs — parameters, FLOPs and MACs (fvcore: one multiply-add = one
flop, so fvcore's count is MACs and FLOPs = 2 x MACs), sparsity and layer widths, latency at
batch 1 and a large batch, the bytes one training step saves for backward — next to its
accuracy, and export the compressed model as a plain finished run."""

from hundred.track import (ATTACK_DESCRIPTORS, ATTACK_METRICS, CostScatter, Metric, ReportSpec,
                           RunImage, Shortcut, Track)
from hundred.tracks.compress.config import CompressConfig

TRACK = Track(
    name="compress",
    package=__name__,
    about="compression: accuracy against parameters, FLOPs (2 x fvcore MACs), sparsity, "
          "latency and saved-activation memory; the compressed model exported",
    runner=".scenario:run",
    method_base=".method:CompressMethod",
    section=CompressConfig,
    report=ReportSpec(
        metrics=(Metric("val_top1", "top-1"),
                 Metric("params_k", "params (k)", higher_is_better=False),
                 Metric("mflops", "MFLOPs", higher_is_better=False),
                 Metric("sparsity_pct", "sparsity (%)"),
                 Metric("latency_b1_ms", "latency b1 (ms)", higher_is_better=False),
                 Metric("latency_large_ms", "latency large batch (ms)",
                        higher_is_better=False),
                 Metric("saved_activation_mib", "saved act. (MiB)", higher_is_better=False),
                 Metric("peak_train_mib", "peak train mem (MiB)", higher_is_better=False),
                 # spiking networks (iir_snn): absent from other runs' summaries
                 Metric("spike_rate_mean", "spike rate", higher_is_better=False),
                 Metric("energy_ratio", "energy vs ANN", higher_is_better=False),
                 *ATTACK_METRICS),  # hundred attack RUN_DIR (the robust track's command)
        required=("val_top1", "params_k", "mflops", "saved_activation_mib"),
        always_shown=("model", "flops_target", *ATTACK_DESCRIPTORS),
        descriptors=("flops_target", "timesteps", *ATTACK_DESCRIPTORS),
        terminal_hidden=("latency large batch (ms)", "peak train mem (MiB)"),
        scatters=(
            CostScatter("flops", "FLOPs (2 x fvcore MACs, batch 1)", name="top1_vs_flops"),
            CostScatter("params", "parameters", name="top1_vs_params"),
            CostScatter("saved_activation_bytes", "bytes saved for backward (one step)",
                        name="top1_vs_memory")),
        images=(RunImage("eeea_pareto.png", "eeea: proxy error against parameters of every "
                         "searched candidate, the final Pareto front and the chosen one"),)),
    shortcuts=(Shortcut("flops-target", "compress.flops_target", float,
                        help="share of the dense model's FLOPs to keep, in (0, 1)"),
               Shortcut("init", "compress.init",
                        help="start from this finished run (RUN_DIR), e.g. the dense model "
                             "to prune")),
    protocol_fixed={
        "compress.flops_target": "the FLOPs budget is the experiment itself",
        "compress.latency_batch": "the measurement is the same in both phases",
        "compress.latency_warmup": "the measurement is the same in both phases",
        "compress.latency_repeats": "the measurement is the same in both phases"},
    check_methods=("dense",),
    commands=".cli:add_commands",  # hundred search compress RUN_DIR (supernet children)
)
