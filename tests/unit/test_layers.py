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
    "nets": {"errors", "nets"},
    "data": {"errors", "data"},
    "evaluation": {"errors", "data", "diffusion", "evaluation"},
    "plots": {"errors", "data", "diffusion", "evaluation", "plots"},
    "training": {"errors", "data", "diffusion", "nets", "evaluation", "plots", "training"},
    "runs": {"errors", "data", "diffusion", "nets", "evaluation", "plots", "training", "runs"},
}
# layer -> third-party packages it must not import: the math stays plain PyTorch, apart from
# Lightning, Hydra and the figures
MUST_NOT_IMPORT = {
    "diffusion": {"lightning", "hydra", "omegaconf", "matplotlib", "torchvision"},
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


def test_the_rules_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "samplers.py"
    bad.write_text("import lightning as L\nfrom ddpm.training.module import DiffusionModule\n")
    names = imported_names(bad)
    assert {n.split(".")[1] for n in names if n.startswith("ddpm.")} - MAY_IMPORT["diffusion"] == {"training"}
    assert {n.split(".")[0] for n in names} & MUST_NOT_IMPORT["diffusion"] == {"lightning"}
