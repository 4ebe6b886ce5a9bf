"""What README.md and docs/ tell a user is true: links lead somewhere, every figure quoted from BENCHMARKS.md
or RELIABILITY.md is in the section it names, pipeline.example.toml names every key the config accepts, and
README's real example runs as written against the demo's emulator (moto on a free port, as `make
check-install` runs it)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from etl.config import Config, load_config
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = ("BENCHMARKS.md", "RELIABILITY.md")  # the files whose sections are written by the runs that measured
LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\]]*\])+)\]\(([^)\s]+)\)")
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
# a measured figure: a number with the unit of a rate, a share, a ratio, a time or a size
FIGURE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?\s*(?:%|x\b|MB/s|items/s|WCU/s|ms\b|CPU-s|MB\b|s\b)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans (commands and outputs are checked elsewhere)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections(path: Path) -> dict[str, str]:
    """Each heading's anchor -> its text, heading included, up to the next heading of the same or a higher level
    (so a section holds its subsections)."""
    lines = _prose_keep_code(path.read_text()).splitlines()
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines)
             if (m := re.match(r"^(#{1,6}) (.+)$", line))]
    out: dict[str, str] = {}
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        anchor, k = slug(title), 0
        while (anchor if not k else f"{anchor}-{k}") in out:  # a repeated heading: GitHub numbers the later ones
            k += 1
        out[anchor if not k else f"{anchor}-{k}"] = "\n".join(lines[i:end])
    return out


def _prose_keep_code(text: str) -> str:
    """The text with fenced code blocks blanked, so a `#` comment line in a block is not a heading."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def links(path: Path) -> list[tuple[str, str]]:
    return LINK.findall(_prose(path.read_text()))


def quoted_figures() -> list[tuple[Path, str, str, str]]:
    """(page, link text, source file, anchor) for every link into BENCHMARKS.md or RELIABILITY.md whose text holds
    a number: the figure, quoted with the section it comes from."""
    out = []
    for page in PAGES:
        for text, target in links(page):
            file, _, anchor = target.partition("#")
            if Path(file).name in SOURCES and NUMBER.search(text):
                out.append((page, text, str((page.parent / file).resolve()), anchor))
    return out


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    bad = []
    for page in PAGES:
        for _, target in links(page):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in sections(dest):
                bad.append(f"{page.name}: {target} (no such heading in {dest.name})")
    assert not bad, bad


def test_every_quoted_figure_is_in_the_section_it_names() -> None:
    quotes = quoted_figures()
    assert len(quotes) >= 10  # README's figures are quoted this way
    bad = []
    for page, text, source, anchor in quotes:
        body = sections(Path(source)).get(anchor)
        if body is None:
            bad.append(f"{page.name}: [{text}] names no section of {Path(source).name} (#{anchor})")
            continue
        for number in NUMBER.findall(text):
            if not re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|[.,]\d)", body):
                bad.append(f"{page.name}: {number} in [{text}] is not in {Path(source).name}#{anchor}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", ["README.md", "docs/ray.md"])
def test_measured_figures_are_quoted_with_their_section(page: str) -> None:
    """On the pages that report measurements, a figure in the prose is inside a link to its BENCHMARKS.md or
    RELIABILITY.md section, so the test above holds it to that section; commands and their outputs (code) are
    checked by the example's test. (The other pages' numbers are settings and AWS's limits, not measurements.)"""
    prose = _prose((ROOT / page).read_text())
    unquoted = LINK.sub(lambda m: "" if Path(m.group(2).partition("#")[0]).name in SOURCES else m.group(1), prose)
    assert FIGURE.findall(unquoted) == []


def _keys(cls: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) for every TOML key the config accepts."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in ("path", "sources"):  # where the config came from: not keys
            continue
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            out += _keys(type(getattr(cls(), f.name)), f.name)
        elif f.name == "columns":
            out += [("transform.columns", c.name) for c in dataclasses.fields(type(Config().transform.columns[0]))]
        else:
            out.append((prefix, f.name))
    return out


def example_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) for every key pipeline.example.toml sets or shows commented out."""
    found, section = set(), ""
    for line in text.splitlines():
        if m := re.match(r"^\[\[?([\w.]+)\]\]?", line):
            section = m.group(1)
        elif m := re.match(r"^#?\s*(\w+)\s*=", line):
            found.add((section, m.group(1)))
    return found


def test_pipeline_example_names_every_key_and_loads() -> None:
    text = (ROOT / "pipeline.example.toml").read_text()
    missing = sorted(set(_keys(Config)) - example_keys(text))
    assert missing == []
    unknown = sorted(example_keys(text) - set(_keys(Config)))
    assert unknown == []
    cfg = load_config(str(ROOT / "pipeline.example.toml"), env={})
    assert cfg.destination.production and cfg.staging.root.startswith("s3://")


def example_steps(readme: str) -> list[tuple[str, list[str]]]:
    """README's "A real example": each `$ ` command with the output lines shown under it (comments dropped)."""
    part = readme.split("\n## A real example\n", 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```\n(.*?)^```", part, flags=re.S | re.M):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line.strip():
                steps[-1][1].append(re.sub(r"\s{2,}#.*$", "", line))
    return steps


def shape(line: str) -> re.Pattern[str]:
    """A shown output line as a pattern: its words as written, any number where it shows one."""
    parts = NUMBER.split(line)
    return re.compile(NUMBER.pattern.join(re.escape(p) for p in parts))


def test_the_real_example_runs_as_written_on_the_demos_emulator(tmp_path: Path) -> None:
    steps = example_steps((ROOT / "README.md").read_text())
    assert [s for s, _ in steps if "etl" in s and "export" in s] and sum(bool(out) for _, out in steps) >= 4
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "ETL_LOCAL_PORT": str(port), "ETL_LOCAL_STATE_DIR": str(tmp_path / "state"),
           "ETL_SOURCE_ENDPOINT_URL": url, "ETL_STAGING_ENDPOINT_URL": url, "ETL_DESTINATION_ENDPOINT_URL": url}
    marker = "@@step"
    script = "set -e\n" + "".join(f"echo '{marker} {i}'\n{cmd}\n" for i, (cmd, _) in enumerate(steps))
    try:
        r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([sys.executable, "-m", "etl", "--config", "demo.toml", "local", "down"], cwd=ROOT, env=env,
                       capture_output=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outputs = re.split(rf"^{marker} \d+\n", r.stdout, flags=re.M)[1:]
    assert len(outputs) == len(steps)
    for (cmd, shown), out in zip(steps, outputs, strict=True):
        for line in shown:
            assert any(shape(line).fullmatch(got) for got in out.splitlines()), (cmd, line, out)
