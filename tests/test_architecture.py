"""The package's layering: stages do not reach into each other, and the live service's API uses none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
STAGES = {"etl.export.stage", "etl.transform.stage", "etl.load.stage", "etl.verify", "etl.verify_export",
          "etl.catchup.stage"}
PACKAGES = {"etl.export.stage": "etl.export", "etl.transform.stage": "etl.transform", "etl.load.stage": "etl.load",
            "etl.catchup.stage": "etl.catchup"}


def imports_of(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def package_modules(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    return sorted(f"{package}.{p.stem}" for p in base.glob("*.py") if p.stem != "__init__")


def stage_of(module: str) -> str | None:
    """The stage a module belongs to: the stage module itself, or a module of the stage's package."""
    return next((s for s in STAGES if module == s or module.startswith(PACKAGES.get(s, s) + ".")), None)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_imports_another(stage: str) -> None:
    """No module of a stage (catch-up included) imports another stage's module, nor the runner's callers; what two
    stages share lives in a module that is no stage (the writing task: etl.load.pump, the export's reading:
    etl.export.inspect)."""
    package = PACKAGES.get(stage)
    for module in package_modules(package) if package else [stage]:
        found = imports_of(module)
        assert not (found & (STAGES - {stage})), (module, found & STAGES)
        assert not {i for i in found if i in ("etl.pipeline", "etl.cli")}, module


def test_a_stage_package_loads_no_stage_when_its_shared_modules_are_imported() -> None:
    code = ("import sys, etl.load.pump, etl.export.inspect, etl.export.pitr; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('etl'))))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert "etl.load.pump" in loaded and not loaded & STAGES


def test_every_stage_runs_on_the_one_runner() -> None:
    """Each stage module has a Stage class the Runner drives; nothing but the Runner runs a month pool."""
    import importlib

    from etl.runner import StageBase

    for name in STAGES:
        mod = importlib.import_module(name)
        classes = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, StageBase)
                   and c is not StageBase and c.__module__ == name]
        assert len(classes) == 1, name
        for method in ("preflight", "plan", "run_task", "commit", "skip", "command"):
            assert callable(getattr(classes[0], method, None)), (name, method)
    for path in (ROOT / "etl").rglob("*.py"):
        if path.name != "runner.py":
            assert "ThreadPoolExecutor(max(1, len(months))" not in path.read_text(), path


@pytest.mark.parametrize("stage", sorted(STAGES - {"etl.catchup.stage"}))
def test_every_stage_has_plan_run_task_and_commit(stage: str) -> None:
    import importlib

    mod = importlib.import_module(stage)
    assert all(callable(getattr(mod, name, None)) for name in ("plan", "run_task", "commit"))


def test_the_live_services_api_loads_no_stage() -> None:
    code = "import sys, etl.promo; print(' '.join(sorted(m for m in sys.modules if m.startswith('etl'))))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert "etl.promo" in loaded and not loaded & (STAGES | {"etl.pipeline", "etl.engine", "etl.staging"})


def test_library_code_sets_no_process_wide_state() -> None:
    for path in (ROOT / "etl").rglob("*.py"):
        text = path.read_text()
        if path.name != "cli.py":
            assert "set_memory_pool" not in text, path
        assert "os.environ.get(\"ETL_" not in text, path  # tuning knobs are config keys


def test_each_shared_rule_is_spelled_in_one_module() -> None:
    """The ISO time forms live in etl/times.py, a catch-up part's `op` column in etl/mapping.py, the winner of a
    key in etl/winner.py: another module that spells one out again has grown a copy."""
    for path in (ROOT / "etl").rglob("*.py"):
        name, text = path.relative_to(ROOT).as_posix(), path.read_text()
        if name not in ("etl/times.py", "etl/local.py"):  # local.py writes the source items' own date strings
            assert "%Y-%m-%dT%H:%M:%S" not in text, name
        if name != "etl/mapping.py":
            assert '"op"' not in text and "'op'" not in text, name
        if name != "etl/winner.py":
            assert "def winner" not in text and '"descending"' not in text, name
