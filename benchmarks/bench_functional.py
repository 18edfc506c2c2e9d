"""Microbenchmark: eager ``make_step`` vs compiled ``make_step`` vs compiled functional step.

For the OPT fine-tuning critic step (both twins), the actor step (+ Polyak update of every target)
and the meta-adaptation pre-training step, it times the pipeline's eager step, the same step under
``torch.compile`` (graph breaks at backward / optimizer.step), and the functional step of
:mod:`torchrl_opt.pipeline.functional` (eager and ``torch.compile(fullgraph=True)``). Then it times
the seed-batched functional critic step for ``S = 1`` and ``S = --seeds`` seeds in one graph. Not a
test; prints microseconds per call.

    python benchmarks/bench_functional.py                      # CPU, 1 thread, 256-wide, batch 256
    python benchmarks/bench_functional.py --device cuda        # + CUDA-graphed variants
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict
from tensordict.nn import CudaGraphModule
from torchrl.data import Bounded

from bench_updates import _batch, _time  # shared helpers (benchmarks/ is on sys.path)
from torchrl_opt.models import make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.td3_opt import OPTLoss
from torchrl_opt.pipeline.agents import td3_update_defs
from torchrl_opt.pipeline.config import AccelerationConfig, BackboneConfig
from torchrl_opt.pipeline.functional import SeedBatchedStep
from torchrl_opt.pipeline.updates import UpdateDef, UpdateEngine


def _loss(args, device: torch.device, seed: int = 0) -> OPTLoss:
    torch.manual_seed(seed)
    spec = Bounded(-torch.ones(args.act_dim), torch.ones(args.act_dim), (args.act_dim,))
    hidden = (args.hidden, args.hidden)
    loss = OPTLoss(
        make_td3_actor(args.obs_dim, spec, hidden),
        make_qvalue_ensemble(args.obs_dim, args.act_dim, 2, hidden),
        make_qvalue_ensemble(args.obs_dim, args.act_dim, 2, hidden),
        action_spec=spec,
        kappa=0.5,
    )
    return loss.to(device)


def _steps(loss, acceleration, device) -> dict[str, Callable]:
    """The pipeline's one-seed critic, actor (+ targets) and meta pre-training steps, built by its
    update engine (``module`` engine, or ``functional`` with ``acceleration.functional``)."""
    engine = UpdateEngine(1, device, acceleration)
    critic, actor = td3_update_defs(loss, BackboneConfig())
    meta = UpdateDef("pretrain", lambda l: MetaAdaptationLoss(l, alpha=3e-4), ("loss_pretrain",),
                     loss.online_param_names, 3e-4, targets=loss.online_param_names)
    return {kind: engine.build([loss], d).step for kind, d in
            (("critic", critic), ("actor", actor), ("meta", meta))}


def _functional_steps(loss, device) -> dict[str, Callable]:
    return _steps(loss, AccelerationConfig(compile=False, cudagraphs=False, functional=True), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--kinds", default="critic,actor,meta")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch = _batch(args.batch_size, args.obs_dim, args.act_dim, device)
    pair = TensorDict(offline=batch, online=_batch(args.batch_size, args.obs_dim, args.act_dim,
                                                   device))
    inputs = {"critic": batch, "actor": batch, "meta": pair}
    kinds = args.kinds.split(",")
    print(f"device={device} threads={args.threads} hidden={args.hidden}x2 batch={args.batch_size} "
          f"(us per call)")

    modes: dict[str, dict[str, Callable]] = {}
    modes["eager make_step"] = _steps(_loss(args, device), AccelerationConfig(
        compile=False, cudagraphs=False), device)
    modes["compiled make_step"] = _steps(_loss(args, device), AccelerationConfig(
        compile=True, cudagraphs=False), device)
    modes["eager functional"] = _functional_steps(_loss(args, device), device)
    modes["compiled functional"] = {
        k: torch.compile(s, fullgraph=True) for k, s in _functional_steps(_loss(args, device), device).items()
    }
    if on_cuda:
        modes["graphed make_step"] = _steps(_loss(args, device), AccelerationConfig(
            compile=True, cudagraphs=True), device)
        modes["graphed functional"] = {
            k: CudaGraphModule(torch.compile(s, fullgraph=True), warmup=3, device=device)
            for k, s in _functional_steps(_loss(args, device), device).items()
        }
    results: dict[str, dict[str, float]] = {}
    for mode, steps in modes.items():
        for kind in kinds:
            step, x = steps[kind], inputs[kind]
            compile_start = time.perf_counter()
            step(x)
            first = time.perf_counter() - compile_start
            us = _time(lambda step=step, x=x: step(x), args.iters, args.warmup, device)
            results.setdefault(kind, {})[mode] = us
            print(f"  {kind:7s} {mode:22s} {us:10.0f}   (first call {first:6.1f} s)", flush=True)
    for kind, row in results.items():
        base = row["eager make_step"]
        ratios = ", ".join(f"{m}: {base / v:.2f}x" for m, v in row.items() if m != "eager make_step")
        print(f"{kind}: speed-up over eager make_step -> {ratios}")

    print("seed-batched compiled functional critic step (S seeds in one graph):")
    for S in sorted({1, args.seeds}):
        losses = [_loss(args, device, seed=s) for s in range(S)]
        step = SeedBatchedStep(losses, _functional_steps(losses[0], device)["critic"])
        step = torch.compile(step, fullgraph=True)
        if on_cuda:
            step = CudaGraphModule(step, warmup=3, device=device)
        sbatch = torch.stack([_batch(args.batch_size, args.obs_dim, args.act_dim, device)
                              for _ in range(S)])
        step(sbatch)
        us = _time(lambda step=step, b=sbatch: step(b), args.iters, args.warmup, device)
        print(f"  S={S}: {us:10.0f} us per call for all seeds, {us / S:10.0f} us per seed")


if __name__ == "__main__":
    main()
