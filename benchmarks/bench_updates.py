"""Microbenchmark of every hot update: eager vs compiled vs compiled + CUDA-graphed (two backends).

For each update kind (TD3+BC offline critic/actor, meta-adaptation pre-training, OPT fine-tuning
critic/actor, single-critic TD3 fine-tuning, IQL, SPOT, density ratio + priority update) it builds
the library's own update steps in each mode, runs a warm-up, then times ``--iters`` calls and prints
microseconds per call and the ratios, side by side in one run. Not a test.

Modes: ``eager``, ``compiled`` (``torch.compile``), ``graphed`` (compile +
``tensordict.nn.CudaGraphModule``, which synchronises the device before every replay) and
``graphed_torch`` (compile + :class:`~torchrl_opt.pipeline.cudagraph.CudaGraphStep`, a plain
``torch.cuda.CUDAGraph`` replay without synchronisation). Times include a device synchronisation
after the ``--iters`` calls, so they measure throughput; ``graphed_torch`` additionally lets the
host run ahead of the device.

    python benchmarks/bench_updates.py                       # CPU: eager vs compiled
    python benchmarks/bench_updates.py --device cuda         # + both CUDA-graph backends
    python benchmarks/bench_updates.py --phase walker2d      # + full online phase wall-clock

The speed targets (docs/performance.md): OPT fine-tuning update <= 1.3x the single-critic TD3
update; every hot update >= 12x faster than eager on a GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict

from torchrl.data import Bounded

from torchrl_opt.data.replay import DensityRatioEstimator, make_replay
from torchrl_opt.models import bounded_action_spec
from torchrl_opt.pipeline.agents import make_agent
from torchrl_opt.pipeline.config import AccelerationConfig, BackboneConfig, RunConfig
from torchrl_opt.pipeline.context import DensityStep
from torchrl_opt.pipeline.updates import UpdateEngine

MODES = {
    "eager": AccelerationConfig(compile=False, cudagraphs=False),
    "compiled": AccelerationConfig(compile=True, cudagraphs=False),
    "graphed": AccelerationConfig(compile=True, cudagraphs=True),
    "graphed_torch": AccelerationConfig(compile=True, cudagraphs=True, graph_backend="torch"),
}


def _batch(n: int, obs_dim: int, act_dim: int, device: torch.device) -> TensorDict:
    done = torch.zeros(n, 1, dtype=torch.bool, device=device)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, device=device),
            "action": torch.rand(n, act_dim, device=device) * 2 - 1,
            ("next", "observation"): torch.randn(n, obs_dim, device=device),
            ("next", "reward"): torch.randn(n, 1, device=device),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): done.clone(),
        },
        [n],
        device=device,
    )


def _time(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def _kinds(args, device: torch.device, acceleration: AccelerationConfig) -> dict[str, Callable]:
    obs_dim, act_dim, batch_size = args.obs_dim, args.act_dim, args.batch_size
    spec = bounded_action_spec(
        Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
    )
    batch = _batch(batch_size, obs_dim, act_dim, device)
    pair = TensorDict(offline=batch, online=_batch(batch_size, obs_dim, act_dim, device))
    kinds: dict[str, Callable] = {}

    engine = UpdateEngine(1, device, acceleration)  # the pipeline's one-seed engine

    def agent(name: str, **kw):
        cfg = RunConfig(
            backbone=BackboneConfig(name=name, hidden=[args.hidden] * 2, vae_hidden=[750, 750], **kw),
            acceleration=acceleration,
        )
        return make_agent(cfg, obs_dim, spec, device)

    def steps(agent_, kind: str) -> dict[str, Callable]:
        loss = agent_.loss_for(kind)
        return {d.name: engine.build([loss], d).step for d in agent_.update_defs(kind)}

    td3 = agent("td3")
    offline = steps(td3, "offline")
    kinds["td3bc_offline_critic"] = lambda: offline["critic"](batch)
    kinds["td3bc_offline_actor"] = lambda: offline["actor"](batch)

    td3.start_online(q_on=False)
    single = steps(td3, "finetune")
    kinds["td3_finetune_critic"] = lambda: single["critic"](batch)
    kinds["td3_finetune_actor"] = lambda: single["actor"](batch)

    opt = agent("td3")
    opt.start_online(q_on=True, kappa=0.5)
    dual = steps(opt, "finetune")
    kinds["opt_finetune_critic"] = lambda: dual["critic"](batch)
    kinds["opt_finetune_actor"] = lambda: dual["actor"](batch)
    meta = steps(opt, "pretrain")["pretrain"]
    kinds["meta_pretrain"] = lambda: meta(pair)

    iql = agent("iql")
    iql.start_online(q_on=True, kappa=0.5)
    for name, step in steps(iql, "finetune").items():
        kinds[f"iql_opt_{name}"] = lambda step=step: step(batch)

    if args.spot:
        spot_steps = steps(agent("spot"), "offline")
        kinds["spot_offline_actor"] = lambda: spot_steps["actor"](batch)

    data = _batch(args.replay_size, obs_dim, act_dim, device)
    replay = make_replay("balanced", data, 10_000, batch_size, device=device, seed=0)
    replay.extend(_batch(5_000, obs_dim, act_dim, device))
    density = DensityStep([DensityRatioEstimator(obs_dim, act_dim).to(device)], 3e-4, batch_size, engine)
    kinds["density_ratio_priority"] = lambda: density(replay, replay.sample())
    return kinds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--replay-size", type=int, default=100_000)
    parser.add_argument("--spot", action="store_true", help="include SPOT (750-750 VAE)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--modes", default=None,
                        help=f"comma list of {','.join(MODES)} (default: all on CUDA, "
                             "eager,compiled on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",") if args.modes else (
        list(MODES) if device.type == "cuda" else ["eager", "compiled"]
    )
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        torch.manual_seed(0)
        kinds = _kinds(args, device, MODES[mode])
        for name, fn in kinds.items():
            results.setdefault(name, {})[mode] = _time(fn, args.iters, args.warmup, device)
    width = {m: max(14, len(m) + 5) for m in modes}  # "graphed_torch us" is wider than 14
    ratio = [m for m in modes if m != "eager"] if "eager" in modes else []
    ratio_width = {m: max(16, len(m) + 8) for m in ratio}
    header = f"{'update':28s}" + "".join(f"{m + ' us':>{width[m]}s}" for m in modes)
    header += "".join(f"{'eager/' + m:>{ratio_width[m]}s}" for m in ratio)
    print(f"device={device} torch={torch.__version__} batch={args.batch_size} hidden={args.hidden}")
    print(header)
    for name, row in results.items():
        line = f"{name:28s}" + "".join(f"{row[m]:{width[m]}.1f}" for m in modes)
        line += "".join(f"{row['eager'] / row[m]:{ratio_width[m]}.2f}" for m in ratio)
        print(line)
    print()
    for mode in [m for m in modes if m != "eager"] or modes:
        opt = results["opt_finetune_critic"][mode] + results["opt_finetune_actor"][mode] / 2
        td3 = results["td3_finetune_critic"][mode] + results["td3_finetune_actor"][mode] / 2
        print(f"OPT / TD3 fine-tuning update ({mode}, actor every 2nd update): {opt / td3:.2f}x "
              "(target <= 1.3x)")


if __name__ == "__main__":
    main()
