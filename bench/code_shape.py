"""The shape of the code, for the house-keeping note of a refactor: what the CLI imports and the longest functions.

    python bench/code_shape.py [--top 12] [--src src/reflowbench]

Counts are static (read from the source with ``ast``, nothing imported): every ``reflowbench`` module outside the CLI that
the CLI (``cli.py``, or the ``cli/`` package) names in an import statement, at module level or inside a function, and the
packages they belong to; then the longest functions
and methods of the package, by lines from ``def`` to the last line of the body.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import List, Set, Tuple


def imported_modules(path: Path, package: str = "reflowbench") -> Set[str]:
    """Every module of ``package`` that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text())
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == package)
    return names


def packages_of(modules: Set[str], root: Path) -> Set[str]:
    """The top-level sub-package (or top-level module) of each module: ``reflowbench.harness.plan`` -> ``harness``."""
    found = set()
    for module in modules:
        parts = module.split(".")
        if len(parts) > 1:
            found.add(parts[1])
    return found & {p.stem if p.is_file() else p.name for p in root.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}


def longest_functions(root: Path, top: int) -> List[Tuple[int, str]]:
    """(lines, 'file:line name') of the ``top`` longest functions under ``root``."""
    sizes = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sizes.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(sizes, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="src/reflowbench")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    root = Path(args.src)
    cli_files = [root / "cli.py"] if (root / "cli.py").exists() else sorted((root / "cli").glob("*.py"))
    modules = {m for path in cli_files for m in imported_modules(path) if not m.startswith("reflowbench.cli")}
    packages = packages_of(modules, root)
    every = {
        p.stem if p.is_file() else p.name
        for p in root.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()
    }
    every.discard("cli")
    names = ", ".join(str(p.relative_to(root.parent)) for p in cli_files)
    print(
        f"the CLI ({names}) imports {len(modules)} other reflowbench modules from {len(packages)} of {len(every)} other top-level packages/modules: {', '.join(sorted(packages))}"
    )
    print(f"the CLI: {sum(len(p.read_text().splitlines()) for p in cli_files)} lines")
    print(f"the {args.top} longest functions:")
    for lines, where in longest_functions(root, args.top):
        print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
