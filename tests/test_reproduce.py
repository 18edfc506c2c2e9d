"""The reproduction runner (``recipes/reproduce.py``) and its suites (``recipes/suites``).

* ``suite=smoke`` runs end to end on a CPU: an offline unit (TD3+BC for a seed group, only its
  ``offline.pt`` files kept), TD3 and TD3+OPT units fine-tuning from them, and an unsplit TD3+OPT
  unit; the report's table equals the means and stds of the seeds' own summaries, the split
  reproduces the unsplit run exactly (every evaluation curve of every seed, checked here from the
  summaries), the hand-written part of the report survives, and a rerun launches nothing.
* Every unit of the shipped suites composes into a valid run configuration with the paper's
  budgets and the intended ablation, and finds its offline checkpoints where the offline unit's
  multirun writes them; the sizing arithmetic equals a hand computation.
* A unit stopped at its time limit kills its whole process group; malformed suites are refused,
  naming the entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from _helpers import load_script
from test_launchers import generated_minari, recipe, recipe_env
from torchrl_opt.data.generate import generated_dataset_id
from torchrl_opt.pipeline.config import offline_checkpoint_path

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "recipes" / "reproduce.py"
CONFIG_DIR = REPO / "recipes" / "config"

runner = load_script("reproduce_runner", RUNNER)


def _reproduce(cwd: Path, minari: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=cwd, env=recipe_env(minari),
                          capture_output=True, text=True, timeout=600, check=False)


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


# ---------------------------------------------------------------------------------- the smoke suite
@pytest.mark.timeout(600)
def test_smoke_suite_end_to_end(tmp_path, monkeypatch, capsys):
    minari = generated_minari(tmp_path / "minari")
    root, report = tmp_path / "runs", tmp_path / "docs" / "reproduction.md"
    report.parent.mkdir()
    report.write_text("# Reproduction\n\nHand-written: how to run it.\n")
    args = ["suite=smoke", f"root={root}", f"report={report}", "reps=100", "parallel_units=2"]
    proc = _reproduce(tmp_path, minari, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    base = root / "smoke"
    group = "hopper-random/seeds0-1"
    seed_dirs = {unit: [base / unit / group / f"seed{s}" for s in (0, 1)]
                 for unit in ("offline", "td3", "opt", "opt_unsplit")}
    # the offline unit keeps its offline.pt files (and summaries), not its checkpoint
    assert not (base / "offline" / group / "checkpoint.pt").exists()
    for seed, seed_dir in enumerate(seed_dirs["offline"]):
        assert (seed_dir / "offline.pt").is_file()
        assert _summary(seed_dir)["updates"] == {"offline": 40, "finetune": 0}
    # the fine-tune units start from those files and train no offline phase
    for unit in ("td3", "opt"):
        for seed, seed_dir in enumerate(seed_dirs[unit]):
            summary = _summary(seed_dir)
            assert "offline" not in summary["updates"] and summary["updates"]["finetune"] > 0
            path = offline_checkpoint_path(_as_run_config(summary["config"]), seed)
            assert Path(path) == seed_dirs["offline"][seed] / "offline.pt"
    assert _summary(seed_dirs["td3"][0])["method"] == "vanilla"

    # split (offline unit + opt) == unsplit (opt_unsplit), curve for curve, seed for seed
    for split, unsplit, offline in zip(seed_dirs["opt"], seed_dirs["opt_unsplit"], seed_dirs["offline"]):
        a, b, off = _summary(split)["curves"], _summary(unsplit)["curves"], _summary(offline)["curves"]
        online = [k for k in b if k.startswith("eval/")]
        assert online and {k for k in a if k.startswith("eval/")} == set(online)
        for key in online:
            assert a[key] == b[key], key
        assert b["offline_eval/normalized_score"] == off["offline_eval/normalized_score"]

    # the report: its table against the seeds' summaries, the check, the figures, the commands
    text = report.read_text()
    assert text.startswith("# Reproduction\n\nHand-written: how to run it.\n")
    assert text.count("<!-- reproduce:begin smoke -->") == 1 and "<!-- reproduce:end smoke -->" in text
    for unit, label, key in (("offline", "TD3+BC (offline score)", "offline_normalized_score"),
                             ("td3", "TD3", "final_normalized_score"), ("opt", "TD3+OPT", "final_normalized_score"),
                             ("opt_unsplit", "TD3+OPT in one unit", "final_normalized_score")):
        values = np.array([_summary(d)[key] for d in seed_dirs[unit]])
        assert f"| {label} | {values.mean():.1f} ± {values.std():.1f} (n=2) |" in text, label
    assert "| unit | hopper-random |" in text
    assert "- `opt_unsplit` (TD3+OPT in one unit) vs `opt` (TD3+OPT): identical over" in text
    assert (report.parent / "reproduction" / "smoke" / "curves_hopper-random.png").is_file()
    assert "](reproduction/smoke/curves_hopper-random.png)" in text
    commands = [line for line in text.splitlines() if line.startswith("python recipes/opt.py -m ")]
    assert len(commands) == 4 and all(f"hydra.sweep.dir={base}/" in c for c in commands)
    assert sum("offline.checkpoint=" in c for c in commands) == 2

    # rerun (in this process: it launches nothing): every unit is done, nothing is launched or
    # rewritten, the section is replaced
    stamps = {p: p.stat().st_mtime_ns for p in base.rglob("summary.json")}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    capsys.readouterr()
    assert runner.main(args) == 0
    again = capsys.readouterr().out
    for unit in ("offline", "td3", "opt", "opt_unsplit"):
        assert f"unit {unit}: done (1 jobs)" in again
    assert "$ python" not in again
    assert {p: p.stat().st_mtime_ns for p in base.rglob("summary.json")} == stamps
    assert report.read_text().count("<!-- reproduce:begin smoke -->") == 1
    # what a job's status depends on: its recorded overrides, execution-only keys aside
    suite = runner.load_suite("smoke")
    (job,) = runner.suite_jobs(suite, suite.unit("td3"), root)
    shared = runner._job_overrides(suite, suite.unit("td3"), root, ())
    assert runner.job_status(job, runner._job_task_overrides(job, shared)) == "done"
    assert runner.job_status(job, runner._job_task_overrides(job, [*shared, "logging.progress=true"])) == "done"
    assert runner.job_status(job, runner._job_task_overrides(job, [*shared, "finetune.utd=2"])) == "partial"


def test_prepare_datasets_leaves_the_flattened_cache(tmp_path, monkeypatch):
    """Before a unit's jobs start, their dataset exists and its flattened copy is cached, so no
    job generates it or reads Minari's per-episode file."""
    minari = generated_minari(tmp_path / "minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    cache = minari / ".torchrl_opt_cache"
    assert not cache.exists()
    suite = runner.load_suite("smoke")
    unit = suite.unit("td3")
    runner.prepare_datasets(suite, unit, runner.suite_jobs(suite, unit, tmp_path / "root"))
    dataset_id = generated_dataset_id("hopper", "random", size=2000, seed=0)
    assert [p for p in (cache / dataset_id).rglob("*") if p.is_file()], "the flattened copy was written"


def _as_run_config(config: dict):
    from torchrl_opt.pipeline.config import to_run_config

    return to_run_config({k: v for k, v in config.items()})


# ---------------------------------------------------------------------------------- suite definitions
PAPER_BUDGETS = {"offline.steps": 1_000_000, "online_pretrain.n_tau": 25_000, "online_pretrain.steps": 50_000,
                 "finetune.env_steps": 275_000, "finetune.utd": 5, "eval.every": 5_000, "eval.episodes": 10,
                 "backbone.hidden": [256, 256]}
#: what each unit must change relative to the paper's TD3+OPT run (hand-copied from the ablation files).
UNIT_CHANGES = {
    "offline": {"method": "opt", "online_pretrain.n_tau": 0, "online_pretrain.steps": 0, "finetune.env_steps": 0},
    "td3": {"method": "vanilla"},
    "opt": {"method": "opt"},
    "qon_random_init": {"online_pretrain.steps": 0},
    "qon_bon_only": {"online_pretrain.mode": "online"},
    "qon_joint": {"online_pretrain.mode": "joint"},
    "no_qon": {"online_pretrain.critic": "q_off"},
    "n_tau_6250": {"online_pretrain.n_tau": 6250},
    "n_tau_12500": {"online_pretrain.n_tau": 12500},
    "n_tau_50000": {"online_pretrain.n_tau": 50000},
    "n_tau_100000": {"online_pretrain.n_tau": 100000},
    "replay_online": {"finetune.replay": "online"},
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _sweep(command: list[str]) -> dict:
    """``key -> [values]`` of the command's recipe overrides (one value for non-sweeps)."""
    parser = OverridesParser.create()
    out = {}
    for text in command[3:]:
        override = parser.parse_override(text)
        out[override.key_or_group] = (list(override.sweep_iterator()) if override.is_sweep_override()
                                      else [override.value()])
    return out


@pytest.mark.parametrize("name", ["table1_random", "ablations_walker2d"])
def test_paper_suites_compose_with_paper_budgets(name, tmp_path):
    suite = runner.load_suite(name)
    root = tmp_path / "root"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for unit in suite.units:
            jobs = runner.suite_jobs(suite, unit, root)
            (command,) = runner.unit_commands(suite, unit, root, jobs, launcher="slurm", time_limit_min=10)
            sweep = _sweep(command)
            # one job per task and seed group: the env and seed-group sweeps
            assert sweep["env"] == [t.split("-")[0] for t in suite.tasks]
            assert sweep["seeds"] == [list(g) for g in suite.seed_groups]
            assert sweep["hydra/launcher"] == ["slurm"] and sweep["hydra.launcher.timeout_min"] == [10]
            assert sweep["hydra.sweep.dir"] == [str(root / unit.owner / unit.directory)]
            # every job composes into a valid RunConfig with the paper's budgets and the unit's change
            task, seeds = suite.tasks[-1], suite.seed_groups[0]
            overrides = [o for o in command[3:] if not o.startswith(("hydra", "env=", "dataset=", "seeds="))]
            env, kind = task.split("-", 1)
            checkpoint = [o for o in overrides if o.startswith("offline.checkpoint=")]
            if unit.offline is not None:
                # the files the offline unit's multirun writes: <root>/<suite>/offline/<task>/<seeds>/seed<s>/
                offline_dir = root / "table1_random" / "offline" / task / recipe._seed_dir(seeds[0], list(seeds))
                for seed in seeds:
                    (offline_dir / f"seed{seed}").mkdir(parents=True, exist_ok=True)
                    (offline_dir / f"seed{seed}" / "offline.pt").write_bytes(b"")
            else:
                assert not checkpoint
            cfg = recipe.make_run_config(compose(config_name="opt", overrides=[
                f"env={env}", f"dataset={kind}", f"seeds=[{','.join(map(str, seeds))}]", *overrides]))
            assert cfg.seeds == list(seeds) and (cfg.dataset.task, cfg.dataset.kind) == (env, kind)
            assert cfg.backbone.name == "td3" and cfg.device == "auto"
            changes = UNIT_CHANGES[unit.directory if unit.owner != suite.name else unit.name]
            for key, value in {**PAPER_BUDGETS, **changes}.items():
                assert _get(cfg, key) == value, (unit.name, key)
            if unit.offline is not None:
                for seed in seeds:
                    assert offline_checkpoint_path(cfg, seed) == str(offline_dir / f"seed{seed}" / "offline.pt")


def test_ablations_reuse_the_table1_runs(tmp_path):
    suite = runner.load_suite("ablations_walker2d")
    assert {u.name: (u.owner, u.directory) for u in suite.units if u.owner != suite.name} == {
        "offline": ("table1_random", "offline"), "opt": ("table1_random", "opt")}
    (job,) = runner.suite_jobs(suite, suite.unit("opt"), tmp_path)
    assert job.path == tmp_path / "table1_random" / "opt" / "walker2d-random" / "seeds0-1-2-3-4"
    assert suite.unit("opt").paper == {"walker2d-random": (88.1, 5.2)}  # this suite's numbers (Table 8)


def test_sizing_arithmetic(tmp_path):
    """table1_random under its speed model, by hand: TD3+OPT on 5 seeds = start-up 120 s
    + 25,000 x 0.3 ms (N_tau) + 50,000 x 0.5 ms (pre-training) + 275,000 x 1.5 ms (fine-tuning)
    + 55 evaluations x 10 episodes x 1000 steps x 0.3 ms = 730 s: two 10-minute slots at 80%;
    the offline unit = 120 + 1,000,000 x 0.23 ms + 20 x 10 x 1000 x 0.3 ms = 410 s: one slot."""
    suite = runner.load_suite("table1_random")
    rows = {row["unit"]: row for row in runner.sizing(suite)}
    assert rows["opt"]["parts"] == pytest.approx(
        {"startup": 120, "collect": 7.5, "pretrain": 25, "finetune": 412.5, "finetune_eval": 165})
    assert rows["opt"]["total_s"] == pytest.approx(730) and rows["opt"]["slots"] == 2
    assert rows["td3"]["total_s"] == pytest.approx(120 + 7.5 + 275 + 165) and rows["td3"]["slots"] == 2
    assert rows["offline"]["parts"] == pytest.approx({"startup": 120, "offline": 230, "offline_eval": 60})
    assert rows["offline"]["slots"] == 1
    assert runner._evaluations(275_000, 5_000) == 55 and runner._evaluations(1_000_001, 50_000) == 21


# ---------------------------------------------------------------------------------- time limits and errors
def test_time_limit_kills_the_unit_process_group(tmp_path):
    """A multirun past its time limit is stopped with its children (joblib workers, say)."""
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    start = time.monotonic()
    assert runner._run_command([sys.executable, "-c", script], 2.0) == "stopped"
    assert time.monotonic() - start < 30
    child = int(pid_file.read_text())
    time.sleep(0.2)
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"


def _write_suite(path: Path, **changes) -> Path:
    suite = {"name": "mine", "tasks": ["hopper-random"], "seed_groups": [[0, 1]], "common": ["scale=demo"],
             "units": [{"name": "offline", "role": "offline", "overrides": ["finetune.env_steps=0"]},
                       {"name": "ft", "offline": "offline", "overrides": ["method=vanilla"]}]}
    suite.update(changes)
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize("changes,message", [
    ({"tasks": ["hopper"]}, "not '<env>-<dataset>'"),
    ({"seed_groups": [[0, 1], [1, 2]]}, "lists a seed twice"),
    ({"units": [{"name": "ft", "offline": "offline"}]}, "offline='offline' must name an earlier unit"),
    ({"units": [{"name": "a"}, {"name": "b", "offline": "a"}]}, "is not a unit with role: offline"),
    ({"units": [{"name": "a", "overrides": "method=opt"}]}, "must be a list of strings"),
    ({"units": [{"name": "a", "reuse": "table1_random:opt"}]}, "does not run"),
    ({"colour": "red"}, "unknown entries ['colour']"),
])
def test_malformed_suites_are_refused(changes, message, tmp_path):
    with pytest.raises(runner.SuiteError) as err:
        runner.load_suite(str(_write_suite(tmp_path / "mine.yaml", **changes)))
    assert message in str(err.value)


def test_runner_errors_exit_2_with_one_line(tmp_path, capsys):
    assert runner.main(["suite=nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: suite=nope: no file")
    assert runner.main(["suite=smoke", "units=ft"]) == 2
    assert "has no unit 'ft'" in capsys.readouterr().err
    assert runner.main(["suite=smoke", "launcher=pbs"]) == 2
    assert "launcher=pbs: choose one of basic, parallel, local, slurm" in capsys.readouterr().err
    assert runner.main(["suite=smoke", "seed=3"]) == 2
    assert "recipe overrides go after `--`" in capsys.readouterr().err
    mine = _write_suite(tmp_path / "mine.yaml")
    assert runner.main([f"suite={mine}", f"root={tmp_path / 'r'}", "units=ft", "run"]) == 2
    assert "run that unit first (units=offline)" in capsys.readouterr().err
