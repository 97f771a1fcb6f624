"""The layout ARCHITECTURE.md describes holds: imports point one way, agents never import each other, no cycles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones: run.py -> cli -> flow/finetune -> agents -> services -> text -> core.
LAYERS = {
    "pipeline.core": 0,
    "pipeline.text": 1,
    "pipeline.services": 2,
    "agents": 3,
    "pipeline.flow": 4,
    "pipeline.finetune": 4,
    "pipeline.cli": 5,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]:
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """Every project module each module imports, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in known else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def layer(module: str) -> int:
    room = max((r for r in LAYERS if module == r or module.startswith(r + ".")), key=len)
    return LAYERS[room]


def test_every_module_lives_in_a_named_room():
    loose = [name for name in modules() if name.count(".") == 1 and name.startswith("pipeline.")
             and name.split(".")[1] not in {r.split(".")[1] for r in LAYERS if r.startswith("pipeline.")}]
    assert loose == []


def test_imports_only_point_down_and_agents_never_import_each_other():
    graph = imports(modules())
    upward = [(a, b) for a, targets in graph.items() for b in targets if layer(a) < layer(b)]
    between_agents = [(a, b) for a, targets in graph.items() for b in targets
                      if a.startswith("agents.") and b.startswith("agents.")]
    assert upward == []
    assert between_agents == []


def test_there_are_no_import_cycles():
    graph = imports(modules())
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_detects_what_the_test_looks_for():
    """The graph is real: the draft stage does import the writer, and the checker sees an upward import."""
    graph = imports(modules())
    assert "agents.writer" in graph["pipeline.flow.drafting"]
    assert layer("pipeline.core.ledger") < layer("agents.writer")
