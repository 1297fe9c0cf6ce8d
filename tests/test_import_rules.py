"""The architecture's import rules (pyproject's `[tool.importlinter]`), checked by import-linter's `lint-imports`:

- the roles (controller, media_worker, tool_worker) never import each other: they meet only through `shared`;
- `shared` imports no role, no simulator and not the composition root;
- product code imports neither the simulators (`sim`) nor the composition root (`voice_agent`);
- `voice_agent` may import everything, and nothing imports it;
- the simulators import no role (a simulator that shared the product's code would share its mistakes);
- no two modules (or sibling packages) import each other, even for type annotations only.

The first test runs the contracts on this repository. The others run the same contracts on a small made-up tree
with one rule broken at a time, so a contract that matches nothing (a typo, a renamed package) fails here
instead of passing silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controller", "media_worker", "tool_worker", "shared", "sim", "voice_agent")

INDEPENDENT_ROLES = "the roles never import each other: they meet only through shared"
SHARED_KNOWS_NO_ROLE = "shared imports no role, no simulator and not the composition root"
PRODUCT_WITHOUT_SIM = "product code imports neither the simulators nor the composition root"
COMPOSITION_ROOT = "voice_agent is the composition root: it may import everything, and nothing imports it"
SIM_WITHOUT_ROLES = "the simulators stand in for Asterisk and OpenAI: they import no role"
NO_CYCLES = "no cycles between sibling modules or packages"
CONTRACTS = (
    INDEPENDENT_ROLES,
    SHARED_KNOWS_NO_ROLE,
    PRODUCT_WITHOUT_SIM,
    COMPOSITION_ROOT,
    SIM_WITHOUT_ROLES,
    NO_CYCLES,
)


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` of this venv on the packages under `cwd`, with the contracts of `cwd/pyproject.toml`."""
    command = Path(sys.executable).with_name("lint-imports")
    if not command.exists():
        pytest.fail(f"{command} is missing: install the test extra (pip install -e '.[test]')")
    # cwd first on the path, so the made-up trees' packages win over the installed ones; wide lines, so a
    # contract's name is never wrapped in the report.
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "400"}
    return subprocess.run(
        [str(command), "pyproject.toml", "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def broken_contracts(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The names of the contracts the report lists as BROKEN."""
    return {line.removesuffix(" BROKEN") for line in result.stdout.splitlines() if line.endswith(" BROKEN")}


def test_the_repository_keeps_every_import_rule():
    result = lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    for name in CONTRACTS:
        assert f"{name} KEPT" in result.stdout, f"contract {name!r} did not run:\n{result.stdout}"


# --- the contracts catch what they are meant to catch -------------------------------------------------------


@pytest.fixture
def made_up_tree(tmp_path: Path) -> Path:
    """Every root package with two modules `a` and `b`, importing only what every rule allows, and this
    repository's contracts."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "a.py").write_text("")
        (tmp_path / package / "b.py").write_text("")
    for role in ("controller", "media_worker", "tool_worker"):
        add_import(tmp_path, f"{role}.a", "shared.a")
    add_import(tmp_path, "sim.a", "shared.a")
    for package in PACKAGES[:-1]:
        add_import(tmp_path, "voice_agent.a", f"{package}.a")
    add_import(tmp_path, "shared.b", "shared.a")
    return tmp_path


def add_import(tree: Path, importer: str, imported: str, *, for_types_only: bool = False) -> None:
    path = tree.joinpath(*importer.split(".")).with_suffix(".py")
    line = f"import {imported}\n"
    if for_types_only:
        line = f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {line}"
    path.write_text(path.read_text() + line)


def test_the_made_up_tree_keeps_every_rule(made_up_tree: Path):
    result = lint_imports(made_up_tree)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert broken_contracts(result) == set()


@pytest.mark.parametrize(
    ("imports", "broken"),
    [
        ([("controller.b", "media_worker.b")], {INDEPENDENT_ROLES}),
        ([("tool_worker.b", "controller.b")], {INDEPENDENT_ROLES}),
        ([("media_worker.b", "tool_worker.b")], {INDEPENDENT_ROLES}),
        ([("shared.b", "controller.b")], {SHARED_KNOWS_NO_ROLE}),
        ([("shared.b", "sim.b")], {SHARED_KNOWS_NO_ROLE, PRODUCT_WITHOUT_SIM}),
        ([("media_worker.b", "sim.b")], {PRODUCT_WITHOUT_SIM}),
        ([("tool_worker.b", "voice_agent.b")], {PRODUCT_WITHOUT_SIM, COMPOSITION_ROOT}),
        ([("sim.b", "voice_agent.b")], {COMPOSITION_ROOT}),
        ([("sim.b", "media_worker.b")], {SIM_WITHOUT_ROLES}),
        ([("controller.a", "controller.b"), ("controller.b", "controller.a")], {NO_CYCLES}),
    ],
)
def test_each_broken_rule_is_reported(made_up_tree: Path, imports: list[tuple[str, str]], broken: set[str]):
    for importer, imported in imports:
        add_import(made_up_tree, importer, imported)
    result = lint_imports(made_up_tree)
    assert result.returncode != 0
    assert broken_contracts(result) == broken, result.stdout


def test_a_cycle_through_type_annotations_is_a_cycle(made_up_tree: Path):
    add_import(made_up_tree, "sim.a", "sim.b")
    add_import(made_up_tree, "sim.b", "sim.a", for_types_only=True)
    result = lint_imports(made_up_tree)
    assert broken_contracts(result) == {NO_CYCLES}, result.stdout
    assert "No cycles are allowed in sim." in result.stdout


# What `voice-agent <command> --help` leaves loaded: the command line is parsed in a fresh interpreter, which
# then lists the packages of the project it imported.
_LOADED = """
import contextlib, io, sys
from voice_agent.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"controller", "media_worker", "tool_worker", "sim"})))
"""


def loaded_by(*argv: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("role", ["controller", "media-worker", "tool-worker"])
def test_a_role_process_loads_no_simulator_and_no_other_role(role: str):
    # The composition root imports what a command needs when that command runs: a role's process (here up to
    # its argument parsing) loads neither `sim` nor another role.
    assert loaded_by(role, "--help") == set()


def test_a_simulator_command_does_load_the_simulators():
    # The check above can fail: the simulators' own commands do load `sim` to build their arguments.
    assert loaded_by("sim", "asterisk", "--help") == {"sim"}
