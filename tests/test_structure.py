"""The modules import downward only (commands -> agent -> networks): no cycle, and the agent knows
nothing of the command line or the files the commands write."""

from __future__ import annotations

import ast

from conftest import ROOT

PROJECT_MODULES = {path.stem for path in ROOT.glob("*.py")}


def project_imports(module: str) -> set[str]:
    """The project's modules that `module` imports, anywhere in it (TYPE_CHECKING imports included)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & PROJECT_MODULES


def test_the_agent_imports_only_its_config_networks_and_replay_memory():
    assert project_imports("dqn_agent") == {"dqn_config", "networks", "replay_memory"}
    assert project_imports("networks") == {"dqn_config"}
    assert project_imports("replay_memory") == set()
    assert project_imports("dqn_config") == set()


def test_no_module_imports_itself_back_through_another():
    graph = {module: project_imports(module) for module in PROJECT_MODULES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    cycles = sorted(module for module in graph if reaches(module, module, {module}))
    assert not cycles, f"modules in an import cycle: {cycles}"
