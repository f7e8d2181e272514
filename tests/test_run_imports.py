"""The run and doctor packages import without circles, and a real run never loads the simulated trainer."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kohyawan"


def _imports(package: str) -> dict[str, set[str]]:
    """module -> the kohyawan modules it imports, at the top or inside functions."""
    graph = {}
    for path in (PKG / package).glob("*.py"):
        name = f"kohyawan.{package}.{path.stem}"
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.startswith("kohyawan.")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return path + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_circles_in_the_run_and_doctor_packages():
    for package in ("run", "doctor"):
        graph = _imports(package)
        assert len(graph) > 5
        assert _cycle(graph) is None, f"{package}: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]   # the check itself finds one


def test_only_the_rehearsal_module_of_the_run_reaches_into_the_simulator():
    reaching = sorted(m for m, deps in _imports("run").items() if any(d.startswith("kohyawan.rehearse") for d in deps))
    assert reaching == ["kohyawan.run.rehearsal"]


def test_a_real_run_loads_no_part_of_the_simulator():
    code = ("import sys; from kohyawan.run import runner, runsetup, training, preflight; "
            "from kohyawan.commands import run; "
            "print(sorted(m for m in sys.modules if m.startswith('kohyawan.rehearse') or m == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
