"""One budget protocol (`engine.Budget`), implemented exactly by every engine's shared budget: the token bucket a
local run shares and the Ray proxy to it. Exactly: every method of the protocol, each taking every call the
protocol allows and returning what the protocol says (`acquire`: the rate, a float)."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
from collections.abc import Callable, Iterator
from typing import Any, get_type_hints

import pytest

from etl import capacity
from etl.engine import Budget, LocalEngine
from etl.ratelimit import TokenBucket

P = inspect.Parameter
SAMPLE: dict[Any, Any] = {float: 2.0, int: 3}  # an argument of each type; any other (per_index): a dict


def implementations() -> list[type]:
    """Every engine's budget class: the Ray proxy only where Ray is installed (the `ray` extra)."""
    found: list[type] = [TokenBucket]
    if importlib.util.find_spec("ray") is not None:
        from etl.ray_engine import SharedBudget

        found.append(SharedBudget)
    return found


def protocol_methods() -> dict[str, Callable[..., Any]]:
    return {n: f for n, f in vars(Budget).items() if inspect.isfunction(f) and not n.startswith("_")}


def params(fn: Callable[..., Any]) -> list[P]:
    return list(inspect.signature(fn).parameters.values())[1:]  # without self


def calls(fn: Callable[..., Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every way the protocol lets a caller call `fn`: each optional argument left out or given, each given
    argument by position or by name (positions only up to the first named one)."""
    hints = get_type_hints(fn)
    ps = params(fn)
    value = {p.name: SAMPLE.get(hints.get(p.name), {"idx": 1.0}) for p in ps}
    for given in itertools.product(*[[True] if p.default is P.empty else [False, True] for p in ps]):
        chosen = [p for p, g in zip(ps, given, strict=True) if g]
        for cut in range(len(chosen) + 1):
            if chosen[:cut] != ps[:cut]:
                continue  # a positional argument after one left out would land on the wrong parameter
            yield tuple(value[p.name] for p in chosen[:cut]), {p.name: value[p.name] for p in chosen[cut:]}


def test_the_protocol_says_what_acquire_returns() -> None:
    assert set(protocol_methods()) == {"acquire", "settle", "refund", "throttled", "succeeded"}
    assert get_type_hints(Budget.acquire)["return"] is float


@pytest.mark.parametrize("impl", implementations(), ids=lambda c: c.__name__)
def test_each_budget_has_the_protocols_methods_with_compatible_signatures(impl: type) -> None:
    for name, proto in protocol_methods().items():
        method = getattr(impl, name, None)
        assert callable(method), f"{impl.__name__} has no {name}"
        sig = inspect.signature(method)
        for args, kwargs in calls(proto):
            sig.bind(None, *args, **kwargs)  # TypeError: a call the protocol allows that this one refuses
        required = [p.name for p in params(method) if p.default is P.empty and p.kind in (P.POSITIONAL_ONLY,
                                                                                           P.POSITIONAL_OR_KEYWORD,
                                                                                           P.KEYWORD_ONLY)]
        assert set(required) <= {p.name for p in params(proto) if p.default is P.empty}, (impl.__name__, name)
        named = [p for p in params(method) if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
        assert [p.name for p in named] == [p.name for p in params(proto)][:len(named)], (impl.__name__, name)
        assert get_type_hints(method).get("return") == get_type_hints(proto)["return"], (impl.__name__, name)


def test_a_signature_that_differs_is_caught() -> None:
    """The check above is not vacuous: a budget whose settle drops `per_index`, or whose acquire says it may
    return None, fails it."""

    class Narrow:
        def settle(self, estimated: float, actual: float) -> None: ...

    class Vague:
        def acquire(self, n: float) -> float | None: ...

    with pytest.raises(TypeError):
        for args, kwargs in calls(Budget.settle):
            inspect.signature(Narrow.settle).bind(None, *args, **kwargs)
    assert get_type_hints(Vague.acquire)["return"] != get_type_hints(Budget.acquire)["return"]


def test_the_local_engine_shares_the_plans_bucket_and_acquire_returns_its_rate() -> None:
    plan = capacity.budget_for({"TableName": "T", "ProvisionedThroughput": {"WriteCapacityUnits": 100}},
                               unit="WCU", fraction=0.5, absolute=None, fraction_key="f", absolute_key="a")
    assert isinstance(plan, capacity.BudgetPlan)
    shared = LocalEngine().shared_budget(plan.bucket)
    assert shared is plan.bucket
    rate = shared.acquire(1.0)
    assert isinstance(rate, float) and rate == pytest.approx(50.0)
