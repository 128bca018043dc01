"""The step-time model's one table of constants: achievable fractions of a card's peak by op kind
and size, and the fixed costs per kernel and per op. Every entry names its source, and says
whether it was then calibrated and on what (``calibrated``); nothing here is a number hidden in
code. ``card/step_time.py`` reads only this table and ``card/rates.py``.

Size buckets are (threshold, fraction) pairs, largest first, interpolated log-linearly between
thresholds (a step function would jump 50% at a bucket's edge).
"""

from __future__ import annotations

from dataclasses import dataclass

CALCULON = ("Calculon (github.com/calculon-ai/calculon) systems/h100_80g_nvl8.json and a100_80g.json: "
            "matrix gflops_efficiency float16 [[128, 0.95], [16, 0.9], [1, 0.6], [0, 0.1]], "
            "mem1 MB_efficiency [[100, 0.90], [10, 0.75], [1, 0.6], [0, 0.3]]")
STAS00 = ("stas00/ml-engineering compute/accelerator: measured achievable bf16 matmul (mamf-finder) "
          "H100 SXM ~795 of 989 TFLOP/s (80%), A100 ~271 of 312 (87%)")
H100_CELLS = "the 17 LLaMA2-7B H100 cells of reports/gpu/measured (docs/step-time.md, in-sample)"


@dataclass(frozen=True)
class Constant:
    value: object
    source: str
    calibrated: str | None = None  # on what, when the published value was then fitted


TABLE: dict[str, Constant] = {
    # GEMM: achievable fraction of the dtype's peak by the op's FLOPs (Calculon's buckets, their top
    # replaced by the measured best a card reaches: GEMM_PEAK_FRACTION below scales the whole curve).
    "gemm_buckets": Constant(((128e9, 0.95), (16e9, 0.90), (1e9, 0.60), (1e6, 0.10)), CALCULON),
    "gemm_peak_fraction": Constant({"H100-80GB": 0.80, "H200-141GB": 0.80, "A100-80GB": 0.87, "A100-40GB": 0.87},
                                   STAS00),
    "gemm_peak_fraction_default": Constant(0.80, STAS00 + "; cards it did not measure take H100's 80%"),
    # Memory traffic: achievable fraction of bandwidth by the bytes an op moves (Calculon's mem1).
    "memory_buckets": Constant(((100e6, 0.90), (10e6, 0.75), (1e6, 0.60), (1e3, 0.30)), CALCULON),
    # Attention (flash kernels): fraction of the bf16 peak on the FLOPs the kernel does (causal:
    # half the s x s that the FLOP counter counts). FlashAttention-2 paper (Dao 2023, fig. 4-6):
    # A100 forward 50-73%, backward 40-60% at head dim 128; on H100 FA2 (what SDPA runs) reaches
    # about 35-40% (FlashAttention-3 paper, Shah et al. 2024, fig. 1: FA2 ~335-370 TFLOP/s).
    "attention_forward_fraction": Constant(0.40, "FlashAttention-2/-3 papers: FA2 on H100 ~335-370 of 989 TFLOP/s"),
    "attention_backward_fraction": Constant(0.30, "FlashAttention-3 paper fig. 2: FA2 backward on H100 ~250-300 "
                                                 "of 989 TFLOP/s"),
    # Per card where the same paper measured it (the A100): the lower end of the published ranges
    # (short sequences), not fitted. Cards not listed take the H100 FA2 figures above.
    "attention_forward_fraction_by_card": Constant({"A100-80GB": 0.50, "A100-40GB": 0.50},
                                                   "FlashAttention-2 paper (Dao 2023, abstract and sec. 4.1): "
                                                   "forward 50-73% of the A100's 312 TFLOP/s"),
    "attention_backward_fraction_by_card": Constant({"A100-80GB": 0.40, "A100-40GB": 0.40},
                                                    "FlashAttention-2 paper (Dao 2023, fig. 4-6): backward "
                                                    "40-60% of the A100's 312 TFLOP/s at head dim 128"),
    "attention_causal_work": Constant(0.5, "a causal flash kernel skips the masked upper half of the s x s tiles"),
    # Elementwise, reduction and foreach optimizer ops are memory-bound: their bytes at the
    # memory buckets times a per-kind factor (1.0: the bucket as published).
    "elementwise_factor": Constant(1.0, CALCULON),
    "reduction_factor": Constant(1.0, CALCULON),
    "optimizer_factor": Constant(1.0, CALCULON),
    # Calibrated scale factors on the published curves above, applied on every card (fitted on the
    # H100 only: scripts/calibrate_step_time.py, grid search minimising the median |error|).
    "gemm_calibration": Constant(0.95, "1.0 = the published curves as they are; grid 0.70-1.05 step 0.05",
                                 calibrated=H100_CELLS),
    "memory_calibration": Constant(0.80, "1.0 = the published curves as they are; grid 0.60-1.05 step 0.05",
                                   calibrated=H100_CELLS),
    # Per-kernel fixed cost on the device (launch latency, ramp-up and tail of a short kernel).
    "launch_s": Constant(4e-6, "order of a CUDA kernel launch + ramp (2-5 us, NVIDIA forum/Nsight measurements)"),
    # multi_tensor_apply (torch's foreach kernels) launches one kernel per this many tensors
    # (ATen/native/cuda/MultiTensorApply.cuh: depth_to_max_tensors {110, 64, 48, 36, 30}; Adam's
    # depth is 4) and per this many 65536-element chunks (depth_to_max_blocks: 320).
    "foreach_tensors_per_launch": Constant(36, "ATen MultiTensorApply.cuh depth_to_max_tensors[3] (depth 4)"),
    "foreach_elements_per_launch": Constant(320 * 65536, "ATen MultiTensorApply.cuh: 320 blocks x 65536 elements"),
    # Host: eager PyTorch dispatch per aten op (Python, autograd, dispatcher, launch call), and per
    # tensor of a foreach list. A view op costs the host too but launches nothing.
    "host_op_s": Constant(8e-6, "eager PyTorch: ~5-20 us of host time per op (REFERENCES.md, peak rates bullet)"),
    "host_view_s": Constant(2e-6, "a view/metadata op: dispatcher only, no launch (a fraction of host_op_s)"),
    "host_foreach_tensor_s": Constant(0.3e-6, "a foreach op's host cost per list member (pointer packing)"),
}


def value(name: str):
    return TABLE[name].value
