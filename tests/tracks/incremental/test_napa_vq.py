"""NAPA-VQ (Malepathirana et al., ICCV 2023): the neural-gas graph, the neighbourhood-aware
loss, neighbourhood-aware prototype augmentation, NCM inference, an exemplar-free run that
never reads an old-class image, and resume across a task boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.registry import get_method
from hundred.tracks.incremental import TRACK, scenario
from hundred.tracks.incremental.methods.napa_vq import (NAPAVQ, Codebook,
                                                        interpolate_toward_neighbours,
                                                        neighbourhood_aware_loss,
                                                        update_neighbourhood_graph)
from hundred.tracks.incremental.method import Task
from hundred.tracks.incremental.prototypes import nearest_mean_scores, rotation_expanded

BASE = ["track=incremental", "method=napa_vq", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}",
        "model.name=convnet_d3", "data.batch_size=8", "train.epochs=1",
        "incremental.scenario=B0-Inc2", "incremental.memory=0"]


def config(root: Path, *extra: str):
    return build_config(overrides=[*BASE, f"root={root}", *extra])


# -- the neighbourhood graph ------------------------------------------------------------------
def line_codebook() -> torch.Tensor:
    """Five coding vectors on a line: 0, 1, 3, 6, 10."""
    return torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])


def test_the_graph_connects_the_two_nearest_coding_vectors_of_a_sample():
    vectors, edges = line_codebook(), torch.eye(5)
    sample = torch.tensor([[5.0]])  # nearest 3 (at 6), then 2 (at 3)
    for k in (2, 15):
        graph = update_neighbourhood_graph(edges, torch.cdist(sample, vectors), k, 0.9, 0.9 ** 10)
        assert graph[3, 2] > 0 and graph[2, 3] == graph[3, 2]
        assert torch.equal(graph.diagonal(), torch.ones(5))
    graph = update_neighbourhood_graph(edges, torch.cdist(sample, vectors), 2, 0.9, 0.9 ** 10)
    assert (graph > 0).sum() == 5 + 2  # only that edge with k = 2 (classic CHL)


def test_edges_of_the_winner_decay_when_not_refreshed_and_are_pruned():
    vectors = line_codebook()
    graph = update_neighbourhood_graph(torch.eye(5), torch.cdist(torch.tensor([[5.0]]), vectors),
                                       2, 0.9, 0.9 ** 10)
    strength = graph[3, 2].item()
    other_side = torch.tensor([[7.0]])  # winner 3 again, second nearest 4 (at 10): 2 not refreshed
    graph = update_neighbourhood_graph(graph, torch.cdist(other_side, vectors), 2, 0.9, 0.9 ** 10)
    assert graph[3, 2] < strength and graph[3, 4] > 0
    for _ in range(60):  # keeps winning without the edge to 2: it decays below 0.9^10, removed
        graph = update_neighbourhood_graph(graph, torch.cdist(other_side, vectors), 2, 0.9,
                                           0.9 ** 10)
    assert graph[3, 2] == 0 and graph[2, 3] == 0 and graph[3, 4] > 0
    # a vector that never wins keeps its row: 0's edges are untouched by samples near 3
    assert torch.equal(graph[0], torch.tensor([1.0, 0, 0, 0, 0]))


def test_decay_counts_the_samples_won_without_the_edge_in_one_batch():
    vectors = line_codebook()
    batch = torch.tensor([[5.0], [7.0], [7.0]])  # winner 3 thrice; 2 among the 2 nearest once
    graph = update_neighbourhood_graph(torch.eye(5), torch.cdist(batch, vectors), 2, 0.9, 0.0)
    assert graph[3, 2].item() == pytest.approx(0.9 ** 2 / 2)  # refreshed, decayed twice, halved
    assert graph[3, 4].item() == pytest.approx(0.9 / 2)


# -- the neighbourhood-aware loss -------------------------------------------------------------
def test_na_loss_is_zero_when_positives_are_closer_than_neighbours_and_positive_otherwise():
    vectors = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    edges = torch.eye(3)
    edges[0, 1] = edges[1, 0] = 0.5  # 0 ~ 1; 2 is no neighbour of 0
    labels = torch.tensor([0, 0])
    near = torch.tensor([[0.1, 0.0], [0.0, -0.2]])  # far closer to vector 0 than to 1 and 2
    assert neighbourhood_aware_loss(torch.cdist(near, vectors), labels, edges) == 0
    confused = torch.tensor([[9.0, 0.0], [8.0, 1.0]])  # labelled 0, next to vector 1
    loss = neighbourhood_aware_loss(torch.cdist(confused, vectors), labels, edges)
    assert loss.item() == pytest.approx(((81 - 1) + (65 - 5)) / 2, rel=1e-4)
    # only graph neighbours repel: with 0 connected to nothing, the loss is d+ (pull to c_0)
    alone = neighbourhood_aware_loss(torch.cdist(near, vectors), labels, torch.eye(3))
    assert alone.item() == pytest.approx(near.pow(2).sum(1).mean().item())


def test_na_loss_pulls_a_confused_feature_toward_its_coding_vector():
    vectors = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    feature = torch.tensor([[8.0, 0.0]], requires_grad=True)
    loss = neighbourhood_aware_loss(torch.cdist(feature, vectors), torch.tensor([0]),
                                    torch.ones(2, 2))
    loss.backward()
    assert feature.grad[0, 0] > 0  # descending moves it toward 0, away from the neighbour


# -- prototype augmentation -------------------------------------------------------------------
def test_augmented_prototypes_lie_between_a_prototype_and_a_graph_neighbour():
    torch.manual_seed(0)
    prototypes = torch.randn(6, 5)
    edges = torch.eye(6)
    edges[0, 3] = edges[3, 0] = edges[0, 4] = edges[4, 0] = 0.5  # 0 ~ 3, 0 ~ 4
    available = torch.tensor([True, True, True, True, False, True])  # 4 has no prototype yet
    rows = torch.zeros(400, dtype=torch.long)
    mixed, neighbour, gamma = interpolate_toward_neighbours(prototypes, rows, edges, available)
    assert set(neighbour.tolist()) == {0, 3}  # self (as in the official code) or 3, never 4
    assert ((gamma >= 0.5) & (gamma <= 1)).all() and gamma.min() < 0.6 and gamma.max() > 0.9
    expected = gamma[:, None] * prototypes[0] + (1 - gamma[:, None]) * prototypes[neighbour]
    torch.testing.assert_close(mixed, expected)
    toward = neighbour == 3  # on the segment [p_0, p_3], in its half nearer p_0
    segment = prototypes[3] - prototypes[0]
    t = ((mixed[toward] - prototypes[0]) @ segment) / segment.dot(segment)
    torch.testing.assert_close(mixed[toward], prototypes[0] + t[:, None] * segment)
    assert ((t >= 0) & (t <= 0.5)).all()


# -- NCM inference, rotations, the codebook ---------------------------------------------------
def test_nearest_mean_scores_classify_a_prototype_as_its_class():
    means = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    assert nearest_mean_scores(means, means).argmax(1).tolist() == [0, 1, 2]
    assert nearest_mean_scores(3 * means, means).argmax(1).tolist() == [0, 1, 2]  # scale-free


@pytest.mark.parametrize("inference", ["codebook", "prototypes"])
def test_predict_is_the_nearest_class_mean_over_the_rotation_zero_references(inference):
    method = NAPAVQ({"inference": inference})
    method.task = Task(1, 2, (2, 3), 2)
    dim = 6
    references = torch.randn(16, dim)  # 4 classes x 4 rotations

    class Identity(torch.nn.Module):
        def forward(self, x, return_features=False):
            return x, x

    codebook = method.add_state("codebook", Codebook(dim))
    codebook.start_task(0, references)
    method.prototypes = references
    features = references[[12, 0, 8, 4]]  # the rotation-0 rows of classes 3, 0, 2, 1
    scores, returned = method.predict(Identity(), features)
    assert scores.shape == (4, 4) and torch.equal(returned, features)
    assert scores.argmax(1).tolist() == [3, 0, 2, 1]


def test_rotation_expansion_labels_each_quarter_turn():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    rotated, labels = rotation_expanded(images, torch.tensor([0, 5]))
    assert labels.tolist() == [0, 1, 2, 3, 20, 21, 22, 23]
    torch.testing.assert_close(rotated[5], torch.rot90(images[1], 1, dims=(1, 2)))
    torch.testing.assert_close(rotated[4], images[1])


def test_a_new_task_freezes_old_coding_vectors_and_a_boundary_checkpoint_fills_them():
    codebook = Codebook(3)
    codebook.start_task(0, torch.randn(4, 3))
    trained = codebook.trained.detach().clone()
    boundary = {k: v.clone() for k, v in codebook.state_dict().items()}
    codebook.start_task(4, torch.randn(2, 3))
    assert torch.equal(codebook.frozen, trained) and not codebook.frozen.requires_grad
    assert [p.shape for p in codebook.parameters()] == [torch.Size([2, 3])]
    resumed = Codebook(3)  # a resumed run builds the codebook afresh, then loads the boundary
    new_rows = torch.randn(2, 3)
    resumed.start_task(4, new_rows)
    resumed.load_state_dict(boundary)
    assert torch.equal(resumed.frozen, trained) and torch.equal(resumed.trained.detach(), new_rows)
    resumed.load_state_dict(codebook.state_dict())  # within the task: same shapes, as usual
    assert torch.equal(resumed.vectors, codebook.vectors)


# -- end to end -------------------------------------------------------------------------------
class SpyLoader(BatchLoader):
    """A training loader that records the sample indices of every batch it yields."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.served_indices: list[int] = []

    def _make_batch(self, images, labels, epoch, batch, generator):
        self.served_indices += self._slice(self.epoch_indices(epoch), batch).tolist()
        return super()._make_batch(images, labels, epoch, batch, generator)


def test_an_exemplar_free_run_never_serves_an_old_class_image(tmp_path, monkeypatch):
    served: list[tuple[SpyLoader, np.ndarray]] = []
    real = scenario.train_loader

    def spy(ctx, dataset, *args, **kwargs):
        loader = real(ctx, dataset, *args, loader_class=SpyLoader, **kwargs)
        served.append((loader, dataset.arrays("train").labels))
        return loader

    monkeypatch.setattr(scenario, "train_loader", spy)
    # even with a memory in the scenario, NAPA-VQ declares exemplars = "never"
    summary = TRACK.run(config(tmp_path, "incremental.memory=8"))
    assert get_method("incremental", "napa_vq").exemplars == "never"
    assert summary["exemplar_free"] is True and summary["classifier"] == "ncm"
    assert summary["nme_step_top1"] is None and len(summary["step_top1"]) == 2
    (first, labels0), (second, labels1) = served
    assert set(labels0[first.served_indices]) == {0, 1}
    assert set(labels1[second.served_indices]) == {2, 3}  # never an image of classes 0-1
    logs = summary["method_logs"]
    assert [log["coding_vectors"] for log in logs] == [8, 16]  # 4 rotations x seen classes
    assert [log["prototypes"] for log in logs] == [8, 16]


def test_resume_between_tasks_restores_codebook_graph_and_prototypes(tmp_path):
    class Killed(Exception):
        pass

    class DiesAtTask1(NAPAVQ):
        def before_task(self, task, model, old_model):
            if task.index == 1:
                raise Killed
            super().before_task(task, model, old_model)

    DiesAtTask1.track, DiesAtTask1.name = "incremental", "napa_vq"
    reference = NAPAVQ({}, config(tmp_path, "name=ref"))
    expected = TRACK.run(config(tmp_path, "name=ref"), method=reference)
    with pytest.raises(Killed):
        cut = config(tmp_path, "name=cut")
        TRACK.run(cut, method=DiesAtTask1({}, cut))
    run_dir = tmp_path / "incremental/napa_vq/cut"
    state = torch.load(run_dir / "tasks/task-00/method.state.pt", weights_only=True)
    assert state["graph"].shape == (8, 8) and state["prototypes"].shape[0] == 8
    resumed = NAPAVQ({}, config(tmp_path, "name=cut"))
    summary = TRACK.run(config(tmp_path, "name=cut"), resume_dir=run_dir, method=resumed)
    for name in ("graph", "prototypes"):
        assert torch.equal(getattr(resumed, name), getattr(reference, name)), name
    assert torch.equal(resumed.codebook.vectors, reference.codebook.vectors)
    final = load_file(run_dir / "tasks/task-01/final.safetensors")
    reference_final = Path(expected["run_dir"]) / "tasks/task-01/final.safetensors"
    for key, value in load_file(reference_final).items():
        assert torch.equal(value, final[key]), key
    assert any(key.startswith("method.codebook.") for key in final)
    assert summary["step_top1"] == expected["step_top1"]
