"""The classification track's distillation losses against their defining claims, on tiny
tensors and brute-force references."""

import math

import pytest
import torch
import torch.nn.functional as F

from hundred.tracks.classify.losses import (kd_loss, nkd_loss, nkd_terms, pld_loss,
                                            uskd_loss, uskd_ranking_scores,
                                            uskd_target_weight, zipf_non_target_labels)


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------- KD


def test_kd_with_one_hot_teacher_at_t1_is_cross_entropy():
    student = _logits(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    teacher = F.one_hot(labels, 5).float() * 1e4   # softmax is exactly one-hot in float32
    assert torch.allclose(kd_loss(student, teacher, 1.0), F.cross_entropy(student, labels),
                          atol=1e-6)


def test_kd_is_zero_when_student_matches_teacher_and_positive_otherwise():
    logits = _logits(4, 7)
    assert kd_loss(logits, logits.clone(), 4.0).abs().item() < 1e-6
    assert kd_loss(_logits(4, 7, seed=1), logits, 4.0).item() > 0.01


def test_kd_equals_t_squared_kl_and_accepts_bf16():
    student, teacher, t = _logits(5, 6), _logits(5, 6, seed=1), 3.0
    expected = t * t * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                                reduction="batchmean")
    assert torch.allclose(kd_loss(student, teacher, t), expected, atol=1e-6)
    out = kd_loss(student.bfloat16(), teacher.bfloat16(), t)
    assert out.dtype == torch.float32


def test_kd_t_squared_keeps_gradient_scale_for_large_t():
    teacher = _logits(8, 10, seed=2)
    norms = []
    for t in (8.0, 32.0):
        student = _logits(8, 10, seed=3).requires_grad_()
        kd_loss(student, teacher, t).backward()
        norms.append(student.grad.norm().item())
    # For large T the softened gap shrinks like 1/T and d/ds brings another 1/T, so without
    # T**2 the ratio would be ~ (32/8)**2 = 16; with it the gradient's size barely moves.
    assert 0.8 < norms[0] / norms[1] < 1.25


# -------------------------------------------------------------------------------------- NKD


def test_nkd_loss_is_the_sum_of_its_terms():
    s, t, y = _logits(4, 6), _logits(4, 6, seed=1), torch.tensor([0, 5, 2, 2])
    target, non_target = nkd_terms(s, t, y, temperature=3.0, gamma=3.5)
    assert torch.allclose(nkd_loss(s, t, y, 3.0, 3.5), target + non_target)


def test_nkd_target_term_is_teacher_prob_times_student_nll():
    s, t, y = _logits(3, 5), _logits(3, 5, seed=1), torch.tensor([4, 0, 1])
    target, _ = nkd_terms(s, t, y, temperature=2.0, gamma=1.0)
    rows = torch.arange(3)
    expected = -(F.softmax(t, 1)[rows, y] * F.log_softmax(s, 1)[rows, y]).mean()
    assert torch.allclose(target, expected, atol=1e-6)


def test_nkd_non_target_term_ignores_the_student_target_logit():
    s, t, y = _logits(3, 5), _logits(3, 5, seed=1), torch.tensor([1, 3, 0])
    _, before = nkd_terms(s, t, y, temperature=3.0, gamma=3.5)
    moved = s.clone()
    moved[torch.arange(3), y] += 7.0
    target_before, _ = nkd_terms(s, t, y, 3.0, 3.5)
    target_after, after = nkd_terms(moved, t, y, 3.0, 3.5)
    assert torch.allclose(before, after, atol=1e-6)
    assert not torch.allclose(target_before, target_after)   # the target term does move


def test_nkd_non_target_term_brute_force_c4():
    s, t, y = _logits(3, 4), _logits(3, 4, seed=1), torch.tensor([2, 0, 3])
    tau, gamma = 3.0, 3.5
    total = 0.0
    for b in range(3):
        others = [i for i in range(4) if i != y[b]]
        t_hat = [math.exp(t[b, i].item() / tau) for i in others]
        s_hat = [math.exp(s[b, i].item() / tau) for i in others]
        t_hat = [v / sum(t_hat) for v in t_hat]
        s_hat = [v / sum(s_hat) for v in s_hat]
        total += -sum(p * math.log(q) for p, q in zip(t_hat, s_hat))
    expected = gamma * tau * tau * total / 3
    _, non_target = nkd_terms(s, t, y, tau, gamma)
    assert non_target.item() == pytest.approx(expected, rel=1e-5)


def test_nkd_teacher_gets_no_gradient():
    s, t = _logits(2, 4).requires_grad_(), _logits(2, 4, seed=1).requires_grad_()
    nkd_loss(s, t, torch.tensor([0, 1])).backward()
    assert t.grad is None and s.grad is not None


# ------------------------------------------------------------------------------------- USKD


def test_zipf_labels_follow_one_over_rank_for_a_known_ranking_c5():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7],
                           [5.0, 4.0, 3.0, 2.0, 1.0]])
    labels = torch.tensor([1, 4])
    z = zipf_non_target_labels(scores, labels)
    # Row 0: target 1; non-targets by score: 4 (0.7), 2 (0.5), 3 (0.3), 0 (0.1).
    h = 1 + 1 / 2 + 1 / 3 + 1 / 4
    expected0 = torch.tensor([1 / 4, 0.0, 1 / 2, 1 / 3, 1.0]) / h
    # Row 1: target 4 (also the lowest score); non-targets 0, 1, 2, 3 in that order.
    expected1 = torch.tensor([1.0, 1 / 2, 1 / 3, 1 / 4, 0.0]) / h
    assert torch.allclose(z, torch.stack([expected0, expected1]), atol=1e-7)


def test_zipf_labels_sum_to_one_and_are_zero_at_the_target():
    scores, labels = _logits(6, 9), torch.tensor([0, 8, 3, 3, 5, 1])
    z = zipf_non_target_labels(scores, labels)
    assert torch.allclose(z.sum(1), torch.ones(6))
    assert (z[torch.arange(6), labels] == 0).all() and (z >= 0).all()
    # The target never takes a rank: the top-scored class gets 1/1 even if it is the target.
    top = scores.clone()
    top[torch.arange(6), labels] = 100.0
    assert torch.allclose(zipf_non_target_labels(top, labels), z)


def test_uskd_target_weight_has_batch_mean_one_and_is_detached():
    s = _logits(5, 4).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0])
    w = uskd_target_weight(s, labels)
    assert w.shape == (5,) and not w.requires_grad
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    s_t = F.softmax(s.detach(), 1)[torch.arange(5), labels]
    assert torch.allclose(w, 1 + s_t ** 2 - (s_t ** 2).mean())


def test_uskd_ranking_scores_by_probability_and_log_probability():
    s, w, y = _logits(3, 5), _logits(3, 5, seed=1), torch.tensor([0, 2, 4])
    rows = torch.arange(3)
    ps, pw = F.softmax(s, 1), F.softmax(w, 1)
    prob = pw / (1 - pw[rows, y][:, None]) + ps / (1 - ps[rows, y][:, None])
    assert torch.allclose(uskd_ranking_scores(s, w, y), prob, atol=1e-4)
    ls = F.log_softmax(s, 1)
    logp = pw / (1 - pw[rows, y][:, None]) + ls / (1 - ls[rows, y][:, None])
    assert torch.allclose(uskd_ranking_scores(s, w, y, rank_by="log_probability"), logp,
                          atol=1e-4)
    with pytest.raises(ValueError):
        uskd_ranking_scores(s, w, y, rank_by="logit")


def test_uskd_loss_brute_force_and_weak_head_gradient():
    s = _logits(2, 4).requires_grad_()
    w = _logits(2, 4, seed=1).requires_grad_()
    y = torch.tensor([1, 3])
    alpha, beta, mu = 0.1, 0.2, 0.3
    loss = uskd_loss(s, w, y, alpha, beta, mu)

    p_t = uskd_target_weight(s, y)
    z = zipf_non_target_labels(uskd_ranking_scores(s, w, y), y)
    expected = 0.0
    for b in range(2):
        ls = F.log_softmax(s[b].detach(), 0)
        expected += alpha * -(p_t[b] * ls[y[b]]).item()
        others = [i for i in range(4) if i != y[b]]
        lse = torch.logsumexp(s[b, others].detach(), 0).item()
        expected += beta * -sum(z[b, i].item() * (s[b, i].item() - lse) for i in others)
        smooth = [0.9 * (i == int(y[b])) + 0.1 / 4 for i in range(4)]
        lw = F.log_softmax(w[b].detach(), 0)
        expected += mu * -sum(smooth[i] * lw[i].item() for i in range(4))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)

    loss.backward()
    # The weak head learns only from its own label-smoothed CE (weighted mu).
    w2 = w.detach().clone().requires_grad_()
    smooth = torch.full((2, 4), 0.1 / 4)
    smooth[torch.arange(2), y] += 0.9
    (mu * -(smooth * F.log_softmax(w2, 1)).sum(1).mean()).backward()
    assert torch.allclose(w.grad, w2.grad, atol=1e-6)


# -------------------------------------------------------------------------------------- PLD


def _pld_brute_force(s, t, y, tau):
    total = 0.0
    for b in range(s.shape[0]):
        others = sorted((i for i in range(s.shape[1]) if i != y[b]),
                        key=lambda i: -t[b, i].item())
        order = [int(y[b])] + others
        alpha = F.softmax(t[b] / tau, 0)
        for k, c in enumerate(order):
            tail = math.log(sum(math.exp(s[b, j].item()) for j in order[k:]))
            total += -alpha[c].item() * (s[b, c].item() - tail)
    return total / s.shape[0]


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pld_matches_brute_force_plackett_luce_c4(tau):
    s, t = _logits(3, 4), _logits(3, 4, seed=1)
    y = torch.tensor([3, 0, 2])
    y[1] = int(t[1].argmin())           # one row where the label is the teacher's last class
    assert pld_loss(s, t, y, tau).item() == pytest.approx(_pld_brute_force(s, t, y, tau),
                                                          rel=1e-5)


def test_pld_with_confident_teacher_reduces_to_cross_entropy():
    s, y = _logits(4, 6), torch.tensor([0, 5, 2, 3])
    t = F.one_hot(y, 6).float() * 50.0   # alpha is one-hot on the label, placed first
    assert torch.allclose(pld_loss(s, t, y, 1.0), F.cross_entropy(s, y), atol=1e-6)


def test_pld_is_translation_invariant_and_teacher_is_detached():
    s, y = _logits(3, 5), torch.tensor([1, 2, 0])
    t = _logits(3, 5, seed=1).requires_grad_()
    base = pld_loss(s, t, y, 2.0)
    assert torch.allclose(base, pld_loss(s + 3.0, t, y, 2.0), atol=1e-5)
    s_grad = s.clone().requires_grad_()
    pld_loss(s_grad, t, y, 2.0).backward()
    assert t.grad is None and s_grad.grad is not None
