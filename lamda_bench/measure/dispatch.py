"""One TorchDispatchMode shared by all trackers.

Every Python dispatch mode on the stack adds a full redispatch per op; on a fake
LLaMA2-7B step each extra mode cost about as much as the tracker's own bookkeeping.
So trackers do not push modes of their own: they add an observer here, and one mode
runs each op once and hands ``(func, args, kwargs, out)`` to every observer.

Enter it inside any ``FakeTensorMode``: a mode below the fake mode never sees its ops.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

OpObserver = Callable[[Any, tuple, dict, Any], None]


class OpHub:
    """Reference-counted context: the mode is pushed on first enter, popped on last exit."""

    def __init__(self) -> None:
        self._observers: list[OpObserver] = []
        self._depth = 0
        self._mode: _HubMode | None = None

    def add(self, observer: OpObserver) -> None:
        self._observers.append(observer)

    def remove(self, observer: OpObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def __enter__(self) -> "OpHub":
        self._depth += 1
        if self._depth == 1:
            self._mode = _HubMode(self._observers)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None


# A fake tensor answers ``.device`` from C++ through Python dispatch: on a fake LLaMA2-7B
# step two of every three ops reaching this mode are this query.
_DEVICE_QUERY = torch.ops.prim.device.default


class _HubMode(TorchDispatchMode):
    def __init__(self, observers: list[OpObserver]) -> None:
        super().__init__()
        self.observers = observers  # shared list: observers added later are seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _DEVICE_QUERY:  # no tensor out, nothing to observe
            tensor = args[0]
            if type(tensor) is FakeTensor and not tensor.fake_mode.in_kernel_invocation:
                # FakeTensor's own answer (FakeTensor.__torch_dispatch__), without the redispatch
                # through the fake mode: 61% of a tiny-llama estimate's ops, ~15% of its time
                return tensor.fake_device
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        for observer in self.observers:
            observer(func, args, kwargs, out)
        return out
