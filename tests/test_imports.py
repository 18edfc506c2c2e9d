"""The package's imports run one way (read statically from the source, lazy imports included).

* no import cycle among the modules of ``torchrl_opt``;
* inside the pipeline: entry point -> plans -> run object -> phases / acting -> agents -> update
  steps -> engines' building blocks -> config (``TYPE_CHECKING`` imports, which never run, aside);
* the components (objectives, data, models, schedules, ...) never import the pipeline or trainers;
* trainers and recipes import only public names (in the source module's ``__all__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torchrl_opt"
#: the pipeline's layers, top (imports everything below) to bottom (imports nothing above).
PIPELINE_RANK = {
    "run": 0, "plans": 1, "context": 2, "phases": 3, "acting": 3, "agents": 4, "updates": 5,
    "functional": 6, "cudagraph": 6, "logging": 6, "checkpoint": 6, "config": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, *, runtime_only: bool = False) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``torchrl_opt`` import in ``path`` (any depth)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    if runtime_only:
        for node in ast.walk(tree):
            if _is_type_checking(node):
                skipped.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("torchrl_opt")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("torchrl_opt"):
            out.append((node.module, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in files}
    for module, path in files.items():
        for target, names in imports_of(path):
            candidates = [f"{target}.{n}" for n in names] + [target]
            for candidate in candidates:
                while candidate and candidate not in files:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != module:
                    graph[module].add(candidate)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 40 and graph["torchrl_opt.pipeline.run"]  # the graph was read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_detected():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_pipeline_layers_import_downwards_only():
    assert set(PIPELINE_RANK) == {p.stem for p in (PACKAGE / "pipeline").glob("*.py")} - {"__init__"}
    wrong = []
    for stem, rank in PIPELINE_RANK.items():
        for target, _ in imports_of(PACKAGE / "pipeline" / f"{stem}.py", runtime_only=True):
            if target.startswith("torchrl_opt.pipeline."):
                other = target.split(".")[2]
                if PIPELINE_RANK[other] <= rank and other != stem:
                    wrong.append(f"pipeline.{stem} -> pipeline.{other}")
    assert not wrong, wrong


@pytest.mark.parametrize("component", ["objectives", "data", "analysis", "models.py", "schedules.py", "envs.py",
                                       "direct_env.py", "env_state.py"])
def test_components_do_not_import_the_pipeline(component):
    paths = [PACKAGE / component] if component.endswith(".py") else list((PACKAGE / component).rglob("*.py"))
    upward = [
        (p.name, target) for p in paths for target, _ in imports_of(p)
        if target.startswith(("torchrl_opt.pipeline", "torchrl_opt.trainers"))
    ]
    assert not upward, upward


def _public_names(module: str) -> set[str] | None:
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


@pytest.mark.parametrize("path", [*(PACKAGE / "trainers").glob("*.py"), ROOT / "recipes" / "opt.py"],
                         ids=lambda p: p.name)
def test_trainers_and_recipes_import_public_names_only(path):
    private = []
    for target, names in imports_of(path):
        public = _public_names(target)
        for name in names:
            if name.startswith("_") or (public is not None and name not in public):
                private.append(f"{target}.{name}")
    assert not private, private
