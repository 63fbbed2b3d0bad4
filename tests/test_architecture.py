"""The layout's rules that no import contract can check: a method is known only to its own folder, the
registry and tests; product modules stay small. (Import layers: `lint-imports`, pyproject.toml.)"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

from storage_impls import METHODS

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("storage_impls", "benchmarks", "reports")
#: files that may name methods, and why
ALLOWED = {
    "storage_impls/registry.py": "the one table of methods",
    "benchmarks/tutorial_single.py": "the tutorial's own disk, lmdb and hdf5 code, timed beside ours",
    "benchmarks/peers.py": "other projects' loaders timed beside ours: webdataset's own pipeline imports the library",
}
MAX_LINES = 480  # "no module much over ~400 lines", counted as ruff format lays code out


def product_files() -> list[Path]:
    return sorted(path for package in PRODUCT for path in (REPO / package).rglob("*.py"))


def method_home(method: str) -> Path:
    """The module or package of a method under storage_impls/methods/."""
    name = method.replace("-", "_")
    package = REPO / "storage_impls" / "methods" / name
    return package if package.is_dir() else package.with_suffix(".py")


def named_methods(path: Path) -> set[str]:
    """Methods a file names in string literals of code: "lmdb", 'disk:codec=png' (not words in prose)."""
    found = set()
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type != tokenize.STRING or token.string[:1] not in "'\"":
            continue
        text = token.string.strip("'\"")
        found.update(method for method in METHODS if text == method or text.startswith(f"{method}:"))
    return found


def test_no_method_is_named_outside_its_folder_and_the_registry():
    strays = []
    for path in product_files():
        relative = path.relative_to(REPO).as_posix()
        if relative in ALLOWED:
            continue
        for method in named_methods(path):
            home = method_home(method)
            if path != home and home not in path.parents:
                strays.append(f"{relative} names {method!r}")
    assert not strays, "method knowledge outside the method's folder and the registry:\n" + "\n".join(strays)


def test_every_registered_method_has_its_own_module_or_package():
    assert all(method_home(method).exists() for method in METHODS)


def test_product_modules_stay_small():
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text().splitlines()) for path in product_files()}
    large = [f"{name}: {lines} lines" for name, lines in sizes.items() if lines > MAX_LINES]
    assert not large, f"modules over {MAX_LINES} lines (split them along what they do):\n" + "\n".join(large)
