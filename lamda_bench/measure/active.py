"""Which trackers are on: timing refuses to run while any is (trackers slow a step down)."""

from __future__ import annotations


class _ActiveTrackers:
    def __init__(self) -> None:
        self._active: list[object] = []

    def enter(self, tracker: object) -> None:
        self._active.append(tracker)

    def exit(self, tracker: object) -> None:
        if tracker in self._active:
            self._active.remove(tracker)

    def names(self) -> list[str]:
        return [type(t).__name__ for t in self._active]

    def any(self) -> bool:
        return bool(self._active)


tracker_active = _ActiveTrackers()
