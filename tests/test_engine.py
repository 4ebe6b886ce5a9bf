"""The local engine: results in task order, transient failures retried, the first real failure reported."""

from __future__ import annotations

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
