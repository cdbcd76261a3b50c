"""Spiking networks in the compress track, tiny: IIR-SNN (a forward pass at T = 1 is one step;
a converted SNN's spike rates follow the ANN's activations; the T = 2 -> 1 chain of runs),
the PDSG surrogate (its width follows the membrane potential's spread) and attack, SDA (binary
perturbations; reduction never adds flips) and the synth100-events source."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hundred.cli import main
from hundred.data.sources.events import open_synth100_events, pack_events, unpack_events
from hundred.errors import HundredError
from hundred.models import create
from hundred.models.spiking import (PotentialDependentSurrogate, attack_surrogate,
                                    spiking_backbone, spiking_cost)
from hundred.tracks.compress.methods.iir_snn import IIRSNN
from hundred.tracks.robust.attacks import ThreatModel, check_budget
from hundred.tracks.robust.spiking import margin_loss, sparse_dynamic_attack

LAYERS = [8, "A", 16, "A"]


def tiny_snn(timesteps: int, events: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    model = create("spiking_vgg", 4, img_size=8, layers=LAYERS, events=events).eval()
    if timesteps:
        spiking_backbone(model).to_spiking(timesteps)
    return model


def neuron_calls(model, inputs) -> list[int]:
    calls = [0] * len(spiking_backbone(model).neurons)
    hooks = [neuron.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, neuron in enumerate(spiking_backbone(model).neurons)]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return calls


def test_at_one_timestep_a_forward_pass_is_a_single_step():
    images = torch.randn(2, 3, 8, 8)
    assert neuron_calls(tiny_snn(1), images) == [1, 1]
    assert neuron_calls(tiny_snn(3), images) == [3, 3]
    assert neuron_calls(tiny_snn(0), images) == [0, 0]  # the ANN twin: ReLU, no neuron


class _Batches:
    """What the calibration reads: a loader with ``set_epoch``."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


def test_a_converted_snn_s_spike_rates_follow_the_ann_s_activations():
    ann = tiny_snn(0)
    images = torch.randn(16, 3, 8, 8)
    backbone = spiking_backbone(ann)
    with torch.no_grad():  # the ANN's first-block activations
        activations = torch.relu(backbone.norms[0](backbone.convs[0](images)))
    method = IIRSNN({"timesteps": 64})
    method._loader = _Batches([(images, torch.zeros(16, dtype=torch.long))])
    backbone.to_spiking(64)
    method._calibrate(ann, torch.device("cpu"))
    outputs = []
    hook = backbone.neurons[0].register_forward_hook(lambda m, i, out: outputs.append(out))
    with torch.no_grad():
        ann(images)
    hook.remove()
    theta = float(backbone.neurons[0].threshold.detach())
    rate = torch.stack(outputs).sum(0) / (64 * theta)  # spikes per step
    target = activations.clamp(max=theta) / theta  # an IF neuron's rate: the clipped activation
    correlation = torch.corrcoef(torch.stack([rate.flatten(), target.flatten()]))[0, 1]
    assert correlation > 0.98
    assert (rate - target).abs().mean() < 0.05
    assert theta == pytest.approx(float(torch.quantile(
        backbone.convs[0](images).detach().flatten(), 0.9)), rel=1e-3)  # the 90th percentile


def test_pdsg_width_follows_the_membrane_potential_s_standard_deviation():
    torch.manual_seed(0)
    potentials = torch.randn(8, 3, 5, 5) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1)
    narrow, wide = PotentialDependentSurrogate(), PotentialDependentSurrogate()
    sigma = narrow.width(potentials)
    assert sigma.shape == (1, 3, 1, 1)  # per channel for a convolution
    assert torch.allclose(sigma.flatten(), potentials.std(dim=(0, 2, 3)))
    assert torch.allclose(wide.width(2 * potentials), 2 * sigma)
    # the backward pass is the N(0.5 sigma, sigma^2) density, sigma over the steps so far
    probe = PotentialDependentSurrogate()
    probe.potentials = [potentials]  # what an earlier step recorded
    x = torch.randn(8, 3, 5, 5).requires_grad_(True)
    spikes = probe(x)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    spikes.sum().backward()
    spread = torch.stack([potentials, x.detach()]).std(dim=(0, 1, 3, 4)).view(1, 3, 1, 1)
    density = torch.exp(-0.5 * ((x.detach() - 0.5 * spread) / spread) ** 2) / (
        math.sqrt(2 * math.pi) * spread)
    assert torch.allclose(x.grad, density, rtol=1e-4)


def test_the_attack_surrogate_is_swapped_in_and_restored():
    model = tiny_snn(2)
    backbone = spiking_backbone(model)
    trained = [neuron.lif.spike_grad for neuron in backbone.neurons]
    images = torch.randn(4, 3, 8, 8)
    gradients = {}
    for name in ("fixed", "pdsg"):
        with attack_surrogate(backbone, name):
            inputs = images.clone().requires_grad_(True)
            model(inputs).logsumexp(dim=1).sum().backward()
            gradients[name] = inputs.grad
            if name == "pdsg":
                assert all(isinstance(n.lif.spike_grad, PotentialDependentSurrogate)
                           for n in backbone.neurons)
    assert [neuron.lif.spike_grad for neuron in backbone.neurons] == trained
    assert not torch.allclose(gradients["fixed"], gradients["pdsg"])


def test_sda_flips_bits_and_its_reduction_never_adds_a_flip():
    model = tiny_snn(2, events=2)
    for neuron in spiking_backbone(model).neurons:  # an untrained net that fires at all
        neuron.threshold.data.fill_(0.2)
    torch.nn.init.zeros_(model.head.bias)
    torch.manual_seed(1)
    successes = 0
    for _ in range(4):
        events = (torch.rand(1, 2, 2, 8, 8) < 0.2).float()
        with torch.no_grad():
            label = model(events).argmax(dim=1)
        with attack_surrogate(spiking_backbone(model), "pdsg"):
            adversarial, generated, final = sparse_dynamic_attack(model, events, label,
                                                                  k_init=4, max_iterations=40)
        assert set(adversarial.unique().tolist()) <= {0.0, 1.0}  # binary
        assert final <= generated and final == int((adversarial != events).sum())
        if generated:
            successes += 1
            with torch.no_grad():
                assert model(adversarial).argmax(dim=1) != label
            assert margin_loss(model(adversarial), label) == 0
    assert successes >= 3


def test_event_frames_are_binary_and_packed_losslessly():
    data = open_synth100_events(None, classes=2, train_per_class=3, val_per_class=2, res=16,
                                frames=4)
    packed = torch.from_numpy(data.arrays("train").images).permute(0, 3, 1, 2).float() / 255
    frames = unpack_events(packed, 4)
    assert frames.shape == (6, 4, 2, 16, 16)
    assert set(frames.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 < float(frames.mean()) < 0.5  # events at edges only
    assert torch.equal(pack_events(frames), packed)
    assert data.info["frames"] == 4 and data.arrays("train").images[..., 2].max() == 0
    # the L0 budget check counts flipped bits over the packed bytes
    flipped = frames.clone()
    flipped[0, 0, 0, 0, 0] = 1 - flipped[0, 0, 0, 0, 0]
    check_budget(pack_events(flipped), packed, ThreatModel(norm="l0", eps=1.0))
    with pytest.raises(HundredError, match="l0"):
        check_budget(pack_events(flipped), packed, ThreatModel(norm="l0", eps=0.0))
    with pytest.raises(HundredError, match="bit-packed"):
        check_budget(packed + 0.001, packed, ThreatModel(norm="l0", eps=1.0))


def test_spiking_cost_counts_spikes_and_refuses_the_ann():
    model = tiny_snn(3)
    cost = spiking_cost(model, [(torch.randn(4, 3, 8, 8), None)], 8)
    assert cost["timesteps"] == 3 and set(cost["spike_rate"]) == {"block1", "block2"}
    assert all(0 <= rate <= 3 for rate in cost["spike_rate"].values())
    assert 0 < cost["energy_ratio"] == pytest.approx(1 / cost["energy_efficiency"])
    with pytest.raises(HundredError, match="ANN twin"):
        spiking_cost(tiny_snn(0), [(torch.randn(2, 3, 8, 8), None)], 8)


TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=spiking_vgg", "model.options={layers: [8, A, 16, A]}",
            "data.batch_size=16", "train.epochs=1", "quiet=true", "compress.latency_batch=4",
            "compress.latency_warmup=1", "compress.latency_repeats=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def test_iir_snn_from_the_ann_twin_down_to_one_timestep_then_pdsg(tmp_path: Path):
    root = ["--set", f"root={tmp_path}"]
    assert main(["run", "compress", "dense", *COMMON, *root, "--set", "name=ann"]) == 0
    ann = tmp_path / "compress" / "dense" / "ann"
    assert main(["run", "compress", "iir_snn", *COMMON, *root, "--set", "name=t2",
                 "--init", str(ann), "--set", "method_params.timesteps=2"]) == 0
    t2 = tmp_path / "compress" / "iir_snn" / "t2"
    assert main(["run", "compress", "iir_snn", *COMMON, *root, "--set", "name=t1",
                 "--init", str(t2), "--set", "method_params.timesteps=1"]) == 0
    t1 = tmp_path / "compress" / "iir_snn" / "t1"
    first, last = (json.loads((run / "summary.json").read_text()) for run in (t2, t1))
    assert (first["timesteps"], first["converted"], first["timesteps_before"]) == (2, True, 0)
    assert (last["timesteps"], last["converted"], last["timesteps_before"]) == (1, False, 2)
    assert last["thresholds"] != [1.0, 1.0]  # calibrated at conversion, kept, trained
    for summary, steps in ((first, 2), (last, 1)):
        assert all(0 <= rate <= steps for rate in summary["spike_rate"].values())
        assert summary["sops"] > 0 and 0 < summary["energy_ratio"] < 1
    # the export is the SNN at T = 1: hundred attack rebuilds it from the run's model config
    assert main(["attack", str(t1), "--attack", "pdsg", "--eps", "8/255", "--steps", "2",
                 "--device", "cpu"]) == 0
    entry = json.loads((t1 / "summary.json").read_text())["attacks"][-1]
    assert entry["attack"] == "pdsg" and entry["surrogate"] == "pdsg"
    assert entry["robust_top1"] <= entry["clean_top1"]
    before = (ann / "summary.json").read_text()
    assert main(["attack", str(ann), "--attack", "pdsg", "--eps", "8/255", "--device", "cpu"]
                ) != 0  # the ANN twin is not a spiking network: refused, nothing written
    assert (ann / "summary.json").read_text() == before
