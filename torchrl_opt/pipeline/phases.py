"""The loops every method's phases run, read top to bottom; no training logic lives elsewhere.

* :func:`train_steps`: gradient steps on sampled batches (SPOT's VAE, offline pre-training, PORL's
  behaviour cloning, online pre-training of the online critics), with periodic evaluation;
* :func:`collect`: roll a policy out into ``B_on`` (OPT's frozen offline policy, RLPD's random
  start steps, WSRL's warm-up, PORL's seed rows);
* :func:`finetune`: act, store, update ``utd`` times per environment step (critics every update,
  delayed actor), density-ratio priorities for balanced replay, kappa and SPOT's lambda schedules,
  periodic evaluation.

The loops are the same for one seed and for a seed group: batches are ``[B]`` or ``[S, B]``,
collector batches ``[T]`` or ``[S, T]`` (time last), metrics scalars or ``[S]``. Each loop takes a
``start`` step and calls ``on_checkpoint`` every ``checkpoint_every`` steps, so the run object can
save and resume any phase mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from torchrl_opt.pipeline.updates import UpdateSpec

__all__ = ["collect", "finetune", "merge_metrics", "run_updates", "sample_uniform", "train_steps"]

#: ``evaluate(step) -> {"return": ..., "normalized_score": ..., ...}``
EvalFn = Callable[[int], dict]


def sample_uniform(
    data: TensorDictBase,
    batch_size: int,
    generator: torch.Generator | Sequence[torch.Generator],
) -> TensorDictBase:
    """``batch_size`` rows of ``data`` drawn uniformly with replacement (a device op).

    With a sequence of ``S`` generators (one per seed of a group) the batch is ``[S, batch_size]``:
    seed ``i``'s rows are drawn with ``generator[i]`` (exactly the rows a run of that seed alone
    draws), from ``data`` when it is shared (``[N]``) or from ``data[i]`` when each seed has its own
    rows (``[S, N]``); the gather is one op whatever ``S``.
    """
    if isinstance(generator, torch.Generator):
        index = torch.randint(data.shape[0], (batch_size,), generator=generator, device=generator.device)
        return data[index]
    generators = list(generator)
    if data.batch_dims == 2 and data.shape[0] != len(generators):
        raise ValueError(f"per-seed data of batch size {tuple(data.shape)} for {len(generators)} generators")
    rows = data.shape[-1]
    index = torch.stack(
        [torch.randint(rows, (batch_size,), generator=g, device=g.device) for g in generators]
    )
    if data.batch_dims == 1:
        return data[index]
    seeds = torch.arange(len(generators), device=index.device).unsqueeze(-1)
    return data[seeds, index]


def run_updates(updates: list[UpdateSpec], batch: TensorDictBase, count: int, metrics: dict) -> None:
    """Run every update due at update number ``count`` (``count % every == 0``) on ``batch``."""
    for spec in updates:
        if count % spec.every == 0:
            metrics[spec.name] = spec.step(batch)


def merge_metrics(metrics: dict) -> TensorDictBase:
    """The latest outputs of every step, merged into one flat TensorDict."""
    merged = {}
    for out in metrics.values():
        merged.update(dict(out.items()))
    return TensorDict(merged, batch_size=[])


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _postfix(values: dict, show: Sequence[str]) -> dict:
    return {key: values[key] for key in show if key in values}


def train_steps(
    updates: list[UpdateSpec],
    sample: Callable[[], TensorDictBase],
    steps: int,
    *,
    name: str,
    logger: Any,
    log_every: int,
    show: Sequence[str] = (),
    evaluate: EvalFn | None = None,
    eval_every: int = 0,
    eval_prefix: str = "offline_eval",
    start: int = 0,
    on_checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> None:
    """``steps`` updates, each on ``sample()`` (every spec due at that update), logged under
    ``name/`` every ``log_every`` steps and at the end; ``evaluate`` (logged under
    ``eval_prefix/``) every ``eval_every`` steps and at the end when given."""
    logger.start_phase(name, steps, start)
    metrics: dict = {}
    for step in range(start + 1, steps + 1):
        run_updates(updates, sample(), step - 1, metrics)
        if _due(step, log_every) or step == steps:
            values = logger.log(merge_metrics(metrics), step, prefix=name)
            logger.advance(0, **_postfix(values, show))
        if evaluate is not None and (_due(step, eval_every) or step == steps):
            result = evaluate(step)
            logger.log(result, step, prefix=eval_prefix)
            logger.advance(0, score=result["normalized_score"])
        logger.advance()
        if on_checkpoint is not None and _due(step, checkpoint_every):
            on_checkpoint(step)
    logger.close_phase()


def collect(
    collector: Any,
    num_steps: int,
    *,
    name: str,
    logger: Any,
    collected: TensorDictBase | None = None,
    on_checkpoint: Callable[[int, TensorDictBase], None] | None = None,
    checkpoint_every: int = 0,
) -> TensorDictBase:
    """Roll ``collector`` until ``num_steps`` environment steps (per seed) are stored.

    Returns the transitions ``[num_steps]`` (``[S, num_steps]`` for a seed group). ``collected``
    continues a partial collection (a resumed run); ``on_checkpoint(steps, so_far)`` is called at the
    first batch boundary past every multiple of ``checkpoint_every``.
    """
    chunks = [] if collected is None else [collected]
    done = 0 if collected is None else collected.shape[-1]
    logger.start_phase(name, num_steps, done)
    if done < num_steps:
        with torch.no_grad():
            for batch in collector:
                kept = min(batch.shape[-1], num_steps - done)  # the last batch may overshoot
                chunks.append(batch[..., :kept])
                previous, done = done, done + kept
                logger.advance(kept)
                if done >= num_steps:
                    break
                if on_checkpoint is not None and checkpoint_every > 0 and (
                    done // checkpoint_every > previous // checkpoint_every
                ):
                    on_checkpoint(done, torch.cat(chunks, -1))
    logger.close_phase()
    return torch.cat(chunks, -1)


def finetune(
    updates: list[UpdateSpec],
    replay: Any,
    collector: Any,
    env_steps: int,
    utd: int,
    *,
    name: str,
    logger: Any,
    log_every: int,
    evaluate: EvalFn | None = None,
    eval_every: int = 0,
    density: Callable[[Any, TensorDictBase], torch.Tensor] | None = None,
    schedules: Sequence[Callable[[], None]] = (),
    observers: Sequence[Callable[[TensorDictBase, dict], None]] = (),
    extra_metrics: Callable[[], dict[str, torch.Tensor]] | None = None,
    start: int = 0,
    update_count: int = 0,
    on_checkpoint: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
) -> int:
    """Online fine-tuning for ``env_steps`` environment steps; returns the number of updates done.

    Per environment step: store the transition, advance the ``schedules`` (kappa, SPOT's lambda),
    then ``utd`` updates (each spec when due, counted over updates: TD3's delayed actor), each
    followed by ``observer(sample, metrics)`` (adaptive kappa) and the density-ratio step when
    replay is balanced. ``extra_metrics()`` (the schedules' values, balanced replay's online share)
    are logged with the losses.
    """
    logger.start_phase(name, env_steps, start)
    metrics: dict = {}
    env_step = start
    if env_step >= env_steps:  # nothing left to do (e.g. finetune.env_steps=0)
        logger.close_phase()
        return update_count
    for batch in collector:
        for transition in batch.unbind(-1):
            replay.extend(transition)
            env_step += 1
            for schedule in schedules:
                schedule()
            for _ in range(utd):
                sample = replay.sample()
                run_updates(updates, sample, update_count, metrics)
                for observer in observers:
                    observer(sample, metrics)
                if density is not None:
                    metrics["density"] = TensorDict(loss_density=density(replay, sample))
                update_count += 1
            if _due(env_step, log_every) or env_step == env_steps:
                merged = merge_metrics(metrics)
                if extra_metrics is not None:
                    merged.update(extra_metrics())
                values = logger.log(merged, env_step, prefix=name)
                logger.advance(0, **_postfix(values, ("pred_value_on", "pred_value")))
            if evaluate is not None and (_due(env_step, eval_every) or env_step == env_steps):
                result = evaluate(env_step)
                logger.log(result, env_step, prefix="eval")
                logger.advance(0, score=result["normalized_score"])
            logger.advance()
            if on_checkpoint is not None and _due(env_step, checkpoint_every):
                on_checkpoint(env_step, update_count)
            if env_step >= env_steps:
                break
        if env_step >= env_steps:
            break
    logger.close_phase()
    return update_count
