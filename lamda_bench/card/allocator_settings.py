"""The CUDA caching allocator's settings, read from a ``PYTORCH_CUDA_ALLOC_CONF`` string as torch
reads it, so a replay runs under the policy a user would set on the card.

Source: torch 2.13.0's installed ``c10/core/AllocatorConfig.h`` (``ConfigTokenizer``, the
defaults of ``AcceleratorAllocatorConfig``) and ``c10/cuda/CUDAAllocatorConfig.h`` (the CUDA-only
keys, ``getKeys``), and ``AcceleratorAllocatorConfig::parseArgs`` / ``parseRoundUpPower2Divisions``
/ ``parseLargeSegmentSize`` / ``parseMaxSplitSize`` / ``parseMaxNonSplitRoundingSize`` of
``c10/core/AllocatorConfig.cpp`` (see docs/allocator.md for the version read). Options that change
where device memory goes are modelled; options that cannot change it in a single-stream replay
without CUDA graphs are accepted and listed as ignored; the rest are refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamda_bench.errors import UserError

MB = 1 << 20
SIZE_MAX = (1 << 64) - 1  # std::numeric_limits<size_t>::max(): max_split_size's "unlimited"
K_MIN_LARGE_ALLOC = 10 * MB  # kMinLargeAlloc, AllocatorConfig.h
DEFAULT_LARGE_SEGMENT = 20 * MB  # large_segment_size_ default (the old kLargeBuffer)
# roundup_power2_divisions_ has one entry per power-of-two interval from 1 MiB to 64 GiB
# (kRoundUpPowerOfTwoIntervals = 16, AllocatorConfig.cpp).
INTERVALS = 16

# Keys torch accepts whose effect a single-stream replay without CUDA graphs cannot see.
IGNORED = {
    "pinned_use_background_threads": "host (pinned) allocator only",
    "pinned_use_cuda_host_register": "host (pinned) allocator only",
    "pinned_use_hip_host_register": "host (pinned) allocator only",
    "pinned_num_register_threads": "host (pinned) allocator only",
    "pinned_reserve_segment_size_mb": "host (pinned) allocator only",
    "pinned_free_catch_all": "host (pinned) allocator only",
    "release_lock_on_cudamalloc": "locking only, no change to which memory is used",
    "release_lock_on_hipmalloc": "locking only, no change to which memory is used",
    "graph_capture_record_stream_reuse": "CUDA graph capture only, which the model does not replay",
}
# Keys torch accepts that change device memory in ways the model does not replay.
REFUSED = {
    "garbage_collection_threshold": "it frees cached blocks against a memory fraction of the card, "
                                    "which the model does not replay",
    "per_process_memory_fraction": "it caps the allocator at a fraction of the card's memory; "
                                   "give the replay a capacity instead",
}


class AllocatorSettingsError(UserError):
    """A PYTORCH_CUDA_ALLOC_CONF string the model cannot replay, in one line."""


@dataclass(frozen=True)
class AllocatorSettings:
    """The allocator policy a replay runs under; torch's defaults when built with no arguments.

    ``max_split_size`` is ``SIZE_MAX`` when unlimited (torch's default); ``roundup_power2_divisions``
    holds torch's 16 per-interval divisions (0 or 1: plain 512-byte rounding)."""

    expandable_segments: bool = False
    max_split_size: int = SIZE_MAX
    max_non_split_rounding_size: int = DEFAULT_LARGE_SEGMENT
    large_segment_size: int = DEFAULT_LARGE_SEGMENT
    roundup_power2_divisions: tuple[int, ...] = (0,) * INTERVALS
    ignored: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        """The canonical ``PYTORCH_CUDA_ALLOC_CONF`` string: modelled options that differ from the
        default, in a fixed order ("" for torch's defaults); ignored options are not in it."""
        parts = []
        if self.large_segment_size != DEFAULT_LARGE_SEGMENT:
            parts.append(f"large_segment_size_mb:{self.large_segment_size // MB}")
        if self.max_split_size != SIZE_MAX:
            parts.append(f"max_split_size_mb:{self.max_split_size // MB}")
        if self.max_non_split_rounding_size != self.large_segment_size:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding_size // MB}")
        divs = self.roundup_power2_divisions
        if any(divs):
            if len(set(divs)) == 1:
                parts.append(f"roundup_power2_divisions:{divs[0]}")
            else:
                listed = ",".join(f"{1 << i}:{d}" for i, d in enumerate(divs))
                parts.append(f"roundup_power2_divisions:[{listed}]")
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        return ",".join(parts)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "expandable_segments": self.expandable_segments,
            "max_split_size": None if self.max_split_size == SIZE_MAX else self.max_split_size,
            "max_non_split_rounding_size": self.max_non_split_rounding_size,
            "large_segment_size": self.large_segment_size,
            "roundup_power2_divisions": list(self.roundup_power2_divisions),
            "ignored": list(self.ignored),
        }

    def divisions_for(self, size: int) -> int:
        """``AcceleratorAllocatorConfig::roundup_power2_divisions(size)``: the interval index is
        log2(size) - 20, clamped to [0, 15], so sizes under 1 MiB use the first interval's."""
        index = max(size.bit_length() - 1 - 20, 0)
        return self.roundup_power2_divisions[min(index, INTERVALS - 1)]


def _tokens(text: str) -> list[str]:
    """``ConfigTokenizer``: ',', ':', '[' and ']' are tokens of their own; whitespace is dropped."""
    out, buf = [], ""
    for ch in text:
        if ch in ",:[]":
            if buf:
                out.append(buf)
                buf = ""
            out.append(ch)
        elif not ch.isspace():
            buf += ch
    if buf:
        out.append(buf)
    return out


def _count(key: str, token: str) -> int:
    if not token.isdigit():
        raise AllocatorSettingsError(f"allocator option {key} needs a whole number, got {token!r}")
    return int(token)


def _power2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _divisions(values: list[tuple[str, str]], single: str | None) -> tuple[int, ...]:
    """``parseRoundUpPower2Divisions``: one number for every interval, or ``[MB:div, ..., >:div]``
    where the first entry also fills the intervals below it, ``>`` fills those after the last
    entry, and intervals not named stay 0 (no power-of-two rounding)."""
    key = "roundup_power2_divisions"
    if single is not None:
        d = _count(key, single)
        if not _power2(d):
            raise AllocatorSettingsError(f"allocator option {key}: the divisions must be a power of 2, got {d}")
        return (d,) * INTERVALS
    divs = [0] * INTERVALS
    first, last = True, 0
    for bound, value in values:
        d = _count(key, value)
        if d != 0 and not _power2(d):
            raise AllocatorSettingsError(f"allocator option {key}: the divisions must be 0 or a power of 2, got {d}")
        if bound == ">":
            divs[last + 1:] = [d] * (INTERVALS - last - 1)
            continue
        mb = _count(key, bound)
        if not _power2(mb):
            raise AllocatorSettingsError(f"allocator option {key}: the interval sizes (MB) must be powers of 2, got {mb}")
        index = min(mb.bit_length() - 1, INTERVALS - 1)
        if first:
            divs[:index] = [d] * index
            first = False
        divs[index] = d
        last = index
    return tuple(divs)


def _items(tokens: list[str]) -> list[tuple[str, str | None, list[tuple[str, str]]]]:
    """(key, value, bracket pairs) per option, checking the ',' ':' '[' ']' grammar."""
    items, i = [], 0
    while i < len(tokens):
        key = tokens[i]
        if key in ",:[]" or i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise AllocatorSettingsError(f"allocator settings: expected 'option:value' at {key!r}")
        i += 2
        pairs: list[tuple[str, str]] = []
        if tokens[i] == "[":
            i += 1
            while i < len(tokens) and tokens[i] != "]":
                if i + 2 >= len(tokens) or tokens[i + 1] != ":":
                    raise AllocatorSettingsError(f"allocator option {key}: expected [size:divisions, ...]")
                pairs.append((tokens[i], tokens[i + 2]))
                i += 3
                if i < len(tokens) and tokens[i] == ",":
                    i += 1
            if i >= len(tokens):
                raise AllocatorSettingsError(f"allocator option {key}: missing ']'")
            value = None
        else:
            value = tokens[i]
            if value in ",:[]":
                raise AllocatorSettingsError(f"allocator option {key}: missing value")
        i += 1
        items.append((key, value, pairs))
        if i < len(tokens):
            if tokens[i] != ",":
                raise AllocatorSettingsError(f"allocator settings: expected ',' after option {key}")
            i += 1
    return items


def _bool(key: str, value: str | None) -> bool:
    if value not in ("True", "False"):
        raise AllocatorSettingsError(f"allocator option {key} takes True or False (as torch spells them), got {value!r}")
    return value == "True"


def parse_settings(text: str | None) -> AllocatorSettings:
    """Settings from ``PYTORCH_CUDA_ALLOC_CONF`` syntax, or the shorthands None / "" / "default"
    (torch's defaults) and "expandable" (``expandable_segments:True``).

    As ``AcceleratorAllocatorConfig::parseArgs``: ``large_segment_size_mb`` is read first (it sets
    the floor of ``max_split_size_mb`` and the default of ``max_non_split_rounding_mb``); a key
    given twice keeps its last value."""
    if text is None or text.strip() in ("", "default"):
        return AllocatorSettings()
    if text.strip() == "expandable":
        return AllocatorSettings(expandable_segments=True)
    items = _items(_tokens(text))
    for key, value, _ in items:
        if key not in _KNOWN:
            raise AllocatorSettingsError(f"allocator option {key!r} is not one torch knows")
        if key in REFUSED:
            raise AllocatorSettingsError(f"allocator option {key} is not modelled: {REFUSED[key]}")
        if key == "backend" and value != "native":
            raise AllocatorSettingsError(f"allocator option backend:{value} is not modelled: only torch's native "
                                         "caching allocator is (cudaMallocAsync is the driver's own pool)")
        if key == "throw_on_cudamalloc_oom" and _bool(key, value):
            raise AllocatorSettingsError("allocator option throw_on_cudamalloc_oom:True is not modelled: "
                                         "it changes the out-of-memory path the replay follows")
        if key != "roundup_power2_divisions" and value is None:
            raise AllocatorSettingsError(f"allocator option {key} takes one value, not a list")

    large = DEFAULT_LARGE_SEGMENT
    for key, value, _ in items:
        if key == "large_segment_size_mb":
            mb = _count(key, value)
            if mb <= K_MIN_LARGE_ALLOC // MB:
                raise AllocatorSettingsError(f"allocator option large_segment_size_mb must be > {K_MIN_LARGE_ALLOC // MB}, got {mb}")
            large = mb * MB
    kw: dict = {"large_segment_size": large, "max_non_split_rounding_size": large}
    ignored = []
    for key, value, pairs in items:
        if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            mb = _count(key, value)
            if mb < large // MB:
                raise AllocatorSettingsError(f"allocator option {key} must be >= {large // MB}, got {mb}")
            kw["max_split_size" if key == "max_split_size_mb" else "max_non_split_rounding_size"] = mb * MB
        elif key == "roundup_power2_divisions":
            kw["roundup_power2_divisions"] = _divisions(pairs, value)
        elif key == "expandable_segments":
            kw["expandable_segments"] = _bool(key, value)
        elif key in IGNORED or key in ("backend", "throw_on_cudamalloc_oom"):
            ignored.append(f"{key}:{value}")
    return AllocatorSettings(ignored=tuple(ignored), **kw)


_MODELLED = {"large_segment_size_mb", "max_split_size_mb", "max_non_split_rounding_mb",
             "roundup_power2_divisions", "expandable_segments"}
_KNOWN = _MODELLED | set(IGNORED) | set(REFUSED) | {"backend", "throw_on_cudamalloc_oom"}
