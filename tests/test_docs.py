"""Every code block of README.md and docs/ is executed or checked, and the site builds.

The pages are read with a CommonMark parser (markdown-it-py), so that every fenced and indented
code block is seen, also inside lists. Each block's language tag decides what happens to it:

* ``python``: the page's python blocks run in order in one namespace, in a temporary working
  directory with a temporary ``MINARI_DATASETS_PATH`` (shared by the pages, so a dataset one page
  generated is reused by the next). A block that calls ``torch.compile(`` runs only in the
  ``compile``-marked test (tens of seconds of compilation on a CPU). Two HTML-comment directives,
  invisible on the rendered page, sit right before a block:

  - ``<!-- docs-test: setup ... -->``: python code run before the block, for the inputs the text
    leaves to the reader (a dataset, an actor, a collector); it may not train;
  - ``<!-- docs-test: source MODULE.NAME -->``: the block quotes the source of ``MODULE.NAME``; it
    must equal it (compared as Python syntax trees, so comments and layout may differ).
* ``bash``: every command is checked by the rule for its program (:func:`check_command`; a
  command with no rule fails the test):

  - ``python recipes/opt.py ...``: composed with Hydra's compose API and converted by the recipe's
    ``make_run_config``, which validates the whole ``RunConfig`` (an ``offline.checkpoint`` the
    command names is created empty in the scratch directory first, as the page's earlier command
    would have). A ``-m`` sweep is composed for every value of every swept key (:func:`covering`:
    ``max_k n_k`` jobs, not the product: one composition takes 0.25-0.5 s), a swept value that
    another command composed already is not composed again (a command's first job always is);
    ``--help``, ``--cfg job`` and ``--resolve`` only compose;
  - ``python -m torchrl_opt.analysis ...``: run in-process on synthetic runs the test writes into
    the run directories the command names (``--reps`` capped at 20, PNG figures only);
  - ``python -m torchrl_opt.data.generate ...``: parsed by the CLI's own argument parser; ``random``
    datasets are also generated, at 500 transitions and one worker;
  - ``python recipes/reproduce.py ...``: ``list`` runs; a suite command is checked without running
    it: the suite loads, its options, launcher and units exist, and the recipe overrides after
    ``--`` compose with the launcher's preset (:func:`check_reproduce`);
  - ``python benchmarks/NAME.py ...``: parsed by the script's own argument parser (not run);
  - ``bash benchmarks/gpu_checks.sh STAGE...``: every stage is one of the script's ``case`` labels;
  - ``pip install ...``: only the project (``.`` or ``torchrl-opt``) with extras it defines, and a
    ``torch==X`` pin that satisfies the project's torch requirement;
  - ``python -m pytest ...``: the command ``.ci/run`` runs (it is the whole suite: not re-run here).
* ``yaml``: must parse and be a sub-mapping of one file under ``recipes/config/``.
* ``text`` / ``console``: output samples and synopses, skipped on purpose.

Any other tag, a fence without a tag and an indented code block fail the test, so that nothing
escapes silently. ``from X import Y`` in the python blocks must name a public module ``X`` (no
``_``-prefixed part) whose ``__all__`` lists ``Y``. Finally ``mkdocs build --strict`` must pass.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pathspec
import pytest
import torch
import yaml
from markdown_it import MarkdownIt
from packaging.requirements import Requirement

from _helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RECIPE = ROOT / "recipes" / "opt.py"
CONFIG_DIR = ROOT / "recipes" / "config"

#: what happens to a block of each language tag (module docstring)
RUN, COMMANDS, YAML, SKIP = "run", "commands", "yaml", "skip"
LANGUAGES = {"python": RUN, "bash": COMMANDS, "yaml": YAML, "text": SKIP, "console": SKIP}

DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(setup|source)\b[ \t]*(.*?)-->\s*$", re.S)


# ------------------------------------------------------------------ reading the pages
@dataclass(frozen=True)
class Block:
    """One code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str  # the first word of the info string ("" for none; "<indented>" for indented code)
    code: str
    setup: str | None = None  # hidden code of a `docs-test: setup` directive, run before it
    source: str | None = None  # the object a `docs-test: source` directive says it quotes

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def compiles(self) -> bool:
        return "torch.compile(" in self.code


def read_blocks(page: Path) -> list[Block]:
    """Every code block of ``page`` in order, with the directive that precedes it, if any."""
    blocks: list[Block] = []
    pending: tuple[str, str] | None = None
    for token in MarkdownIt("commonmark").parse(page.read_text()):
        if token.type == "html_block" and (match := DIRECTIVE.match(token.content.strip())):
            if pending is not None:
                raise AssertionError(f"{page.name}:{token.map[0] + 1}: two docs-test directives in a row")
            pending = (match.group(1), match.group(2))
            continue
        if token.type not in ("fence", "code_block"):
            if pending is not None and token.type not in ("html_block",):
                raise AssertionError(
                    f"{page.name}:{token.map[0] + 1 if token.map else '?'}: a docs-test directive must "
                    "come right before a code block")
            continue
        lang = token.info.split()[0] if token.type == "fence" and token.info.strip() else ""
        if token.type == "code_block":
            lang = "<indented>"
        kind, body = pending or ("", "")
        blocks.append(Block(
            page, token.map[0] + 1, lang, token.content,
            setup=textwrap.dedent(body) if kind == "setup" else None,
            source=body.strip() if kind == "source" else None,
        ))
        pending = None
    if pending is not None:
        raise AssertionError(f"{page.name}: a docs-test directive at the end of the page")
    return blocks


BLOCKS = {page: read_blocks(page) for page in PAGES}


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


PYTHON_PAGES = [p for p, bs in BLOCKS.items() if any(b.lang == "python" for b in bs)]
COMPILE_PAGES = [p for p in PYTHON_PAGES if any(b.compiles for b in BLOCKS[p])]
BASH_PAGES = [p for p, bs in BLOCKS.items() if any(b.lang == "bash" for b in bs)]


def page(name: str) -> Path:
    return ROOT / name if name == "README.md" else ROOT / "docs" / name


# ------------------------------------------------------------------ every block has a rule
def test_every_block_has_a_known_language():
    unknown = [f"{b.where} ({b.lang or 'no tag'})" for bs in BLOCKS.values() for b in bs
               if b.lang not in LANGUAGES]
    assert not unknown, (
        "code blocks without a rule: tag output samples ```text, commands ```bash, code ```python "
        f"(indented code blocks: fence them): {unknown}")
    misplaced = [b.where for bs in BLOCKS.values() for b in bs
                 if (b.setup is not None or b.source is not None) and b.lang != "python"]
    assert not misplaced, f"docs-test directives before non-python blocks: {misplaced}"


def test_the_reader_finds_every_kind_of_block():
    """The parser sees blocks inside lists and every language the docs use (a self-check)."""
    langs = {b.lang for bs in BLOCKS.values() for b in bs}
    assert {"python", "bash", "yaml", "text"} <= langs
    in_list = [b for b in BLOCKS[page("recipes.md")] if b.lang == "bash" and "{seed}" in b.code]
    assert len(in_list) == 1  # the offline-checkpoint command, indented inside a list item
    n_fences = sum(len(re.findall(r"^ *(?:```|~~~)", p.read_text(), flags=re.M)) for p in PAGES)
    n_fenced = sum(1 for bs in BLOCKS.values() for b in bs if b.lang != "<indented>")
    assert n_fences == 2 * n_fenced  # every opening and closing fence belongs to a block


# ------------------------------------------------------------------ python blocks
@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> Path:
    """One Minari root for all pages: a dataset one page generates, the next one reuses."""
    return tmp_path_factory.mktemp("docs_minari")


@pytest.fixture
def page_env(tmp_path, monkeypatch, minari_root):
    """A scratch working directory and Minari root; a root a page points elsewhere is removed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    yield tmp_path
    own = os.environ.get("MINARI_DATASETS_PATH", "")
    if own != str(minari_root) and own.startswith(tempfile.gettempdir()):
        shutil.rmtree(own, ignore_errors=True)


def _exec(code: str, name: str, namespace: dict) -> None:
    try:
        exec(compile(code, name, "exec"), namespace)
    except Exception as err:  # name the block that failed
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}") from err


def _object(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _same_code(quoted: str, source: str) -> bool:
    return ast.dump(ast.parse(textwrap.dedent(quoted))) == ast.dump(ast.parse(textwrap.dedent(source)))


def run_page(path: Path, *, with_compile: bool) -> dict:
    """Run the python blocks of ``path`` in order in one namespace; returns the namespace."""
    namespace: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}", "_ran": 0, "_skipped": 0}
    for block in BLOCKS[path]:
        if block.lang != "python":
            continue
        if block.source is not None:
            assert _same_code(block.code, inspect.getsource(_object(block.source))), (
                f"{block.where} quotes {block.source}, whose source has changed: update the page")
            namespace["_ran"] += 1
            continue
        if block.compiles and not with_compile:
            namespace["_skipped"] += 1
            continue
        if block.setup is not None:
            _exec(block.setup, f"{block.where} (docs-test setup)", namespace)
        _exec(block.code, block.where, namespace)
        namespace["_ran"] += 1
    return namespace


# What each page's walkthrough must have achieved, checked after its blocks ran.
def _check_readme(ns: dict) -> None:
    loss, out = ns["loss"], ns["out"]
    assert loss.has_qvalue_on and torch.isfinite(out["loss_pretrain"])
    assert ns["kappa"].current == pytest.approx(0.1) and loss.kappa.item() == pytest.approx(0.1)
    # the hand-over copied the offline agent's actor (its weights, not the fresh ones)
    mine, theirs = loss.actor_network_params.flatten_keys(), ns["offline_agent"].actor_network_params.flatten_keys()
    assert set(mine.keys()) == set(theirs.keys()) and all(torch.equal(mine[k], theirs[k]) for k in mine.keys())
    assert ns["replay"].strategy == "balanced" and ns["replay"].sample().batch_size == (256,)


def _check_own_loop(ns: dict) -> None:
    loss, replay, kappa = ns["loss"], ns["replay"], ns["kappa"]
    assert loss.has_qvalue_on and loss.kappa.item() == pytest.approx(kappa.current)
    assert replay.num_online == ns["b_on"].shape[0] + 60
    assert 0.0 < replay.online_share().item() < 1.0
    assert all(torch.isfinite(ns["out"][k]) for k in loss.qvalue_loss_keys)
    assert not Path(os.environ["MINARI_DATASETS_PATH"]).exists()  # the page cleaned up


def _check_data(ns: dict) -> None:
    assert ns["replay"].num_online == 100 and ns["replay"].strategy == "balanced"
    assert len(ns["shares"]) == 21


def _check_analysis(ns: dict) -> None:
    assert Path(ns["report"]).is_file()
    assert (ns["root"].parent / "analysis" / "per_task_final.csv").is_file()


def _check_trainer(ns: dict) -> None:
    from torchrl_opt.trainers import OPTTrainer

    assert Path("runs/hopper-random/offline.pt").is_file()  # the first trainer's offline phase
    # the trainers pre-trained Q_on, logged through TorchRL's CSV logger, and saved themselves
    assert Path("logs/opt/scalars/pretrain/loss_pretrain.csv").is_file()
    assert Path("trainer.pt").is_file()
    trainer = ns["trainer"]  # the last block's, from its own pieces
    assert isinstance(trainer, OPTTrainer) and trainer.total_frames == 275_000
    assert float(trainer.loss_module.kappa) == pytest.approx(0.3)  # its kappa schedule is attached


def _check_recipes(ns: dict) -> None:
    run_cfg = ns["run_cfg"]
    assert (run_cfg.dataset.task, run_cfg.dataset.kind, run_cfg.run_dir) == ("antmaze", "large-diverse", "runs/mine")
    assert run_cfg.backbone.name == "spot"


def _check_adding_a_method(ns: dict) -> None:
    assert ns["make_plan"](ns["cfg"]).names == ["offline", "save_offline", "start_online", "warmup", "finetune"]


def _check_peers(ns: dict) -> None:
    assert ns["data"]["mc_return"].shape == ns["data"]["next", "reward"].shape
    assert ns["pretrain"].calibrated is False and ns["finetune"].num_qvalue_nets == 10


PAGE_CHECKS: dict[str, Callable[[dict], None]] = {
    "README.md": _check_readme,
    "own-loop.md": _check_own_loop,
    "data.md": _check_data,
    "analysis.md": _check_analysis,
    "trainer.md": _check_trainer,
    "recipes.md": _check_recipes,
    "adding-a-method.md": _check_adding_a_method,
    "peers.md": _check_peers,
}


def test_page_checks_cover_the_python_pages():
    assert {p.name for p in PYTHON_PAGES} == set(PAGE_CHECKS), "add the page's outcome to PAGE_CHECKS"


@pytest.mark.parametrize("path", PYTHON_PAGES, ids=_ids(PYTHON_PAGES))
def test_python_blocks_run(path, page_env):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pages' own warnings (TorchRL, Minari) are not failures
        namespace = run_page(path, with_compile=False)
    python = [b for b in BLOCKS[path] if b.lang == "python"]
    assert namespace["_ran"] + namespace["_skipped"] == len(python)
    assert namespace["_skipped"] == sum(b.compiles for b in python)
    PAGE_CHECKS[path.name](namespace)


@pytest.mark.compile
@pytest.mark.parametrize("path", COMPILE_PAGES, ids=_ids(COMPILE_PAGES))
def test_python_blocks_run_with_compiled_steps(path, page_env):
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace = run_page(path, with_compile=True)
    assert namespace["_ran"] == sum(b.lang == "python" for b in BLOCKS[path])
    PAGE_CHECKS[path.name](namespace)


def test_own_loop_page_walks_through_every_phase():
    """docs/own-loop.md ("OPT in your own TorchRL loop") shows all three phases with these pieces."""
    blocks = [b for b in BLOCKS[page("own-loop.md")] if b.lang == "python"]
    text = "\n".join(b.code for b in blocks)
    for name in ("Collector", "MetaAdaptationLoss", "opt_loss_from_offline", "KappaSchedule",
                 'make_replay("balanced"', "sample_offline_online", "loss_and_priorities",
                 "update_priority", "SoftUpdate", "torch.compile"):
        assert name in text, name
    assert sum(b.compiles for b in blocks) == 1  # the one block the fast test skips
    assert not any(b.setup for b in blocks)  # a complete program: nothing hidden


def test_source_directive_detects_a_changed_quote():
    """The excerpt check compares code, not text: a changed argument is caught, a comment is not."""
    assert _same_code("def f(x):\n    return x + 1  # one\n", "def f(x):\n    return x + 1\n")
    assert not _same_code("def f(x):\n    return x + 1\n", "def f(x):\n    return x + 2\n")


# ------------------------------------------------------------------ public names
def _imports(code: str) -> list[tuple[str, str | None]]:
    out = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports in docs"
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
    return out


def test_every_imported_name_is_public():
    """``from X import Y``: X is a public module (no ``_`` part) and ``Y in X.__all__`` (for a
    module without ``__all__``, outside this project: a public attribute)."""
    bad = []
    for bs in BLOCKS.values():
        for block in bs:
            if block.lang != "python" or block.source is not None:
                continue
            for module_name, name in _imports((block.setup or "") + "\n" + block.code):
                where = f"{block.where}: {module_name}{'.' + name if name else ''}"
                if any(part.startswith("_") for part in module_name.split(".")):
                    bad.append(f"{where}: private module")
                    continue
                module = importlib.import_module(module_name)
                if name is None:
                    continue
                public = getattr(module, "__all__", None)
                if public is None:
                    if module_name.split(".")[0] == "torchrl_opt":
                        bad.append(f"{where}: {module_name} has no __all__")
                    elif name.startswith("_") or not hasattr(module, name):
                        bad.append(f"{where}: not a public attribute")
                elif name not in public:
                    bad.append(f"{where}: not in {module_name}.__all__")
    assert not bad, bad


# ------------------------------------------------------------------ bash commands
def commands(block: Block) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``."""
    out: list[list[str]] = []
    for line in block.code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|"):
                out.append(command)
                command = []
            else:
                command.append(token)
        if command:
            out.append(command)
    assert all(out), f"{block.where}: an empty command"
    return out


HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--resolve", "--info", "--hydra-help"}


def covering(sweeps: list[list[str]]) -> list[tuple[str, ...]]:
    """Jobs of a sweep such that every value of every swept key is composed at least once.

    Job ``i`` takes value ``i mod n_k`` of key ``k``: ``max_k n_k`` jobs instead of the product
    (the product of the N_tau study is 25 jobs, its covering 5).
    """
    if not sweeps:
        return [()]
    return [tuple(values[i % len(values)] for values in sweeps) for i in range(max(map(len, sweeps)))]


def check_recipe(args: list[str], ctx: "CommandContext") -> None:
    """Compose every combination of the overrides and validate it with ``make_run_config``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    flags, overrides, i = set(), [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--cfg":
            assert args[i + 1] in ("job", "hydra", "all"), f"--cfg {args[i + 1]}"
            flags.add(arg)
            i += 2
            continue
        if arg.startswith("-"):
            assert arg in HYDRA_FLAGS, f"unknown Hydra flag {arg}"
            flags.add(arg)
        else:
            overrides.append(arg)
        i += 1
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
              for o in parsed if o.is_sweep_override()]
    assert not sweeps or flags & {"-m", "--multirun"}, f"a sweep without -m: {overrides}"
    hydra_node = any(o.startswith(("hydra.", "hydra/")) for o in overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for i, combination in enumerate(covering(sweeps)):
            job = (*fixed, *combination)
            # the first job of every command; then a job only for a swept value no job of the page
            # has composed yet
            if job in ctx.seen or (i and set(combination) <= ctx.swept):
                continue
            ctx.seen.add(job)
            ctx.swept.update(combination)
            cfg = compose(config_name="opt", overrides=list(job), return_hydra_config=hydra_node)
            if hydra_node:
                with open_dict(cfg):
                    del cfg["hydra"]
            _offline_checkpoint_placeholders(cfg)
            ctx.recipe.make_run_config(cfg, output_dir="runs/docs")
            ctx.composed += 1


def _offline_checkpoint_placeholders(cfg: Any) -> None:
    """Create (empty) the ``offline.pt`` files a command points ``offline.checkpoint`` at, in the
    scratch directory: an earlier command of the page trains them, and the configuration's
    validation checks that they exist."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = plain["offline"]["checkpoint"]
    if checkpoint is None:
        return
    for seed in plain["seeds"] or [plain["seed"]]:
        path = Path(checkpoint.replace("{seed}", str(seed)))
        assert not path.is_absolute(), f"offline.checkpoint={checkpoint}: an absolute path in the docs"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


class ArgsParsed(Exception):
    """Raised in place of running a CLI once its arguments are parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


@contextlib.contextmanager
def parse_only():
    """``ArgumentParser.parse_args`` parses with the real parser, then raises :class:`ArgsParsed`."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise ArgsParsed(real(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real


def parsed_args(main: Callable[..., Any], argv: list[str], prog: str) -> argparse.Namespace:
    """The namespace the CLI ``main`` parses from ``argv``; an argparse error fails the test."""
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        with parse_only():
            main()
    except ArgsParsed as parsed:
        return parsed.namespace
    except SystemExit as err:
        raise AssertionError(f"{prog} {shlex.join(argv)}: its parser refused the arguments") from err
    finally:
        sys.argv = old
    raise AssertionError(f"{prog} never parsed its arguments")


def check_generate(args: list[str], ctx: "CommandContext") -> None:
    """Parse with the CLI's parser; generate ``random`` datasets for real, at 500 transitions."""
    from torchrl_opt.data import generate

    namespace = parsed_args(generate.main, args, "torchrl_opt.data.generate")
    ctx.parsed += 1
    if namespace.kind != "random":
        return
    tiny = [*args, "--size", "500", "--workers", "1", "--no-progress", "--overwrite"]
    assert generate.main(tiny) == 0, shlex.join(tiny)
    ctx.generated += 1


SYNTHETIC_GROUPS = [
    # what check_analysis writes into a run directory a command names (when it does not exist)
    {("hopper", "random", "opt"): 60.0, ("hopper", "random", "vanilla"): 45.0,
     ("walker2d", "random", "opt"): 70.0, ("walker2d", "random", "vanilla"): 50.0,
     ("hopper", "random", "opt@utd1"): 55.0, ("walker2d", "random", "opt@utd1"): 65.0},
    {("hopper", "random", "rlpd"): 50.0, ("walker2d", "random", "rlpd"): 55.0},
]


def check_analysis(args: list[str], ctx: "CommandContext") -> None:
    """Run the analysis CLI on synthetic runs written into the run directories it names."""
    from torchrl_opt.analysis import main, write_synthetic_runs

    namespace = parsed_args(main, args, "torchrl_opt.analysis")
    for k, directory in enumerate(map(Path, namespace.run_dirs)):
        if not directory.exists():  # group k mod 2, seeds 2k and 2k + 1: no seed twice in a cell
            write_synthetic_runs(directory, SYNTHETIC_GROUPS[k % len(SYNTHETIC_GROUPS)],
                                 seeds=(2 * k, 2 * k + 1), overrides={"opt@utd1": {"finetune.utd": 1}})
    argv = list(args)
    if "--reps" in argv:
        at = argv.index("--reps") + 1
        argv[at] = str(min(int(argv[at]), 20))
    else:
        argv += ["--reps", "20"]
    argv += ["--formats", "png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(argv)
    assert status == 0, f"python -m torchrl_opt.analysis {shlex.join(argv)} exited {status}"
    assert (Path(namespace.out) / "index.md").is_file()
    ctx.analysed += 1


def check_benchmark(script: str, args: list[str], ctx: "CommandContext") -> None:
    """The script exists and its own parser accepts the arguments (the benchmark is not run)."""
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    parsed_args(load_script(f"docs_{path.stem}", path).main, args, script)
    ctx.parsed += 1


def check_reproduce(args: list[str], ctx: "CommandContext") -> None:
    """``list`` runs in-process. A suite command (``run``, ``plan``, ``report``) is checked without
    running it (a plan alone takes seconds): the suite loads (``load_suite``), every option is one
    of the runner's ``OPTIONS``, the launcher one of its ``LAUNCHERS``, every unit of ``units=`` is
    the suite's, and the recipe overrides after ``--`` compose with that launcher's preset."""
    module = load_script("reproduce_runner", ROOT / "recipes" / "reproduce.py")
    cut = args.index("--") if "--" in args else len(args)
    head, extra = args[:cut], args[cut + 1:]
    words = [a for a in head if "=" not in a]
    assert set(words) <= {"list", "plan", "run", "report"}, f"unknown command words {words}"
    if "list" in words:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = module.main(head)
        assert status == 0 and out.getvalue(), f"recipes/reproduce.py list exited {status}"
        ctx.parsed += 1
        return
    options = dict(a.split("=", 1) for a in head if "=" in a)
    assert set(options) <= set(module.OPTIONS), f"unknown options {sorted(set(options) - set(module.OPTIONS))}"
    assert "suite" in options, "a suite command names suite=NAME"
    suite = module.load_suite(options["suite"])
    for unit in filter(None, options.get("units", "").split(",")):
        suite.unit(unit)
    launcher = options.get("launcher", "basic")
    assert launcher in module.LAUNCHERS, f"launcher={launcher}"
    if extra:
        preset = module.LAUNCHERS[launcher]
        check_recipe(["-m", *([f"hydra/launcher={preset}"] if preset else []), *extra], ctx)
    ctx.parsed += 1


def check_gpu_checks(script: str, stages: list[str], ctx: "CommandContext") -> None:
    text = (ROOT / script).read_text()
    labels = set(re.findall(r"^\s+([a-z_]+)\)", text, flags=re.M))
    assert stages and set(stages) <= labels, f"{script}: stages {stages}, defined {sorted(labels)}"
    ctx.parsed += 1


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def check_pip(args: list[str], ctx: "CommandContext") -> None:
    """Only the project with extras it defines, and a torch pin the project accepts."""
    assert args[0] == "install", f"pip {args[0]}"
    project = _pyproject()["project"]
    extras = set(project["optional-dependencies"])
    torch_req = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    for target in (a for a in args[1:] if a != "-e"):
        assert not target.startswith("-"), f"pip option {target}"
        match = re.fullmatch(r"(\.|torchrl-opt)(?:\[([\w,-]+)\])?", target)
        if match:
            unknown = set((match.group(2) or "").split(",")) - {""} - extras
            assert not unknown, f"pip install {target}: no extra {sorted(unknown)} in pyproject.toml"
            continue
        req = Requirement(target)
        assert req.name == "torch", f"pip install {target}: not the project nor its torch pin"
        pins = [s.version for s in req.specifier if s.operator == "=="]
        assert pins and all(torch_req.specifier.contains(v) for v in pins), (
            f"{target} does not satisfy the project's {torch_req}")
    ctx.parsed += 1


def check_pytest(args: list[str], ctx: "CommandContext") -> None:
    """The test command of the docs is the one CI runs (``.ci/run``)."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shlex.join(["python", "-m", "pytest", *args]) in ci, ".ci/run runs another test command"
    ctx.parsed += 1


#: shared by all pages of a session: a job, or a swept value, composed on one page is not again
SEEN_JOBS: set[tuple[str, ...]] = set()
SWEPT_VALUES: set[str] = set()


@dataclass
class CommandContext:
    recipe: Any
    composed: int = 0
    seen: set = field(default_factory=lambda: SEEN_JOBS)  # jobs composed (their overrides)
    swept: set = field(default_factory=lambda: SWEPT_VALUES)  # `key=value` of swept keys composed
    generated: int = 0
    analysed: int = 0
    parsed: int = 0


#: commands already checked in this session (the same command on two pages is checked once)
CHECKED: set[tuple[str, ...]] = set()


def check_command(argv: list[str], ctx: CommandContext) -> None:
    line = shlex.join(argv)
    if argv[:2] == ["python", "recipes/opt.py"]:
        return check_recipe(argv[2:], ctx)
    if argv[:3] == ["python", "-m", "torchrl_opt.analysis"]:
        return check_analysis(argv[3:], ctx)
    if argv[:3] == ["python", "-m", "torchrl_opt.data.generate"]:
        return check_generate(argv[3:], ctx)
    if argv[:3] == ["python", "-m", "pytest"]:
        return check_pytest(argv[3:], ctx)
    if argv[:2] == ["python", "recipes/reproduce.py"]:
        return check_reproduce(argv[2:], ctx)
    if argv[0] == "pip":
        return check_pip(argv[1:], ctx)
    if argv[0] == "python" and len(argv) > 1 and re.fullmatch(r"benchmarks/\w+\.py", argv[1]):
        return check_benchmark(argv[1], argv[2:], ctx)
    if argv[:2] == ["bash", "benchmarks/gpu_checks.sh"]:
        return check_gpu_checks(argv[1], argv[2:], ctx)
    raise AssertionError(f"no rule checks the command {line!r}: add one to tests/test_docs.py")


@pytest.fixture(scope="module")
def recipe():
    return load_script("opt_recipe", RECIPE)


@pytest.mark.parametrize("path", BASH_PAGES, ids=_ids(BASH_PAGES))
def test_bash_commands_are_valid(path, page_env, recipe):
    ctx = CommandContext(recipe)
    n = 0
    for block in BLOCKS[path]:
        if block.lang != "bash":
            continue
        for argv in commands(block):
            n += 1
            if tuple(argv) in CHECKED:
                ctx.parsed += 1
                continue
            try:
                check_command(argv, ctx)
            except Exception as err:
                raise AssertionError(f"{block.where}: {shlex.join(argv)}: {type(err).__name__}: {err}") from err
            CHECKED.add(tuple(argv))
    assert n and ctx.composed + ctx.generated + ctx.analysed + ctx.parsed >= n


BAD_COMMANDS = [  # (command, what its rule's error says)
    ("python recipes/opt.py finetune.utdd=3", "finetune.utdd"),
    ("python recipes/opt.py seed=0,1", "a sweep without -m"),
    ("python recipes/opt.py -m method=opt,nosuchmethod", "method/nosuchmethod"),
    ("python recipes/opt.py --cfgg job", "unknown Hydra flag --cfgg"),
    ("python -m torchrl_opt.data.generate --task walker2d --kind nosuchkind", "parser refused"),
    ("python -m torchrl_opt.analysis multirun/ --out analysis/ --compare nosuch opt", "exited 2"),
    ("python benchmarks/bench_updates.py --no-such-flag", "parser refused"),
    ("bash benchmarks/gpu_checks.sh nosuchstage", "stages \\['nosuchstage'\\]"),
    ("pip install -e .[nosuchextra]", "no extra \\['nosuchextra'\\]"),
    ("pip install torch==2.99.0", "does not satisfy"),
    ("pip install hydra-joblib-launcher", "not the project"),
    ("python -m pytest -x", "another test command"),
    ("python recipes/reproduce.py suite=nosuchsuite", "nosuchsuite"),
    ("python recipes/reproduce.py suite=smoke launcher=nosuch", "launcher=nosuch"),
    ("make docs", "no rule checks"),
]


def test_bash_rules_catch_bad_commands(page_env, recipe):
    """Each rule fails on a wrong command: a misspelt key, flag, option, extra or stage."""
    ctx = CommandContext(recipe, seen=set(), swept=set())
    for line, message in BAD_COMMANDS:
        with pytest.raises(Exception, match=message):
            check_command(shlex.split(line), ctx)
    assert ctx.composed == 1  # only method=opt of the bad sweep composed before it failed


# ------------------------------------------------------------------ yaml blocks
def _is_sub(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _is_sub(v, big[k]) for k, v in small.items())
    return small == big


def test_yaml_blocks_quote_the_recipe_configs():
    configs = {p: yaml.safe_load(p.read_text()) for p in CONFIG_DIR.rglob("*.yaml")}
    blocks = [b for bs in BLOCKS.values() for b in bs if b.lang == "yaml"]
    assert blocks
    for block in blocks:
        quoted = yaml.safe_load(block.code)
        assert any(_is_sub(quoted, cfg) for cfg in configs.values()), (
            f"{block.where}: no file under recipes/config/ holds this YAML")


# ------------------------------------------------------------------ the site
def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


def test_site_nav_and_index_cover_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    outside = pathspec.PathSpec.from_lines("gitwildmatch", config.get("not_in_nav", "").splitlines())
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in PAGES
                   if p.parent != ROOT and not outside.match_file(str(p.relative_to(ROOT / "docs"))))
    assert sorted(nav) == pages, "mkdocs.yml's nav must list every page under docs/"
    index = (ROOT / "docs" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w/.-]+\.md)\)", index))
    top = {p for p in pages if "/" not in p and p != "index.md"} | {"reference/index.md"}
    assert top <= linked, f"docs/index.md does not link {sorted(top - linked)}"
    # the getting-started page shows the README's two set-up commands
    readme = [b.code for b in BLOCKS[ROOT / "README.md"] if b.lang == "bash"][:2]
    started = [b.code for b in BLOCKS[ROOT / "docs" / "getting-started.md"] if b.lang == "bash"]
    assert started == readme


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict``: no broken link or anchor, no docstring mkdocstrings cannot read."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "objectives" / "index.html").read_text()
    assert 'id="torchrl_opt.objectives.OPTLoss"' in reference  # the API reference was generated
    assert (tmp_path / "site" / "own-loop" / "index.html").is_file()
    for path in PAGES:  # the docs-test directives stay HTML comments: invisible on the site
        if path.parent == ROOT or not any(b.setup or b.source for b in BLOCKS[path]):
            continue
        rel = path.relative_to(ROOT / "docs").with_suffix("")
        html = (tmp_path / "site" / ("" if rel.name == "index" else rel) / "index.html").read_text()
        assert "docs-test" in html and "docs-test" not in re.sub(r"<!--.*?-->", "", html, flags=re.S), rel
