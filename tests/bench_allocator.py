"""Speed of the allocator model's replay (issue 39: well under a second per 10^5 events): a
synthetic 500k-event sequence shaped like training steps (persistent weights, then per step a
stack of activations of mixed sizes, small and large, freed mostly in reverse, with temporaries
freed at once).

    python tests/bench_allocator.py            # wall and CPU seconds per replay and per 10^5 events
    pytest tests/bench_allocator.py --benchmark-only

Not collected by the default pytest run (the file is not test_*.py).
"""

from __future__ import annotations

import random
import sys
import time

from lamda_bench.card.allocator import FREE, parse_settings, replay

MiB = 1 << 20
SIZES = [256, 4096, 64 << 10, 512 << 10, 2 * MiB, 3 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 86 * MiB, 250 * MiB]


def synthetic_events(n: int = 500_000, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    events, key = [], 0
    for _ in range(200):  # weights
        events.append((key, rng.choice(SIZES[4:])))
        key += 1
    while len(events) < n:
        saved = []
        for _ in range(2000):  # forward: saved activations and temporaries
            size = rng.choice(SIZES) + rng.randrange(0, 4096)
            events.append((key, size))
            if rng.random() < 0.5:
                events.append((key, FREE))
            else:
                saved.append(key)
            key += 1
        while saved:  # backward: saved tensors die, mostly in reverse, gradients come and go
            k = saved.pop() if rng.random() < 0.9 else saved.pop(rng.randrange(len(saved)))
            events.append((key, rng.choice(SIZES)))
            events.append((k, FREE))
            events.append((key, FREE))
            key += 1
    return events[:n]


def test_replay_500k_events(benchmark):
    events = synthetic_events()
    result = benchmark(replay, events, parse_settings(None))
    assert result.max_reserved >= result.max_allocated > 0


def main() -> int:
    events = synthetic_events()
    for text in ("default", "expandable"):
        t0, c0 = time.perf_counter(), time.process_time()
        r = replay(events, parse_settings(text))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{text:>10}: {len(events)} events in {dt:.2f} s wall, {cpu:.2f} s CPU "
              f"({cpu / len(events) * 1e5:.3f} CPU s per 10^5); "
              f"max_reserved {r.max_reserved / 2**30:.2f} GiB, max_allocated {r.max_allocated / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
