"""``python -m torchrl_opt.analysis RUN_DIR... --out DIR``: tables and figures from run directories."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from torchrl_opt.analysis.collect import METRICS, AnalysisError, SkippedRunWarning

DESCRIPTION = """\
Aggregate run directories (single runs, seed groups, Hydra multiruns: every summary.json found
below RUN_DIR) into per-task and over-task tables of the final / best normalised score (mean, std,
IQM, 95% stratified bootstrap CIs, via rliable), the probability of improvement P(X > Y),
performance profiles, learning curves and value-bias curves with shaded 95% CIs.

Runs of one method on one task whose configs differ in anything but seed-like entries (seed, seeds,
run_dir, device, logging, checkpoint, acceleration, offline.checkpoint) are kept apart and labelled
by the entries that differ, e.g. "opt [finetune.utd=5]"; differences.md lists them.

Writes DIR/*.md and DIR/*.csv (per_task_<metric>, aggregate_<metric>, improvement_<metric>,
profile_<metric>, differences, curves), DIR/*.png and DIR/*.svg (aggregate_<metric>,
profile_<metric>, improvement_<metric>, curves_<task>-<dataset>, value_bias_<task>-<dataset>) and
DIR/index.md gathering all of them; prints every path. Skipped summaries are reported on stderr as
"skipped: ..." lines. Errors (no run found, unreadable summary, the same seed twice in one
configuration, an unknown --compare name) print one "error: ..." line and exit with status 2.
"""

EPILOG = """\
examples:
  python -m torchrl_opt.analysis multirun/ --out analysis/
  python -m torchrl_opt.analysis runs/hopper-random runs/walker2d-random --out analysis/ \\
      --metric final --reps 50000 --compare opt vanilla rlpd
  python -m torchrl_opt.analysis multirun/ --out analysis/ --compare "opt [finetune.utd=5]" "opt [finetune.utd=1]"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_opt.analysis", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories (searched recursively for summary.json) or summary.json files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    parser.add_argument("--metric", action="append", choices=sorted(METRICS), dest="metrics",
                        help="score to tabulate: final (last evaluation), best (best evaluation) or offline "
                             "(after offline pre-training); repeat for several; default: final and best")
    parser.add_argument("--reps", type=int, default=None, metavar="N",
                        help="bootstrap replications of every CI (default 2000; rliable recommends more, "
                             "e.g. 50000, for final tables)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the bootstrap resampling (default 0): the same seed gives the same CIs")
    parser.add_argument("--compare", action="append", nargs="+", metavar="METHOD",
                        help="P(X > Y) of the first method (or label) over each one after it, on all common "
                             "tasks and per task; repeat for several groups. Default: every pair of labels, "
                             "all common tasks only")
    parser.add_argument("--formats", nargs="+", default=["png", "svg"], choices=["png", "svg", "pdf"],
                        help="figure formats (default: png svg)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 on an analysis error)."""
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # no display needed, whatever the environment's default backend
    from torchrl_opt.analysis.analyze import DEFAULT_METRICS, analyze_runs
    from torchrl_opt.analysis.stats import DEFAULT_REPS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRunWarning)
        try:
            paths = analyze_runs(
                args.run_dirs, args.out, metrics=tuple(dict.fromkeys(args.metrics or DEFAULT_METRICS)),
                compare=args.compare, reps=DEFAULT_REPS if args.reps is None else args.reps,
                seed=args.seed, formats=args.formats)
        except AnalysisError as err:
            _report_warnings(caught)
            print(f"error: {err}", file=sys.stderr)
            return 2
    _report_warnings(caught)
    for path in paths:
        print(path)
    return 0


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if issubclass(w.category, SkippedRunWarning):
            print(f"skipped: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
