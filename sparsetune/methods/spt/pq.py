"""Product quantisation of queries and keys: one codebook per layer, shared by heads and by Q and K.

A codebook is a tensor (M, C, d): M sub-spaces of d dims (M * d = head_dim), C centroids each. A
vector's code is, per sub-space, the index of the nearest centroid under the L1 distance (the paper's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(..., M*d) -> (N, M, d) rows of sub-vectors."""
    m, _, d = codebook.shape
    return z.reshape(-1, m, d)


def distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """L1 distance of every sub-vector to every centroid of its sub-space: (N, M, d) -> (N, M, C)."""
    # cdist batches over the sub-space: (M, N, d) x (M, C, d) -> (M, N, C)
    return torch.cdist(z.transpose(0, 1).to(codebook.dtype), codebook, p=1.0).transpose(0, 1)


@torch.no_grad()
def pq_codes(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Codes (..., M) (int64) of vectors z (..., M*d): nearest centroid per sub-space (L1; ties -> lowest index)."""
    lead = z.shape[:-1]
    rows = split(z, codebook.detach())
    out = torch.empty(rows.shape[:2], dtype=torch.long, device=z.device)
    for s in range(0, rows.shape[0], chunk):
        out[s:s + chunk] = distances(rows[s:s + chunk], codebook.detach()).argmin(-1)
    return out.reshape(*lead, codebook.shape[0])


SOFT_ASSIGNMENTS = ("log", "distance")
MIN_DISTANCE = 1e-5  # the reference clamps distances here before the log


def soft_assignment(dist: torch.Tensor, soft: str = "log") -> torch.Tensor:
    """Weights over the centroids from L1 distances (..., C): "log" (the reference) softmax(-log d), i.e.
    weights proportional to 1/d with d clamped at MIN_DISTANCE; "distance" softmax(-d) (this project's
    earlier form, near one-hot once distances differ by a few units)."""
    if soft == "log":
        return torch.softmax(-torch.log(dist.clamp_min(MIN_DISTANCE)), dim=-1)
    if soft == "distance":
        return torch.softmax(-dist, dim=-1)
    raise ValueError(f"soft: {soft!r} is not one of {SOFT_ASSIGNMENTS}")


def codebook_loss(z: torch.Tensor, codebook: torch.Tensor, soft: str = "log") -> torch.Tensor:
    """The auxiliary loss that trains a codebook on (detached) vectors z (N, M*d).

    soft/hard centroid MSE (the centroids weighted by `soft_assignment`, pulled to the hard assignment)
    plus MSE(z, hard centroid) (the k-means objective, moving the assigned centroids toward the data).
    Only the codebook receives gradient: the model's queries and keys are not pulled toward it.
    """
    rows = split(z.detach(), codebook).to(codebook.dtype)
    dist = distances(rows, codebook)  # (N, M, C), differentiable w.r.t. the codebook
    soft = soft_assignment(dist, soft)
    z_soft = torch.einsum("nmc,mcd->nmd", soft, codebook)
    hard = dist.detach().argmin(-1)  # (N, M)
    z_hard = codebook[torch.arange(codebook.shape[0], device=z.device)[None, :], hard]  # (N, M, d)
    return F.mse_loss(z_soft, z_hard) + F.mse_loss(rows, z_hard)


@torch.no_grad()
def kmedians(z: torch.Tensor, num_centroids: int, sub_dim: int, iters: int = 10,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """k-medians (the L1 counterpart of k-means) per sub-space on vectors z (N, M*d) -> codebook (M, C, d).

    Centroids start by k-means++ seeding (under L1); an empty cluster keeps its centroid.
    """
    rows = z.reshape(z.shape[0], -1, sub_dim).float()
    n, m, d = rows.shape
    if n < num_centroids:
        raise ValueError(f"k-medians needs at least {num_centroids} vectors, got {n}")
    book = torch.empty(m, num_centroids, d, device=z.device)
    for s in range(m):
        pts = rows[:, s]
        first = int(torch.randint(n, (1,), generator=generator))
        book[s, 0] = pts[first]
        nearest = (pts - pts[first]).abs().sum(-1)
        for c in range(1, num_centroids):
            weights = nearest.cpu().double()
            pick = int(torch.multinomial(weights, 1, generator=generator)) if weights.sum() > 0 else c
            book[s, c] = pts[pick]
            nearest = torch.minimum(nearest, (pts - pts[pick]).abs().sum(-1))
    for _ in range(iters):
        assign = distances(rows, book).argmin(-1)  # (N, M)
        for s in range(m):
            a, v = assign[:, s], rows[:, s]  # (N,), (N, d)
            by_value = v.argsort(0)  # per dim ascending, then stably grouped by cluster
            by_cluster = a[by_value].argsort(dim=0, stable=True)
            grouped = v.gather(0, by_value.gather(0, by_cluster))
            counts = torch.bincount(a, minlength=num_centroids)
            mid = (counts.cumsum(0) - counts + (counts - 1).clamp_min(0) // 2).clamp(max=n - 1)
            book[s] = torch.where(counts[:, None] > 0, grouped[mid], book[s])  # lower median, as torch.median
    return book
