"""Which module of a model is running right now, in forward and in backward.

Every tracker attributes memory and FLOPs to "the innermost module running". In forward
that is the top of a stack kept by global module forward hooks. In backward no module
is "running": autograd executes graph nodes. So while forward runs, every autograd node
it creates is tagged (``node.metadata``) with the innermost module at that moment; in
backward the module is read from the node autograd is executing
(``torch._C._current_autograd_node()``). This is exact where the module-level hooks of
``torch.utils.module_tracker.ModuleTracker`` are not: its backward bookkeeping leaves a
module "entered" for the rest of backward when the module's inputs need no gradient
(the first adapted layer of a PEFT model), which would misattribute everything after.

Nodes no torch function creates (a custom ``autograd.Function``'s, as bitsandbytes' int8
matmul) are tagged at the exit of the module whose forward created them, by a walk back from
its outputs; left to the next torch function's walk, they went to whichever module ran it.

During gradient-checkpoint recomputation (forward inside backward) the forward stack is
non-empty again and wins, so recomputed ops are attributed like the original forward.

Works the same for CPU, CUDA and fake tensors: nothing here looks at data.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes

from .dispatch import OpHub

NODE_TAG = "lamda_bench.module"

# listener(phase, module_name, event) with phase "forward"/"backward" and event "pre"/"post"
BoundaryListener = Callable[[str, str, str], None]


class ModuleScope:
    """Context manager: knows the qualified name (as in ``model.named_modules()``) of the
    innermost module of ``model`` running now; ``None`` outside the model.

    Re-entrant by reference count, so several trackers can share one scope (one set of
    hooks). Boundary listeners get module enter/exit events in forward and, via gradient
    hooks on the module's outputs (start) and inputs (end), in backward.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModuleScope needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self._names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        self._stack: list[str] = []
        self._depth = 0
        self._listeners: list[tuple[BoundaryListener, Callable[[str], bool] | None]] = []
        self._wanted: dict[str, bool] = {}
        self._grad_hooks: list = []
        self._handles: list = []
        self._function_mode: _TagNodes | None = None
        self._first_seq = 0
        # the one dispatch mode trackers sharing this scope observe ops through
        self.ops = OpHub()
        # True while activation offloading copies between device and host (model/offload.py): the
        # time model prices those ops at the card's host-link rate (measure/ops.py)
        self.host_link = False

    # ---- queries ------------------------------------------------------------------------
    def name_of(self, module: nn.Module) -> str | None:
        return self._names.get(id(module))

    def current(self) -> str | None:
        """Innermost running module: forward stack first, else the executing autograd node's tag."""
        if self._stack:
            return self._stack[-1]
        node = torch._C._current_autograd_node()
        if node is None:
            return None
        return node.metadata.get(NODE_TAG)

    @property
    def in_backward(self) -> bool:
        return torch._C._current_graph_task_id() != -1

    # ---- listeners ----------------------------------------------------------------------
    def add_listener(self, listener: BoundaryListener, module_filter: Callable[[str], bool] | None = None) -> None:
        """Call ``listener(phase, name, event)`` at the boundaries of modules that pass
        ``module_filter`` (all when None); unwanted modules cost no gradient hooks."""
        self._listeners.append((listener, module_filter))
        self._wanted.clear()

    def remove_listener(self, listener: BoundaryListener) -> None:
        self._listeners = [(l, f) for l, f in self._listeners if l is not listener]
        self._wanted.clear()

    def _is_wanted(self, name: str) -> bool:
        wanted = self._wanted.get(name)
        if wanted is None:
            wanted = any(f is None or f(name) for _, f in self._listeners)
            self._wanted[name] = wanted
        return wanted

    # ---- context ------------------------------------------------------------------------
    def __enter__(self) -> "ModuleScope":
        self._depth += 1
        if self._depth == 1:
            self._stack.clear()
            with _disable_current_modes():  # a tiny real tensor, invisible to any tracker
                probe = torch.zeros(1, requires_grad=True) * 1.0
            # nodes older than this belong to graphs built before the scope: never tag them
            self._first_seq = probe.grad_fn._sequence_nr()
            self._handles = [
                register_module_forward_pre_hook(self._pre_hook),
                register_module_forward_hook(self._post_hook, always_call=True),
            ]
            self._function_mode = _TagNodes(self)
            self._function_mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self._function_mode is not None:
                self._function_mode.__exit__(*exc)
                self._function_mode = None
            for h in self._handles + self._grad_hooks:
                h.remove()
            self._handles, self._grad_hooks = [], []
            self._stack.clear()

    def release_grad_hooks(self) -> None:
        """Remove the backward-boundary hooks of this step's forward, once its backward is over.

        Each holds the autograd nodes of a module's inputs or outputs, and with them the
        graph behind them; a node of a custom ``autograd.Function`` (bitsandbytes' int8
        matmul keeps its input on ``ctx``, not as a saved tensor) holds tensors until it
        is freed, so kept hooks would keep those inputs alive into the optimizer step.
        """
        hooks, self._grad_hooks = self._grad_hooks, []
        for h in hooks:
            h.remove()

    # ---- hooks --------------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args) -> None:
        name = self._names.get(id(module))
        if name is None:  # a module outside the model: keep the enclosing attribution
            self._stack.append(self._stack[-1] if self._stack else None)
            return
        self._stack.append(name)
        if self._listeners and self._is_wanted(name):
            self._emit("forward", name, "pre")
            inputs = _grad_tensors(args)
            if inputs and not self.in_backward:
                # backward of this module ends when the gradients of its inputs exist
                self._grad_hooks.append(
                    register_multi_grad_hook(inputs, lambda *_: self._emit("backward", name, "post"))
                )

    def _post_hook(self, module: nn.Module, args, output) -> None:
        if self._stack:
            self._stack.pop()
        name = self._names.get(id(module))
        if name is not None and torch.is_grad_enabled():
            # nodes no torch function created (a custom autograd.Function's, as bitsandbytes'
            # int8 matmul) are still untagged here: they belong to this module, not to the
            # module that runs the next torch function
            self._tag_as(name, _grad_fns(output))
        if name is None or not self._listeners or not self._is_wanted(name):
            return
        self._emit("forward", name, "post")
        outputs = _grad_tensors(output)
        if outputs and not self.in_backward:
            # backward of this module starts when a gradient of one of its outputs exists
            self._grad_hooks.append(
                register_multi_grad_hook(
                    outputs, lambda *_: self._emit("backward", name, "pre"), mode="any"
                )
            )

    def _emit(self, phase: str, name: str, event: str) -> None:
        for listener, module_filter in self._listeners:
            if module_filter is None or module_filter(name):
                listener(phase, name, event)

    def _tag(self, outputs: Iterable) -> None:
        name = self._stack[-1] if self._stack else None
        if name is None:
            return
        self._tag_as(name, [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None])

    def _tag_as(self, name: str, todo: list) -> None:
        """Tag ``todo`` and the untagged nodes behind them (created in this scope) with ``name``."""
        first_seq = self._first_seq
        while todo:
            node = todo.pop()
            if node is None:
                continue
            meta = node.metadata
            if NODE_TAG in meta or node._sequence_nr() < first_seq:
                continue
            meta[NODE_TAG] = name
            todo.extend(fn for fn, _ in node.next_functions)


class _TagNodes(TorchFunctionMode):
    """After each torch function, tag the autograd nodes it created with the running module.

    Walking back from the outputs also tags the inner nodes of composite functions; the
    walk stops at nodes already tagged (everything produced earlier was tagged then).
    """

    def __init__(self, scope: ModuleScope) -> None:
        super().__init__()
        self.scope = scope

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.scope._stack and torch.is_grad_enabled():
            if isinstance(out, torch.Tensor):
                self.scope._tag((out,))
            elif isinstance(out, (tuple, list)):
                self.scope._tag(out)
        return out


def _grad_fns(obj) -> list:
    """The autograd nodes of a module's output tensors (as ``_grad_tensors`` finds them)."""
    if isinstance(obj, torch.Tensor):  # the common case, without building a list of tensors
        return [obj.grad_fn] if obj.grad_fn is not None else []
    return [t.grad_fn for t in _grad_tensors(obj) if t.grad_fn is not None]


def _grad_tensors(obj) -> list[torch.Tensor]:
    """Tensors needing grad in a module's args/output (one level of tuple/list/dict deep
    is what transformers modules return; ModelOutput is a dict)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        out = []
        for x in obj:
            if isinstance(x, torch.Tensor) and x.requires_grad:
                out.append(x)
            elif isinstance(x, (tuple, list)):
                out.extend(t for t in x if isinstance(t, torch.Tensor) and t.requires_grad)
        return out
    return []

