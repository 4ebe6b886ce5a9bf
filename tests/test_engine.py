"""The local engine: results in task order, transient failures retried, the first real failure reported."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import botocore.exceptions
import pytest

from etl.engine import LocalEngine, TaskContext
from etl.errors import EtlError, Stopped, TransientError


def test_results_come_back_in_task_order() -> None:
    engine = LocalEngine()

    def run(cfg: Any, task: int, ctx: TaskContext) -> dict[str, Any]:
        time.sleep(0.01 * (5 - task))  # later tasks finish first
        return {"task": task, "cfg": cfg}

    try:
        assert engine.run("t", 3, run, "c", list(range(5)), TaskContext()) == [{"task": i, "cfg": "c"}
                                                                                  for i in range(5)]
    finally:
        engine.close()


@pytest.mark.parametrize("error", [TransientError("blip"), ConnectionResetError("reset"),
                                   botocore.exceptions.ClientError({"Error": {"Code": "SlowDown"}}, "PutObject")])
def test_a_transient_failure_is_run_again(error: Exception) -> None:
    engine = LocalEngine(task_retries=2, retry_delay=0)
    tries: list[int] = []

    def run(cfg: Any, task: int, ctx: TaskContext) -> dict[str, Any]:
        tries.append(task)
        if len(tries) < 3:
            raise error
        return {"ok": task}

    try:
        assert engine.run("t", 1, run, None, [7], TaskContext()) == [{"ok": 7}]
        assert tries == [7, 7, 7]
    finally:
        engine.close()


def test_a_terminal_failure_is_not_retried_and_stops_the_others() -> None:
    engine = LocalEngine(task_retries=5, retry_delay=0)
    tries: list[int] = []
    started = threading.Event()

    def run(cfg: Any, task: int, ctx: TaskContext) -> dict[str, Any]:
        tries.append(task)
        if task == 0:
            started.wait(5)
            raise EtlError("bad data in part 0")
        started.set()
        for _ in range(500):  # a long task that checks for a stop, as the stages do
            ctx.check()
            time.sleep(0.01)
        return {}

    ctx = TaskContext()
    try:
        with pytest.raises(EtlError, match="bad data in part 0") as e:
            engine.run("t", 2, run, None, [0, 1], ctx)
        assert not isinstance(e.value, Stopped)  # the cause, not the stop it caused
        assert tries.count(0) == 1 and ctx.stop.is_set()
    finally:
        engine.close()


def test_retries_are_bounded() -> None:
    engine = LocalEngine(task_retries=1, retry_delay=0)
    tries: list[int] = []

    def run(cfg: Any, task: int, ctx: TaskContext) -> dict[str, Any]:
        tries.append(task)
        raise TransientError("still down")

    try:
        with pytest.raises(TransientError):
            engine.run("t", 1, run, None, [1], TaskContext())
        assert tries == [1, 1]
    finally:
        engine.close()


# --------------------------------------------------------------------------- choosing the engine


def test_the_local_engine_is_the_default_and_needs_no_ray(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from etl.config import load_config; from etl.engine import make_engine; "
            "import etl.pipeline, etl.cli; e = make_engine(load_config(None, env={})); "
            "print(type(e).__name__, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parent.parent)}).stdout
    assert out.split() == ["LocalEngine", "False"]


def test_the_local_engine_shares_the_bucket_itself() -> None:
    from etl.ratelimit import TokenBucket

    bucket = TokenBucket(100)
    assert LocalEngine().shared_budget(bucket) is bucket


@pytest.mark.parametrize(("env", "message"), [
    ({"ETL_ENGINE_KIND": "spark"}, "engine.kind = 'spark' (from environment ETL_ENGINE_KIND) is not valid: "
                                   "expected 'local' or 'ray'"),
    ({"ETL_ENGINE_KIND": "ray", "ETL_ENGINE_ADDRESS": "http://head"}, "engine.address = 'http://head'"),
    ({"ETL_ENGINE_KIND": "ray", "ETL_ENGINE_ADDRESS": "ray://10.0.0.5:10001", "ETL_STAGING_ROOT": "/data/stage"},
     "expected an s3:// root: the workers of the cluster at ray://10.0.0.5:10001 cannot read a directory"),
    ({"ETL_ENGINE_WORKER_RETRIES": "-1"}, "engine.worker_retries = -1"),
])
def test_engine_settings_that_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    from etl.config import load_config
    from etl.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, env=env)


@pytest.mark.parametrize("address", ["", "auto", "ray://head.internal:10001", "10.0.0.5:6379",
                                     "ray://127.0.0.1:10001"])
def test_engine_addresses_that_can_work(address: str) -> None:
    from etl.config import load_config

    cfg = load_config(None, env={"ETL_ENGINE_KIND": "ray", "ETL_ENGINE_ADDRESS": address,
                                 "ETL_STAGING_ROOT": "s3://bucket/prefix" if "head" in address else "/tmp/s"})
    assert (cfg.engine.kind, cfg.engine.address) == ("ray", address)


def test_ray_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from etl.config import load_config
    from etl.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match="needs Ray, which is not installed") as e:
        load_config(None, env={"ETL_ENGINE_KIND": "ray"})
    assert "pip install 'etl-anniversary[ray]'" in str(e.value.hint)


def test_the_stage_commands_take_engine() -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    for command in ("transform", "load", "verify", "run"):
        r = CliRunner().invoke(cli, [command, "--help"])
        assert "--engine [local|ray]" in r.output, command
    r = CliRunner().invoke(cli, ["transform", "--month", "201604", "--engine", "spark"])
    assert r.exit_code == 2 and "'spark' is not one of 'local', 'ray'" in r.output


def test_a_config_holds_no_credentials() -> None:
    """Ray ships the config to every worker: it names where to go (regions, roles, endpoints, profiles),
    never a key. Workers take credentials from their own environment."""
    import dataclasses

    from etl.config import Config

    cfg = Config()
    fields = [f.name for f in dataclasses.fields(cfg)]
    fields += [f"{name}.{g.name}" for name in fields if dataclasses.is_dataclass(getattr(cfg, name))
               for g in dataclasses.fields(getattr(cfg, name))]
    assert "destination.role_arn" in fields and "engine.address" in fields
    assert not [n for n in fields if re.search(r"secret|password|token|access_key|session|credential", n)]


def test_a_retried_task_does_not_count_its_progress_twice() -> None:
    """What a failed attempt reported as done is taken back before the retry counts again (a resumed load part
    reports its rows below the mark again, for instance)."""
    engine = LocalEngine(task_retries=2, retry_delay=0)
    done: list[float] = []
    tries: list[int] = []

    def run(cfg: Any, task: int, ctx: TaskContext) -> dict[str, Any]:
        tries.append(task)
        ctx.progress(7)
        if len(tries) == 1:
            raise TransientError("blip")
        ctx.progress(3)
        return {"task": task}

    try:
        engine.run("t", 1, run, None, [0], TaskContext(progress=lambda n=0, add=None, **f: done.append(n)))
    finally:
        engine.close()
    assert len(tries) == 2 and sum(done) == 10 and done == [7, -7, 7, 3]


def test_a_stop_says_why_in_a_retried_tasks_context() -> None:
    engine = LocalEngine(task_retries=2, retry_delay=0)
    ctx = TaskContext()

    def run(cfg: Any, task: int, c: TaskContext) -> dict[str, Any]:
        ctx.halt("interrupted: the lease was taken over")
        c.check()
        return {}

    try:
        with pytest.raises(Stopped, match="the lease was taken over"):
            engine.run("t", 1, run, None, [0], ctx)
    finally:
        engine.close()
