"""The package's layers: no import cycles (imports inside functions count), and a training core that runs
without Ray or TensorBoard."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO, is_ray

PACKAGE = REPO / "quickdraw"


def imports_of(module: str) -> set[str]:
    """The quickdraw modules that `module` imports anywhere in its file, at its top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module.split('.')[1]}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "quickdraw":
            found |= {f"quickdraw.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    modules = {f"quickdraw.{path.stem}" for path in PACKAGE.glob("*.py")}
    return found & modules


def cycle_from(module: str, graph: dict[str, set[str]], path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    if module in path:
        return path[path.index(module):] + (module,)
    for imported in sorted(graph[module]):
        if cycle := cycle_from(imported, graph, path + (module,)):
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_back():
    graph = {f"quickdraw.{path.stem}": set() for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    for module in graph:
        graph[module] = imports_of(module) - {"quickdraw.__init__"}
    assert "quickdraw.report" in graph["quickdraw.cli"]  # imported inside a function: found all the same
    for module in graph:
        assert cycle_from(module, graph) is None, " -> ".join(cycle_from(module, graph))


def modules_after_importing(module: str) -> list[str]:
    """Every module loaded in a fresh interpreter that imports `module`."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_command_line_starts_without_the_heavy_libraries():
    """Parsing flags (and refusing bad ones) needs no pandas, torch or Ray: each command imports what it uses."""
    modules = modules_after_importing("quickdraw.cli")
    assert "quickdraw.cli" in modules and "argparse" in modules
    assert not [m for m in modules if m.split(".")[0] in ("pandas", "torch", "ray", "matplotlib")]


def test_the_training_core_imports_neither_ray_nor_tensorboard():
    modules = modules_after_importing("quickdraw.training")
    assert "torch" in modules and "quickdraw.training" in modules
    assert not [m for m in modules if is_ray(m) or m.split(".")[0] in ("tensorboard", "tensorboardX")
                or m.startswith("torch.utils.tensorboard")]
