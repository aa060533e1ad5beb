"""The documentation: the module map's layers hold for every import, the Sphinx build has no
warnings, the tutorial's code runs, and the README stays short and points at real pages."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "surveydust"
DOCS = REPO / "docs"
MODULE_MAP = DOCS / "module-map.md"


# ---------------------------------------------------------------- the module map


def module_name(path: Path) -> str:
    """``surveydust/stores/base.py`` -> ``stores.base``; ``surveydust/__init__.py`` -> ``surveydust``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "surveydust"


def package_modules() -> dict[str, Path]:
    """Every module of the package by its module-map name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _full(name: str) -> str:
    return "surveydust" if name == "surveydust" else f"surveydust.{name}"


def _short(full: str) -> str:
    return "surveydust" if full == "surveydust" else full.removeprefix("surveydust.")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """The imports of a module: ``(target, line, at_import_time)``.

    ``target`` is a module-map name for imports of the package (``stores.base``; ``from surveydust
    import run_catalogue`` is the package ``surveydust``) and ``third:<name>`` for any other
    top-level package. ``at_import_time`` is False for imports inside functions and classes and
    under ``if TYPE_CHECKING:``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _full(name) if path.name == "__init__.py" else _full(name).rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def target(full: str) -> str:
        return _short(full) if _short(full) in modules else _short(full.rpartition(".")[0])

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and _type_checking(child):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.partition(".")[0]
                    found.append((target(alias.name) if top == "surveydust" else f"third:{top}", child.lineno, eager))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source.partition(".")[0] != "surveydust":
                    found.append((f"third:{source.partition('.')[0]}", child.lineno, eager))
                    continue
                for alias in child.names:  # a submodule by name, else the module the names come from
                    found.append((target(f"{source}.{alias.name}"), child.lineno, eager))
            visit(child, eager)

    visit(tree, True)
    return found


def read_layers() -> tuple[dict[int, set[str]], dict[str, int]]:
    """The module map's two tables: layer -> third-party packages it may not import, and module -> layer."""
    text = MODULE_MAP.read_text()
    forbidden: dict[int, set[str]] = {}
    layers: dict[str, int] = {}
    for line in text.splitlines():
        row = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(row) == 5 and row[0].isdigit():
            forbidden[int(row[0])] = set(re.findall(r"`(\w+)`", row[4]))
        elif len(row) == 3 and row[1].isdigit() and re.fullmatch(r"`[\w.]+`", row[0]):
            module = row[0].strip("`")
            assert module not in layers, f"{module} is listed twice in {MODULE_MAP.name}"
            layers[module] = int(row[1])
    assert forbidden and layers, f"no layer tables found in {MODULE_MAP}"
    return forbidden, layers


def test_module_map_lists_every_module_once() -> None:
    forbidden, layers = read_layers()
    modules = package_modules()
    missing = sorted(set(modules) - set(layers))
    gone = sorted(set(layers) - set(modules))
    assert not missing, f"modules not in docs/module-map.md (give each a layer and a job): {missing}"
    assert not gone, f"docs/module-map.md lists modules that no longer exist: {gone}"
    assert set(layers.values()) <= set(forbidden), "a module's layer is not in the layers table"


def test_every_import_respects_the_layers() -> None:
    """A module imports only its own layer and the layers below; layers 1-3 never Dask or Zarr."""
    forbidden, layers = read_layers()
    modules = package_modules()
    wrong = []
    for name, path in modules.items():
        layer = layers.get(name)
        if layer is None:
            continue  # reported by test_module_map_lists_every_module_once
        for target, line, _ in module_imports(name, path, modules):
            where = f"{path.relative_to(REPO)}:{line}"
            if target.startswith("third:"):
                if target[6:] in forbidden[layer]:
                    wrong.append(f"{where}: {name} (layer {layer}) imports {target[6:]}")
            elif target != name and layers.get(target, 0) > layer:
                wrong.append(f"{where}: {name} (layer {layer}) imports {target} (layer {layers[target]})")
    assert not wrong, "imports across the layers of docs/module-map.md:\n" + "\n".join(wrong)


def test_module_level_imports_have_no_cycles() -> None:
    modules = package_modules()
    graph = {name: {t for t, _, eager in module_imports(name, path, modules)
                    if eager and not t.startswith("third:") and t != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles at import time: " + "; ".join(" -> ".join(c) for c in cycles)


def test_import_reader_sees_relative_nested_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nimport dask.array as da\nfrom ..errors import InputError\n"
                      "from surveydust.stores import base\nfrom surveydust import run_catalogue\n"
                      "if TYPE_CHECKING:\n    from surveydust.bundle import Predictor\n"
                      "def f():\n    from surveydust.stores.mosaic import open_mosaic\n")
    modules = package_modules()
    found = module_imports("stores.fits", source, modules)  # read as if it were surveydust/stores/fits.py
    assert found == [("third:typing", 1, True), ("third:dask", 2, True), ("errors", 3, True),
                     ("stores.base", 4, True), ("surveydust", 5, True), ("bundle", 7, False),
                     ("stores.mosaic", 9, False)]


def test_api_reference_documents_every_module() -> None:
    documented = set()
    for page in (DOCS / "api").glob("*.rst"):
        documented |= set(re.findall(r"^\.\. automodule:: ([\w.]+)\s*$", page.read_text(), re.MULTILINE))
    missing = sorted(_full(m) for m in package_modules() if _full(m) not in documented)
    assert not missing, f"modules without an automodule in docs/api/*.rst: {missing}"


# ---------------------------------------------------------------- the Sphinx build


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    """``sphinx-build -W --keep-going -b html``: every page, the API reference from the docstrings,
    every cross-reference and included file (about 30 s on 2 cores, most of it importing the package)."""
    pytest.importorskip("sphinx", reason="sphinx is not installed: pip install -e '.[dev]'")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed: pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                            capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    problems = [line for line in result.stderr.splitlines() if re.search(r"WARNING|ERROR|CRITICAL", line)
                and "absl::InitializeLog" not in line]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr[-4000:]
    for page in ("index", "tutorial", "module-map", "validation", "benchmarks", "hpc", "development",
                 "api/index", "guide/catalogue"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


def _conf():
    spec = importlib.util.spec_from_file_location("surveydust_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_docstring_entries_read_as_numpydoc_means_them() -> None:
    conf = _conf()
    lines = ["Do it.", "", "Parameters", "----------", "store : mosaic store (Zarr).",
             "out : path or str", "    Where.", "workers : number of workers; None: one",
             "    per core.", "", "Returns the catalogue with", "its flags.", "", "Returns", "-------",
             "xarray.Dataset", "    The catalogue."]
    assert conf.describe_entries(lines) == [
        "Do it.", "", "Parameters", "----------", "store", "    mosaic store (Zarr).", "out : path or str",
        "    Where.", "workers", "    number of workers; None: one", "    per core.", "", "Notes", "-----",
        "Returns the catalogue with", "its flags.", "", "Returns", "-------", "xarray.Dataset", "    The catalogue."]
    assert conf.escape_absolute_values(["NMAD of |dz| and |Dec| > 90, ``|x|``, a | b"]) == \
        [r"NMAD of \|dz\| and \|Dec\| > 90, ``|x|``, a | b"]


# ---------------------------------------------------------------- the tutorial


def test_tutorial_runs_on_a_dask_cluster(tmp_path: Path, client) -> None:
    """docs/tutorial.py, whose pieces docs/tutorial.md shows: field -> store -> catalogue -> figures."""
    spec = importlib.util.spec_from_file_location("surveydust_tutorial", DOCS / "tutorial.py")
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)
    made = tutorial.run_tutorial(tmp_path, client)
    assert made["catalogue"].sizes["source"] >= 5
    assert (tmp_path / "catalogue.zarr").is_dir() and (tmp_path / "catalogue.ecsv").is_file()
    assert set(made["comparison"]["quantity"]) >= {"A_V", "EBV", "log_ssfr"}
    assert len(made["figures"]) >= 2
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in made["figures"])
    # every piece the page includes exists in the file
    page, code = (DOCS / "tutorial.md").read_text(), (DOCS / "tutorial.py").read_text()
    for marker in re.findall(r':start-after: "(# \[\w+\])"', page):
        assert marker in code and marker.replace("[", "[/") in code, marker


# ---------------------------------------------------------------- the README


def test_readme_is_short_and_links_to_real_pages() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    first_block = re.search(r"^```\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)[1].splitlines()
    ci = (REPO / ".ci" / "run").read_text()
    assert len(first_block) == 2 and first_block[1] in ci.splitlines(), "the README's test command is .ci/run's"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the docs"
    assert all((REPO / link).exists() for link in local), [link for link in local if not (REPO / link).exists()]
