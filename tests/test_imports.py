"""Module ownership: commands compose parts and do not import each other; no part imports a
command or the CLI. Read from the source with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "halluc_cli"
COMMANDS = "halluc_cli.commands"
SHARED_STEPS = "halluc_cli.commands.common"  # the commands' shared steps, theirs to import


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, by full name; of `from package import name`, the module
    package.name where there is one (`from halluc_cli.commands import score`), else package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            )
    return found


def test_the_package_is_found():
    assert {"halluc_cli.cli", "halluc_cli.commands.score", "halluc_cli.rundir"} <= set(MODULES)


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith(COMMANDS + ".")])
def test_commands_do_not_import_each_other(name):
    others = {
        module for module in imported_modules(MODULES[name])
        if module.startswith(COMMANDS + ".") and module not in (name, SHARED_STEPS)
    }
    assert not others, f"{name} imports the command(s) {sorted(others)}; move what they share below the commands"


@pytest.mark.parametrize(
    "name", [name for name in MODULES if not name.startswith(COMMANDS) and name not in ("halluc_cli.cli", "halluc_cli.__main__")]
)
def test_parts_import_no_command_nor_the_cli(name):
    upward = {
        module for module in imported_modules(MODULES[name])
        if module in (COMMANDS, "halluc_cli.cli") or module.startswith((COMMANDS + ".", "halluc_cli.cli."))
    }
    assert not upward, f"{name} imports {sorted(upward)}, a layer above it"
