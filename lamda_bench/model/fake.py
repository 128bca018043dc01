"""Estimate mode: a model built on the meta device becomes fake tensors on a target device.

Building a PEFT model directly under ``FakeTensorMode`` fails ("Couldn't swap
Linear.weight"); building it on meta (method applied there too) and converting each
parameter and buffer afterwards works. Fake tensors carry no values: any value-dependent
step (an SVD init) must already have run on meta, where it computes nothing either, so
an estimate is exact only for figures that depend on shapes (bytes, FLOPs). Each tensor is swapped in place
(``torch.utils.swap_tensors``), so every existing reference to a parameter (tied weights,
an optimizer or a method's closures built earlier) now sees the fake one, and
``requires_grad`` is kept. Run the step inside the returned mode, with trackers entered
inside it.

A parameter that is a tensor subclass (bitsandbytes' ``Params4bit``) becomes a plain fake
tensor that keeps the subclass's Python attributes (its ``quant_state``).

Fake CUDA tensors need a torch built with CUDA: on a CPU-only build autograd aborts the
whole process (a C++ abort, not an exception) as soon as a fake CUDA tensor needs a
gradient, so ``to_fake`` refuses that case up front.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from ..errors import UserError


class FakeConversionError(UserError):
    """The model cannot be converted (real weights, or a device fake tensors cannot emulate)."""


def fake_device_supported(device: str | torch.device) -> bool:
    """Whether fake tensors on ``device`` can run a training step with this torch build."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.backends.cuda.is_built()
    return False


def to_fake(model: nn.Module, device: str | torch.device = "cpu", mode: FakeTensorMode | None = None) -> FakeTensorMode:
    """Swap every parameter and buffer of ``model`` (on meta) for a fake tensor on ``device``.

    Returns the FakeTensorMode to run the step in. Parameters already fake are left alone
    (tied weights are converted once).
    """
    dev = torch.device(device)
    if not fake_device_supported(dev):
        raise FakeConversionError(
            f"fake {dev.type} tensors cannot run a training step with this torch build "
            f"({torch.__version__}); use device 'cpu' for the estimate"
        )
    mode = mode or FakeTensorMode(allow_non_fake_inputs=False)
    for mod_name, module in model.named_modules():
        for kind, table in (("parameter", module._parameters), ("buffer", module._buffers)):
            for name, t in table.items():
                if t is None or isinstance(t, FakeTensor):
                    continue
                if t.device.type != "meta":
                    raise FakeConversionError(
                        f"{kind} {mod_name + '.' if mod_name else ''}{name} is on {t.device}, "
                        "not meta: build the model on the meta device for estimate mode"
                    )
                # A fresh fake tensor with the meta tensor's layout on the target device.
                # (converter.from_meta_and_device works too, but its output is referenced
                # weakly by the mode's tensor describer, and swap_tensors refuses tensors
                # with weakrefs.)
                with mode:
                    fake = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=dev)
                fake.requires_grad_(t.requires_grad)
                if isinstance(t, nn.Parameter):
                    fake._is_param = True  # isinstance(fake, nn.Parameter) stays True
                try:
                    torch.utils.swap_tensors(t, fake)
                except RuntimeError as e:
                    raise FakeConversionError(
                        f"cannot make {kind} {mod_name + '.' if mod_name else ''}{name} fake in place: {e}"
                    ) from None
                _keep_attributes(t, fake)
    return mode


def _keep_attributes(now_fake: torch.Tensor, swapped_out: torch.Tensor) -> None:
    """swap_tensors swaps the Python attributes too: give the fake tensor back those the meta
    one carried (bitsandbytes' Params4bit keeps its ``quant_state`` there, Int8Params ``SCB``)."""
    for key, value in swapped_out.__dict__.items():
        now_fake.__dict__.setdefault(key, value)
