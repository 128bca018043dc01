"""Which steps can hold a run's peak (peaks.py): the pure selection, and the record fields."""

from lamda_bench.measure.live import Peak
from lamda_bench.runner.peaks import candidate_steps, run_peak_fields, steps_to_track


def test_candidates_fixed_and_shrinking_trainable_sets():
    assert candidate_steps(False, 10) == [2]  # the steady state
    assert candidate_steps(True, 10) == [1, 2]  # most trainable, first with state
    assert candidate_steps(True, 1) == [1] and candidate_steps(False, 1) == []


def test_steps_to_track_in_estimate_and_measure_runs():
    # estimate (every step can run): LaMDA with warmup 4 tracks steps 1 and 2 besides step 5
    assert steps_to_track(True, 10, instrumented=5) == ([1, 2], [])
    assert steps_to_track(True, 5, instrumented=2) == ([1], [])
    assert steps_to_track(False, 5, instrumented=2) == ([], [])
    # measure, warmup 0: step 2 is timed, so it cannot be tracked and is named
    assert steps_to_track(True, 2, instrumented=1, trackable=set()) == ([], [2])
    assert steps_to_track(False, 2, instrumented=1, trackable=set()) == ([], [2])
    # measure, warmup 1, fixed trainable set: the instrumented step 2 is the steady state
    assert steps_to_track(False, 5, instrumented=2, trackable={1}) == ([], [])
    # warmup 3, fixed set: the instrumented step 4 is the same as step 2 (no extra step run)
    assert steps_to_track(False, 5, instrumented=4, trackable={1, 2, 3}) == ([], [])
    assert steps_to_track(False, 10, instrumented=5) == ([], [])
    # warmup 0, estimate: step 2 is run after the instrumented step 1
    assert steps_to_track(False, 3, instrumented=1) == ([2], [])


def test_run_peak_fields_take_the_worst_step_and_keep_the_steady_one():
    def peak(n, grads=0):
        return Peak(n, {"weights": n - grads, "grads": grads}, 0)

    memory, info = run_peak_fields({1: peak(120, 20), 2: peak(130, 10), 5: peak(100)}, 5, True, [])
    assert memory == {"peak": 130, "at_peak": {"weights": 120, "grads": 10, "optimizer": 0, "activations": 0,
                                               "temporaries": 0}, "peak_steady": 100}
    assert info["tracked"] == [1, 2, 5] and info["worst"] == 2 and info["instrumented"] == 5
    memory, info = run_peak_fields({2: peak(100), 1: peak(100)}, 2, True, [])
    assert info["worst"] == 1 and memory["peak"] == memory["peak_steady"] == 100  # equal: the first
