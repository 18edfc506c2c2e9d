"""Fine-tuning throughput: ``OPTTrainer`` (TorchRL Trainer + hooks) vs the recipe pipeline.

Both run the same work from the same offline checkpoint and seed: ``--env-steps`` environment steps
of OPT fine-tuning (balanced replay, density-ratio priorities, kappa schedule, UTD ``--utd``,
``--hidden`` MLPs, batch ``--batch``), through the same compiled / CUDA-graphed update steps
(``--compile`` forces ``torch.compile`` on CPU; on CUDA both are on by default). Reported: fine-tuning
wall-clock and updates per second (median over ``--repeats`` alternating runs) and the trainer /
pipeline time ratio (target: <= 1.10). The pipeline's time (``summary["wall_clock_s"]["finetune"]``)
also includes building its collector and density estimator; the trainer's excludes them.

    MINARI_DATASETS_PATH=/tmp/minari python benchmarks/bench_trainer.py --env-steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path

import torch

from torchrl_opt.pipeline.config import (
    AccelerationConfig,
    BackboneConfig,
    CheckpointConfig,
    DatasetConfig,
    EvalConfig,
    FinetuneConfig,
    KappaConfig,
    LoggingConfig,
    OfflineConfig,
    OnlinePretrainConfig,
    RunConfig,
)
from torchrl_opt.pipeline.run import run
from torchrl_opt.trainers import OPTTrainer


def make_config(args: argparse.Namespace, run_dir: Path, checkpoint: str | None) -> RunConfig:
    return RunConfig(
        seed=args.seed,
        device=args.device,
        dataset=DatasetConfig(task=args.task, kind="random", size=args.dataset_size),
        backbone=BackboneConfig(hidden=[args.hidden, args.hidden]),
        offline=OfflineConfig(steps=10, batch_size=args.batch, eval_every=0, checkpoint=checkpoint),
        online_pretrain=OnlinePretrainConfig(n_tau=args.n_tau, steps=0, batch_size=args.batch),
        finetune=FinetuneConfig(
            env_steps=args.env_steps, utd=args.utd, batch_size=args.batch,
            kappa=KappaConfig(kind="linear", init=0.1, end=0.9, t_decay=args.env_steps),
        ),
        eval=EvalConfig(every=0, episodes=1, max_steps=10),
        logging=LoggingConfig(backend="none", progress=False, log_every=max(args.env_steps // 4, 1)),
        checkpoint=CheckpointConfig(every=0),
        acceleration=AccelerationConfig(compile=True if args.compile else None),
        run_dir=str(run_dir),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="hopper")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--env-steps", type=int, default=200)
    parser.add_argument("--utd", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n-tau", type=int, default=1000)
    parser.add_argument("--dataset-size", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the steps on CPU too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MINARI_DATASETS_PATH", str(Path(tempfile.gettempdir()) / "torchrl_opt_bench_minari"))

    root = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        checkpoint = str(run(make_config(args, root / "offline", None)).run_dir / "offline.pt")
        times: dict[str, list[float]] = {"pipeline": [], "trainer": []}
        updates = args.env_steps * args.utd
        for repeat in range(args.repeats):
            result = run(make_config(args, root / f"pipeline{repeat}", checkpoint))
            assert result.summary["updates"]["finetune"] == updates
            times["pipeline"].append(result.summary["wall_clock_s"]["finetune"])
            trainer = OPTTrainer.from_run_config(
                make_config(args, root / f"trainer{repeat}", checkpoint), progress_bar=False,
                log_interval=max(args.env_steps // 4, 1),
            )
            trainer.train()
            assert trainer.update_count == updates
            times["trainer"].append(trainer.wall_clock["finetune"])
        report = {
            "device": str(trainer.replay_buffer.device),
            "threads": args.threads,
            "env_steps": args.env_steps,
            "utd": args.utd,
            "hidden": args.hidden,
            "batch": args.batch,
            "compile": bool(args.compile),
        }
        for name, values in times.items():
            median = statistics.median(values)
            report[f"{name}_finetune_s"] = round(median, 3)
            report[f"{name}_updates_per_s"] = round(updates / median, 1)
            report[f"{name}_all_s"] = [round(v, 3) for v in values]
        report["trainer_over_pipeline"] = round(
            statistics.median(times["trainer"]) / statistics.median(times["pipeline"]), 3
        )
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
