"""One replay object for ``S`` seeds of a run: batched ``[S, B]`` draws, per-seed reproducibility.

Seed batching (:class:`~torchrl_opt.pipeline.functional.SeedBatchedStep`) updates ``S`` seeds with
one vmapped graph on batches of batch size ``[S, B]``. Sampling ``S`` separate
:class:`~torchrl_opt.data.replay.MixedReplayBuffer` objects and stacking their batches costs ``S``
times the kernels per update; :class:`SeedBatchedReplay` holds all seeds in one storage and draws
the ``[S, B]`` batch with a fixed number of ops independent of ``S``:

* every seed keeps its own ``torch.Generator`` on the device (seeded with ``seeds[i]``) and draws
  its uniforms from it exactly as the single sampler does (one small ``torch.rand`` per seed and
  draw, then one ``torch.stack``);
* everything else (tree descent, index arithmetic, the row gather, priority writes) is batched
  over seeds: one gather per storage key, ``D`` levels of a few ops on ``[S, B, K]`` blocks for the
  balanced strategy (:func:`sumtree_sample_batched`, :func:`sumtree_update_batched_`).

The key property: seed ``i``'s sequence of indices and batches equals bit for bit what
``make_replay(strategy, offline, online_capacity, batch_size, device, seed=seeds[i])`` produces when
fed the same online transitions (``td[i]``) and the same priority updates (the sum-tree sums and the
uniform draws are the same ops on the same values).

**Storage layout.** One flat preallocated TensorDict :attr:`SeedBatchedReplay.data` of
``N + S * C`` rows (``N`` offline rows, ``C = online_capacity``): rows ``[0, N)`` hold the offline
dataset *once*, shared by all seeds, and seed ``i``'s online row ``j`` lives at
``N + i * C + j``. Indices are expressed, as in ``MixedReplayBuffer``, in each seed's own
``[0, N + C)`` index space (offline rows ``[0, N)``, online rows ``[N, N + C)``); a sampled
``index`` maps to the storage row ``index + (index >= N) * i * C`` (3 elementwise ops on
``[S, B]``), then one gather per key fetches the whole ``[S, B]`` batch. Memory:
``(N + S * C) * row_bytes`` for the data (instead of ``S * (N + C) * row_bytes`` for ``S``
separate buffers), plus for the balanced strategy ``S`` float64 sum-trees of
``K**D + K**(D-1) + ... + 1`` entries each (about ``8 * S * K**D * K / (K - 1)`` bytes, with
``K**D >= N + C`` from :func:`~torchrl_opt.data.replay.sumtree_layout`).

**Exactness limits.** The equality holds on one device for identical inputs. With duplicate
indices in one priority update, the 1-D and the batched writes keep one of the duplicates'
priorities: on CPU the last one while the write stays serial (fewer than 32768 written leaves
per call, i.e. ``S * M`` for the batched one); on CUDA which one is unspecified for both, so
batches with duplicate indices may then differ in the leaf kept (the tree stays consistent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from torchrl_opt.data.replay import (
    EmptyOnlineBufferError,
    PrioritiesNotSupportedError,
    ReplayCapacityError,
    ReplayStrategy,
    _constant_online_share,
    _index_and_priority,
    _new_generator,
    _tree_levels,
    check_replay_inputs,
    resolve_storage_layout,
    select_storage_keys,
    sumtree_layout,
    sumtree_shape,
    uniform_range_sample,
)

__all__ = [
    "SeedBatchedReplay",
    "make_seed_batched_replay",
    "sumtree_build_batched",
    "sumtree_sample_batched",
    "sumtree_update_batched_",
]


# --------------------------------------------------------------------------------------
# Batched sum-tree functions (leading seed dimension; no host sync, fixed shapes)
# --------------------------------------------------------------------------------------
def _seed_column(num: int, ndim: int, device: torch.device) -> torch.Tensor:
    """``arange(num)`` shaped ``[num, 1, ..., 1]`` (``ndim`` dims) to index the seed dimension."""
    return torch.arange(num, device=device).view(num, *([1] * (ndim - 1)))


def sumtree_build_batched(
    priorities: torch.Tensor, capacity: int | None = None, fanout: int | None = None
) -> torch.Tensor:
    """``S`` float64 K-ary sum-trees ``[S, T]`` over ``capacity`` leaves each.

    Row ``i`` is :func:`~torchrl_opt.data.replay.sumtree_build` of ``priorities[i]`` (same layout:
    levels concatenated root first, leaves past ``priorities.shape[1]`` are 0). ``priorities`` is
    ``[S, n]``; ``capacity`` defaults to ``n`` and ``fanout`` to :func:`sumtree_layout`'s choice.
    """
    if priorities.ndim != 2:
        raise ValueError(f"priorities must be [S, n]; got shape {tuple(priorities.shape)}.")
    num, n = priorities.shape
    capacity = n if capacity is None else int(capacity)
    if capacity < 1 or n > capacity:
        raise ValueError(
            f"capacity must be >= max(1, n); got capacity={capacity} for {n} priorities per row."
        )
    fanout, depth = sumtree_shape(capacity, fanout)
    leaves = torch.zeros(num, fanout**depth, dtype=torch.float64, device=priorities.device)
    leaves[:, :n] = priorities.to(torch.float64)
    levels = [leaves]
    for _ in range(depth):
        levels.append(levels[-1].view(num, -1, fanout).sum(-1))
    return torch.cat(levels[::-1], dim=1)


def sumtree_sample_batched(trees: torch.Tensor, u: torch.Tensor, fanout: int) -> torch.Tensor:
    """Proportional draws from ``S`` sum-trees: ``trees [S, T]``, ``u [S, B]`` -> ``[S, B]``.

    Row ``i`` of the result equals ``sumtree_sample(trees[i], u[i], fanout)`` exactly (the same
    descent, with the children blocks gathered as ``[S, B, K]``): row ``r`` of seed ``i`` is drawn
    with probability ``p_ir / sum_j p_ij``, zero-priority leaves are never entered. ``trees`` must
    be contiguous (as built by :func:`sumtree_build_batched`) with positive roots; ``u`` holds
    uniforms in ``[0, 1)`` with leading dim ``S`` (any trailing shape). ``D`` levels of a few ops;
    no host sync.
    """
    if trees.ndim != 2 or u.ndim < 1 or u.shape[0] != trees.shape[0]:
        raise ValueError(
            f"need trees [S, T] and u [S, ...]; got {tuple(trees.shape)} and {tuple(u.shape)}."
        )
    num = trees.shape[0]
    levels = _tree_levels(trees.shape[1], fanout)
    seed = _seed_column(num, u.ndim, trees.device)
    v = u.to(torch.float64) * trees[:, 0].view(seed.shape)
    node = torch.zeros(u.shape, dtype=torch.long, device=trees.device)
    for offset, size in levels[1:]:
        children = trees.narrow(1, offset, size).view(num, -1, fanout)[seed, node]
        cum = children.cumsum(-1)
        j = torch.minimum((cum <= v.unsqueeze(-1)).sum(-1), (cum < cum[..., -1:]).sum(-1))
        exclusive = torch.nn.functional.pad(cum[..., :-1], (1, 0))
        v = v - exclusive.gather(-1, j.unsqueeze(-1)).squeeze(-1)
        node = node * fanout + j
    return node


def sumtree_update_batched_(
    trees: torch.Tensor, index: torch.Tensor, priority: torch.Tensor | float, fanout: int
) -> None:
    """Set ``p_i[index[i]] = priority[i]`` in every tree ``i`` in place and recompute ancestors.

    ``trees [S, T]``, ``index [S, M]`` (any shape with leading ``S``), ``priority`` broadcastable
    to ``index``'s shape. Row ``i`` ends exactly as ``sumtree_update_(trees[i], index[i],
    priority[i], fanout)`` leaves it (each level recomputes ``node = sum(children)``); with
    duplicate indices one of their priorities is kept, as in the 1-D function (on CPU the last,
    as long as ``S * M`` is below PyTorch's parallel grain of 32768 writes). No host sync.
    """
    if trees.ndim != 2 or index.ndim < 1 or index.shape[0] != trees.shape[0]:
        raise ValueError(
            f"need trees [S, T] and index [S, ...]; got {tuple(trees.shape)} and "
            f"{tuple(index.shape)}."
        )
    num = trees.shape[0]
    levels = _tree_levels(trees.shape[1], fanout)
    priority = torch.as_tensor(priority, device=trees.device)
    priority = torch.broadcast_to(priority.to(torch.float64), index.shape).reshape(num, -1)
    node = index.reshape(num, -1).long()
    seed = _seed_column(num, 2, trees.device)
    offset, size = levels[-1]
    trees.narrow(1, offset, size)[seed, node] = priority
    for (offset, size), (child_offset, child_size) in zip(
        levels[-2::-1], levels[:0:-1], strict=True
    ):
        node = node // fanout
        children = trees.narrow(1, child_offset, child_size).view(num, -1, fanout)[seed, node]
        trees.narrow(1, offset, size)[seed, node] = children.sum(-1)


# --------------------------------------------------------------------------------------
# Buffer
# --------------------------------------------------------------------------------------
class SeedBatchedReplay:
    """Offline/online replay of ``S`` seeds in one storage, sampled as ``[S, B]`` batches.

    Build it with :func:`make_seed_batched_replay`. Behaves, seed by seed, like
    ``make_replay(strategy, offline, online_capacity, batch_size, device, seed=seeds[i])``
    (same strategies ``"balanced"``, ``"symmetric"``, ``"online"``, ``"uniform"``, same draws bit
    for bit, same errors), with every call batched over a leading seed dimension:

    * :meth:`extend` takes transitions of batch size ``[S]`` or ``[S, T, ...]`` (seed ``i``'s are
      ``td[i]``, flattened); all seeds always hold the same number of online rows.
    * :meth:`sample` returns ``[S, B]`` with the storage keys, ``"index"`` (int64, the row in the
      seed's own ``[0, N + C)`` index space) and ``"is_online"`` (``index >= N``).
    * :meth:`update_priority` takes ``index [S, M]`` and ``priority [S, M]``, and
      :meth:`update_tensordict_priority` a ``[S, M]`` sample carrying ``"index"`` and
      :attr:`priority_key` (balanced only; the other strategies raise
      :class:`~torchrl_opt.data.replay.PrioritiesNotSupportedError`).
    * :meth:`online_share` returns each seed's probability of sampling an online row ``[S]``.
    * :meth:`sample_offline_online` returns two ``[S, batch_size]`` batches with ``"index"``.
    * :meth:`state_dict` / :meth:`load_state_dict` cover fill level, online rows, sum-trees,
      running max priorities and generator states (offline rows are the construction input and
      are not saved: restore into a buffer built from the same offline data).

    Stored columns, ``extra_keys`` and ``online_fill`` as in ``make_replay``
    (:func:`~torchrl_opt.data.replay.resolve_storage_layout`: the transition layout plus the
    columns asked for; other offline columns such as ``"episode"`` are not stored).
    Storage (see the module docstring): one flat ``[N + S * C]`` TensorDict :attr:`data` with the
    offline rows once (shared) then each seed's ``C`` online rows, so the data take
    ``(N + S * C) * row_bytes``; :attr:`offline_data` ``[N]`` and :attr:`online_data`
    ``[S, C]`` are views into it. Dtypes and feature shapes follow the offline data; online
    batches are cast on write. Balanced priorities live in :attr:`trees` (``[S, T]`` float64,
    row ``i`` laid out as ``BalancedSampler.tree``).
    """

    def __init__(
        self,
        offline: TensorDictBase,
        *,
        strategy: ReplayStrategy,
        num_seeds: int,
        online_capacity: int,
        batch_size: int,
        device: torch.device | str | None = None,
        seeds: Sequence[int] | None = None,
        offline_fraction: float = 0.5,
        check_priorities: bool = True,
        extra_keys: Sequence[NestedKey] = (),
        online_fill: Mapping[NestedKey, Any] | None = None,
        priority_key: NestedKey = "td_error",
    ) -> None:
        check_replay_inputs(strategy, offline, online_capacity, batch_size)
        if isinstance(num_seeds, bool) or int(num_seeds) != num_seeds or num_seeds < 1:
            raise ValueError(f"num_seeds must be an int >= 1, got {num_seeds!r}.")
        num_seeds = int(num_seeds)
        if strategy == "symmetric" and not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}.")
        if device is None:
            device = offline.device if offline.device is not None else torch.device("cpu")
        device = torch.device(device)
        if seeds is None:
            # like ``_new_generator(device, None)``, once per seed
            seeds = [int(torch.randint(0, 2**62, ()).item()) for _ in range(num_seeds)]
        seeds = [int(s) for s in seeds]
        if len(seeds) != num_seeds:
            raise ValueError(f"got {len(seeds)} seeds for num_seeds={num_seeds}.")

        self.strategy = strategy
        self.num_seeds = num_seeds
        self.offline_size = offline.shape[0]
        self.online_capacity = int(online_capacity)
        self.capacity = self.offline_size + self.online_capacity
        self.batch_size = int(batch_size)
        self.device = device
        self.seeds = seeds
        self.offline_fraction = float(offline_fraction)
        self.check_priorities = bool(check_priorities)
        self.priority_key = priority_key
        self._num_online = 0
        self._generators = [_new_generator(device, s) for s in seeds]

        # storage: offline rows once, then S blocks of C online rows
        self._keys, self._online_fill = resolve_storage_layout(
            offline, extra_keys, online_fill, device
        )
        n, s, c = self.offline_size, num_seeds, self.online_capacity
        storage = TensorDict({}, batch_size=[n + s * c], device=device)
        for key in self._keys:
            value = offline.get(key)
            buf = torch.zeros((n + s * c, *value.shape[1:]), dtype=value.dtype, device=device)
            buf[:n] = value.to(device)
            storage.set(key, buf)
        self._storage = storage
        self._online_views = {
            key: storage.get(key)[n:].view(s, c, *storage.get(key).shape[1:]) for key in self._keys
        }
        self._seed_col = torch.arange(s, device=device).unsqueeze(-1)  # [S, 1]
        self._online_shift = self._seed_col * c  # storage row = index + is_online * shift

        if strategy == "balanced":
            self.fanout, self.depth = sumtree_layout(self.capacity)
            self._empty_trees()

    # -- properties ---------------------------------------------------------------------
    @property
    def num_online(self) -> int:
        """Number of online rows added so far (the same for every seed)."""
        return self._num_online

    def __len__(self) -> int:
        """Filled rows per seed: ``N + num_online``."""
        return self.offline_size + self._num_online

    @property
    def storage_keys(self) -> list[NestedKey]:
        """The columns every row holds (as ``MixedReplayBuffer.storage_keys``)."""
        return list(self._keys)

    @property
    def online_fill(self) -> dict[NestedKey, torch.Tensor]:
        """The constants stored for online rows whose batches lack these columns."""
        return dict(self._online_fill)

    @property
    def data(self) -> TensorDictBase:
        """The flat preallocated ``[N + S * C]`` storage (offline rows, then seed blocks)."""
        return self._storage

    @property
    def offline_data(self) -> TensorDictBase:
        """The shared offline rows ``[N]`` (a view into :attr:`data`)."""
        return self._storage[: self.offline_size]

    @property
    def online_data(self) -> TensorDictBase:
        """Every seed's online rows ``[S, C]`` (a view into :attr:`data`; past
        :attr:`num_online` unfilled)."""
        return TensorDict(
            dict(self._online_views),
            batch_size=[self.num_seeds, self.online_capacity],
            device=self.device,
        )

    @property
    def generators(self) -> list[torch.Generator]:
        """Each seed's private ``torch.Generator`` (on :attr:`device`)."""
        return list(self._generators)

    @property
    def trees(self) -> torch.Tensor:
        """The ``[S, T]`` float64 sum-trees (balanced only)."""
        self._require_priorities()
        return self._trees

    @property
    def priorities(self) -> torch.Tensor:
        """Leaf priorities ``[S, N + C]`` (a view into :attr:`trees`; 0 for unfilled rows)."""
        trees = self.trees
        leaves = self.fanout**self.depth
        return trees[:, trees.shape[1] - leaves :][:, : self.capacity]

    @property
    def max_priority(self) -> torch.Tensor:
        """Each seed's running max priority ``[S]`` (float64; balanced only)."""
        self._require_priorities()
        return self._max_priority

    # -- helpers ------------------------------------------------------------------------
    def _empty_trees(self) -> None:
        s = self.num_seeds
        self._trees = sumtree_build_batched(
            torch.zeros(s, 0, dtype=torch.float64, device=self.device), self.capacity, self.fanout
        )
        self._max_priority = torch.ones(s, dtype=torch.float64, device=self.device)
        # offline rows enter with priority 1, as MixedReplayBuffer's construction-time extend
        index = torch.arange(self.offline_size, device=self.device).expand(s, -1)
        sumtree_update_batched_(self._trees, index, 1.0, self.fanout)

    def _require_priorities(self, what: str = "priorities") -> None:
        if self.strategy != "balanced":
            raise PrioritiesNotSupportedError(
                f"{what}: the {self.strategy!r} strategy samples uniformly and has no priorities; "
                "only 'balanced' replay has priorities (make_seed_batched_replay('balanced', ...))."
            )

    def _uniforms(self, n: int) -> torch.Tensor:
        """``[S, n]`` float64 uniforms, row ``i`` drawn from seed ``i``'s generator."""
        return torch.stack(
            [
                torch.rand(n, generator=g, device=self.device, dtype=torch.float64)
                for g in self._generators
            ]
        )

    def _storage_rows(self, index: torch.Tensor, is_online: torch.Tensor) -> torch.Tensor:
        return index + is_online * self._online_shift

    def _gather(self, index: torch.Tensor, is_online: torch.Tensor | None = None) -> TensorDict:
        if is_online is None:
            is_online = index >= self.offline_size
        return self._storage[self._storage_rows(index, is_online)]

    def split_index(self, n_offline: int, n_online: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[S, n_offline]`` rows uniform over offline data and ``[S, n_online]`` over each seed's
        online data (seed ``i``: ``MixedReplayBuffer``'s ``split_index`` on its generator)."""
        if n_online > 0 and self._num_online == 0:
            raise EmptyOnlineBufferError(
                f"strategy {self.strategy!r} needs online transitions; extend the buffer first."
            )
        off = uniform_range_sample(0, self.offline_size, self._uniforms(n_offline))
        on = uniform_range_sample(self.offline_size, self._num_online, self._uniforms(n_online))
        return off, on

    # -- writing ------------------------------------------------------------------------
    def extend(self, tensordicts: TensorDictBase) -> torch.Tensor:
        """Append ``T`` online transitions per seed (``td[i]`` for seed ``i``).

        ``tensordicts`` has batch size ``[S]`` (one transition per seed) or ``[S, T, ...]``
        (flattened to ``[S, T']``). Only :attr:`storage_keys` are written (extra keys such as
        ``"collector"`` are dropped, :attr:`online_fill` columns a batch lacks get their fill
        value); other missing storage keys raise :class:`~torchrl_opt.data.replay.ReplayKeyError`, exceeding
        ``online_capacity`` raises :class:`ReplayCapacityError`. New rows get each seed's running max priority (balanced).
        Returns their indices ``[S, T']`` (each seed's own index space).
        """
        if not isinstance(tensordicts, TensorDictBase):
            raise TypeError(f"expected a TensorDict, got {type(tensordicts).__name__}.")
        s = self.num_seeds
        if tensordicts.batch_dims < 1 or tensordicts.shape[0] != s:
            raise ValueError(
                f"online transitions must have batch size [S, ...] with S = num_seeds = {s} "
                f"(seed i's rows are td[i]); got batch size {tuple(tensordicts.shape)}."
            )
        data = tensordicts.reshape(s, math.prod(tensordicts.shape[1:]))
        data = select_storage_keys(data, self._keys, self._online_fill)
        count = data.shape[1]
        if self._num_online + count > self.online_capacity:
            raise ReplayCapacityError(
                f"adding {count} online transitions per seed to {self._num_online} exceeds "
                f"online_capacity={self.online_capacity}; size the buffer for the whole run "
                "(offline rows are never overwritten)."
            )
        start = self._num_online
        index = torch.arange(
            self.offline_size + start, self.offline_size + start + count, device=self.device
        ).expand(s, count)
        if count == 0:
            return index
        values = {}
        for key in self._keys:
            value = data.get(key)
            view = self._online_views[key]
            if value.shape[2:] != view.shape[2:]:
                raise ValueError(
                    f"online {key!r} has feature shape {tuple(value.shape[2:])}; the storage "
                    f"holds {tuple(view.shape[2:])}."
                )
            values[key] = value
        for key, value in values.items():
            self._online_views[key][:, start : start + count] = value.to(self.device)
        self._num_online += count
        if self.strategy == "balanced":
            sumtree_update_batched_(
                self._trees, index, self._max_priority.unsqueeze(-1), self.fanout
            )
        return index

    @torch.no_grad()
    def update_priority(self, index: torch.Tensor, priority: torch.Tensor | float) -> None:
        """Set ``p_i[index[i]] = priority[i]`` and raise each seed's running max (balanced only).

        ``index`` is ``[S, M]`` (e.g. a sample's ``"index"``), ``priority`` ``[S, M]`` or
        broadcastable to it (a scalar, or ``[S, 1]`` for one priority per seed).
        With ``check_priorities=True`` (default) indices and priorities are validated (filled
        rows; finite and > 0) at the cost of one host sync, as ``MixedReplayBuffer`` does.
        """
        self._require_priorities("update_priority")
        s = self.num_seeds
        index = torch.as_tensor(index, device=self.device)
        if index.ndim < 1 or index.shape[0] != s:
            raise ValueError(
                f"priority indices must have shape [S, ...] with S = {s}; got {tuple(index.shape)}."
            )
        index = index.long()
        priority = torch.as_tensor(priority, device=self.device, dtype=torch.float64)
        try:
            priority = torch.broadcast_to(priority, index.shape)
        except RuntimeError as err:
            raise ValueError(
                f"got indices of shape {tuple(index.shape)} but priorities of shape "
                f"{tuple(priority.shape)}."
            ) from err
        index = index.reshape(s, -1)
        priority = priority.reshape(s, -1)
        if index.shape[1] == 0:
            return
        if self.check_priorities:
            filled = len(self)
            bad_index = (index < 0) | (index >= filled)
            bad_priority = ~torch.isfinite(priority) | (priority <= 0)
            flags = torch.stack([bad_index.any(), bad_priority.any()]).tolist()
            if flags[0]:
                raise IndexError(f"priority indices must lie in [0, {filled}).")
            if flags[1]:
                raise ValueError("priorities must be finite and > 0.")
        sumtree_update_batched_(self._trees, index, priority, self.fanout)
        self._max_priority = torch.maximum(self._max_priority, priority.amax(-1))

    def update_tensordict_priority(self, data: TensorDictBase) -> None:
        """Set the priorities of a ``[S, M]`` sample's rows from ``data["index"]`` and
        ``data[priority_key]`` (``"td_error"`` by default, trailing dims max-reduced, as
        ``MixedReplayBuffer.update_tensordict_priority``); equivalent to
        :meth:`update_priority` on those. Balanced only (others raise
        :class:`PrioritiesNotSupportedError`)."""
        self._require_priorities("update_tensordict_priority")
        index, priority = _index_and_priority(data, self.priority_key)
        self.update_priority(index, priority)

    def online_share(self) -> torch.Tensor:
        """Each seed's probability of sampling an online row, ``[S]`` float64 on :attr:`device`.

        Seed ``i``'s entry equals ``MixedReplayBuffer.online_share()`` of its own replay:
        balanced ``sum_{r >= N} p_ir / sum_r p_ir`` (no host sync); symmetric
        ``(B - round(f B)) / B``, online 1, uniform ``num_online / len(self)``; 0 while no online
        row exists.
        """
        if self.strategy == "balanced":
            online = self.priorities[:, self.offline_size :].sum(-1)
            total = self._trees[:, 0]
            return online / torch.where(total > 0, total, torch.ones_like(total))
        share = _constant_online_share(self, self.batch_size)
        return torch.full((self.num_seeds,), share, dtype=torch.float64, device=self.device)

    # -- sampling -----------------------------------------------------------------------
    def sample_index(self, batch_size: int | None = None) -> torch.Tensor:
        """Draw ``[S, batch_size]`` indices (default :attr:`batch_size`) by the strategy."""
        b = self.batch_size if batch_size is None else int(batch_size)
        if self.strategy == "balanced":
            return sumtree_sample_batched(self._trees, self._uniforms(b), self.fanout)
        if self.strategy == "symmetric":
            n_offline = round(self.offline_fraction * b)
            off, on = self.split_index(n_offline, b - n_offline)
            return torch.cat([off, on], dim=1)
        if self.strategy == "online":
            return self.split_index(0, b)[1]
        return uniform_range_sample(0, len(self), self._uniforms(b))

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """A ``[S, batch_size]`` batch: storage keys plus ``"index"`` and ``"is_online"``."""
        index = self.sample_index(batch_size)
        is_online = index >= self.offline_size
        td = self._gather(index, is_online)
        td.set("index", index)
        td.set("is_online", is_online)
        return td

    def sample_offline_online(self, batch_size: int) -> tuple[TensorDictBase, TensorDictBase]:
        """``[S, batch_size]`` rows uniform over offline data and ``[S, batch_size]`` over each
        seed's online data (the density-ratio estimator's batches), each with ``"index"``."""
        off, on = self.split_index(batch_size, batch_size)
        index = torch.cat([off, on], dim=1)
        td = self._gather(index)  # one gather per key for both batches
        td.set("index", index)
        return td[:, :batch_size], td[:, batch_size:]

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Fill level, online rows ``[S, num_online]``, trees, max priorities, generator states."""
        state: dict[str, Any] = {
            "strategy": self.strategy,
            "num_seeds": self.num_seeds,
            "offline_size": self.offline_size,
            "online_capacity": self.online_capacity,
            "num_online": self._num_online,
            "seeds": list(self.seeds),
            # plain tensors per key (no TensorDict): checkpoints load with weights_only=True
            "keys": [list(k) if isinstance(k, tuple) else k for k in self._keys],
            "online": [
                self._online_views[key][:, : self._num_online].clone() for key in self._keys
            ],
            "generator_states": [g.get_state().clone() for g in self._generators],
        }
        if self.strategy == "balanced":
            state["trees"] = self._trees.clone()
            state["max_priority"] = self._max_priority.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a buffer built with the same offline data and sizes."""
        for key in ("strategy", "num_seeds", "offline_size", "online_capacity"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"cannot load a replay state with {key}={state_dict[key]!r} into one with "
                    f"{key}={getattr(self, key)!r}."
                )
        num_online = int(state_dict["num_online"])
        keys = [tuple(k) if isinstance(k, list) else k for k in state_dict["keys"]]
        if keys != list(self._keys):
            raise ValueError(f"replay state has keys {keys}, this buffer {list(self._keys)}.")
        online = dict(zip(keys, state_dict["online"]))
        for key, value in online.items():
            if tuple(value.shape[:2]) != (self.num_seeds, num_online):
                raise ValueError(
                    f"online rows {key!r} of shape {tuple(value.shape)} do not match "
                    f"{self.num_seeds} seeds x num_online={num_online}."
                )
        if self.strategy == "balanced" and state_dict["trees"].shape != self._trees.shape:
            raise ValueError(
                f"sum-tree shape {tuple(state_dict['trees'].shape)} does not match "
                f"{tuple(self._trees.shape)}."
            )
        for key in self._keys:
            view = self._online_views[key]
            view.zero_()
            view[:, :num_online] = online[key].to(self.device)
        self._num_online = num_online
        self.seeds = [int(s) for s in state_dict.get("seeds", self.seeds)]
        for g, g_state in zip(self._generators, state_dict["generator_states"], strict=True):
            g.set_state(g_state.cpu())
        if self.strategy == "balanced":
            self._trees.copy_(state_dict["trees"])
            self._max_priority = state_dict["max_priority"].to(self.device, torch.float64).clone()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generators"] = [g.get_state().clone() for g in self._generators]
        del state["_online_views"]  # views into _storage, rebuilt on unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_states = state.pop("_generators")
        self.__dict__.update(state)
        self._generators = []
        for g_state in generator_states:
            g = torch.Generator(device=self.device)
            g.set_state(g_state)
            self._generators.append(g)
        n, s, c = self.offline_size, self.num_seeds, self.online_capacity
        self._online_views = {
            key: self._storage.get(key)[n:].view(s, c, *self._storage.get(key).shape[1:])
            for key in self._keys
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strategy={self.strategy!r}, num_seeds={self.num_seeds}, "
            f"offline_size={self.offline_size}, online_capacity={self.online_capacity}, "
            f"num_online={self.num_online}, batch_size={self.batch_size}, device={self.device})"
        )


def make_seed_batched_replay(
    strategy: ReplayStrategy,
    offline: TensorDictBase,
    num_seeds: int,
    online_capacity: int,
    batch_size: int,
    device: torch.device | str | None = None,
    seeds: Sequence[int] | None = None,
    *,
    offline_fraction: float = 0.5,
    check_priorities: bool = True,
    extra_keys: Sequence[NestedKey] = (),
    online_fill: Mapping[NestedKey, Any] | None = None,
    priority_key: NestedKey = "td_error",
) -> SeedBatchedReplay:
    """Build the ``[S, B]`` replay of ``num_seeds`` seeds of an online phase by strategy name.

    Seed ``i`` behaves as ``make_replay(strategy, offline, online_capacity, batch_size, device,
    seed=seeds[i], offline_fraction=offline_fraction)``; ``seeds`` defaults to ``num_seeds``
    draws from torch's global RNG (kept in :attr:`SeedBatchedReplay.seeds`). ``extra_keys``,
    ``online_fill`` and ``priority_key`` are ``make_replay``'s.
    """
    return SeedBatchedReplay(
        offline,
        strategy=strategy,
        num_seeds=num_seeds,
        online_capacity=online_capacity,
        batch_size=batch_size,
        device=device,
        seeds=seeds,
        offline_fraction=offline_fraction,
        check_priorities=check_priorities,
        extra_keys=extra_keys,
        online_fill=online_fill,
        priority_key=priority_key,
    )
