"""Retrieval metrics of compatible representations: cumulative matching top-1 and mean
average precision with leave-one-out queries.

The protocol of the field (Shen et al., CVPR 2020; Ramanujan et al.'s FCT and OCA's code,
which evaluate on the CIFAR-100 / ImageNet val set): every val image is a query against all
the other val images as the gallery; the query is embedded by the query model, the gallery
by the gallery model; distance is the cosine distance over the first min(d_query,
d_gallery) coordinates of the two embeddings (an extended new embedding is compared with
an old one on the old dimensions), each truncated embedding L2-normalised. A gallery image
is relevant when it has the query's class. Top-1: the share of queries whose nearest gallery
image is relevant. AP of a query: the mean of precision@k over the ranks k of its relevant
images; mAP: the mean over queries with at least one relevant image. Both in %.

Hand-written (a few lines of torch, chunked over queries) because the libraries that have
mAP (torchmetrics' RetrievalMAP, sklearn) want one query at a time or a flat index layout
that costs more than the computation itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def comparable(queries: torch.Tensor, gallery: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two embeddings on their common first min(d_q, d_g) coordinates, L2-normalised."""
    dim = min(queries.shape[1], gallery.shape[1])
    return (F.normalize(queries[:, :dim].float(), dim=1),
            F.normalize(gallery[:, :dim].float(), dim=1))


def cosine_distances(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine distances (1 - cosine similarity) over the common coordinates."""
    q, g = comparable(queries, gallery)
    return 1.0 - q @ g.T


@torch.no_grad()
def retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor,
                      chunk: int = 512) -> dict[str, float]:
    """``{"top1": %, "map": %}`` of leave-one-out retrieval: row i of ``queries`` (image i
    embedded by the query model) against every row j != i of ``gallery`` (the same images
    embedded by the gallery model); ``labels`` are the images' classes."""
    if not len(queries) == len(gallery) == len(labels):
        raise ValueError("queries, gallery and labels must describe the same images")
    q, g = comparable(queries, gallery)
    labels = labels.to(q.device)
    count = len(labels)
    hits1, ap_sum, ap_count = 0.0, 0.0, 0
    for start in range(0, count, chunk):
        rows = torch.arange(start, min(start + chunk, count), device=q.device)
        similarity = q[rows] @ g.T
        similarity[torch.arange(len(rows)), rows] = float("-inf")  # the query itself
        order = similarity.argsort(dim=1, descending=True)[:, :-1]  # self is ranked last
        relevant = (labels[order] == labels[rows, None]).float()
        hits1 += float(relevant[:, 0].sum())
        ranks = torch.arange(1, count, device=q.device, dtype=torch.float32)
        precision = relevant.cumsum(dim=1) / ranks
        totals = relevant.sum(dim=1)
        valid = totals > 0
        ap = (precision * relevant).sum(dim=1)[valid] / totals[valid]
        ap_sum += float(ap.sum())
        ap_count += int(valid.sum())
    return {"top1": 100.0 * hits1 / count,
            "map": 100.0 * ap_sum / ap_count if ap_count else float("nan")}
