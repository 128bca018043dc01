"""Which steps of a run can hold its peak, and the record fields for the peak over the run.

A user asks whether the run fits: ``memory.peak`` is the highest live-bytes peak over the
run's steps, not the peak of the one fully instrumented step. Tracking every step would
slow the run (and the timed steps must run with trackers off), so only the steps that can
be the worst are tracked, by this argument:

* The inputs and the model's shapes are the same at every step, so a step's live bytes
  differ from another's only through which parameters train (their gradients and
  the optimizer's work) and which optimizer state is already there when the step starts.
* With a fixed trainable set (every method but LaMDA's real freezing), step 1 starts
  without optimizer state and creates it in its optimizer phase; every later step starts
  with that same state and does the same work: step 2 is the steady state, and no step is
  worse. (Step 1 cannot be worse: it holds the same gradients and, from its optimizer phase
  on, the same state, and before that less.)
* When the trainable set only shrinks over the run (``AppliedMethod.trainable_shrinks``:
  LaMDA's split freezing), step k >= 2 starts with state for exactly the parameters that
  train in it, and those shrink with k, so step 2 dominates every later step; step 1
  trains the most (B fully trainable) but starts without state. So the worst is step 1 or
  step 2, and both are tracked.

The instrumented step (every tracker on) is always tracked; its peak stays in the record as
``memory.peak_steady``. A candidate step the run cannot track (in measure mode a timed
step: trackers would distort its time) is named in ``info.peak_steps.untracked``; on CUDA
the allocator peaks (``memory.cuda_max_*``) cover every step of the run regardless. An estimate
tracks the steps a measurement of the same cell tracks (its timed steps are the measurement's
timed steps), so the two agree to the byte for every cell: with ``warmup = 0`` and ``steps >= 1``
both answer step 1 and name step 2 untracked; ``warmup >= 1`` puts step 2 in reach of both.
"""

from __future__ import annotations

from typing import Any

FIXED_RULE = ("fixed trainable set: step 2 (the first with optimizer state) is the steady state and "
              "no step exceeds it")
SHRINKING_RULE = ("trainable set shrinks over the run (LaMDA's freezing): step 1 (most trainable, no "
                  "optimizer state yet) and step 2 (state for what still trains) bound every later step")


def candidate_steps(trainable_shrinks: bool, total_steps: int) -> list[int]:
    """The steps that can hold the run's peak (see the module docstring), within the run."""
    steps = (1, 2) if trainable_shrinks else (2,)
    return [s for s in steps if s <= total_steps]


def steps_to_track(trainable_shrinks: bool, total_steps: int, instrumented: int,
                   trackable: set[int] | None = None) -> tuple[list[int], list[int]]:
    """(steps to run with the live tracker besides the instrumented one, candidates that
    cannot be tracked). ``trackable``: the steps this run may track (None: all)."""
    extra, untracked = [], []
    for step in candidate_steps(trainable_shrinks, total_steps):
        if step == instrumented or _same_as_instrumented(trainable_shrinks, step, instrumented):
            continue
        if trackable is None or step in trackable:
            extra.append(step)
        else:
            untracked.append(step)
    return extra, untracked


def _same_as_instrumented(trainable_shrinks: bool, step: int, instrumented: int) -> bool:
    """With a fixed trainable set every step from 2 on is the same: any of them stands for step 2."""
    return not trainable_shrinks and step >= 2 and instrumented >= 2


def run_peak_fields(step_peaks: dict[int, Any], instrumented: int, trainable_shrinks: bool,
                    untracked: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(memory fields, ``info.peak_steps``) from each tracked step's ``live.Peak``.

    ``peak`` / ``at_peak``: the worst tracked step (the first of equals); ``peak_steady``:
    the instrumented step's peak."""
    worst = max(sorted(step_peaks), key=lambda s: step_peaks[s].live_bytes)
    peak = step_peaks[worst]
    memory = {
        "peak": peak.live_bytes,
        "at_peak": {k: peak.by_category.get(k, 0) for k in ("weights", "grads", "optimizer", "activations",
                                                              "temporaries")},
        "peak_steady": step_peaks[instrumented].live_bytes,
    }
    info = {
        "tracked": sorted(step_peaks),
        "worst": worst,
        "instrumented": instrumented,
        "untracked": list(untracked),
        "rule": SHRINKING_RULE if trainable_shrinks else FIXED_RULE,
    }
    return memory, info
