"""The core: a batch of images walking through a dynamic CNN one decision at a time.

Every face of the package (single env, vector envs, evaluation, export, co-training) is a thin
layer on :class:`Walk`. At decision point ``t`` each sample's action decides what is computed *for
that sample*: samples are grouped by (previous action, action), each group runs on contiguous
weight slices, and the results are scattered back. A skipped block or pruned channel group is never
computed (no 0/1 mask multiply), and the FLOPs of each sample's route are accounted exactly from
the backbone's :class:`~dyncnn_gym.models.CostTable`.

A mixed batch of a plain CNN in channel mode holds up to ``A * A`` such groups per decision (the
switchable batch-norm makes each (previous width, width) pair its own kernel), and small
convolutions run far below the CPU's peak: at inference, a group may be computed at the width of
the next wider group of the same previous action and its surplus channels dropped, when that adds
at most :data:`MERGE_FLOPS` executed FLOPs. So a decision executes at most ``(A - 1) * MERGE_FLOPS``
FLOPs per chunk more than its samples' routes count, whatever the batch size. Likewise a residual
block that nearly every sample of a chunk runs is run on the whole chunk at inference, when at most
:data:`DENSE_SKIP_SHARE` of its rows skip it, and the skipping rows get their own output back: the
block then executes at most ``1 / (1 - DENSE_SKIP_SHARE)`` times the FLOPs its samples count. A
batch whose samples take one route, a single image, and everything under autograd or in training
mode execute exactly the counted FLOPs.

Shapes: ``B`` samples, ``T`` decision points, ``A`` actions per decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import CostTable, DynamicNet, first_parameter, param_dtype, structure_cache

#: executed FLOPs one merge of two groups of a decision may add (a group's rows computed at a
#: wider action's width): about what a separate small convolution loses at 1 CPU thread (its fixed
#: cost and its low efficiency on a few narrow images; on ``vgg`` at batches of 16-64, merging ran
#: 5-24 % faster with random per-image widths and 1-6 % with a trained router's routes). ``0`` turns
#: merging off (executed FLOPs then equal the counted ones for any batch).
MERGE_FLOPS = 8_000_000
#: at inference in skip mode, a residual block that all but at most this share of a chunk's rows
#: run is run on every row of the chunk, and the skipping rows' own output (their input, or the
#: shortcut's) is copied over theirs (instead of gathering the running rows and scattering or
#: concatenating their outputs: two copies of nearly the whole feature map, and convolutions over
#: freshly copied memory; docs/speed.md measures what it saves). The block then executes at most
#: ``1 / (1 - DENSE_SKIP_SHARE)`` (8/7) times the FLOPs its rows count. ``0`` turns it off.
DENSE_SKIP_SHARE = 0.125


class Structure:
    """What a walk needs to know of ``net`` in ``mode``, built once per network and mode (a
    network's structure does not change) and kept in :func:`~dyncnn_gym.models.base.structure_cache`.

    Attributes:
        table: the :class:`~dyncnn_gym.models.CostTable`; ``steps`` / ``head``: its ``steps``
            ``[T, A, A]`` and ``head`` ``[A]`` as CPU int64 tensors, and ``steps_list`` /
            ``head_list`` as nested Python lists (one image's accounting in Python ints).
        widths: ``net.feature_widths(mode)`` (uncached, a ResNet indexes every block: some 50 us).
        by_prev: ``net.decision_uses_prev(mode)``.
        identity: per decision, whether action 0 leaves the feature map as it is (a skipped block
            that keeps its input's shape), so the walk need not call the backbone.
    """

    __slots__ = ("table", "steps", "head", "steps_list", "head_list", "widths", "by_prev", "identity")

    def __init__(self, net: DynamicNet, mode: str) -> None:
        self.table = table = net.cost_table(mode)
        self.steps, self.head = torch.as_tensor(table.steps), torch.as_tensor(table.head)
        self.steps_list, self.head_list = table.steps.tolist(), table.head.tolist()
        self.widths = tuple(net.feature_widths(mode))
        self.by_prev = net.decision_uses_prev(mode)
        self.identity = tuple(mode == "skip" and _is_identity_skip(net, t) for t in range(table.num_decisions))


def structure(net: DynamicNet, mode: str) -> Structure:
    """The :class:`Structure` of ``net`` in ``mode`` (cached)."""
    per_net = structure_cache(net)
    hit = per_net.get(mode)
    if hit is None:
        hit = per_net[mode] = Structure(net, mode)
    return hit


def cost_tensors(net: DynamicNet, mode: str) -> tuple[CostTable, torch.Tensor, torch.Tensor]:
    """The cost table of ``net`` in ``mode``, plus its ``steps`` and ``head`` as CPU int64 tensors."""
    s = structure(net, mode)
    return s.table, s.steps, s.head


class _Chunk:
    """Rows of a walk that share their previous action ``p``: sample indices ``rows`` (NumPy int64)
    and their feature map ``x`` ``[len(rows), c, H, W]`` (``c`` = what ``p`` computed).

    For backbones whose decisions ignore the previous action (:meth:`DynamicNet.decision_uses_prev`)
    ``p`` is only a label (``-1`` when the rows' previous actions differ). ``owned``: ``x`` is
    referenced by no one else, so rows may be overwritten in place (inference only).
    """

    __slots__ = ("p", "rows", "x", "owned")

    def __init__(self, p: int, rows: np.ndarray, x: torch.Tensor, owned: bool = True) -> None:
        self.p, self.rows, self.x, self.owned = p, rows, x, owned


class _One:
    """The accounting of a walk of one image in Python ints: previous action, FLOPs spent, actions
    taken ``[T]`` (priced from :attr:`Structure.steps_list` / :attr:`Structure.head_list`)."""

    __slots__ = ("prev", "flops", "actions")

    def __init__(self, prev: int, flops: int, actions: list[int]) -> None:
        self.prev, self.flops, self.actions = prev, flops, actions


#: the accounting arrays and their tensors, built on first read for a walk of one image
_BOOKS = frozenset(("_prev", "_flops", "_actions", "prev", "flops", "actions"))
_ROW0 = np.zeros(1, dtype=np.int64)
_ROW0.flags.writeable = False


class Walk:
    """A batch of ``B`` images part-way through ``net`` in ``mode``.

    Attributes:
        t: index of the next decision point (``T`` when all decisions are made).
        h: feature map entering decision ``t``, ``[B, C, H, W]`` on the net's device; in channel
            mode on a plain CNN it may hold fewer than the layer's full channels (the rest are 0).
            Assembled on access (see below).
        prev: int64 ``[B]`` (CPU), the previous action of each sample (``A - 1`` before the first).
        flops: int64 ``[B]`` (CPU), FLOPs spent so far on each sample.
        actions: int64 ``[B, T]`` (CPU), actions taken so far (``-1`` where not yet taken).

    Inside, the samples are kept in *chunks* of equal previous action, each a dense tensor holding
    exactly the channels that action computed. A step splits each chunk by the new action (one
    gather where a chunk is mixed; none where it is not), runs every (previous action, action)
    group once on contiguous cached weight slices, and concatenates the outputs by action; so a
    mixed batch costs one gather and one concatenation per step, never a mask or a zero fill, and a
    uniform batch costs neither. The accounting (``prev``, ``flops``, ``actions``) lives in NumPy
    arrays that the tensors share memory with; a walk of one image keeps it in Python ints until
    one of them is first read (:meth:`spent` reads its FLOPs without that), so a single image
    walks with no NumPy or tensor bookkeeping at a decision.
    """

    def __init__(self, net: DynamicNet, mode: str, images: torch.Tensor | None) -> None:
        net.check_mode(mode)
        self.net, self.mode = net, mode
        self._s = st = structure(net, mode)
        self.table = st.table
        self.T, self.A = self.table.num_decisions, self.table.num_actions
        self.widths = list(st.widths)
        self._by_prev = st.by_prev
        self.t = 0
        self._logits: torch.Tensor | None = None
        self._chunks: list[_Chunk] = []
        self._one: _One | None = None
        if images is None:  # used by select / cat
            return
        B = images.shape[0]
        dtype = param_dtype(net)
        if images.is_floating_point() and images.dtype != dtype:  # e.g. a bfloat16 / float16 backbone
            images = images.to(dtype)
        if B == 1:
            self._one = _One(self.A - 1, self.table.stem, [-1] * self.T)
            self._chunks = [_Chunk(self.A - 1, _ROW0, net.stem(images, mode))]
            return
        self._chunks = [_Chunk(self.A - 1, np.arange(B, dtype=np.int64), net.stem(images, mode))]
        self._books(
            np.full(B, self.A - 1, dtype=np.int64),
            np.full(B, self.table.stem, dtype=np.int64),
            np.full((B, self.T), -1, dtype=np.int64),
        )

    def _books(self, prev: np.ndarray, flops: np.ndarray, actions: np.ndarray) -> None:
        self._one = None
        self._prev, self._flops, self._actions = prev, flops, actions
        self.prev, self.flops, self.actions = torch.from_numpy(prev), torch.from_numpy(flops), torch.from_numpy(actions)

    def __getattr__(self, name: str):
        # only reached for an attribute not set: a walk of one image builds its accounting arrays
        # the first time one of them is read, and keeps them up to date from then on
        one = self.__dict__.get("_one")
        if one is None or name not in _BOOKS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._books(
            np.array([one.prev], dtype=np.int64),
            np.array([one.flops], dtype=np.int64),
            np.array([one.actions], dtype=np.int64),
        )
        return self.__dict__[name]

    def __len__(self) -> int:
        return 1 if self._one is not None else int(self._prev.shape[0])

    def accounts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of :attr:`actions` ``[B, T]`` and :attr:`flops` ``[B]`` (int64; on a walk of one
        image, made without building its accounting arrays)."""
        one = self._one
        if one is not None:
            return torch.tensor([one.actions], dtype=torch.int64), torch.tensor([one.flops], dtype=torch.int64)
        return self.actions.clone(), self.flops.clone()

    def spent(self) -> int:
        """FLOPs spent so far by the first image (a Python int; on a walk of one image, read without
        building the accounting arrays)."""
        one = self._one
        return one.flops if one is not None else int(self._flops[0])

    @property
    def done(self) -> bool:
        return self.t >= self.T

    @property
    def device(self) -> torch.device:
        return self._chunks[0].x.device if self._chunks else first_parameter(self.net).device  # type: ignore[union-attr]

    # -- the feature map in sample order ---------------------------------------------------------
    def _order(self) -> np.ndarray | None:
        """Sample index of each row of the chunks laid end to end (``None`` if that is ``0..B-1``)."""
        if len(self._chunks) == 1:
            rows = self._chunks[0].rows
            if rows.shape[0] < 2 or bool((rows[1:] > rows[:-1]).all()):
                return None
            return rows
        return np.concatenate([c.rows for c in self._chunks]) if self._chunks else None

    def _unpermute(self, y: torch.Tensor) -> torch.Tensor:
        """Rows of ``y`` (chunk order) put back in sample order."""
        order = self._order()
        if order is None:
            return y
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0])
        return y.index_select(0, torch.from_numpy(inv).to(y.device))

    @property
    def h(self) -> torch.Tensor:
        chunks = self._chunks
        if len(chunks) == 1 and self._order() is None:
            chunks[0].owned = False  # the caller holds it now: never overwrite it in place
            return chunks[0].x
        if not chunks:
            raise RuntimeError("the walk holds no samples")
        C = max(c.x.shape[1] for c in chunks)
        xs = [F.pad(c.x, (0, 0, 0, 0, 0, C - c.x.shape[1])) if c.x.shape[1] < C else c.x for c in chunks]
        return self._unpermute(torch.cat(xs))

    @h.setter
    def h(self, value: torch.Tensor) -> None:
        """Replace the feature map (``[B, C, H, W]`` in sample order)."""
        if value.shape[0] != len(self):
            raise ValueError(f"h must have {len(self)} rows, got {tuple(value.shape)}")
        self._chunks = []
        for p in np.unique(self._prev).tolist():
            rows = np.flatnonzero(self._prev == p)
            x = value if rows.shape[0] == len(self) else value.index_select(0, torch.from_numpy(rows).to(value.device))
            self._chunks.append(_Chunk(int(p), rows, x))

    # -- observing ---------------------------------------------------------------------------
    def pooled(self) -> torch.Tensor:
        """Globally average-pooled feature map entering decision ``t``: ``[B, widths[t]]``."""
        if self.done:
            raise RuntimeError("the walk is finished: every decision has been made")
        width = self.widths[self.t]
        fs = []
        for c in self._chunks:
            f = c.x.mean(dim=(2, 3))
            fs.append(F.pad(f, (0, width - f.shape[1])) if f.shape[1] < width else f)
        if not fs:
            return torch.zeros((0, width), device=self.device)
        return self._unpermute(fs[0] if len(fs) == 1 else torch.cat(fs))

    def features_one(self) -> torch.Tensor:
        """One image's feature map entering decision ``t``, as computed: ``[1, C, H, W]``, ``C <=
        widths[t]`` (the rest of ``widths[t]`` channels would be zeros). Do not modify it."""
        if self.done or len(self) != 1:
            raise RuntimeError("features_one needs a walk of one image that is not finished")
        return self._chunks[0].x

    # -- acting ------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Take decision ``t`` for every sample; returns the FLOPs it cost each sample, int64 ``[B]``."""
        if self.done:
            raise RuntimeError("the walk is finished: every decision has been made")
        B = len(self)
        a = _as_actions(actions, B, self.A)
        if B == 1:
            return torch.from_numpy(np.array([self._advance_all(int(a[0]))], dtype=np.int64))
        t, prev = self.t, self._prev
        if B:
            a0 = int(a[0])
            if len(self._chunks) == 1 and (a == a0).all():
                self._chunks[0] = self._run_chunk(t, self._chunks[0], a0)
            else:
                self._chunks = self._advance(t, a) if self._by_prev else self._advance_any_prev(t, a)
        cost = self.table.steps[t][prev, a]
        self._flops += cost
        self._actions[:, t] = a
        prev[:] = a
        self.t += 1
        return torch.from_numpy(cost)

    def advance(self, action: int) -> int:
        """Take decision ``t`` with the same ``action`` (a Python int) for every sample: no grouping
        and no NumPy on the way (the lean path of single images and static routes). Returns the
        FLOPs it cost each sample when they all had the same previous action, else ``-1`` (read
        :attr:`flops` then)."""
        if self.done:
            raise RuntimeError("the walk is finished: every decision has been made")
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < self.A:
            raise ValueError(f"action {action!r} is outside Discrete({self.A}) (valid: 0..{self.A - 1})")
        return self._advance_all(int(action))

    def _advance_all(self, v: int) -> int:
        one, t = self._one, self.t
        if one is not None:  # one image, accounting not yet read as arrays: Python ints (_run_chunk inlined)
            p, c = one.prev, self._chunks[0]
            if v or not self._s.identity[t]:
                c.x, c.owned = self.net.decision(self.mode, t, c.x, p, v), True
            c.p = v
            cost = self._s.steps_list[t][p][v]
            one.flops += cost
            one.actions[t] = v
            one.prev = v
            self.t = t + 1
            return cost
        prev = self._prev
        B = prev.shape[0]
        if B == 1:  # one image (the single env, a routed model at batch 1): scalar bookkeeping
            p = int(prev[0])
            self._chunks[0] = self._run_chunk(t, self._chunks[0], v)
            cost = int(self.table.steps[t, p, v])
            self._flops[0] += cost
        else:
            costs = self.table.steps[t, :, v][prev]
            if B:
                if self._by_prev and len(self._chunks) > 1:
                    self._chunks = self._advance(t, np.full(B, v, dtype=np.int64))
                else:
                    self._chunks = [self._run_chunk(t, c, v) for c in self._chunks]
            self._flops += costs
            cost = int(costs[0]) if B and (costs == costs[0]).all() else -1
        self._actions[:, t] = v
        prev[:] = v
        self.t += 1
        return cost

    def _run_chunk(self, t: int, c: _Chunk, v: int) -> _Chunk:
        """Decision ``t`` with action ``v`` for every row of chunk ``c`` (one call on the backbone)."""
        if v == 0 and self._s.identity[t]:
            c.p = v
            return c
        c.x, c.p, c.owned = self.net.decision(self.mode, t, c.x, c.p, v), v, True
        return c

    def _advance(self, t: int, a: np.ndarray) -> list[_Chunk]:
        """Decision ``t`` on every chunk; returns the new chunks (one per action taken).

        Each chunk (one previous action) is split by the new action into groups, each run on its own
        cached kernel. At inference, where the backbone's actions narrow its output
        (:meth:`~dyncnn_gym.models.DynamicNet.output_channels`), a group is run together with the
        chunk's next costlier group when that widens its ``n`` rows by at most :data:`MERGE_FLOPS`
        (``n * (steps[t, p, costlier] - steps[t, p, a])``): its rows are computed at the costlier
        action's width and the surplus channels dropped."""
        net, mode = self.net, self.mode
        steps = self.table.steps[t]
        budget = MERGE_FLOPS if self._merges(t) else -1
        # jobs: (previous action, computed action, chunk tensor, [(action, rows, row indices into the chunk)])
        jobs: list[tuple[int, int, torch.Tensor, list]] = []
        for c in self._chunks:
            ac = a[c.rows]
            a0 = int(ac[0])
            if (ac == a0).all():
                jobs.append((c.p, a0, c.x, [(a0, c.rows, None)]))
                continue
            order = np.argsort(-ac, kind="stable")  # costlier (wider) actions first
            sa = ac[order]
            cuts = [0, *(np.flatnonzero(sa[1:] != sa[:-1]) + 1).tolist(), sa.shape[0]]
            first = True
            for s_, e in zip(cuts[:-1], cuts[1:]):
                act = int(sa[s_])
                member = (act, c.rows[order[s_:e]], order[s_:e])
                if not first and (e - s_) * int(steps[c.p, jobs[-1][1]] - steps[c.p, act]) <= budget:
                    jobs[-1][3].append(member)
                else:
                    jobs.append((c.p, act, c.x, [member]))
                first = False
        pieces: dict[int, list[tuple[np.ndarray, torch.Tensor]]] = {}
        for p, act, x, members in jobs:
            if len(members) > 1 or members[0][2] is not None:
                idx = members[0][2] if len(members) == 1 else np.concatenate([m[2] for m in members])
                if idx.shape[0] < x.shape[0] or bool((idx != np.arange(idx.shape[0])).any()):
                    x = _gather(x, torch.from_numpy(idx).to(x.device))
            y = net.decision(mode, t, x, p, act)
            start = 0
            for m_act, rows, _idx in members:
                end = start + rows.shape[0]
                ym = y if len(members) == 1 else y[start:end]
                if m_act != act:
                    ym = ym[:, : net.output_channels(mode, t, m_act)]
                pieces.setdefault(m_act, []).append((rows, ym))
                start = end
        out = []
        for act in sorted(pieces):
            ps = pieces[act]
            if len(ps) == 1:
                out.append(_Chunk(act, ps[0][0], _dense(ps[0][1])))
            else:
                out.append(_Chunk(act, np.concatenate([r for r, _ in ps]), torch.cat([y for _, y in ps])))
        return out

    def _merges(self, t: int) -> bool:
        """Whether decision ``t`` may compute a group at a costlier action's width (see :meth:`_advance`)."""
        net = self.net
        return (
            MERGE_FLOPS > 0
            and not net.training
            and not torch.is_grad_enabled()
            and net.output_channels(self.mode, t, 0) is not None
        )

    def _advance_any_prev(self, t: int, a: np.ndarray) -> list[_Chunk]:
        """Decision ``t`` when the previous action does not matter (ResNets): chunks need not be
        split by it. Samples that skip an identity block stay where they are: only the rows that
        execute it are gathered, computed and written back (in place when the chunk is owned and
        no gradient is recorded). At inference in skip mode, where at most :data:`DENSE_SKIP_SHARE`
        of a chunk's rows skip the block, it runs on the whole chunk instead and the skipping rows
        get their own output back (their input, or the shortcut's output where the block changes
        the map's shape)."""
        net, mode = self.net, self.mode
        skip_identity = self._s.identity[t]
        inplace_ok = not torch.is_grad_enabled()
        dense = DENSE_SKIP_SHARE > 0 and mode == "skip" and inplace_ok and not net.training
        kept: list[_Chunk] = []
        pieces: list[tuple[np.ndarray, torch.Tensor]] = []
        for c in self._chunks:
            ac = a[c.rows]
            a0 = int(ac[0])
            if (ac == a0).all():
                if not (skip_identity and a0 == 0):
                    c.x, c.owned = net.decision(mode, t, c.x, c.p, a0), True
                c.p = a0
                kept.append(c)
                continue
            skips = np.flatnonzero(ac == 0) if dense else None
            if skips is not None and skips.shape[0] <= DENSE_SKIP_SHARE * ac.shape[0]:
                idx = torch.from_numpy(skips).to(c.x.device)
                y = net.decision(mode, t, c.x, c.p, 1)
                skipped = _gather(c.x, idx)  # the skipping rows' input, or their shortcut's output
                _scatter_(y, idx, skipped if skip_identity else net.decision(mode, t, skipped, c.p, 0))
                c.x, c.p, c.owned = y, -1, True
                kept.append(c)
                continue
            if skip_identity:
                run = np.flatnonzero(ac == 1)
                idx = torch.from_numpy(run).to(c.x.device)
                y = net.decision(mode, t, _gather(c.x, idx), c.p, 1)
                if inplace_ok and c.owned:
                    _scatter_(c.x, idx, y)
                else:
                    c.x, c.owned = c.x.index_copy(0, idx, y), True
                c.p = -1
                kept.append(c)
                continue
            order = np.argsort(ac, kind="stable")
            sa = ac[order]
            cuts = [0, *(np.flatnonzero(sa[1:] != sa[:-1]) + 1).tolist(), sa.shape[0]]
            order_dev = torch.from_numpy(order).to(c.x.device)
            for s, e in zip(cuts[:-1], cuts[1:]):
                pieces.append((c.rows[order[s:e]], net.decision(mode, t, _gather(c.x, order_dev[s:e]), c.p, int(sa[s]))))
        if pieces:
            kept.append(_Chunk(-1, np.concatenate([r for r, _ in pieces]), torch.cat([y for _, y in pieces])))
        return kept

    def logits(self) -> torch.Tensor:
        """Class scores ``[B, num_classes]`` after the last decision; adds the head's FLOPs once."""
        if not self.done:
            raise RuntimeError(f"decision {self.t} of {self.T} is still to be made")
        if self._logits is None:
            ys = [self.net.head(c.x, self.mode, c.p) for c in self._chunks]
            if not ys:
                self._logits = torch.zeros((0, self.net.num_classes), device=self.device)
            else:
                self._logits = self._unpermute(ys[0] if len(ys) == 1 else torch.cat(ys))
            if self._one is not None:
                self._one.flops += self._s.head_list[self._one.prev]
            else:
                self._flops += self.table.head[self._prev]
        return self._logits

    # -- regrouping (vector envs with partial resets) ----------------------------------------
    def select(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> Walk:
        """A walk of the samples ``rows`` (int64 indices), at the same decision point."""
        rows_np = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        rows_np = rows_np.astype(np.int64, copy=False).reshape(-1)
        w = Walk(self.net, self.mode, None)
        w.t = self.t
        pos = np.full(len(self), -1, dtype=np.int64)
        pos[rows_np] = np.arange(rows_np.shape[0])
        for c in self._chunks:
            new = pos[c.rows]
            keep = new >= 0
            if keep.all():
                c.owned = False  # shared by both walks from now on
                w._chunks.append(_Chunk(c.p, new, c.x, owned=False))
            elif keep.any():
                k = np.flatnonzero(keep)
                w._chunks.append(_Chunk(c.p, new[k], _gather(c.x, torch.from_numpy(k).to(c.x.device))))
        w._books(self._prev[rows_np], self._flops[rows_np], self._actions[rows_np])
        if self._logits is not None:
            w._logits = self._logits.index_select(0, torch.from_numpy(rows_np).to(self._logits.device))
        return w

    @staticmethod
    def cat(walks: Sequence[Walk]) -> Walk:
        """Concatenate walks that stand at the same decision point (no feature map is copied)."""
        if len({w.t for w in walks}) != 1:
            raise ValueError(f"walks at different decision points {[w.t for w in walks]} cannot be merged")
        if len(walks) == 1:
            return walks[0]
        w = Walk(walks[0].net, walks[0].mode, None)
        w.t = walks[0].t
        offset = 0
        for x in walks:
            for c in x._chunks:
                c.owned = False
                w._chunks.append(_Chunk(c.p, c.rows + offset, c.x, owned=False))
            offset += len(x)
        w._books(
            np.concatenate([x._prev for x in walks]),
            np.concatenate([x._flops for x in walks]),
            np.concatenate([x._actions for x in walks]),
        )
        if all(x._logits is not None for x in walks):
            w._logits = torch.cat([x._logits for x in walks])
        return w


def _scatter_(x: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> None:
    """``x[idx] = y`` in place (rows copied as contiguous NHWC rows when channels-last)."""
    if _channels_last(x) and _channels_last(y):
        x.permute(0, 2, 3, 1).index_copy_(0, idx, y.permute(0, 2, 3, 1))
    else:
        x.index_copy_(0, idx, y)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is dense in its layout (contiguous or channels-last), else a dense copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 and x.stride(1) == 1 else torch.contiguous_format)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``x``, keeping a channels-last layout (gathered as contiguous NHWC rows)."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return x.index_select(0, idx)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _is_identity_skip(net: DynamicNet, t: int) -> bool:
    blocks = getattr(net, "blocks", None)
    return blocks is not None and not blocks[1 + t].changes_shape


def _as_actions(actions, B: int, A: int) -> np.ndarray:
    """``actions`` as an int64 NumPy array ``[B]``, checked against ``Discrete(A)``."""
    if isinstance(actions, np.ndarray) and actions.dtype == np.int64 and actions.shape == (B,) and B == 1:
        if not 0 <= actions[0] < A:
            raise ValueError(f"actions {actions.tolist()} are outside Discrete({A}) (valid: 0..{A - 1})")
        return actions
    if isinstance(actions, torch.Tensor):
        if actions.dtype.is_floating_point or actions.dtype == torch.bool or actions.dtype.is_complex:
            raise TypeError(f"actions must be integers in [0, {A}); got dtype {actions.dtype}")
        a = actions.detach().cpu().numpy()
    else:
        a = np.asarray(actions)
        if a.dtype.kind not in "iu":
            raise TypeError(f"actions must be integers in [0, {A}); got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False).reshape(-1)
    if a.shape[0] != B:
        raise ValueError(f"expected {B} actions (one per sample), got {a.shape[0]}")
    bad = (a < 0) | (a >= A)
    if bad.any():
        raise ValueError(f"actions {a[bad].tolist()} are outside Discrete({A}) (valid: 0..{A - 1})")
    return a


def run_routes(
    net: DynamicNet, mode: str, images: torch.Tensor, actions: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``images`` with fixed per-sample ``actions`` ``[B, T]`` (the raw batched dynamic pass).

    Returns ``(logits [B, classes], flops int64 [B])``.
    """
    acts = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
    walk = Walk(net, mode, images)
    if acts.ndim != 2 or acts.shape[1] != walk.T:
        raise ValueError(f"actions must have shape [B, {walk.T}], got {tuple(acts.shape)}")
    if len(walk) == 1 and acts.dtype.kind in "iu":  # one image: the lean path a routed model takes
        for a in acts[0].tolist():
            walk.advance(a)
    else:
        for t in range(walk.T):
            walk.step(acts[:, t])
    return walk.logits(), walk.flops


def run(walk: Walk, choose: Callable[[Walk], torch.Tensor | np.ndarray | Sequence[int]]) -> Walk:
    """Step ``walk`` to its end, asking ``choose(walk)`` for the actions at every decision (an int64
    ``[B]`` tensor / array, or one Python int for every sample); returns the finished walk (its
    head not yet run: call ``.logits()``)."""
    while not walk.done:
        a = choose(walk)
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            walk.advance(int(a))
        else:
            walk.step(a)
    return walk


def run_policy(
    net: DynamicNet,
    mode: str,
    images: torch.Tensor,
    choose: Callable[[Walk], torch.Tensor | np.ndarray],
) -> Walk:
    """Walk ``images`` through ``net`` asking ``choose(walk)`` for the actions at every decision.

    Returns the finished walk (call ``.logits()``; ``.flops`` and ``.actions`` hold the accounting).
    """
    walk = run(Walk(net, mode, images), choose)
    walk.logits()
    return walk
