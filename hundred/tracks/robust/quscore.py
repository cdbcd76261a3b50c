"""QuScore — Abdukhamidov, Abuhamad, Woo, Chan-Tin & Abuhmed, "Microbial Genetic
Algorithm-based Black-box Attack against Interpretable Deep Learning Systems" (arXiv 2307.06496,
2023). A query-efficient *score-based* black-box attack on an interpretable deep learning
system (IDLS = classifier + interpreter, :class:`~hundred.tracks.robust.interpreters.
InterpretableSystem`): the attacker sends pixel-space images and reads back class
probabilities and interpretation maps, nothing else.

Entry points (the signatures the robust track's attack registry can use)::

    run_quscore(target, images, labels, interpreter="grad", eps=8/255, max_queries=10_000,
                seed=0, *, surrogate=None, surrogate_interpreter=None, **params) -> dict
    quscore_attack(model, threat, num_classes, seed, *, interpreter="grad",
                   max_queries=10_000, surrogate=None, **params) -> attack(pixels, labels)
                   -> adversarial pixels   # the attacks.ATTACKS builder signature

``target``: a pixel-space model (``[0, 1]`` images in, logits out; normalisation inside it)
or an ``InterpretableSystem``; ``images`` in ``[0, 1]``; ``eps`` an L-inf radius in pixel
units; ``params`` the fields of :class:`QuScoreParams`. The result holds ``success_rate``
(over the images the system classifies correctly, the only ones attacked), ``median_queries``
(over successful images), ``mean_queries``, ``clean_accuracy``, mean ``interp_distance`` /
``interp_iou`` / ``linf`` of the successful images, ``total_queries``, ``per_image`` lists
(``attacked``, ``success``, ``queries``, ``linf``, ``interp_distance``, ``interp_iou``,
``adv_label``) and the ``adversarial`` images.

The algorithm (the paper's two stages, as its official code runs them):

1. *Transfer stage* (only when the attacker owns a ``surrogate`` model; random population
   otherwise). Each of ``pop_size`` individuals is an MI-FGSM attack on the surrogate from its
   own random start: first untargeted, then targeted at the surrogate's adversarial class while
   keeping the surrogate's interpretation map close to its benign map (loss
   ``CE(f_s(x'), t) + transfer_interp_weight * mean (g_s(x') - g_s(x))^2``, double backprop).
   An individual keeps only the *sign* of its perturbation: one bit per pixel and channel,
   ``1 -> +eps``, ``0 -> -eps`` (the corners of the L-inf ball), clipped to ``[0, 1]``.
2. *Microbial GA on the target* (score-based). Each generation draws two individuals, queries
   the target for those changed since their last evaluation, and ranks them by the fitness
   ``-log p_y(x') - interp_weight * d(m(x'), m(x))`` (probabilities and maps from the queries;
   ``d`` the mean squared difference of the [0, 1] maps). The loser copies each of the winner's
   bits with probability ``cross_rate`` and flips each of its own with ``mutation_rate``; the
   winner is untouched. The attack stops at the first success or when the next evaluation
   would exceed ``max_queries``.

Queries: one query is one image through the system (prediction and map together). Counted per
attacked image: 1 for the benign image (label check and benign map), ``pop_size`` for the
initial population, then one per re-evaluated individual; every call reaches the system's
counter (``InterpretableSystem.queries`` equals ``total_queries``).

Success: the system misclassifies the image (untargeted, the paper's setting), and, if
``max_interp_distance`` is set, the adversarial map is within that distance of the benign one.
``interp_iou`` (the IoU of the top ``iou_fraction`` pixels of the two maps, the paper's "IoU
test" at one k) and ``interp_distance`` measure how stealthy each success is.

The attacker never differentiates the target: ``InterpretableSystem.query`` returns detached
tensors and runs the prediction under ``no_grad``; only its own interpreter differentiates the
target model, inside the system. Gradients are taken only of the attacker's ``surrogate``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from hundred.errors import HundredError
from hundred.space import Choice
from hundred.tracks.robust.interpreters import (InterpretableSystem, Interpreter,
                                                differentiable_map)

__all__ = ["QuScoreParams", "interpretation_distance", "quscore_attack", "run_quscore",
           "search_space", "summarise_results", "topk_iou", "transfer_population"]


class QuScoreParams(BaseModel):
    """QuScore's hyperparameters (defaults: the official code's CIFAR/ImageNet settings where
    it has one; ``interp_weight``, ``transfer_step``, ``iou_fraction`` are this module's)."""

    model_config = ConfigDict(extra="forbid")
    pop_size: int = Field(5, ge=2, description="individuals in the microbial GA population")
    cross_rate: float = Field(0.7, ge=0, le=1,
                              description="probability that the loser copies each winner bit")
    mutation_rate: float = Field(0.001, ge=0, le=1,
                                 description="probability that each loser bit flips")
    interp_weight: float = Field(1.0, ge=0, description=(
        "weight of the target's map distance in the GA fitness (0: the official code's "
        "loss-only fitness)"))
    max_interp_distance: float | None = Field(None, gt=0, description=(
        "if set, success also needs the map distance to the benign map at most this"))
    transfer_iters: int = Field(10, ge=1, description="MI-FGSM iterations per surrogate stage")
    transfer_step: float = Field(0.25, gt=0, description="MI-FGSM step, as a fraction of eps")
    transfer_momentum: float = Field(1.0, ge=0, description="MI-FGSM momentum mu")
    transfer_interp_weight: float = Field(3.0, ge=0, description=(
        "weight of the surrogate's map distance in the targeted transfer stage"))
    iou_fraction: float = Field(0.2, gt=0, le=1,
                                description="top fraction of pixels compared by interp_iou")
    query_batch: int = Field(256, ge=1, description="images per call to the system")


search_space = {"method_params.mutation_rate": Choice((0.001, 0.01)),
                "method_params.interp_weight": Choice((0.0, 1.0, 10.0))}


def interpretation_distance(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``[N, H, W]`` maps in ``[0, 1]``, per image ``[N]``."""
    return (maps.float() - reference.float()).pow(2).flatten(1).mean(1)


def topk_iou(maps: torch.Tensor, reference: torch.Tensor, fraction: float = 0.2
             ) -> torch.Tensor:
    """IoU of the top ``fraction`` pixels of each map and of its reference, ``[N]``."""
    flat, ref = maps.flatten(1), reference.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    top = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, 1).indices, True)
    top_ref = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, ref.topk(k, 1).indices, True)
    return (top & top_ref).sum(1).float() / (top | top_ref).sum(1).float()


def _mi_fgsm(surrogate: nn.Module, images: torch.Tensor, delta: torch.Tensor,
             objective: Callable[[torch.Tensor], torch.Tensor], eps: float, step: float,
             iters: int, momentum: float) -> torch.Tensor:
    """MI-FGSM ascent of ``objective(x')`` (per-sample values) within the eps ball."""
    velocity = torch.zeros_like(delta)
    for _ in range(iters):
        delta = delta.detach().requires_grad_(True)
        value = objective((images + delta).clamp(0, 1)).sum()
        grad, = torch.autograd.grad(value, delta)
        grad = grad / grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        velocity = momentum * velocity + grad
        delta = (delta.detach() + step * velocity.sign()).clamp(-eps, eps)
        delta = (images + delta).clamp(0, 1) - images
    return delta.detach()


def transfer_population(surrogate: nn.Module, kind: str, images: torch.Tensor,
                        labels: torch.Tensor, eps: float, generators: list[torch.Generator],
                        params: QuScoreParams) -> torch.Tensor:
    """QuScore's transfer stage: ``[N, P, C, H, W]`` bits from MI-FGSM on the attacker's own
    ``surrogate`` (pixel space), untargeted then targeted with the surrogate's ``kind`` map kept
    close to its benign map. Individual ``p`` of image ``n`` starts from noise drawn from
    ``generators[n]``."""
    surrogate = surrogate.eval()
    count, pop = len(images), params.pop_size
    x = images.repeat_interleave(pop, 0)
    y = labels.repeat_interleave(pop)
    noise = torch.cat([torch.rand((pop, *images.shape[1:]), generator=g) for g in generators])
    delta = (x + (2 * noise.to(x) - 1) * eps).clamp(0, 1) - x
    step, iters, mu = params.transfer_step * eps, params.transfer_iters, params.transfer_momentum

    def untargeted(adv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(surrogate(adv), y, reduction="none")

    delta = _mi_fgsm(surrogate, x, delta, untargeted, eps, step, iters, mu)
    with torch.no_grad():
        logits = surrogate(x + delta).scatter(1, y[:, None], float("-inf"))
        adv_class = logits.argmax(1)
    with torch.enable_grad():
        benign_maps = differentiable_map(kind, surrogate, x, y).detach()

    def targeted(adv: torch.Tensor) -> torch.Tensor:
        loss = -F.cross_entropy(surrogate(adv), adv_class, reduction="none")
        if params.transfer_interp_weight > 0:
            maps = differentiable_map(kind, surrogate, adv, adv_class)
            loss = loss - params.transfer_interp_weight * interpretation_distance(maps,
                                                                                benign_maps)
        return loss

    delta = _mi_fgsm(surrogate, x, delta, targeted, eps, step, iters, mu)
    return (delta > 0).view(count, pop, *images.shape[1:])


def _interpreter_kind(interpreter: str | Interpreter | None, surrogate_interpreter: str | None
                      ) -> str:
    if surrogate_interpreter is not None:
        return surrogate_interpreter
    if isinstance(interpreter, str):
        return interpreter
    return "grad"


def run_quscore(target: nn.Module | InterpretableSystem, images: torch.Tensor,
                labels: torch.Tensor, interpreter: str | Interpreter = "grad",
                eps: float = 8 / 255, max_queries: int = 10_000, seed: int = 0, *,
                surrogate: nn.Module | None = None, surrogate_interpreter: str | None = None,
                **params: Any) -> dict[str, Any]:
    """Attack every image of ``images`` (``[N, C, H, W]`` in ``[0, 1]``) with QuScore; see the
    module docstring for the arguments and the result. Image ``n`` draws its randomness from
    its own generator seeded by ``(seed, n)``, so its result does not depend on the others."""
    options = QuScoreParams(**params)
    if not 0 < eps <= 1:
        raise HundredError(f"QuScore eps={eps}: expected a pixel-space radius in (0, 1]")
    if max_queries < 1 + options.pop_size:
        raise HundredError(f"QuScore max_queries={max_queries} cannot pay for the benign query "
                           f"and a population of {options.pop_size}")
    start = time.perf_counter()
    system = target if isinstance(target, InterpretableSystem) \
        else InterpretableSystem(target, interpreter)
    query = system.query  # the attacker's only access to the target
    images, labels = images.detach().float(), labels.to(images.device).long()
    count, pop, shape = len(images), options.pop_size, images.shape[1:]
    generators = [torch.Generator().manual_seed(seed * 1_000_003 + index)
                  for index in range(count)]
    queries = torch.zeros(count, dtype=torch.long)

    def ask(batch: torch.Tensor, owners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, maps = [], []
        for first in range(0, len(batch), options.query_batch):
            p, m = query(batch[first:first + options.query_batch])
            probs.append(p)
            maps.append(m)
        queries.index_add_(0, owners.cpu(), torch.ones(len(owners), dtype=torch.long))
        return torch.cat(probs), torch.cat(maps)

    benign_probs, benign_maps = ask(images, torch.arange(count))
    attacked = (benign_probs.argmax(1) == labels).cpu()

    if surrogate is not None:
        genes = transfer_population(surrogate, _interpreter_kind(interpreter,
                                                                 surrogate_interpreter),
                                    images, labels, eps, generators, options)
    else:
        genes = torch.stack([torch.rand((pop, *shape), generator=g) < 0.5 for g in generators])
    genes = genes.to(images.device)

    fitness = torch.full((count, pop), -math.inf)
    distance = torch.full((count, pop), math.nan)
    iou = torch.full((count, pop), math.nan)
    predicted = torch.full((count, pop), -1, dtype=torch.long)
    changed = torch.ones((count, pop), dtype=torch.bool)
    winner_of = torch.full((count,), -1, dtype=torch.long)  # successful individual

    def adversarial(owner: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
        signs = genes[owner, member].float() * 2 - 1
        return (images[owner] + eps * signs).clamp(0, 1)

    def evaluate(owner: torch.Tensor, member: torch.Tensor) -> None:
        if len(owner) == 0:
            return
        probs, maps = ask(adversarial(owner, member), owner)
        true = labels[owner]
        score = -probs.gather(1, true[:, None])[:, 0].clamp_min(1e-12).log()
        dist = interpretation_distance(maps, benign_maps[owner])
        owner_c, member_c = owner.cpu(), member.cpu()
        fitness[owner_c, member_c] = (score - options.interp_weight * dist).cpu()
        distance[owner_c, member_c] = dist.cpu()
        iou[owner_c, member_c] = topk_iou(maps, benign_maps[owner], options.iou_fraction).cpu()
        predicted[owner_c, member_c] = probs.argmax(1).cpu()
        changed[owner_c, member_c] = False
        success = probs.argmax(1) != true
        if options.max_interp_distance is not None:
            success &= dist <= options.max_interp_distance
        for n, p in zip(owner_c[success.cpu()].tolist(), member_c[success.cpu()].tolist()):
            if winner_of[n] < 0:
                winner_of[n] = p

    todo = attacked.nonzero()[:, 0]
    evaluate(todo.repeat_interleave(pop).to(images.device),
             torch.arange(pop).repeat(len(todo)).to(images.device))
    active = attacked & (winner_of < 0)
    while active.any():
        owners, members, pairs = [], [], {}
        for n in active.nonzero()[:, 0].tolist():
            pair = torch.randperm(pop, generator=generators[n])[:2].tolist()
            need = [p for p in pair if changed[n, p]]
            if queries[n] + len(need) > max_queries:
                active[n] = False
                continue
            pairs[n] = pair
            owners += [n] * len(need)
            members += need
        evaluate(torch.tensor(owners, dtype=torch.long, device=images.device),
                 torch.tensor(members, dtype=torch.long, device=images.device))
        for n, (a, b) in pairs.items():
            if winner_of[n] >= 0:
                active[n] = False
                continue
            winner, loser = (b, a) if fitness[n, a] <= fitness[n, b] else (a, b)
            generator = generators[n]
            cross = (torch.rand(shape, generator=generator) < options.cross_rate).to(genes.device)
            flip = (torch.rand(shape, generator=generator) < options.mutation_rate).to(genes.device)
            genes[n, loser] = torch.where(cross, genes[n, winner], genes[n, loser]) ^ flip
            changed[n, loser] = True
            if queries[n] >= max_queries:
                active[n] = False

    success = winner_of >= 0
    chosen = torch.where(success, winner_of, fitness.nan_to_num(-math.inf).argmax(1))
    index = torch.arange(count)
    adv = adversarial(index.to(images.device), chosen.to(images.device))
    adv = torch.where(attacked.to(images.device)[:, None, None, None], adv, images)
    linf = (adv - images).abs().flatten(1).amax(1).cpu()
    dist, overlap = distance[index, chosen], iou[index, chosen]
    adv_label = predicted[index, chosen]
    dist[~attacked], overlap[~attacked], adv_label[~attacked] = math.nan, math.nan, -1
    used = queries.clone()
    won = success.nonzero()[:, 0]
    n_attacked = int(attacked.sum())

    def mean_over_wins(values: torch.Tensor) -> float:
        return float(values[won].mean()) if len(won) else math.nan

    return {
        "success_rate": float(success.sum()) / n_attacked if n_attacked else math.nan,
        "median_queries": float(statistics.median(used[won].tolist())) if len(won) else math.nan,
        "mean_queries": mean_over_wins(used.float()),
        "clean_accuracy": n_attacked / count if count else math.nan,
        "attacked": n_attacked,
        "interp_distance": mean_over_wins(dist),
        "interp_iou": mean_over_wins(overlap),
        "linf": mean_over_wins(linf),
        "total_queries": int(queries.sum()),
        "seconds": time.perf_counter() - start,
        "per_image": {"attacked": attacked.tolist(), "success": success.tolist(),
                      "queries": used.tolist(), "linf": linf.tolist(),
                      "interp_distance": dist.tolist(), "interp_iou": overlap.tolist(),
                      "adv_label": adv_label.tolist()},
        "adversarial": adv.detach(),
    }


def quscore_attack(model: nn.Module, threat: Any, num_classes: int, seed: int, *,
                   interpreter: str | Interpreter = "grad", max_queries: int = 10_000,
                   surrogate: nn.Module | None = None, **params: Any
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The robust track's attack-registry builder: ``build(model, threat, num_classes, seed)``
    with ``model`` a pixel-space model and ``threat`` an L-inf threat model (``.norm``,
    ``.eps``); keyword options (``functools.partial``) fix the interpreter, the query budget,
    the attacker's surrogate and :class:`QuScoreParams`. Returns ``attack(pixels, labels) ->
    adversarial pixels`` (a failed image gets its best individual, which the model still
    classifies correctly); each call's summary (without the images) is appended to
    ``attack.results``. All calls query one :class:`InterpretableSystem`, whose ``queries``
    counts them all (``attack.system``)."""
    del num_classes  # untargeted: the class count plays no part
    if getattr(threat, "norm", "linf") != "linf":
        raise HundredError(f"QuScore searches the corners of an L-inf ball; threat norm is "
                           f"{threat.norm!r}")
    try:
        QuScoreParams(**params)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                             for item in error.errors())
        raise HundredError(f"QuScore: {problems}") from None
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
        raise HundredError(f"QuScore max_queries must be a whole number >= 1, got "
                           f"{max_queries!r}")
    system = InterpretableSystem(model, interpreter)
    results: list[dict[str, Any]] = []

    def attack(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        result = run_quscore(system, pixels, labels, interpreter, float(threat.eps),
                             max_queries, seed, surrogate=surrogate, **params)
        adversarial = result.pop("adversarial")
        results.append(result)
        return adversarial

    attack.results = results  # type: ignore[attr-defined]
    attack.system = system  # type: ignore[attr-defined]
    attack.settings = {  # type: ignore[attr-defined]
        "interpreter": interpreter if isinstance(interpreter, str) else
        getattr(interpreter, "__name__", "custom"),
        "max_queries": max_queries, "surrogate": surrogate is not None,
        "params": QuScoreParams(**params).model_dump()}
    return attack


def summarise_results(attack: Callable[..., Any]) -> dict[str, Any]:
    """The numbers of every call of a :func:`quscore_attack` function, pooled over its
    batches: ``success_rate`` (a fraction of the attacked images), ``median_queries`` / ``mean_queries``
    (over successes), ``attacked``, the mean ``interp_distance`` / ``interp_iou`` / ``linf``
    of the successes, ``total_queries`` (what the system counted) and the settings."""
    results: list[dict[str, Any]] = getattr(attack, "results", [])
    pooled: dict[str, list[Any]] = {}
    for result in results:
        for key, values in result["per_image"].items():
            pooled.setdefault(key, []).extend(values)
    attacked = [bool(flag) for flag in pooled.get("attacked", [])]
    wins = [n for n, won in enumerate(pooled.get("success", [])) if won]

    def over_wins(key: str) -> float:
        values = [float(pooled[key][n]) for n in wins]
        return float(statistics.fmean(values)) if values else math.nan

    settings = getattr(attack, "settings", {})
    summary = {
        "success_rate": len(wins) / sum(attacked) if any(attacked) else math.nan,
        "attacked": sum(attacked),
        "median_queries": float(statistics.median(pooled["queries"][n] for n in wins))
        if wins else math.nan,
        "mean_queries": over_wins("queries"),
        "interp_distance": over_wins("interp_distance"),
        "interp_iou": over_wins("interp_iou"),
        "mean_linf": over_wins("linf"),
        "total_queries": int(attack.system.queries) if hasattr(attack, "system") else
        sum(int(result["total_queries"]) for result in results),
        **settings,
    }
    return {key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in summary.items()}  # JSON has no NaN: nothing to average is null
