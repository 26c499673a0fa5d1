"""The package's layers and who may import whom (README, "Architecture"), checked on the source."""

import ast
from pathlib import Path

import pytest

from support.runs import ROOT

PACKAGE = ROOT / "src" / "ddpm"

# layer -> the ddpm layers its modules may import (its own included)
MAY_IMPORT = {
    "errors": set(),
    "diffusion": {"errors", "diffusion"},
    "autoencoding": {"errors", "autoencoding"},
    "nets": {"errors", "nets"},
    "data": {"errors", "data"},
    "evaluation": {"errors", "data", "diffusion", "evaluation"},
    "plots": {"errors", "data", "diffusion", "evaluation", "plots"},
    "training": {"errors", "data", "diffusion", "autoencoding", "nets", "evaluation", "plots", "training"},
    "runs": {"errors", "data", "diffusion", "autoencoding", "nets", "evaluation", "plots", "training", "runs"},
}
# layer -> third-party packages it must not import: the math stays plain PyTorch, apart from
# Lightning, Hydra and the figures
MUST_NOT_IMPORT = {
    "diffusion": {"lightning", "hydra", "omegaconf", "matplotlib", "torchvision"},
    "autoencoding": {"lightning", "hydra", "omegaconf", "matplotlib", "torchvision"},
    "nets": {"lightning", "hydra", "omegaconf", "matplotlib"},
    "data": {"hydra", "omegaconf", "matplotlib"},
    "evaluation": {"lightning", "hydra", "omegaconf"},
    "plots": {"lightning"},
}
MAX_LINES = 400


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (at any depth, also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; name the layer (from ddpm.<layer> import ...)"
            names.add(node.module)
            if node.module == "ddpm":  # from ddpm import schedules
                names.update(f"ddpm.{alias.name}" for alias in node.names)
    return names


def test_every_module_belongs_to_a_known_layer():
    assert {layer_of(p) for p in modules()} - {"__init__"} <= set(MAY_IMPORT)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    layer = layer_of(path)
    if layer == "__init__":
        return
    names = imported_names(path)
    used = {n.split(".")[1] for n in names if n.startswith("ddpm.")}
    assert used <= MAY_IMPORT[layer], f"{layer}/ may not import ddpm.{sorted(used - MAY_IMPORT[layer])}"
    third = {n.split(".")[0] for n in names}
    banned = third & MUST_NOT_IMPORT.get(layer, set())
    assert not banned, f"{layer}/ may not import {sorted(banned)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_the_limit(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``src/ddpm/runs/load.py`` -> ``ddpm.runs.load``; a package's ``__init__.py`` -> the package."""
    parts = (package.name, *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (function-level imports too).
    ``from ddpm.a import b`` imports ``ddpm.a.b`` when that is a module; the ``__init__`` of the packages
    above an imported module is not counted (a package may re-export its own submodules)."""
    paths = sorted(package.rglob("*.py"))
    names = {module_name(p, package): p for p in paths}
    graph = {}
    for name, path in names.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & names.keys()
                imported.update(submodules)
                if len(submodules) < len(node.names):  # names defined in node.module itself
                    imported.add(node.module)
        graph[name] = {m for m in imported if m in names and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None: a depth-first search that meets a module
    still on its path."""
    done, path, on_path = set(), [], set()

    def visit(node):
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_no_modules_import_each_other_in_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_search_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "ddpm"
    (package / "runs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runs" / "__init__.py").write_text("")
    (package / "runs" / "load.py").write_text("from ddpm.runs.build import build_module\n")
    (package / "runs" / "build.py").write_text("from ddpm.runs import helper\n")
    (package / "runs" / "helper.py").write_text("def f():\n    from ddpm.runs.load import load_run\n")
    graph = import_graph(package)
    assert graph["ddpm.runs.build"] == {"ddpm.runs.helper"}  # from a package, a module
    assert find_cycle(graph) == ["ddpm.runs.build", "ddpm.runs.helper", "ddpm.runs.load", "ddpm.runs.build"]
    (package / "runs" / "helper.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None


def test_the_rules_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "samplers.py"
    bad.write_text("import lightning as L\nfrom ddpm.training.module import DiffusionModule\n")
    names = imported_names(bad)
    assert {n.split(".")[1] for n in names if n.startswith("ddpm.")} - MAY_IMPORT["diffusion"] == {"training"}
    assert {n.split(".")[0] for n in names} & MUST_NOT_IMPORT["diffusion"] == {"lightning"}
