"""Evaluation metrics: the expected calibration error matches its definition (Guo et al.,
ICML 2017, Eq. 3: 15 equal-width confidence bins, |accuracy - confidence| weighted by the
share of samples in the bin)."""

import torch

from hundred.engine.metrics import ECE_BINS, evaluate


def brute_force_ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    confidence, prediction = logits.softmax(1).max(1)
    correct = (prediction == labels).float()
    total = 0.0
    for b in range(ECE_BINS):
        low, high = b / ECE_BINS, (b + 1) / ECE_BINS
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].mean()).abs()
            total += float(gap) * float(inside.float().mean())
    return 100 * total


class Fixed(torch.nn.Module):
    """A "model" that returns stored logits batch by batch."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.at = logits, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.at:self.at + len(images)]
        self.at += len(images)
        return out


def test_ece_and_nll_match_their_definitions_over_several_batches():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, 5, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    images = torch.zeros(200, 1)
    batches = [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 200, 64)]
    result = evaluate(Fixed(logits), batches)
    assert abs(result["ece"] - brute_force_ece(logits, labels)) < 1e-3
    nll = float(torch.nn.functional.cross_entropy(logits, labels))
    assert abs(result["loss"] - nll) < 1e-5
    assert result["ece"] > 5  # random logits at this scale are badly calibrated
