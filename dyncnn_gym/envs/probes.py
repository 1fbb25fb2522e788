"""Linear probes: a cheap early classifier at every decision point, for the ``"probe"`` observation.

A probe is a linear softmax classifier on the observation's pooled features entering decision
``t``. Its confidence (top probability, margin between the two best classes, normalised entropy)
is what a confidence cascade escalates on; the ``"probe"`` observation mode hands it to the agent.
Probes are fitted on train images walked along uniformly random routes, so that they read
partially computed feature maps too. Their cost (one ``F x classes`` matrix product per decision,
under 0.1 % of the default backbones) is agent overhead and, like the pooling, not counted in the
backbone's FLOPs.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..walk import Walk, run

_PROBES: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


@torch.no_grad()
def _features(core, n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    train = core.data.train
    idx = torch.randperm(len(train), generator=gen)[:n]
    x = torch.as_tensor(train.images)[idx].to(core.device)
    y = torch.as_tensor(train.labels)[idx].to(core.device)
    feats = []

    def random_route(walk: Walk) -> torch.Tensor:
        feats.append(core.scaled_features(walk))
        return torch.randint(0, walk.A, (len(walk),), generator=gen)

    run(Walk(core.net, core.mode, x), random_route)
    return feats, y


#: intra-op torch threads of the fits an env makes once per process (feature scales, probes): a fixed
#: count, because the reductions of a fit split over threads and round differently with another count,
#: and what an env observes must not depend on the caller's (a shell runs torch's default, a bench job
#: or a Ray worker 1 thread)
FIT_THREADS = 1


@contextlib.contextmanager
def fit_threads() -> Iterator[None]:
    """Run a fit with :data:`FIT_THREADS` intra-op threads (the caller's count restored afterwards)."""
    before = torch.get_num_threads()
    if before != FIT_THREADS:
        torch.set_num_threads(FIT_THREADS)
    try:
        yield
    finally:
        if before != FIT_THREADS:
            torch.set_num_threads(before)


def fit_probes(core, n: int = 3000, steps: int = 300, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One ``(weight [C_t, K], bias [K])`` probe per decision point of ``core`` (memoised per
    backbone, mode and data within a process; fitted with :data:`FIT_THREADS` threads)."""
    per_net = _PROBES.setdefault(core.net, {})
    key = (core.mode, core.data.fingerprint, n, steps, seed)
    if key in per_net:
        return per_net[key]
    with fit_threads():
        probes = _fit(core, n, steps, seed)
    per_net[key] = probes
    return probes


def _fit(core, n: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    feats, y = _features(core, n, seed)
    K = core.data.num_classes
    probes = []
    torch.manual_seed(seed)
    for f in feats:
        lin = torch.nn.Linear(f.shape[1], K).to(f.device)
        opt = torch.optim.Adam(lin.parameters(), lr=0.05)
        with torch.enable_grad():  # also when called under torch.no_grad(), e.g. from a baseline's evaluation
            for _ in range(steps):
                loss = F.cross_entropy(lin(f), y) + 1e-4 * lin.weight.square().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        probes.append((lin.weight.detach().t().contiguous(), lin.bias.detach().clone()))
    return probes


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 3]``: top probability, margin between the two best, entropy / log(K) (all in [0, 1]).

    (Written with in-place steps on fresh tensors: a routed model builds it at every decision.)"""
    p = logits.softmax(1) if logits.dtype == torch.float32 else logits.float().softmax(1)
    if p.shape[1] > 1:
        top2 = p.topk(2, dim=1).values
        top, margin = top2[:, :1], top2[:, :1] - top2[:, 1:]
    else:
        top, margin = p, p - 0
    ent = (p * p.clamp_min(1e-12).log_()).sum(1, keepdim=True).neg_().div_(math.log(p.shape[1]))
    return torch.cat([top, margin, ent], 1)


__all__ = ["confidence", "fit_probes"]
