"""Throughput of replay sampling + priority update at 1.3M entries (CPU, and CUDA when present).

Usage::

    python benchmarks/bench_replay.py                 # 1.3M rows, batch 256
    python benchmarks/bench_replay.py --rows 200000 --iters 50

Two tables are printed per device:

1. *Priority structures* (indices only): one proportional draw of ``batch`` rows plus one
   priority write of those rows, for flat ``torch.multinomial`` (float32 / float64), inverse CDF
   (float64 ``cumsum`` + ``searchsorted``) and the sum-tree of ``torchrl_opt.data.replay``
   (eager; on CUDA also captured in one ``torch.cuda.CUDAGraph``).
2. *Replay buffers*: ``MixedReplayBuffer.sample()`` (gather of a Walker2d-sized transition batch,
   obs 17 / action 6) for every strategy, plus ``update_priority`` for ``balanced``.

Numbers recorded on the development machine (torch 2.13 CPU, ``--cpu-threads 1``, 2 cores shared
with other jobs at load ~5, so +-50 % noise between runs), 1.3M rows, batch 256, us per step,
three runs::

    structure                         sample+update
    multinomial f32                   1486 / 3388 / 2209
    multinomial f64                   2534 / 4569 / 3684
    cumsum f64 + searchsorted         1518 / 2857 / 2202
    binary sum-tree (K=2)             2850 / 6098 / 4525
    K-ary sum-tree (K=17, D=5)         852 / 1990 / 1419   <- used by BalancedSampler

    MixedReplayBuffer                 us/step
    balanced sample + update          1329 / 3069 / 2565
    symmetric sample                   495 /  979 /  486
    online sample                      393 / 1144 /  753
    uniform sample                     943 /  890 /  763

With 2 intra-op threads on the loaded machine, every TensorDict row gather (``x[index]``) stalled
for ~15 ms whatever the size (OpenMP wake-up under contention; 1 thread: ~10 us), which is why the
recorded numbers use one thread.

No GPU was available when this was written; run the script on one to fill in CUDA numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict

from torchrl_opt.data.replay import (
    REPLAY_STRATEGIES,
    make_replay,
    sumtree_build,
    sumtree_layout,
    sumtree_sample,
    sumtree_update_,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 5) -> float:
    """Mean wall time of ``fn`` in microseconds over ``iters`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e6


def bench_structures(rows: int, batch: int, device: torch.device, iters: int) -> dict[str, float]:
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    base = torch.rand(rows, device=device, generator=gen) + 1e-3
    new = torch.rand(batch, device=device, generator=gen) + 0.5
    results: dict[str, float] = {}

    for name, dtype in (("multinomial f32", torch.float32), ("multinomial f64", torch.float64)):
        p = base.to(dtype).clone()
        new_d = new.to(dtype)

        def step(p=p, new_d=new_d) -> None:
            index = torch.multinomial(p, batch, replacement=True, generator=gen)
            p[index] = new_d

        results[name] = timeit(step, device, iters)

    p64 = base.double().clone()
    new64 = new.double()

    def cumsum_step() -> None:
        c = p64.cumsum(0)
        u = torch.rand(batch, device=device, dtype=torch.float64, generator=gen) * c[-1]
        index = torch.searchsorted(c, u, right=True).clamp_max(rows - 1)
        p64[index] = new64

    results["cumsum f64 + searchsorted"] = timeit(cumsum_step, device, iters)

    fanout, depth = sumtree_layout(rows)
    for label, k in (
        ("binary sum-tree (K=2)", 2),
        (f"K-ary sum-tree (K={fanout}, D={depth})", fanout),
    ):
        tree = sumtree_build(base, rows, k)

        def tree_step(tree=tree, k=k) -> None:
            u = torch.rand(batch, device=device, dtype=torch.float64, generator=gen)
            index = sumtree_sample(tree, u, k)
            sumtree_update_(tree, index, new64, k)

        results[label] = timeit(tree_step, device, iters)

    if device.type == "cuda":
        tree = sumtree_build(base, rows, fanout)
        static_new = new64.clone()

        def graph_body() -> None:
            u = torch.rand(batch, device=device, dtype=torch.float64)
            index = sumtree_sample(tree, u, fanout)
            sumtree_update_(tree, index, static_new, fanout)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                graph_body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graph_body()
        results[f"K-ary sum-tree (K={fanout}), CUDA graph"] = timeit(graph.replay, device, iters)
    return results


def _transitions(n: int, obs_dim: int = 17, act_dim: int = 6) -> TensorDict:
    flag = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim),
            "action": torch.rand(n, act_dim) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim),
                "reward": torch.randn(n, 1),
                "done": flag.clone(),
                "terminated": flag.clone(),
                "truncated": flag.clone(),
            },
        },
        [n],
    )


def bench_buffers(rows: int, batch: int, device: torch.device, iters: int) -> dict[str, float]:
    online_rows = min(rows // 4, 300_000)
    offline = _transitions(rows - online_rows)
    online = _transitions(online_rows)
    results: dict[str, float] = {}
    for strategy in REPLAY_STRATEGIES:
        replay = make_replay(
            strategy, offline, online_rows, batch, device=device, seed=0, check_priorities=False
        )
        replay.extend(online)
        if strategy == "balanced":
            priority = torch.rand(batch, device=device, dtype=torch.float64) + 0.5

            def step(replay=replay, priority=priority) -> None:
                sample = replay.sample()
                replay.update_priority(sample["index"], priority)

            results["balanced sample + update"] = timeit(step, device, iters)
        else:
            results[f"{strategy} sample"] = timeit(replay.sample, device, iters)
        del replay
    return results


def print_table(title: str, results: dict[str, float], rows: int, batch: int) -> None:
    print(f"\n{title}  ({rows:,} rows, batch {batch})")
    width = max(len(k) for k in results) + 2
    print(f"{'':{width}}{'us/step':>10}{'steps/s':>12}")
    for name, us in results.items():
        print(f"{name:{width}}{us:10.1f}{1e6 / us:12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_300_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--cpu-threads", type=int, default=None)
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"sum-tree layout (K, D) = {sumtree_layout(args.rows)}"
    )
    for device in devices:
        print_table(
            f"[{device}] priority structures: sample + update",
            bench_structures(args.rows, args.batch, device, args.iters),
            args.rows,
            args.batch,
        )
        print_table(
            f"[{device}] MixedReplayBuffer",
            bench_buffers(args.rows, args.batch, device, args.iters),
            args.rows,
            args.batch,
        )


if __name__ == "__main__":
    main()
