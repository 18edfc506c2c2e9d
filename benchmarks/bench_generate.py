"""Scaling of random-dataset collection with worker processes.

Usage::

    python benchmarks/bench_generate.py                          # Hopper-v5, 20k steps, 1 and 2 workers
    python benchmarks/bench_generate.py --env Walker2d-v5 --steps 1000000 --workers 1 4 8 16
    python benchmarks/bench_generate.py --random-policy init --chunk-steps 2000
    python benchmarks/bench_generate.py --returns --steps 50000 --chunk-steps 10000   # docs/data.md

For every worker count it times :func:`torchrl_opt.data.generate.collect_random_transitions`
(``progress=False``) and prints transitions/s and the speed-up over one worker, and it checks that
every worker count produced bitwise the same data (the chunked seeding's promise). The process
pool's start-up is inside the timing; the forkserver's one-time import of torch/torchrl (about 8 s
here) is paid by a warm-up run before the timings (``--no-warmup`` to include it in the first
multi-worker row).

Recorded on the 2-core development machine (2026-12-02; torch 2.13 CPU) while other jobs held
1-1.5 of its 2 cores (load 2-5), ``--steps 20000 --chunk-steps 2000``, uniform, seconds for
1 worker / 2 workers in successive runs::

    Hopper-v5        7.22 / 5.90 (1.22x)   6.60 / 4.85 (1.36x)   6.94 / 4.17 (1.58x)
                     6.02 / 12.10 (0.50x)  18.94 / 17.60 (1.08x)
    HalfCheetah-v5   3.26 / 2.85 (1.14x)   2.91 / 4.17 (0.70x)   4.90 / 3.82 (1.28x)
    Walker2d-v5      26.42 / 23.27 (1.14x) 19.74 / 16.77 (1.18x) 16.16 / 16.75 (0.96x)

The contention, not the pool, sets these ratios: the CPU time of one in-process worker was
399 us a Hopper step and the parent's share with 2 workers 1 us a step, a warm pool starts in
0.15 s, and the data were identical for every worker count. See docs/data.md for the
extrapolation to 16 cores.

``--returns`` instead collects ``--steps`` transitions of each random policy for halfcheetah,
hopper and walker2d (v5; HalfCheetah gets twice ``--steps``, its episodes are 1000 steps long)
and prints the mean return (+- standard error) and mean length of the complete episodes (the
final, cut episode is left out) beside D4RL's random reference return ``D4RL_REF_SCORES[task][0]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from torchrl_opt.data.datasets import TASKS
from torchrl_opt.data.generate import DEFAULT_CHUNK_STEPS, RANDOM_POLICIES, collect_random_transitions
from torchrl_opt.data.scores import D4RL_REF_SCORES


def _time(env: str, steps: int, seed: int, policy: str, workers: int, chunk_steps: int):
    start, cpu = time.perf_counter(), time.process_time()
    data = collect_random_transitions(env, steps, seed, random_policy=policy, workers=workers,
                                      chunk_steps=chunk_steps, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu, data


def episode_stats(data) -> tuple[float, float, float, int]:
    """``(mean return, its standard error, mean length, episodes)`` over the complete episodes."""
    ep = data["episode"]
    count = int(ep.max()) + 1
    returns = torch.zeros(count, dtype=torch.float64).index_add_(
        0, ep, data["next", "reward"].reshape(-1).double())[:-1]
    lengths = torch.bincount(ep, minlength=count)[:-1].double()
    if returns.numel() < 2:
        raise SystemExit("not enough complete episodes: raise --steps")
    return (returns.mean().item(), (returns.std() / returns.numel() ** 0.5).item(),
            lengths.mean().item(), returns.numel())


def returns_table(args: argparse.Namespace) -> None:
    print(f"{'task':<12} {'policy':<8} {'steps':>7} {'episodes':>8} {'mean return':>17} "
          f"{'mean length':>11} {'D4RL random ref':>15} {'seconds':>8}")
    for task in ("halfcheetah", "hopper", "walker2d"):
        steps = args.steps * (2 if task == "halfcheetah" else 1)
        for policy in RANDOM_POLICIES:
            seconds, _, data = _time(TASKS[task].env_id, steps, args.seed, policy,
                                  max(args.workers), args.chunk_steps)
            mean, sem, length, episodes = episode_stats(data)
            print(f"{task:<12} {policy:<8} {steps:>7} {episodes:>8} {mean:>9.2f} +- {sem:<6.2f}"
                  f"{length:>11.1f} {D4RL_REF_SCORES[task][0]:>15.2f} {seconds:>8.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--random-policy", default="uniform", choices=RANDOM_POLICIES)
    p.add_argument("--chunk-steps", type=int, default=min(DEFAULT_CHUNK_STEPS, 2_000),
                   help="small chunks keep a short run balanced over the workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--returns", action="store_true",
                   help="episode statistics of both random policies on the three D4RL tasks")
    args = p.parse_args()
    if args.returns:
        returns_table(args)
        return
    if not args.no_warmup and max(args.workers) > 1:  # start the forkserver (imports torch once)
        collect_random_transitions(args.env, 2, args.seed, workers=2, chunk_steps=1, progress=False)
    print(f"{args.env}, {args.steps} {args.random_policy} transitions, chunks of {args.chunk_steps}")
    print(f"{'workers':>8} {'seconds':>8} {'transitions/s':>14} {'speed-up':>9} {'cpu us/step':>12}")
    base, reference = None, None
    for workers in args.workers:
        seconds, cpu, data = _time(args.env, args.steps, args.seed, args.random_policy, workers,
                                   args.chunk_steps)
        base = seconds if base is None else base
        if reference is None:
            reference = data
        elif not (data == reference).all():
            raise SystemExit(f"workers={workers} produced different data than workers={args.workers[0]}")
        # this process's CPU time: the whole collection for workers=1 (in-process), the parent's
        # share (pool, unpickling, concatenation) otherwise
        print(f"{workers:>8} {seconds:>8.2f} {args.steps / seconds:>14.0f} {base / seconds:>9.2f} "
              f"{cpu / args.steps * 1e6:>12.0f}")
    print("data identical across worker counts:", True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
