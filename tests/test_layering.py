"""The import graph of the installed package (hf_hyper, hf_hyper.patches, hf_hyper.eval),
read from the source: one way only, no private names across modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed package name -> source folder (pyproject's package-dir)
PACKAGES = {"hf_hyper": ROOT / "hf_hyper", "hf_hyper.patches": ROOT / "patches",
            "hf_hyper.eval": ROOT / "eval"}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, name taken from it or None) for every import in the module,
    at any depth (imports inside functions count)."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, None) if submodule in MODULES else (source, alias.name))
    return found


def edges() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _ in imports(name):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_module_list_is_complete():
    assert {"hf_hyper.attention.api", "hf_hyper.patches.registry", "hf_hyper.eval.cli"} <= set(
        MODULES
    )


def test_no_import_cycle():
    assert find_cycle(edges()) is None


def _folder_of(name: str) -> str:
    """The unit a module counts in for the folder-level graph: a folder without
    subfolders (such as attention/fused) is one unit; elsewhere each module is its own."""
    folder = MODULES[name].parent
    if any(child.is_dir() and any(child.glob("*.py")) for child in folder.iterdir()):
        return name
    return name if _is_package(name) else name.rsplit(".", 1)[0]


def test_no_import_cycle_between_folders():
    # a folder drawn as one room (fused/, finders/, kernels/) must not import one that
    # imports it back, even through different modules
    graph = {_folder_of(name): set() for name in MODULES}
    for name, targets in edges().items():
        graph[_folder_of(name)] |= {_folder_of(t) for t in targets} - {_folder_of(name)}
    assert find_cycle(graph) is None


def test_no_private_name_crosses_a_module():
    crossings = [
        f"{name} imports {source}.{taken}"
        for name in MODULES
        for source, taken in imports(name)
        if taken and taken.startswith("_") and not taken.startswith("__")
    ]
    assert crossings == []


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("hf_hyper.attention", ("hf_hyper.patches", "hf_hyper.eval", "transformers")),
        ("hf_hyper.hype", ("hf_hyper.patches", "hf_hyper.eval", "transformers")),
        ("hf_hyper.config", ("hf_hyper.patches", "hf_hyper.eval", "transformers", "torch")),
        ("hf_hyper.patches", ("hf_hyper.eval",)),
        # kernels are Triton only; the executor is handed a finder, it imports none
        ("hf_hyper.attention.kernels", ("torch", "hf_hyper.attention.fused")),
        ("hf_hyper.attention.fused", tuple(f"hf_hyper.attention.{m}" for m in
                                           ("finders", "torch_backend", "api"))),
        # adapters use the public attention API, never the finders, plans or kernels
        ("hf_hyper.patches", tuple(f"hf_hyper.attention.{m}" for m in
                                   ("finders", "planning", "fused", "kernels", "torch_backend"))),
    ],
)  # fmt: skip
def test_dependencies_point_one_way(layer, forbidden):
    bad = [
        f"{name} imports {target}"
        for name in MODULES
        if name == layer or name.startswith(layer + ".")
        for target, _ in imports(name)
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert bad == []


def test_a_checkout_imports_only_the_library_under_hf_hyper():
    # Without the installed package's finder, the checkout's hf_hyper maps eval/ and
    # patches/ into itself, and nothing else in the repository (benchmarks, tests).
    root = Path(__file__).resolve().parent.parent
    code = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, {str(root)!r})
import hf_hyper.eval.cli, hf_hyper.patches.patching
assert hf_hyper.eval.cli.__file__.startswith({str(root)!r}), hf_hyper.eval.cli.__file__
for name in ("benchmarks", "tests", "research", "results"):
    try:
        __import__("hf_hyper." + name)
    except ModuleNotFoundError:
        continue
    raise SystemExit("hf_hyper." + name + " imported from the checkout")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_every_source_package_is_in_the_wheel():
    """pyproject lists its packages by name: a new subpackage left off the list installs
    from a checkout (editable) but is missing from the wheel, and `import hf_hyper`
    then fails for every user who installs it."""
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    packages = {name for name in MODULES if _is_package(name)}
    assert packages - listed == set(), "add these to pyproject's [tool.setuptools] packages"
