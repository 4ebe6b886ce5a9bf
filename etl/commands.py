"""Every command line the tool prints (status's next step, rerun and resume hints) is made by `render`.

A printed command is pasted as it is: made without the config it came from, it would run against
./pipeline.toml (another config, another destination). So `render` adds `--config FILE` whenever the config in
use is not the default; the CLI says which one is in use, once per invocation (`use_config`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from etl.config import DEFAULT_CONFIG

_config: str | None = None  # the config file in use when it is not ./pipeline.toml, as the user named it


def use_config(path: str | None) -> None:
    """Set by the CLI before a command runs (None, or the default file: printed commands carry no --config)."""
    global _config
    _config = None if path is None or _is_default(path) else path


def config_in_use() -> str | None:
    """The config file printed commands carry, or None when that is ./pipeline.toml."""
    return _config


def _is_default(path: str) -> bool:
    try:
        return Path(path).resolve() == Path(DEFAULT_CONFIG).resolve()
    except OSError:
        return False


def render(verb: str, *args: str) -> str:
    """`etl [--config FILE] VERB ARGS...`, quoted for a POSIX shell: `render("load", "--month", "201604")`.

    `verb` may be a group and its command (`"local up"`, `"catch-up"`); each of `args` is one word, so a month
    list or a path with a space stays one argument."""
    words = ["etl", *(["--config", _config] if _config else []), *verb.split(), *args]
    return shlex.join(words)
