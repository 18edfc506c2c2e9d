"""Whole online phase through the real pipeline: collection, online pre-training, fine-tuning + eval.

Runs ``torchrl_opt.pipeline.run.run(cfg)`` end to end for the online phase only: the offline phase
is trained briefly once (``--offline-steps``, one seed-batched run with the largest seed count, so
every seed gets its own ``<dir>/seed<s>/offline.pt``) and every measured run starts from those
checkpoints (``offline.checkpoint=.../seed{seed}/offline.pt``). It measures

* for each configuration: wall-clock of ``collect`` (``n_tau`` steps of the frozen offline policy),
  ``pretrain`` (meta-adaptation of Q_on) and ``finetune`` (env steps at UTD ``--utd``, density-ratio
  priorities, periodic evaluation), as the pipeline reports them (``summary["wall_clock_s"]``); the
  time spent in evaluation (``Run.evaluate`` wrapped with a timer from the outside; it runs
  inside ``finetune``); fine-tuning env steps/s and updates/s; the online-phase total (collect +
  pretrain + finetune); the final normalised score (mean over seeds for a group);
* for each seed count ``S`` of ``--seeds`` (default ``1,10``): the run of ``seeds=[0..S-1]`` (one
  seed is the same code as ``seeds=None``: no vmap) and the online-phase wall-clock ratio S seeds /
  1 seed (target <= 2x for 10 seeds); ``--single`` adds ``seeds=None`` for reference.

``--scale`` multiplies ``n_tau``, the pre-training steps, the fine-tuning env steps and the evaluation
interval (1.0 = the paper's 25k / 50k / 275k, evaluation every 5k steps); the number of evaluations
(and so their cost) does not shrink with it. Each run's wall-clock includes compiling / capturing its
update steps (the pipeline compiles lazily inside the phases), as a real run does.

Correctness checks (a failure is printed and makes the exit status 1): every measured run skipped
offline training (no ``offline`` entry in its wall-clock), every seed fine-tuned ``env_steps`` env
steps (``updates["finetune"] == env_steps * utd``, last evaluation at ``env_steps``) and pre-trained
``pretrain`` updates, and evaluation ran as often as configured. Not a test.

    python benchmarks/bench_phase.py                              # GPU: the paper's online phase
    python benchmarks/bench_phase.py --scale 0.2 --out phase.json # a fifth of it, JSON too
    python benchmarks/bench_phase.py --device cpu --scale 0.002 --seeds 1,2 --hidden 64 \\
        --dataset-size 5000 --offline-steps 50 --eval-episodes 1 --single   # CPU smoke run

The speed targets (docs/performance.md, issue 6): the walker2d online phase within 600 s on one
H100; 10 seeds in one process within 2x the wall-clock of 1 seed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from torchrl_opt.pipeline import context as context_module
from torchrl_opt.pipeline import run as run_module
from torchrl_opt.pipeline.config import (
    AccelerationConfig,
    BackboneConfig,
    CheckpointConfig,
    DatasetConfig,
    EvalConfig,
    FinetuneConfig,
    LoggingConfig,
    OfflineConfig,
    OnlinePretrainConfig,
    RunConfig,
)

#: the paper's online phase (scale 1.0)
PAPER = {"n_tau": 25_000, "pretrain_steps": 50_000, "env_steps": 275_000, "eval_every": 5_000}
PHASES = ("collect", "pretrain", "finetune")


def log(message: str) -> None:
    print(f"[bench_phase {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------ evaluation timer
class EvalTimer:
    """Times :meth:`~torchrl_opt.pipeline.context.Run.evaluate` from the outside (wrapped at
    class level); ``calls`` counts the evaluations, ``steps`` the distinct env steps evaluated."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.steps: set[int] = set()
        self._original: Any = None

    def reset(self) -> None:
        self.seconds, self.calls, self.steps = 0.0, 0, set()

    def install(self) -> None:
        timer = self
        original = self._original = context_module.Run.evaluate

        @functools.wraps(original)
        def evaluate(run_obj, step: int):
            if run_obj.device.type == "cuda":
                torch.cuda.synchronize(run_obj.device)  # queued updates are not evaluation time
            start = time.perf_counter()
            try:
                return original(run_obj, step)
            finally:
                timer.seconds += time.perf_counter() - start
                timer.calls += 1
                timer.steps.add(int(step))

        context_module.Run.evaluate = evaluate

    @property
    def wrapped(self) -> list[str]:
        return ["torchrl_opt.pipeline.context.Run.evaluate"] if self._original is not None else []

    def uninstall(self) -> None:
        if self._original is not None:
            context_module.Run.evaluate = self._original
            self._original = None


# ------------------------------------------------------------------ configuration
def budgets(args: argparse.Namespace) -> dict[str, int]:
    scaled = {k: max(1, round(v * args.scale)) for k, v in PAPER.items()}
    if args.no_eval:
        scaled["eval_every"] = scaled["env_steps"] + 1  # only the final evaluation
    return scaled


def expected_evals(env_steps: int, every: int) -> int:
    """Evaluations of one seed's fine-tuning: every ``every`` steps and at the last step."""
    return env_steps // every + (1 if env_steps % every else 0)


def make_config(
    args: argparse.Namespace,
    run_dir: Path,
    *,
    seeds: list[int] | None,
    checkpoint: str | None,
    offline_only: bool = False,
) -> RunConfig:
    b = budgets(args)
    acceleration = AccelerationConfig(
        compile=args.compile, cudagraphs=args.cudagraphs, graph_backend=args.graph_backend,
        direct_env=args.direct_env, env_threads=args.env_threads,
    )
    if offline_only:
        # the offline phase only: no collection, no pre-training, no fine-tuning env step
        online = OnlinePretrainConfig(n_tau=0, steps=0)
        finetune = FinetuneConfig(env_steps=0, utd=args.utd)
        evaluation = EvalConfig(every=0, episodes=1)
    else:
        online = OnlinePretrainConfig(n_tau=b["n_tau"], steps=b["pretrain_steps"])
        finetune = FinetuneConfig(
            env_steps=b["env_steps"], utd=args.utd, prefetch_action=args.prefetch
        )
        evaluation = EvalConfig(every=b["eval_every"], episodes=args.eval_episodes)
    return RunConfig(
        seed=0,
        seeds=seeds,
        device=args.device,
        dataset=DatasetConfig(task=args.task, kind=args.kind, size=args.dataset_size),
        backbone=BackboneConfig(hidden=[args.hidden, args.hidden]),
        offline=OfflineConfig(steps=args.offline_steps, eval_every=0, checkpoint=checkpoint),
        online_pretrain=online,
        finetune=finetune,
        eval=evaluation,
        logging=LoggingConfig(backend="none", progress=not args.quiet),
        checkpoint=CheckpointConfig(every=0, resume=False),
        acceleration=acceleration,
        run_dir=str(run_dir),
    )


# ------------------------------------------------------------------ one measured run
def measure(
    args: argparse.Namespace,
    label: str,
    seeds: list[int] | None,
    run_dir: Path,
    checkpoint: str,
    timer: EvalTimer,
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    b = budgets(args)
    cfg = make_config(args, run_dir, seeds=seeds, checkpoint=checkpoint)
    n_seeds = 1 if seeds is None else len(seeds)
    timer.reset()
    start = time.perf_counter()
    result = run_module.run(cfg)
    run_s = time.perf_counter() - start
    summary = result.summary
    per_seed = list(result.results)
    wall = dict(summary["wall_clock_s"])
    updates = dict(summary["updates"])

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"run": label, "check": name, "ok": bool(ok), "detail": detail})

    expected_ft = b["env_steps"] * args.utd
    n_evals = expected_evals(b["env_steps"], b["eval_every"])
    for seed, res in zip(seeds if seeds is not None else [0], per_seed):
        s_wall, s_updates = res.summary["wall_clock_s"], res.summary["updates"]
        check(f"seed {seed}: offline skipped",
              "offline" not in s_wall and "vae" not in s_wall and "offline" not in s_updates,
              f"wall_clock_s keys {sorted(s_wall)}")
        check(f"seed {seed}: finetune updates == env_steps * utd",
              s_updates.get("finetune") == expected_ft,
              f"{s_updates.get('finetune')} vs {b['env_steps']} * {args.utd} = {expected_ft}")
        check(f"seed {seed}: pretrain updates", s_updates.get("pretrain") == b["pretrain_steps"],
              f"{s_updates.get('pretrain')} vs {b['pretrain_steps']}")
        evals = res.history.get("eval/normalized_score", [])
        check(f"seed {seed}: evaluations (last at env_steps)",
              len(evals) == n_evals and bool(evals) and evals[-1][0] == b["env_steps"],
              f"{len(evals)} evaluations, last at {evals[-1][0] if evals else None}; expected "
              f"{n_evals}, last at {b['env_steps']}")
    if seeds is not None:
        check("group: offline skipped", "offline" not in wall, f"wall_clock_s keys {sorted(wall)}")
        check("group: finetune updates == env_steps * utd", updates.get("finetune") == expected_ft,
              f"{updates.get('finetune')} vs {expected_ft}")
    expected_steps = set(range(b["eval_every"], b["env_steps"] + 1, b["eval_every"]))
    expected_steps.add(b["env_steps"])
    check("timed evaluations", timer.steps == expected_steps and timer.calls >= n_evals,
          f"{timer.calls} timed calls at {len(timer.steps)} distinct steps; expected {n_evals} "
          "steps (one call each, or one per seed where a group evaluates seed by seed)")

    online_s = sum(wall.get(p, 0.0) for p in PHASES)
    finetune_s = wall.get("finetune", 0.0)
    ft_no_eval = finetune_s - timer.seconds
    ft_updates = updates.get("finetune", 0)
    scores = [r.summary.get("final_normalized_score") for r in per_seed]
    row = {
        "label": label,
        "seeds": list(seeds) if seeds is not None else None,
        "n_seeds": n_seeds,
        "run_dir": str(result.run_dir),
        "wall_clock_s": {p: wall.get(p) for p in PHASES},
        "eval_s": timer.seconds,
        "eval_calls": timer.calls,
        "acceleration": summary["config"]["acceleration"],
        "finetune_excl_eval_s": ft_no_eval,
        "online_s": online_s,
        "online_excl_eval_s": online_s - timer.seconds,
        "run_s": run_s,  # the whole run(cfg) call: + data loading, agent and env set-up
        "finetune_env_steps": b["env_steps"],
        "finetune_updates": ft_updates,
        # per seed (the seeds of a group step in lockstep); x n_seeds for the group's total
        "finetune_env_steps_per_s": b["env_steps"] / finetune_s if finetune_s else None,
        "finetune_updates_per_s": ft_updates / finetune_s if finetune_s else None,
        "finetune_env_steps_per_s_excl_eval": b["env_steps"] / ft_no_eval if ft_no_eval > 0 else None,
        "finetune_updates_per_s_excl_eval": ft_updates / ft_no_eval if ft_no_eval > 0 else None,
        "final_normalized_score": (
            sum(scores) / len(scores) if scores and None not in scores else None
        ),
        "final_normalized_score_per_seed": scores,
    }
    return row


# ------------------------------------------------------------------ output
def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("torchrl", "tensordict", "gymnasium", "mujoco"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - informative only
            info[name] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> list[str]:
    header = ("| run | seeds | collect s | pretrain s | finetune s | eval s | online s "
              "| online excl. eval s | ft env steps/s | ft updates/s | ft updates/s excl. eval "
              "| final score |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        w = r["wall_clock_s"]
        lines.append(
            f"| {r['label']} | {r['n_seeds']} | {_fmt(w['collect'])} | {_fmt(w['pretrain'])} "
            f"| {_fmt(w['finetune'])} | {_fmt(r['eval_s'])} | {_fmt(r['online_s'])} "
            f"| {_fmt(r['online_excl_eval_s'])} | {_fmt(r['finetune_env_steps_per_s'])} "
            f"| {_fmt(r['finetune_updates_per_s'])} | {_fmt(r['finetune_updates_per_s_excl_eval'])} "
            f"| {_fmt(r['final_normalized_score'], '.2f')} |"
        )
    return lines


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Online-phase wall-clock of each seed group / the 1-seed group (else the single run)."""
    groups = [r for r in rows if r["seeds"] is not None]
    base = next((r for r in groups if r["n_seeds"] == 1), None)
    base = base or next((r for r in rows if r["seeds"] is None), None)
    if base is None:
        return []
    out = []
    for r in groups:
        if r is base:
            continue
        out.append({
            "seeds": r["n_seeds"],
            "base": base["label"],
            "online_ratio": r["online_s"] / base["online_s"] if base["online_s"] else None,
            "online_excl_eval_ratio": (
                r["online_excl_eval_s"] / base["online_excl_eval_s"]
                if base["online_excl_eval_s"] > 0 else None
            ),
            "finetune_ratio": (
                r["wall_clock_s"]["finetune"] / base["wall_clock_s"]["finetune"]
                if base["wall_clock_s"]["finetune"] else None
            ),
        })
    return out


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, target)


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walker2d")
    parser.add_argument("--kind", default="random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="factor on n_tau, pre-training steps, fine-tuning env steps and the "
                             "eval interval (1.0: 25k / 50k / 275k, eval every 5k)")
    parser.add_argument("--seeds", default="1,10",
                        help="comma list of seed counts S, each run as seeds=[0..S-1] ('' for none)")
    parser.add_argument("--single", action="store_true",
                        help="also run the plain single-seed pipeline (seeds=None, seed 0)")
    parser.add_argument("--utd", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dataset-size", type=int, default=1_000_000)
    parser.add_argument("--offline-steps", type=int, default=1000,
                        help="offline updates of the (unmeasured) run that writes the checkpoints")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--no-eval", action="store_true",
                        help="only the final evaluation (interval beyond the phase length)")
    parser.add_argument("--graph-backend", choices=("tensordict", "torch"), default="tensordict")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the update steps (default: on for CUDA, off for CPU)")
    parser.add_argument("--cudagraphs", action=argparse.BooleanOptionalAction, default=None,
                        help="CUDA-graph the update steps (default: on for CUDA)")
    parser.add_argument("--direct-env", action=argparse.BooleanOptionalAction, default=None,
                        help="step envs directly (default: wherever supported)")
    parser.add_argument("--env-threads", type=int, default=0,
                        help="threads stepping a seed group's envs (acceleration.env_threads)")
    parser.add_argument("--prefetch", action="store_true",
                        help="finetune.prefetch_action: act one step ahead of the updates")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--workdir", default=None,
                        help="run dirs (and the dataset cache unless MINARI_DATASETS_PATH is set); "
                             "default: a temporary directory, removed at the end")
    parser.add_argument("--out", default=None, help="also write everything as JSON (after each run)")
    parser.add_argument("--quiet", action="store_true", help="no tqdm progress bars")
    args = parser.parse_args(argv)
    try:
        args.seed_counts = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes a comma list of integers, got {args.seeds!r}")
    if any(s < 1 for s in args.seed_counts):
        parser.error(f"--seeds counts must be >= 1, got {args.seed_counts}")
    if not args.seed_counts and not args.single:
        parser.error("nothing to run: give --seeds counts and/or --single")
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrl").setLevel(logging.WARNING)  # its INFO lines go to stdout
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    temporary = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_phase_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if "MINARI_DATASETS_PATH" not in os.environ:
        os.environ["MINARI_DATASETS_PATH"] = str(workdir / "datasets")
    b = budgets(args)
    settings = {
        **{k: v for k, v in vars(args).items() if k not in ("seed_counts",)},
        "seed_counts": args.seed_counts,
        **b,
        "evaluations_per_seed": expected_evals(b["env_steps"], b["eval_every"]),
        "batch_size": FinetuneConfig().batch_size,
        "replay": FinetuneConfig().replay,
        "backbone": BackboneConfig().name,
        "workdir": str(workdir),
        "minari_datasets_path": os.environ["MINARI_DATASETS_PATH"],
    }
    env_info = environment(device)
    payload: dict[str, Any] = {
        "benchmark": "bench_phase", "complete": False, "environment": env_info,
        "settings": settings, "runs": [], "ratios": [], "checks": [],
    }
    log(" ".join(f"{k}={v}" for k, v in env_info.items()))
    log("settings: " + " ".join(f"{k}={v}" for k, v in settings.items()))

    timer = EvalTimer()
    timer.install()
    settings["eval_timer_wraps"] = timer.wrapped
    log("evaluation timed by wrapping " + ", ".join(timer.wrapped))
    checks: list[dict[str, Any]] = payload["checks"]
    rows: list[dict[str, Any]] = payload["runs"]
    try:
        from torchrl_opt.data.generate import ensure_dataset

        log(f"dataset {args.task}-{args.kind} ({args.dataset_size} transitions) ...")
        t0 = time.perf_counter()
        ensure_dataset(args.task, args.kind, size=args.dataset_size, seed=0, progress=not args.quiet)
        settings["dataset_ready_s"] = time.perf_counter() - t0
        log(f"dataset ready in {settings['dataset_ready_s']:.1f} s")

        # offline checkpoints, one per seed: the offline phase of one group of the largest size
        n_offline = max(args.seed_counts, default=1)
        offline_dir = workdir / "offline"
        log(f"offline phase ({args.offline_steps} steps, seeds 0..{n_offline - 1}; not measured) ...")
        t0 = time.perf_counter()
        prep = run_module.run(make_config(
            args, offline_dir, seeds=list(range(n_offline)), checkpoint=None, offline_only=True
        ))
        settings["offline_prep_s"] = time.perf_counter() - t0
        # one seed writes into its run directory, a group into <run_dir>/seed<s>/
        checkpoint = str(offline_dir / ("seed{seed}" if n_offline > 1 else "") / "offline.pt")
        missing = [s for s in range(n_offline)
                   if not Path(checkpoint.replace("{seed}", str(s))).is_file()]
        checks.append({"run": "offline prep", "check": "offline.pt per seed", "ok": not missing,
                       "detail": f"missing seeds {missing}" if missing else checkpoint})
        checks.append({"run": "offline prep", "check": "offline trained",
                       "ok": prep.summary["updates"].get("offline") == args.offline_steps,
                       "detail": f"updates {prep.summary['updates']}"})
        settings["offline_checkpoint"] = checkpoint
        settings["offline_normalized_score"] = prep.summary.get("offline_normalized_score")
        log(f"offline checkpoints written in {settings['offline_prep_s']:.1f} s: {checkpoint}")
        if missing:
            raise RuntimeError(f"offline.pt missing for seeds {missing}")

        plan: list[tuple[str, list[int] | None]] = [
            (f"seeds=[0..{s - 1}]", list(range(s))) for s in args.seed_counts
        ]
        if args.single:
            plan.append(("single (seeds=None)", None))
        for i, (label, seeds) in enumerate(plan):
            log(f"run {i + 1}/{len(plan)}: {label}: n_tau={b['n_tau']} pretrain={b['pretrain_steps']} "
                f"env_steps={b['env_steps']} utd={args.utd} eval every {b['eval_every']} x "
                f"{args.eval_episodes} episodes ...")
            run_dir = workdir / f"run{i}-{'single' if seeds is None else f'S{len(seeds)}'}"
            row = measure(args, label, seeds, run_dir, checkpoint, timer, checks)
            rows.append(row)
            payload["ratios"] = ratios(rows)
            write_json(args.out, payload)
            w = row["wall_clock_s"]
            log(f"{label}: collect {_fmt(w['collect'])} s, pretrain {_fmt(w['pretrain'])} s, "
                f"finetune {_fmt(w['finetune'])} s (eval {row['eval_s']:.1f} s), online "
                f"{row['online_s']:.1f} s, run(cfg) {row['run_s']:.1f} s, final score "
                f"{_fmt(row['final_normalized_score'], '.2f')}")
    finally:
        timer.uninstall()

    payload["complete"] = True
    write_json(args.out, payload)

    print()
    print(f"date={env_info['date']} device={device} torch={env_info['torch']}"
          + (f" gpu={env_info['gpu']} cuda={env_info['cuda']}" if device.type == "cuda" else "")
          + f" torchrl={env_info['torchrl']} tensordict={env_info['tensordict']}"
          f" cpus={env_info['cpu_count']} threads={env_info['torch_threads']}")
    print(f"task={args.task}-{args.kind} dataset={args.dataset_size} scale={args.scale} "
          f"n_tau={b['n_tau']} pretrain={b['pretrain_steps']} env_steps={b['env_steps']} "
          f"utd={args.utd} hidden={args.hidden}x2 batch={settings['batch_size']} "
          f"eval every {b['eval_every']} x {args.eval_episodes} episodes"
          f" ({settings['evaluations_per_seed']} per seed{', --no-eval' if args.no_eval else ''}) "
          f"compile={args.compile} cudagraphs={args.cudagraphs} graph_backend={args.graph_backend} "
          f"direct_env={args.direct_env} env_threads={args.env_threads} prefetch={args.prefetch} "
          f"offline: {args.offline_steps} steps, checkpoint (not measured)")
    if rows:
        print("acceleration (as configured; seed groups always use the functional steps): "
              + " ".join(f"{k}={v}" for k, v in rows[0]["acceleration"].items()))
    print()
    for line in table(rows):
        print(line)
    print()
    print("online s = collect + pretrain + finetune (wall_clock_s of the pipeline); finetune "
          "includes eval s; env steps/s and updates/s are per seed (a group's seeds step in "
          "lockstep, one batched update for all)")
    for r in payload["ratios"]:
        target = " (target <= 2x)" if r["seeds"] == 10 else ""
        print(f"{r['seeds']} seeds / 1 seed ({r['base']}): online {_fmt(r['online_ratio'], '.2f')}x"
              f"{target}, online excl. eval {_fmt(r['online_excl_eval_ratio'], '.2f')}x, "
              f"finetune {_fmt(r['finetune_ratio'], '.2f')}x")
    if args.scale == 1.0:
        for r in rows:
            if r["n_seeds"] == 1:
                verdict = "met" if r["online_s"] <= 600 else "NOT met"
                print(f"{r['label']}: online phase {r['online_s']:.0f} s (target <= 600 s: {verdict})")
    failed = [c for c in checks if not c["ok"]]
    if failed:
        for c in failed:
            print(f"CHECK FAILED [{c['run']}] {c['check']}: {c['detail']}")
    else:
        print(f"checks: all {len(checks)} passed (offline skipped in every measured run, every "
              "seed fine-tuned env_steps * utd updates, evaluation count as configured)")
    sys.stdout.flush()
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
