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


def private_names(module: str) -> list[str]:
    """Where `module` reaches past Ray's public API: an import of an underscore name from Ray (or of a module under
    one), an underscore attribute of anything but the module's own objects (self, cls) and torch, or a Ray logger or
    module named by its private path in a string."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and is_ray(node.module):
            found += [f"from {node.module} import {alias.name}" for alias in node.names
                      if "._" in f".{node.module}" or alias.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"import {alias.name}" for alias in node.names if is_ray(alias.name) and "._" in alias.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id in ("self", "cls", "torch")):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "ray._" in node.value:
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_the_package_uses_only_rays_public_api():
    modules = [path.stem for path in PACKAGE.glob("*.py")]
    assert "tuner" in modules and "console" in modules
    assert {module: names for module in modules if (names := private_names(module))} == {}


def test_importing_the_package_changes_no_setting_of_ray_or_tune():
    """Environment variables and log filters are set when a search starts and undone after it
    (quickdraw.cluster.ray_session), never on import: importing every module of the package, once the libraries it
    uses are imported, changes neither."""
    everything = "import pkgutil, importlib, quickdraw\n" \
        "for module in pkgutil.iter_modules(quickdraw.__path__): importlib.import_module(f'quickdraw.{module.name}')\n"
    libraries = [m for m in modules_after_importing_code(everything) if m.split(".")[0] not in ("quickdraw", "__main__")]
    code = (f"import importlib, logging, os, sys\n"
            f"for name in {libraries!r}:\n"
            f"    try: importlib.import_module(name)\n"
            f"    except Exception: pass\n"
            "def settings():\n"
            "    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith('ray')]\n"
            "    return dict(os.environ), [(l.name, list(l.filters), [list(h.filters) for h in l.handlers]) for l in loggers]\n"
            f"before = settings()\n{everything}print(settings() == before)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "True", result.stdout + result.stderr[-3000:]


def modules_after_importing_code(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", f"{code}import sys; print('\\n'.join(sys.modules))"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()
