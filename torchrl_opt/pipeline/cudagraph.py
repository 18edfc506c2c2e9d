"""A plain ``torch.cuda.CUDAGraph`` replay of an update step, with no device synchronisation.

:class:`CudaGraphStep` wraps a step ``TensorDictBase -> TensorDictBase`` (the update steps of
:mod:`torchrl_opt.pipeline.updates`, usually already ``torch.compile``-d) the way PyTorch's
CUDA-graph documentation prescribes (warm up on a side stream, capture once into static buffers,
then copy new inputs into those buffers and replay). It is the ``graph_backend="torch"`` of
:class:`~torchrl_opt.pipeline.updates.AccelerationConfig`.

Why not ``tensordict.nn.CudaGraphModule``: in tensordict 0.14.3 its replay path
(``tensordict/nn/cudagraphs.py``, ``_call``) calls ``torch.cuda.synchronize(self.device)`` before
every ``graph.replay()`` (line 340 for plain functions, line 237 for ``TensorDictModule`` s), so the
host waits for all queued GPU work on every update and CPU work (environment stepping, sampling
bookkeeping) cannot overlap with training; it also clones the whole output on every replay
(lines 345-351), clones the inputs on every warm-up call (line 355), and its batch copy
(``update_``, ``default="intersection"``) silently keeps the captured value of a key the new batch
lacks. The replay path here issues
one ``torch._foreach_copy_`` of the batch into the static inputs and ``graph.replay()``, nothing
else: no synchronisation, no ``.item()``, no host read of a device value.

Structure checks are Python-only, on metadata (keys, shapes, dtypes, devices): every call's batch
must match the structure of the first call (:func:`batch_spec`, :func:`check_batch`), or a
``ValueError`` naming the mismatching key is raised before anything runs on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase, is_leaf_nontensor, is_tensor_collection

__all__ = ["BatchSpec", "CudaGraphStep", "LeafSpec", "batch_spec", "check_batch"]

StepFn = Callable[[TensorDictBase], TensorDictBase]


@dataclass(frozen=True)
class LeafSpec:
    """Metadata of one tensor leaf: what a captured graph's static input buffer was made for."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class BatchSpec:
    """The structure of a batch: its batch size and ``{nested key: LeafSpec}`` of its tensor leaves
    (in the batch's iteration order, which is also the order of :func:`check_batch`'s result)."""

    batch_size: torch.Size
    leaves: dict[Any, LeafSpec]


def _leaves(batch: TensorDictBase) -> dict[Any, Any]:
    """``{nested key: leaf}`` of ``batch``, non-tensor entries (``NonTensorData``) included."""
    return dict(batch.items(include_nested=True, leaves_only=True, is_leaf=is_leaf_nontensor))


def _tensor_or_raise(key: Any, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(  # noqa: TRY004 (a structure mismatch, like the others)
            f"batch entry {key!r} is not a tensor ({type(value).__name__}); a CUDA graph reads "
            "tensor inputs only, a non-tensor value would be frozen at capture"
        )
    if value.requires_grad:
        raise ValueError(
            f"batch entry {key!r} requires grad; inputs of a captured step must be plain data "
            "(the step differentiates its own parameters)"
        )
    return value


def batch_spec(batch: TensorDictBase) -> BatchSpec:
    """The :class:`BatchSpec` of ``batch``; ``ValueError`` on non-tensor or grad-requiring leaves,
    or on a batch without tensors."""
    if not is_tensor_collection(batch):
        raise ValueError(f"a graphed step takes a TensorDict, got {type(batch).__name__}")
    leaves = {}
    for key, value in _leaves(batch).items():
        value = _tensor_or_raise(key, value)
        leaves[key] = LeafSpec(value.shape, value.dtype, value.device)
    if not leaves:
        raise ValueError("a graphed step needs a batch with at least one tensor")
    return BatchSpec(batch.batch_size, leaves)


def check_batch(batch: TensorDictBase, spec: BatchSpec) -> list[torch.Tensor]:
    """Check ``batch`` against ``spec`` and return its tensor leaves in ``spec``'s order.

    Metadata only (keys, shapes, dtypes, devices; no device synchronisation). Raises ``ValueError``
    naming the first missing, extra or mismatching key.
    """
    if not is_tensor_collection(batch):
        raise ValueError(f"a graphed step takes a TensorDict, got {type(batch).__name__}")
    if batch.batch_size != spec.batch_size:
        raise ValueError(
            f"batch size {tuple(batch.batch_size)} differs from the captured batch size "
            f"{tuple(spec.batch_size)}"
        )
    leaves = _leaves(batch)
    out = []
    for key, expected in spec.leaves.items():
        value = leaves.pop(key, None)
        if value is None:
            raise ValueError(f"batch entry {key!r} is missing (the captured batch had it)")
        value = _tensor_or_raise(key, value)
        if value.shape != expected.shape:
            raise ValueError(
                f"batch entry {key!r} has shape {tuple(value.shape)}, the captured batch had "
                f"{tuple(expected.shape)}"
            )
        if value.dtype != expected.dtype:
            raise ValueError(
                f"batch entry {key!r} has dtype {value.dtype}, the captured batch had "
                f"{expected.dtype}"
            )
        if value.device != expected.device:
            raise ValueError(
                f"batch entry {key!r} is on {value.device}, the captured batch was on "
                f"{expected.device}"
            )
        out.append(value)
    if leaves:
        raise ValueError(
            f"batch entry {next(iter(leaves))!r} was not in the captured batch (extra keys: "
            f"{list(leaves)})"
        )
    return out


def _cuda_device(device: torch.device | str | int) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CudaGraphStep needs a CUDA device, got {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"CudaGraphStep got device {device} but CUDA is not available")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class CudaGraphStep:
    """Replay ``step`` (``TensorDictBase -> TensorDictBase``) as one ``torch.cuda.CUDAGraph``.

    Calls, in order:

    1. the first ``warmup`` calls run ``step`` eagerly on the real batch (they are real updates),
       on a side stream (``side.wait_stream(current)``, run, ``current.wait_stream(side)``), so that
       ``torch.compile`` compiles, optimisers create their state and gradients get allocated;
    2. the next call copies the batch into static input buffers (a clone on the device), captures
       ``step(static_inputs)`` with ``torch.cuda.graph`` (capture records kernels without running
       them) and replays the graph once, so this call's update does happen; the captured call's
       output TensorDict becomes the static outputs;
    3. every later call copies the batch into the static inputs (one ``torch._foreach_copy_``,
       ``non_blocking=True``), calls ``graph.replay()`` and returns the static outputs.

    The replay path never synchronises the device and never reads a device value on the host: the
    call returns as soon as the copies and the graph launch are queued, so host work overlaps with
    the update (the one-off capture of step 2 does synchronise, in ``torch.cuda.graph``).

    .. warning::
        With ``clone_outputs=False`` (the default) every replay returns the *same* TensorDict, whose
        tensors the next replay overwrites in place: read (or ``.clone()``) the metrics before the
        next call if you need them, or pass ``clone_outputs=True`` (one extra device copy per call).
        The default suits the pipeline, which reads metrics only at logging points and wants the
        latest values. The static outputs are locked (no new keys can be set on them).

    Every call's batch must have the structure of the first one (same nested keys, batch size,
    shapes, dtypes and device; tensor leaves only): :func:`check_batch` raises a ``ValueError``
    naming the mismatching key, from metadata only.

    Randomness: random ops inside ``step`` (``torch.randn``, dropout, TD3's target policy noise)
    draw from the default CUDA generator, which PyTorch registers with the graph at capture: each
    replay reads the generator's current seed and offset and advances the offset, so replays draw
    fresh numbers and ``torch.manual_seed`` before a replay gives the same numbers as in eager mode.
    (With ``torch.compile``, Inductor's own random kernels differ from eager's; tests comparing the
    two patch ``torch._inductor.config.fallback_random=True``.)

    Requirements on ``step`` (as for any CUDA graph): static shapes, no host synchronisation or
    data-dependent Python control flow, outputs detached, parameters and optimiser state held by
    ``step`` itself (updated in place; ``torch.optim`` optimisers need ``capturable=True``).

    Args:
        step: the update step, ``TensorDictBase -> TensorDictBase``.
        device: the CUDA device the batch and the step live on; a non-CUDA device raises
            ``ValueError`` (and ``RuntimeError`` when CUDA is not available).
        warmup: eager calls before the capture (at least 1).
        clone_outputs: return a clone of the static outputs on every replay instead of the static
            outputs themselves.
        pool: optional memory pool handle (``torch.cuda.graph_pool_handle()`` or another graph's
            ``pool()``) to share with other captures. Only safe if the graphs sharing it are
            replayed in the order they were captured; the default (``None``) gives this graph a
            private pool.
    """

    def __init__(
        self,
        step: StepFn,
        device: torch.device | str | int,
        *,
        warmup: int = 2,
        clone_outputs: bool = False,
        pool: Any = None,
    ):
        if not callable(step):
            raise TypeError(f"step must be callable, got {type(step).__name__}")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.step = step
        self.device = _cuda_device(device)
        self.warmup = warmup
        self.clone_outputs = bool(clone_outputs)
        self.pool = pool
        self.calls = 0
        self.spec: BatchSpec | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: TensorDictBase | None = None
        self.static_outputs: TensorDictBase | None = None
        self._static_leaves: list[torch.Tensor] = []
        with torch.cuda.device(self.device):
            self._side_stream = torch.cuda.Stream(self.device)
            self._capture_stream = torch.cuda.Stream(self.device)

    @property
    def captured(self) -> bool:
        """Whether the graph has been captured (every call from now on is a replay)."""
        return self.graph is not None

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        if self.graph is not None:
            return self._replay(batch, check_batch(batch, self.spec))
        if self.spec is None:
            spec = batch_spec(batch)
            for key, leaf in spec.leaves.items():
                if leaf.device != self.device:
                    raise ValueError(
                        f"batch entry {key!r} is on {leaf.device}, the graphed step runs on "
                        f"{self.device}"
                    )
            self.spec = spec
        else:
            check_batch(batch, self.spec)
        self.calls += 1
        if self.calls <= self.warmup:
            return self._run_on_side_stream(batch)
        return self._capture(batch)

    # ------------------------------------------------------------------ phases
    def _run_on_side_stream(self, batch: TensorDictBase) -> TensorDictBase:
        current = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            out = self.step(batch)
        current.wait_stream(self._side_stream)
        return out

    def _capture(self, batch: TensorDictBase) -> TensorDictBase:
        with torch.cuda.device(self.device):
            static_inputs = batch.clone()
            graph = torch.cuda.CUDAGraph()
            # torch.cuda.graph synchronises the device before it begins capturing, so the clone
            # above (on the current stream) is complete before the capture stream reads it.
            with torch.cuda.graph(graph, pool=self.pool, stream=self._capture_stream):
                out = self.step(static_inputs)
        if not is_tensor_collection(out):
            raise TypeError(
                f"the graphed step must return a TensorDict, got {type(out).__name__}"
            )
        out.lock_()
        self.static_inputs = static_inputs
        self.static_outputs = out
        self._static_leaves = check_batch(static_inputs, self.spec)
        self.graph = graph
        graph.replay()  # capture ran nothing: this call's update happens here
        return out.clone() if self.clone_outputs else out

    def _replay(self, batch: TensorDictBase, leaves: list[torch.Tensor]) -> TensorDictBase:
        self.calls += 1
        if batch is not self.static_inputs:  # callers may write into static_inputs themselves
            torch._foreach_copy_(self._static_leaves, leaves, non_blocking=True)
        self.graph.replay()
        out = self.static_outputs
        return out.clone() if self.clone_outputs else out

    def __repr__(self) -> str:
        done = min(self.calls, self.warmup)
        state = "captured" if self.captured else f"warm-up {done}/{self.warmup}"
        return (
            f"{type(self).__name__}(step={getattr(self.step, '__name__', self.step)!r}, "
            f"device={self.device}, {state}, clone_outputs={self.clone_outputs})"
        )
