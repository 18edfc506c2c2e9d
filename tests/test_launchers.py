"""Sweeps through Hydra's launcher plugins, finished-run skipping and readable recipe errors.

* A 2-seed multirun through the joblib launcher (``hydra/launcher=parallel``) and one through
  submitit on this machine (``hydra/launcher=local``) write every run's ``summary.json`` and CSV
  curves at the documented multirun path; ``torchrl_opt.analysis`` makes the per-task table of
  both, whose numbers are checked against the seeds' CSV files; rerunning the joblib sweep trains
  nothing and leaves every file untouched.
* The Slurm preset's partition, GPUs, time, memory and array parallelism reach the ``sbatch``
  script submitit writes (a stand-in ``sbatch`` records it; no cluster needed).
* A bad configuration key, an unknown option, a bad value or a missing dataset file print one
  ``error: ...`` line with its hint and exit 2, without a traceback; ``HYDRA_FULL_ERROR=1`` shows
  the traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from _helpers import load_script

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "opt.py"
CONFIG_DIR = REPO / "recipes" / "config"

#: the smallest complete run (every phase): a few seconds on one CPU core.
TINY = [
    "dataset.size=2000", "offline.steps=40", "offline.eval_every=40", "online_pretrain.n_tau=150",
    "online_pretrain.steps=10", "finetune.env_steps=120", "eval.every=60", "eval.episodes=1",
    "eval.max_steps=100", "logging.log_every=20", "logging.progress=false", "checkpoint.every=0",
]


recipe = load_script("opt_recipe", RECIPE)


def recipe_env(minari: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari), "RL_WARNINGS": "False", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_recipe(cwd: Path, minari: Path, *args: str, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPE), *args], cwd=cwd, env=recipe_env(minari, **env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def generated_minari(root: Path) -> Path:
    """``root`` as a Minari cache holding the tiny runs' dataset (2000 random Hopper transitions).

    Generated once, before any sweep: parallel jobs that found it missing would each generate it
    (``ensure_dataset`` then keeps the first one finished), which costs time, not correctness.
    """
    from torchrl_opt.data.generate import ensure_dataset

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        ensure_dataset("hopper", "random", size=2000, seed=0, workers=1, progress=False)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root


@pytest.fixture(scope="module")
def minari(tmp_path_factory) -> Path:
    """One dataset cache for the module's runs (the dataset is generated once)."""
    return generated_minari(tmp_path_factory.mktemp("minari_launchers"))


def _run_dir(sweep: Path, method: str, seed: int) -> Path:
    """``multirun/<task>-<dataset>/<backbone>-<method>-<scale>-<overrides>/seed<s>`` (docs/recipes.md)."""
    overrides = "+".join(sorted(o for o in TINY if not o.startswith(("logging.", "checkpoint."))))
    return sweep / "hopper-random" / recipe._run_name("td3", method, "demo", None, overrides.replace("=", "_")) / f"seed{seed}"


def _last_csv_value(path: Path) -> float:
    with path.open() as handle:
        rows = [row for row in csv.reader(handle) if row and row[0] != "step"]
    return float(rows[-1][-1])


def _stamps(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


@pytest.mark.timeout(400)
def test_joblib_and_submitit_local_sweeps_make_the_table_and_reruns_skip(tmp_path, minari):
    sweep = tmp_path / "multirun"
    joblib = ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY,
              f"hydra.sweep.dir={sweep}"]
    first = run_recipe(tmp_path, minari, *joblib)
    assert first.returncode == 0, first.stderr[-3000:]
    local = run_recipe(tmp_path, minari, "-m", "hydra/launcher=local", "seed=0,1", "method=vanilla", *TINY,
                       f"hydra.sweep.dir={sweep}")
    assert local.returncode == 0, local.stderr[-3000:]
    assert list((sweep / ".submitit").glob("*/*_0_log.out")), "submitit_local keeps each job's log"

    # every run at its predictable path, with its summary and CSV curves
    finals, scores = {}, {}
    for method in ("opt", "vanilla"):
        for seed in (0, 1):
            run_dir = _run_dir(sweep, method, seed)
            summary = json.loads((run_dir / "summary.json").read_text())
            assert (summary["method"], summary["seed"], summary["config"]["run_dir"]) == (method, seed, str(run_dir))
            curve = run_dir / "logs" / "scalars" / "eval" / "normalized_score.csv"
            assert _last_csv_value(curve) == pytest.approx(summary["final_normalized_score"])
            finals[method, seed] = _last_csv_value(curve)
            scores[method, seed] = summary["final_normalized_score"]

    # the per-task table of both sweeps, against the CSV files
    from torchrl_opt.analysis import aggregate, collect_runs

    analysis = aggregate(collect_runs([sweep]), ("final",), reps=50, seed=0)
    stats = {s.cell.label: s for s in analysis.metrics["final"].cells}
    assert set(stats) == {"opt", "vanilla"}
    for method, s in stats.items():
        values = np.array([finals[method, 0], finals[method, 1]])
        assert s.seeds == (0, 1)
        assert s.mean.value == pytest.approx(values.mean()) and s.std == pytest.approx(values.std())
    table = analysis.metrics["final"].tables[0].to_markdown()
    assert "hopper-random" in table and "vanilla" in table

    # the same sweep again: both runs are found finished, nothing is trained or rewritten
    files = [p for method in ("opt", "vanilla") for seed in (0, 1) for p in _run_dir(sweep, method, seed).rglob("*")
             if p.is_file() and p.suffix in (".json", ".pt", ".csv")]
    before = _stamps(files)
    again = run_recipe(tmp_path, minari, *joblib)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished run found, nothing to train") == 2
    for seed in (0, 1):  # each prints its finished run's summary again
        assert f"final normalised score:   {scores['opt', seed]:.1f}" in again.stdout
    assert _stamps(files) == before


def test_slurm_preset_reaches_sbatch(tmp_path, minari):
    """``hydra/launcher=slurm``: the preset's entries (and overrides of them) become ``#SBATCH``
    lines of the array job submitit writes; a stand-in ``sbatch`` records the script and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        for last; do :; done
        cp "$last" {tmp_path}/submitted.sh
        echo "sbatch: stand-in of the test, nothing submitted" >&2
        exit 1
    """))
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    proc = run_recipe(
        tmp_path, minari, "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu-short",
        "hydra.launcher.timeout_min=12", "hydra.launcher.mem_gb=48", "hydra.launcher.array_parallelism=1",
        "hydra.launcher.setup=[module load cuda]", "seeds=[0,1,2],[3,4,5]", "scale=paper",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    assert proc.returncode != 0  # the stand-in refused the submission
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu-short", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=12", "#SBATCH --mem=48GB", "#SBATCH --array=0-1%1", "module load cuda"):
        assert line in script, line
    assert "#SBATCH --signal=USR2@90" in script  # the preset's warning before the time limit


# ---------------------------------------------------------------------------------- finished runs
def _tiny_run_config(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="opt", overrides=[*TINY, *overrides])
    return recipe.make_run_config(cfg, str(run_dir))


def test_finished_summary_needs_the_same_configuration(tmp_path):
    run_cfg = _tiny_run_config(tmp_path / "run")
    run_dir = Path(run_cfg.run_dir)
    run_dir.mkdir()
    config = {**dataclasses.asdict(run_cfg), "seed": 0, "seeds": None, "run_dir": str(run_dir)}
    summary = {"kind": "run", "seed": 0, "config": json.loads(json.dumps(config)), "final_normalized_score": 1.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert recipe.finished_summary(run_cfg) == summary
    assert recipe.finished_summary(_tiny_run_config(run_dir, "eval.episodes=2")) is None  # another configuration
    assert recipe.finished_summary(_tiny_run_config(run_dir, "checkpoint.resume=false")) is None
    assert recipe.finished_summary(_tiny_run_config(run_dir, "seed=1")) is None
    # a seed group needs its group summary and every seed's
    group_cfg = _tiny_run_config(tmp_path / "group", "seeds=[0,1]")
    group_dir = Path(group_cfg.run_dir)
    group_dir.mkdir()
    group = {"kind": "group", "seeds": [0, 1], "config": json.loads(json.dumps(dataclasses.asdict(group_cfg)))}
    (group_dir / "summary.json").write_text(json.dumps(group))
    assert recipe.finished_summary(group_cfg) is None
    for seed in (0, 1):
        (group_dir / f"seed{seed}").mkdir()
        (group_dir / f"seed{seed}" / "summary.json").write_text("{}")
    assert recipe.finished_summary(group_cfg) == group


# ---------------------------------------------------------------------------------- errors
def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_misspelt_key_prints_one_line_and_exits_2(tmp_path, minari):
    proc = run_recipe(tmp_path, minari, "finetune.utdd=3")
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "'finetune.utdd'" in line and "did you mean 'finetune.utd'" in line
    assert not (tmp_path / "runs").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    """``HYDRA_FULL_ERROR=1``: the error propagates (Python prints its traceback, exit 1)."""
    from hydra.errors import ConfigCompositionException

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", [str(RECIPE), "finetune.utdd=3"])
    with pytest.raises(ConfigCompositionException, match="finetune.utdd"):
        recipe.cli()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


#: Hydra leaves logging alone when the recipe runs inside the test process: its logging set-up
#: (``logging.config.dictConfig``) closes the handlers of loggers configured earlier, and absl's
#: (imported with rliable by other tests) then writes to a closed stream when pytest exits.
IN_PROCESS = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


@pytest.mark.parametrize("args,fragments", [
    (["utdd=3"], ["'utdd'", "did you mean 'finetune.utd'"]),
    (["env=walkerd"], ["env=walkerd", "did you mean env=walker2d", "available: antmaze"]),
    (["hydra/launcher=slurmm"], ["hydra/launcher=slurmm", "slurm", "parallel"]),
    (["finetune.utd=many"], ["finetune.utd", "'many'"]),
    (["finetune.utd=0"], ["finetune.utd must be > 0, got 0"]),
    (["+threads=4"], ["unknown configuration key 'threads'"]),
    (["foo"], ["'foo'", "key=value"]),
    (["-m", "seed=0,1", "finetune.utdd=3"], ["did you mean 'finetune.utd'"]),
])
def test_errors_print_one_line_with_their_hint(args, fragments, tmp_path, monkeypatch, capfd):
    """In-process (``cli()`` as ``python recipes/opt.py`` runs it): exit 2, one line, no traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [str(RECIPE), *args, *IN_PROCESS])
    with pytest.raises(SystemExit) as exit_info:
        recipe.cli()
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "HYDRA_FULL_ERROR" not in os.environ  # cli() restores the environment


def test_missing_dataset_file_prints_one_line(tmp_path, minari, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    missing = tmp_path / "no" / "hopper_random-v2.hdf5"
    monkeypatch.setattr(sys, "argv", [str(RECIPE), *TINY, "dataset.source=d4rl_hdf5", f"dataset.path={missing}",
                                      *IN_PROCESS])
    with pytest.raises(SystemExit) as exit_info:
        recipe.cli()
    assert exit_info.value.code == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and str(missing) in line and "docs/data.md" in line
