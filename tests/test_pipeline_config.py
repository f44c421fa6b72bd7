"""dvc.yaml, params.yaml and the stage scripts agree: scripts, imported modules and params keys."""

import ast
import importlib.util
from pathlib import Path

import pytest
from conftest import REPOSITORY
from ruamel.yaml import YAML

from ferplus.params import Setting, read_params_file, validate_section

PACKAGE = REPOSITORY / "src" / "ferplus"


def load_yaml(path: Path) -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text())


DVC_STAGES = load_yaml(REPOSITORY / "dvc.yaml")["stages"]
PARAMS = read_params_file(REPOSITORY / "params.yaml")


def imported_package_modules(path: Path) -> set[str]:
    """Names of the ferplus modules a file imports, at any depth of its code."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ferplus"):
            modules.add(node.module)
            for alias in node.names:
                if (PACKAGE / f"{alias.name}.py").is_file() and node.module == "ferplus":
                    modules.add(f"ferplus.{alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names if alias.name.startswith("ferplus"))
    return modules


def module_file(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "src/ferplus/__init__.py"
    return "src/ferplus/" + "/".join(parts) + ".py"


def transitive_package_files(script: Path) -> set[str]:
    """The src/ferplus files a script loads, directly or through other package modules."""
    # Importing any ferplus module runs ferplus/__init__.py first.
    files = {"src/ferplus/__init__.py"}
    pending = list(imported_package_modules(script))
    while pending:
        file = module_file(pending.pop())
        if file in files:
            continue
        files.add(file)
        pending.extend(imported_package_modules(REPOSITORY / file))
    return files


def stage_settings(stage: str) -> dict[str, Setting]:
    """The Settings dict a stage script validates its params section with."""
    script = REPOSITORY / "stages" / f"{stage}.py"
    spec = importlib.util.spec_from_file_location(f"stage_{stage}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [
        value
        for name, value in vars(module).items()
        if name.endswith("SETTINGS")
        and isinstance(value, dict)
        and all(isinstance(setting, Setting) for setting in value.values())
    ]
    assert len(found) <= 1, f"stages/{stage}.py: more than one settings dict"
    return found[0] if found else {}


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_stage_runs_its_script(stage):
    assert DVC_STAGES[stage]["cmd"] == f"python stages/{stage}.py"
    assert f"stages/{stage}.py" in DVC_STAGES[stage]["deps"]


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_stage_deps_list_imported_modules(stage):
    declared = {dep for dep in DVC_STAGES[stage]["deps"] if dep.startswith("src/")}

    imported = transitive_package_files(REPOSITORY / "stages" / f"{stage}.py")

    assert declared == imported


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_stage_params_match_settings(stage):
    # A stage lists its whole own section, so an unknown key added there (a typo) reruns the stage,
    # which then rejects the key. base.seed is listed alone where the stage reads it.
    settings = stage_settings(stage)
    script = (REPOSITORY / "stages" / f"{stage}.py").read_text()
    expected = {stage} if settings else set()
    if "load_seed" in script:
        expected.add("base.seed")

    declared = set(DVC_STAGES[stage].get("params", []))

    assert declared == expected
    if settings:
        assert set(PARAMS[stage]) == set(settings)


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_params_file_valid_for_stage(stage):
    settings = stage_settings(stage)
    if settings:
        validate_section(stage, PARAMS[stage], settings)


def test_params_sections_all_read():
    readers = {stage for stage in DVC_STAGES if stage_settings(stage)}

    assert set(PARAMS) - {"base"} == readers


def test_params_keys_all_commented():
    lines = (REPOSITORY / "params.yaml").read_text().splitlines()
    value_lines = [line for line in lines if line.startswith("  ") and ":" in line]

    uncommented = [line for line in value_lines if "  # " not in line]

    assert uncommented == []
