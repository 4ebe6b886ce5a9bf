"""CI runs every habit the developer guide names: lint before the suite, so a lint failure stops the run early."""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).parent.parent


def ci_commands() -> list[list[str]]:
    """The commands .ci/run executes, in order (comments and shell setup left out)."""
    commands = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "make":
            commands.append(words)
    return commands


def test_ci_runs_lint_before_the_tests() -> None:
    commands = ci_commands()
    assert ["make", "lint"] in commands and ["make", "test"] in commands
    assert commands.index(["make", "lint"]) < commands.index(["make", "test"])


def test_ci_stops_at_the_first_failing_step() -> None:
    assert "set -euo pipefail" in (ROOT / ".ci" / "run").read_text()
