"""torchrl_opt.analysis: collection, cells, rliable statistics, tables, figures, CLI, per-run report.

Run directories are written by hand in the pipeline's ``summary.json`` format with known scores, so
that every statistic can be checked against a hand computation and against rliable called directly.
"""

from __future__ import annotations

import csv
import json
import re
import runpy
import shutil
import struct
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics
from scipy import stats as sps

from torchrl_opt.analysis import (
    SEED_LIKE_KEYS,
    AnalysisError,
    SkippedRunWarning,
    collect_runs,
    differences,
    group_cells,
    write_run_report,
)
from torchrl_opt.analysis.cli import main
from torchrl_opt.analysis.plots import plot_learning_curves, save_figure
from torchrl_opt.analysis.stats import (
    aggregate_statistics,
    align_series,
    cell_statistics,
    improvements,
    learning_curve,
    performance_profiles,
    probability_of_improvement,
    resolve_label,
    score_matrix,
)

REPS = 200
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "analysis.md"

# (task-dataset, directory, method, utd) -> final score per seed
HOPPER_OPT = [10.0, 20.0, 30.0, 100.0]          # seed group, 4 seeds
HOPPER_OPT_UTD1 = [15.0, 25.0]                   # same method, finetune.utd=1: a separate cell
HOPPER_VANILLA = [12.0, 20.0, 8.0]
WALKER_OPT = [50.0, 70.0, 60.0]
WALKER_VANILLA = [40.0, 45.0, 70.0]
SINGLE_RLPD = 42.0


def config(method, task, dataset, seed, run_dir, utd=5, **extra):
    cfg = {
        "seed": seed, "seeds": None, "method": method, "run_dir": str(run_dir), "device": "cpu",
        "dataset": {"task": task, "kind": dataset},
        "finetune": {"utd": utd, "env_steps": 300},
        "logging": {"dir": "runs", "backend": "csv"},
        "checkpoint": {"every": 100},
        "acceleration": {"compile": False},
        "offline": {"steps": 100, "checkpoint": None},
    }
    for key, value in extra.items():
        section, leaf = key.split("__")
        cfg[section][leaf] = value
    return cfg


def write_run(run_dir, method, task, dataset, seed, final, *, utd=5, curves=None, group_dir=None,
              best=None, offline=None, **extra) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if curves is None:
        curves = {"eval/normalized_score": [[100, final / 4], [200, final / 2], [300, final]],
                  "eval/value_bias/q_off": [[100, -4.0 - seed], [200, -2.0], [300, -1.0 + seed]],
                  "eval/value_bias/q_on": [[100, 2.0], [200, 1.0 + seed], [300, 0.5]]}
    summary = {
        "kind": "run", "method": method, "seed": seed, "task": task, "dataset": dataset,
        "env_id": "Hopper-v5", "config": config(method, task, dataset, seed, run_dir, utd, **extra),
        "final_normalized_score": final, "best_normalized_score": final if best is None else best,
        "offline_normalized_score": offline,
        "scores": curves.get("eval/normalized_score", []), "curves": curves,
        "wall_clock_s": {"offline": 1.5, "finetune": 3.0}, "updates": {"offline": 100, "finetune": 300},
        "updates_per_s": {"offline": 66.7, "finetune": 100.0}, "device": "cpu",
    }
    if group_dir is not None:
        summary["group"] = {"seeds": None, "run_dir": str(group_dir)}
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def write_group(group_dir, method, task, dataset, finals, *, utd=5, listed_seeds=None) -> Path:
    group_dir = Path(group_dir)
    seeds = list(range(len(finals)))
    for seed, final in zip(seeds, finals):
        write_run(group_dir / f"seed{seed}", method, task, dataset, seed, final, utd=utd, group_dir=group_dir,
                  offline=5.0 + seed)
    listed = seeds if listed_seeds is None else listed_seeds
    group = {
        "kind": "group", "method": method, "task": task, "dataset": dataset, "env_id": "Hopper-v5",
        "config": config(method, task, dataset, 0, group_dir, utd), "seeds": listed,
        "per_seed": {str(s): {"run_dir": str(group_dir / f"seed{s}"),
                              "final_normalized_score": finals[s] if s < len(finals) else None,
                              "best_normalized_score": finals[s] if s < len(finals) else None,
                              "offline_normalized_score": 5.0 + s}
                     for s in listed},
        "final_normalized_score": float(np.mean(finals)), "final_normalized_score_std": float(np.std(finals)),
        "wall_clock_s": {"offline": 1.5, "finetune": 3.0}, "updates": {"offline": 100, "finetune": 300},
        "updates_per_s": {}, "device": "cpu",
    }
    (group_dir / "summary.json").write_text(json.dumps(group))
    return group_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A single run, a seed group, a multirun tree, and a second configuration of one method."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "single", "rlpd", "hopper", "random", 0, SINGLE_RLPD)
    write_group(root / "group", "opt", "hopper", "random", HOPPER_OPT)
    multi = root / "multirun"
    for seed, final in enumerate(HOPPER_OPT_UTD1):
        write_run(multi / "hopper-random" / "opt_utd1" / f"seed{seed}", "opt", "hopper", "random", seed, final, utd=1)
    for seed, final in enumerate(HOPPER_VANILLA):
        # seed-like entries (device, logging, acceleration) differ between seeds: still one cell
        write_run(multi / "hopper-random" / "vanilla" / f"seed{seed}", "vanilla", "hopper", "random", seed, final,
                  logging__dir=f"logs{seed}", acceleration__compile=bool(seed % 2))
    for seed, final in enumerate(WALKER_OPT):
        write_run(multi / "walker2d-random" / "opt" / f"seed{seed}", "opt", "walker2d", "random", seed, final)
    for seed, final in enumerate(WALKER_VANILLA):
        write_run(multi / "walker2d-random" / "vanilla" / f"seed{seed}", "vanilla", "walker2d", "random", seed, final)
    return root


@pytest.fixture(scope="module")
def cells(tree):
    return group_cells(collect_runs([tree]))


def cell_of(cells, env, label):
    (cell,) = [c for c in cells if c.env == env and c.label == label]
    return cell


def iqm_by_hand(values) -> float:
    """Interquartile mean: sort, drop floor(n/4) scores at each end, average the rest."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    k = int(0.25 * x.size)
    return float(x[k:x.size - k].mean())


def poi_by_hand(x, y) -> float:
    """P(X > Y) per task as the Mann-Whitney count over all pairs (ties count 1/2), averaged over tasks."""
    per_task = []
    for m in range(x.shape[1]):
        wins = sum((xi > yj) + 0.5 * (xi == yj) for xi in x[:, m] for yj in y[:, m])
        per_task.append(wins / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_task))


# ------------------------------------------------------------------ collection and cells
def test_collect_finds_each_seed_once_and_groups_only_link_members(tree):
    runs = collect_runs([tree, tree / "group", tree / "group" / "seed0" / "summary.json"])
    expected = 1 + len(HOPPER_OPT) + len(HOPPER_OPT_UTD1) + len(HOPPER_VANILLA) + len(WALKER_OPT) + len(WALKER_VANILLA)
    assert len(runs) == expected  # the group summary and the repeated paths add nothing
    members = [r for r in runs if r.group_dir is not None]
    assert sorted(r.seed for r in members) == [0, 1, 2, 3]
    assert {r.group_dir for r in members} == {tree / "group"}
    assert [r.score("final") for r in members] == HOPPER_OPT
    assert members[0].curves["eval/value_bias/q_on"] == ((100.0, 2.0), (200.0, 1.0), (300.0, 0.5))


def test_cells_keep_configs_apart_and_label_what_differs(cells):
    hopper_opt = sorted(c.label for c in cells if c.env == "hopper-random" and c.method == "opt")
    assert hopper_opt == ["opt [finetune.utd=1]", "opt [finetune.utd=5]"]
    # the same variant keeps its label on a task where it is the only configuration
    assert cell_of(cells, "walker2d-random", "opt [finetune.utd=5]").seeds == (0, 1, 2)
    # seeds whose logging / acceleration / device / run_dir differ stay in one cell
    assert cell_of(cells, "hopper-random", "vanilla").seeds == (0, 1, 2)
    assert cell_of(cells, "hopper-random", "opt [finetune.utd=5]").seeds == (0, 1, 2, 3)
    (diff,) = differences(cells)
    assert (diff.task, diff.dataset, diff.method, diff.keys) == ("hopper", "random", "opt", ("finetune.utd",))
    assert {"seed", "seeds", "run_dir", "device", "logging", "checkpoint", "acceleration"} <= set(SEED_LIKE_KEYS)


def test_duplicated_seed_names_both_paths(tree, tmp_path):
    src = tree / "multirun" / "walker2d-random" / "vanilla" / "seed1"
    shutil.copytree(src, tmp_path / "copy" / "seed1")
    with pytest.raises(AnalysisError, match="seed 1 of vanilla on walker2d-random appears twice") as err:
        group_cells(collect_runs([src, tmp_path]))
    assert str(src / "summary.json") in str(err.value) and str(tmp_path / "copy" / "seed1" / "summary.json") in str(err.value)


def test_incomplete_and_unreadable_summaries(tmp_path):
    # an old summary: no kind, task, dataset or curves, but a config that has them, and a score list
    old = {"method": "opt", "seed": 3, "config": config("opt", "hopper", "random", 3, tmp_path / "old"),
           "final_normalized_score": 7.0, "scores": [[10, 1.0], [20, 7.0]]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text(json.dumps({"kind": "run", "method": "opt", "seed": 0,
                                                                "config": {}}))
    write_group(tmp_path / "grp", "opt", "walker2d", "random", [1.0], listed_seeds=[0, 9])
    with pytest.warns(SkippedRunWarning) as record:
        runs = collect_runs([tmp_path])
    messages = [str(w.message) for w in record]
    assert any("bad" in m and "'task'" in m and "'dataset'" in m for m in messages)
    assert any("seed 9" in m and "grp" in m for m in messages)
    (old_run,) = [r for r in runs if r.seed == 3]
    assert (old_run.task, old_run.dataset, old_run.curves["eval/normalized_score"]) == (
        "hopper", "random", ((10.0, 1.0), (20.0, 7.0)))
    assert old_run.score("best") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    with pytest.raises(AnalysisError, match=r"unreadable summary .*broken"), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRunWarning)
        collect_runs([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no summary.json found"):
        collect_runs([tmp_path / "empty"])
    with pytest.raises(AnalysisError, match="does not exist"):
        collect_runs([tmp_path / "nowhere"])


# ------------------------------------------------------------------ statistics
def test_cell_mean_std_iqm_and_cis(cells):
    cell = cell_of(cells, "hopper-random", "opt [finetune.utd=5]")
    (s,) = cell_statistics([cell], "final", reps=REPS, seed=3)
    assert s.mean.value == pytest.approx(40.0)
    assert s.std == pytest.approx(np.sqrt((30**2 + 20**2 + 10**2 + 60**2) / 4))  # population std
    assert s.iqm.value == pytest.approx(25.0) == iqm_by_hand(HOPPER_OPT)  # mean of the middle two
    assert iqm_by_hand(np.arange(1, 9)) == 4.5 == metrics.aggregate_iqm(np.arange(1.0, 9.0)[:, None])
    # the CI equals rliable called directly with the same global seed ...
    np.random.seed(3)
    _, direct = rly.get_interval_estimates({"x": np.array(HOPPER_OPT)[:, None]},
                                           lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    assert (s.iqm.low, s.iqm.high) == pytest.approx(tuple(direct["x"][:, 0]), abs=0)
    # ... and a bootstrap written out by hand: resample the seeds, IQM, 2.5 / 97.5 percentiles
    np.random.seed(3)
    x = np.array(HOPPER_OPT)
    boot_mean, boot_iqm = [], []
    for _ in range(REPS):
        sample = x[np.random.choice(x.size, (x.size, 1), replace=True)[:, 0]]
        boot_mean.append(sample.mean())
        boot_iqm.append(sps.trim_mean(sample, 0.25))
    assert (s.mean.low, s.mean.high) == pytest.approx(tuple(np.percentile(boot_mean, [2.5, 97.5])))
    assert (s.iqm.low, s.iqm.high) == pytest.approx(tuple(np.percentile(boot_iqm, [2.5, 97.5])))
    # reproducible, seed-dependent, and the caller's global generator is left as it was
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    (again,) = cell_statistics([cell], "final", reps=REPS, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)
    assert again.iqm == s.iqm and again.mean == s.mean
    (other,) = cell_statistics([cell], "final", reps=REPS, seed=4)
    assert other.mean != s.mean


def test_aggregate_over_tasks_truncates_to_common_seed_count(cells):
    aggs = {a.label: a for a in aggregate_statistics(cells, "final", reps=REPS, seed=0)}
    vanilla = aggs["vanilla"]
    assert vanilla.envs == ("hopper-random", "walker2d-random")
    pooled = HOPPER_VANILLA + WALKER_VANILLA
    assert vanilla.iqm.value == pytest.approx(iqm_by_hand(pooled))  # 6 scores, one trimmed each end
    assert vanilla.mean.value == pytest.approx(np.mean(pooled))
    np.random.seed(0)
    _, direct = rly.get_interval_estimates({"x": np.array([HOPPER_VANILLA, WALKER_VANILLA]).T},
                                           lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    assert (vanilla.iqm.low, vanilla.iqm.high) == pytest.approx(tuple(direct["x"][:, 0]), abs=0)
    opt = aggs["opt [finetune.utd=5]"]  # hopper has 4 seeds, walker 3: the first 3 of each are used
    assert opt.scores.shape == (3, 2) and opt.scores[:, 0].tolist() == HOPPER_OPT[:3]
    assert any("first 3" in n for n in opt.notes)
    assert any("not run on walker2d-random" in n for n in aggs["rlpd"].notes)


def test_probability_of_improvement_hand_and_rliable(cells):
    x = np.array([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]])
    y = np.array([[2.0, 6.0], [2.0, 0.0], [0.5, 9.0]])
    # task 0: wins 1 + (1 + 2 * 0.5) + 3 = 6 of 9; task 1: wins 1 + 1.5 + 2 = 4.5 of 9
    assert poi_by_hand(x, y) == pytest.approx((6 / 9 + 4.5 / 9) / 2)
    est = probability_of_improvement(x, y, reps=REPS, seed=5)
    assert est.value == pytest.approx(poi_by_hand(x, y)) == pytest.approx(metrics.probability_of_improvement(x, y))
    np.random.seed(5)
    _, direct = rly.get_interval_estimates(
        {"x": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=REPS)
    assert (est.low, est.high) == pytest.approx(tuple(direct["x"][:, 0]), abs=0)
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0

    rows = improvements(cells, [("opt [finetune.utd=5]", "vanilla")], "final", reps=50, seed=0)
    assert [r.envs for r in rows] == [("hopper-random", "walker2d-random"), ("hopper-random",), ("walker2d-random",)]
    hopper = np.array(HOPPER_OPT)[:, None]
    assert rows[1].probability.value == pytest.approx(poi_by_hand(hopper, np.array(HOPPER_VANILLA)[:, None]))
    both_x = np.array([HOPPER_OPT[:3], WALKER_OPT]).T
    both_y = np.array([HOPPER_VANILLA, WALKER_VANILLA]).T
    assert rows[0].probability.value == pytest.approx(poi_by_hand(both_x, both_y))
    labels = sorted({c.label for c in cells})
    assert resolve_label("vanilla", labels) == "vanilla"
    with pytest.raises(AnalysisError, match="several configurations.*finetune.utd=1.*finetune.utd=5"):
        resolve_label("opt", labels)
    with pytest.raises(AnalysisError, match="no method or label 'sac'"):
        resolve_label("sac", labels)


def test_performance_profile_is_fraction_above_tau(cells):
    prof = performance_profiles(cells, "final", taus=[0.0, 20.0, 45.0], reps=REPS, seed=2)
    scores, _, _ = score_matrix([c for c in cells if c.label == "vanilla"], "final")
    hand = [np.mean(scores > t) for t in (0.0, 20.0, 45.0)]
    assert hand == pytest.approx([1.0, 3 / 6, 1 / 6])  # a score equal to tau is not above it
    assert prof.profiles["vanilla"].tolist() == pytest.approx(hand)
    np.random.seed(2)
    _, cis = rly.create_performance_profile({"vanilla": scores}, [0.0, 20.0, 45.0], reps=REPS)
    assert np.allclose(prof.low["vanilla"], cis["vanilla"][0]) and np.allclose(prof.high["vanilla"], cis["vanilla"][1])


def test_learning_curve_aligns_steps_and_bootstraps_the_mean(tmp_path):
    write_run(tmp_path / "s0", "opt", "hopper", "random", 0, 3.0,
                  curves={"eval/normalized_score": [[1, 1.0], [2, 2.0], [3, 3.0]]})
    write_run(tmp_path / "s1", "opt", "hopper", "random", 1, 9.0,
              curves={"eval/normalized_score": [[1, 3.0], [2, 6.0], [3, 9.0], [4, 12.0]]})
    write_run(tmp_path / "s2", "opt", "hopper", "random", 2, 5.0,
              curves={"eval/normalized_score": [[1, 2.0], [2, 2.0], [3, 5.0], [3, 5.5]]})
    (cell,) = group_cells(collect_runs([tmp_path]))
    curve = learning_curve(cell, reps=REPS, seed=1)
    assert curve.steps.tolist() == [1.0, 2.0, 3.0]
    assert curve.mean.tolist() == pytest.approx([2.0, 10 / 3, (3 + 9 + 5.5) / 3])  # repeated step: last value
    assert any("different steps" in n for n in curve.notes) and any("repeated" in n for n in curve.notes)
    values = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0], [2.0, 2.0, 5.5]])
    np.random.seed(1)
    _, direct = rly.get_interval_estimates({"x": values[:, None, :]}, lambda x: x.mean(axis=0).ravel(), reps=REPS)
    assert np.array_equal(curve.low, direct["x"][0]) and np.array_equal(curve.high, direct["x"][1])
    assert np.all(curve.low <= curve.mean + 1e-12) and np.all(curve.mean <= curve.high + 1e-12)
    steps, _, notes = align_series([((1.0, 0.0),), ((2.0, 0.0),)])
    assert steps.size == 0 and notes


# ------------------------------------------------------------------ figures, CLI, report
def assert_png(path: Path, min_colours: int = 10) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 200 and height >= 100, (path, width, height)
    rgb = (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    colours = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])
    assert colours.size >= min_colours, path  # not a blank canvas


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 10, path


def test_curve_figure_draws_the_computed_means(cells, tmp_path):
    curve = learning_curve(cell_of(cells, "walker2d-random", "vanilla"), reps=50, seed=0)
    fig = plot_learning_curves([curve], title="t")
    (line,) = fig.axes[0].get_lines()
    assert np.allclose(line.get_ydata(), np.array([[40, 45, 70]]).mean() * np.array([0.25, 0.5, 1.0]))
    png, svg = save_figure(fig, tmp_path / "curve")
    assert_png(png)
    assert_svg(svg)


def test_cli_writes_tables_and_figures(tree, tmp_path, capsys):
    out = tmp_path / "out"
    hopper = [tree / "group", tree / "multirun" / "hopper-random", tree / "single"]  # one task keeps it quick
    rc = main([*map(str, hopper), "--out", str(out), "--metric", "final", "--reps", "20", "--seed", "1",
               "--compare", "opt [finetune.utd=5]", "vanilla", "rlpd"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    for name in ("per_task_final", "aggregate_final", "improvement_final", "differences"):
        assert (out / f"{name}.md").is_file() and (out / f"{name}.csv").is_file()
        assert str(out / f"{name}.md") in printed
    for name in ("aggregate_final", "profile_final", "improvement_final", "curves_hopper-random",
                 "value_bias_hopper-random"):
        assert_png(out / f"{name}.png")
        assert_svg(out / f"{name}.svg")
        assert str(out / f"{name}.png") in printed
    assert (out / "profile_final.csv").is_file() and (out / "curves.csv").is_file()
    rows = list(csv.DictReader((out / "per_task_final.csv").open()))
    by_label = {(r["task"], r["label"]): r for r in rows}
    assert set(by_label) == {("hopper", "opt [finetune.utd=5]"), ("hopper", "opt [finetune.utd=1]"),
                             ("hopper", "vanilla"), ("hopper", "rlpd")}
    hopper_opt = by_label[("hopper", "opt [finetune.utd=5]")]
    assert float(hopper_opt["mean"]) == pytest.approx(40.0) and float(hopper_opt["iqm"]) == pytest.approx(25.0)
    assert float(hopper_opt["std"]) == pytest.approx(np.std(HOPPER_OPT))
    assert hopper_opt["seeds"] == "0 1 2 3" and hopper_opt["variant"] == "finetune.utd=5"
    assert by_label[("hopper", "opt [finetune.utd=1]")]["n_seeds"] == "2"
    md = (out / "per_task_final.md").read_text()
    assert "| hopper-random | opt [finetune.utd=1] | 2 | 20.0 ± 5.0 |" in md
    assert "| hopper-random | opt | opt [finetune.utd=1] | 2 | finetune.utd=1 |" in (out / "differences.md").read_text()
    improvement = {(r["x"], r["y"]): float(r["probability"]) for r in csv.DictReader((out / "improvement_final.csv").open())}
    assert improvement == pytest.approx({
        ("opt [finetune.utd=5]", "vanilla"): poi_by_hand(np.array(HOPPER_OPT)[:, None], np.array(HOPPER_VANILLA)[:, None]),
        ("opt [finetune.utd=5]", "rlpd"): poi_by_hand(np.array(HOPPER_OPT)[:, None], np.array([[SINGLE_RLPD]]))})
    assert printed[-1] == str(out / "index.md")
    assert "![curves_hopper-random]" in (out / "index.md").read_text() or "curves_hopper-random.png" in (out / "index.md").read_text()


def test_cli_errors_exit_2_with_one_line(tree, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no summary.json found")
    assert main([str(tree), "--out", str(tmp_path / "o"), "--compare", "opt", "vanilla"]) == 2
    assert "several configurations" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--compare" in capsys.readouterr().out
    # the module entry point, as `python -m torchrl_opt.analysis` runs it (in-process: no second interpreter)
    monkeypatch.setattr(sys, "argv", ["torchrl_opt.analysis", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("torchrl_opt.analysis", run_name="__main__")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'} does not exist; pass run directories or summary.json files"


def test_run_report_single_and_group(tree, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(tree / "single", single)
    path = write_run_report(single)
    assert path == single / "report" / "report.md"
    text = path.read_text()
    assert "# rlpd on hopper-random (Hopper-v5)" in text and "| 0 | 42.0 | 42.0 | - |" in text
    assert "| finetune | 3.0 | 300 | 100.0 |" in text and "| total | 4.5 |" in text
    assert_png(single / "report" / "score.png")
    assert_png(single / "report" / "value_bias.png")
    assert "![value bias](value_bias.png)" in text

    group = write_group(tmp_path / "group", "opt", "hopper", "random", HOPPER_OPT)
    text = write_run_report(group).read_text()
    for seed, final in enumerate(HOPPER_OPT):
        assert f"| {seed} | {final:.1f} | {final:.1f} | {5.0 + seed:.1f} |" in text
    std = np.std(HOPPER_OPT)
    assert f"| mean ± std (4 seeds) | 40.0 ± {std:.1f} | 40.0 ± {std:.1f} | 6.5 ± {np.std([5, 6, 7, 8]):.1f} |" in text
    assert_png(group / "report" / "score.png")

    # curves missing or malformed: a note, no figure, no exception
    data = json.loads((single / "summary.json").read_text())
    data["curves"] = {"eval/value_bias/q_on": "oops"}
    data.pop("scores")
    (single / "summary.json").write_text(json.dumps(data))
    text = write_run_report(single).read_text()
    assert not (single / "report" / "score.png").exists() and not (single / "report" / "value_bias.png").exists()
    assert "no eval/normalized_score curve" in text and "'eval/value_bias/q_on' is not a list" in text
    shutil.rmtree(group / "seed2")
    text = write_run_report(group).read_text()
    assert "seed 2: no readable member summary" in text and "| 2 | 30.0 |" in text
    with pytest.raises(AnalysisError, match="no summary.json"):
        write_run_report(tmp_path)


# ------------------------------------------------------------------ the package and the guide
def test_public_names_resolve():
    import torchrl_opt.analysis as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    assert callable(pkg.aggregate) and pkg.aggregate.__module__ == "torchrl_opt.analysis.analyze"
    for name in ("write_run_report", "collect_runs", "aggregate", "write_analysis", "SEED_LIKE_KEYS",
                 "probability_of_improvement", "performance_profiles", "write_synthetic_runs"):
        assert re.search(rf"\b{name}\b", DOCS.read_text()), name
