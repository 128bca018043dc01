"""Method registry: name -> Method. ``lamda-bench list`` prints it.

Each method family lives in its own module and registers its methods here on import.
"""

from __future__ import annotations

from .base import AdapterSpec, AppliedMethod, Method, MethodError, Option

REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise RuntimeError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        from ..hints import did_you_mean

        raise MethodError(
            f"unknown method {name!r}{did_you_mean(name, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def all_methods() -> dict[str, Method]:
    _load_all()
    return dict(sorted(REGISTRY.items()))


def _load_all() -> None:
    # Imported lazily so that ``import lamda_bench.methods`` stays cheap and cycle-free.
    from . import full, peft_methods  # noqa: F401
    from .lamda import layer, plusplus  # noqa: F401


__all__ = [
    "AdapterSpec",
    "AppliedMethod",
    "Method",
    "MethodError",
    "Option",
    "REGISTRY",
    "all_methods",
    "get_method",
    "register",
]
