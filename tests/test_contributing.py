"""CONTRIBUTING.md's worked examples run as written: a model (through the conformance suite), a
log reader and an HTTP endpoint. Every ```python block is executed, in order, in one namespace.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.M | re.S)


def test_the_guide_has_one_example_per_addition() -> None:
    blocks = _blocks()
    assert len(blocks) >= 5
    text = "\n".join(blocks)
    for made in ("class NextItem(Recommender)", "register_format(", "@router.get("):
        assert made in text


def test_the_worked_examples_run() -> None:
    from nmrn.serving import routes
    from nmrn.training import registry

    module = types.ModuleType("contributing_example")  # dataclasses look their module up
    module.router = routes.router  # type: ignore[attr-defined]
    namespace = module.__dict__
    before_routes = list(routes.router.routes)
    before_models = registry.registered_models()
    sys.modules[module.__name__] = module
    try:
        for block in _blocks():
            exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own guide
        # the example model is a real one: registered, conformant, and its doctest holds
        assert registry.model_class("NextItem") is namespace["NextItem"]
        rec = namespace["NextItem"]().fit([("a", "x", 0), ("a", "y", 1), ("b", "x", 2)])
        assert rec.recommend("b", k=1).items.tolist() == ["y"]
    finally:
        del sys.modules[module.__name__]
        routes.router.routes[:] = before_routes
        registry._MODELS.clear()
        registry._MODELS.update(before_models)
