"""A model of PyTorch's CUDA caching allocator (native backend), replayed over a run's storage
allocations and frees, so a trace taken without a GPU predicts ``max_memory_reserved``.

Each rule is a port of one function of ``c10/cuda/CUDACachingAllocator.cpp``
(``DeviceCachingAllocator``; the version read is named in docs/allocator.md), with torch 2.13.0's
constants (``c10/core/AllocatorConfig.h``). One device and one stream: the harness's steps run on
the current stream, so ``stream_uses``, events and ``process_events`` never hold a block back; CUDA
graph pools, IPC, ``record_stream`` and the GC threshold are not modelled. Addresses are the
model's own: new ``cudaMalloc`` segments are laid out in increasing address order, which decides
best-fit ties between equal free blocks of different segments (the driver's order may differ).

Free blocks of each pool sit in a list sorted by (size, address), searched with ``bisect``, as
torch's ``std::set`` with ``BlockComparatorSize``; blocks keep prev/next links inside a segment for
merging, so no event scans all blocks.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import asdict, dataclass
from typing import Iterable

from lamda_bench.card.allocator_settings import (  # noqa: F401  (re-exported: one import site)
    SIZE_MAX, AllocatorSettings, AllocatorSettingsError, parse_settings)

K_MIN_BLOCK = 512  # kMinBlockSize: every size is rounded to a multiple of it
K_SMALL_SIZE = 1 << 20  # kSmallSize: the largest small-pool request
K_SMALL_BUFFER = 2 << 20  # kSmallBuffer: a small-pool segment (and an expandable small page)
K_MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc: requests under it take a large_segment_size segment
K_ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests' segments are rounded up to it
FREE = -1  # the nbytes of a replay event that frees its key
_VA_DEFAULT = 1 << 46  # an expandable segment's address space when no capacity is given
_BASE = 1 << 40  # first address the model hands out


class SimulatedOutOfMemory(Exception):
    """The allocator model could not place a request within its capacity, after torch's retries."""

    def __init__(self, nbytes: int, alloc_size: int, reserved: int, allocated: int, capacity: int):
        self.nbytes, self.alloc_size = nbytes, alloc_size
        self.reserved, self.allocated, self.capacity = reserved, allocated, capacity
        super().__init__(f"simulated CUDA out of memory: a {nbytes}-byte request needs {alloc_size} more bytes "
                         f"with {reserved} reserved ({allocated} allocated) of a {capacity}-byte capacity")


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """``roundup_power2_next_division``: the next of ``divisions`` equal steps between the powers
    of two around ``size`` (1200 with 4 divisions -> 1280)."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    low = size & ~(step - 1)
    return size if low == size else low + step


def round_size(size: int, settings: AllocatorSettings) -> int:
    """``round_size``: under 512 B -> 512; with divisions > 1 for the size's interval and
    size > 512 * divisions, the next power-of-two division; else the next multiple of 512."""
    if size < K_MIN_BLOCK:
        return K_MIN_BLOCK
    divisions = settings.divisions_for(size)
    if divisions > 1 and size > K_MIN_BLOCK * divisions:
        return roundup_power2_next_division(size, divisions)
    return K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def is_small(size: int) -> bool:
    """``get_pool``: a rounded size of at most 1 MiB goes to the small pool."""
    return size <= K_SMALL_SIZE


def get_allocation_size(size: int, settings: AllocatorSettings) -> int:
    """``get_allocation_size``: the segment a new cudaMalloc takes for a rounded request: 2 MiB for
    small; ``large_segment_size`` (20 MiB) under 10 MiB; else the size rounded up to 2 MiB."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return settings.large_segment_size
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def should_split(block_size: int, size: int, small: bool, settings: AllocatorSettings) -> bool:
    """``should_split``: small pool or expandable segments split off a remainder of >= 512 B; the
    large pool only a remainder > 1 MiB of a request under ``max_split_size`` (a smaller remainder
    stays in the block and counts as allocated)."""
    remaining = block_size - size
    if small or settings.expandable_segments:
        return remaining >= K_MIN_BLOCK
    return size < settings.max_split_size and remaining > K_SMALL_SIZE


def may_reuse(block_size: int, size: int, settings: AllocatorSettings) -> bool:
    """``get_free_block``'s oversize rules: a request under ``max_split_size`` never takes an
    oversize block; an oversize request takes one only if the block is less than
    ``max_non_split_rounding_size`` (20 MiB) larger."""
    mss = settings.max_split_size
    if size < mss and block_size >= mss:
        return False
    return not (size >= mss and block_size >= size + settings.max_non_split_rounding_size)


class _Seg:
    """An expandable segment: one address range per pool, mapped in pages."""

    __slots__ = ("base", "page")

    def __init__(self, base: int, page: int):
        self.base, self.page = base, page


class Block:
    __slots__ = ("size", "addr", "small", "allocated", "mapped", "prev", "next", "seg")

    def __init__(self, size: int, addr: int, small: bool, seg: _Seg | None = None, mapped: bool = True):
        self.size, self.addr, self.small, self.seg, self.mapped = size, addr, small, seg, mapped
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None


def _splice(block: Block, before: Block | None, after: Block | None) -> None:
    """``Block::splice``: put ``block`` between two neighbours."""
    block.prev, block.next = before, after
    if before is not None:
        before.next = block
    if after is not None:
        after.prev = block


class _Pool:
    __slots__ = ("small", "blocks", "unmapped")

    def __init__(self, small: bool):
        self.small = small
        self.blocks: list[tuple[int, int, Block]] = []  # free mapped blocks by (size, address)
        self.unmapped: list[tuple[int, Block]] = []  # unmapped expandable ranges by address

    def insert(self, b: Block) -> None:
        insort(self.blocks, (b.size, b.addr, b))

    def erase(self, b: Block) -> None:
        del self.blocks[bisect_left(self.blocks, (b.size, b.addr))]

    def erase_unmapped(self, b: Block) -> None:
        del self.unmapped[bisect_left(self.unmapped, (b.addr,))]


class CachingAllocatorModel:
    """``DeviceCachingAllocator`` for one device and one stream, counting bytes as its stats do:
    ``allocated`` is the sum of allocated blocks' sizes (``allocated_bytes``), ``reserved`` the
    bytes of cudaMalloc'd segments plus mapped expandable pages (``reserved_bytes``),
    ``num_segments`` the cudaMalloc'd segments (``segment``; expandable pages are not counted
    there, as in torch). ``capacity`` (bytes) makes a segment that would exceed it fail as a
    cudaMalloc would."""

    def __init__(self, settings: AllocatorSettings, capacity: int | None = None):
        self.settings = settings
        self.capacity = capacity
        self._small, self._large = _Pool(True), _Pool(False)
        self._live: dict[int, Block | None] = {}
        self._allocated = self._reserved = self._max_allocated = self._max_reserved = 0
        self._segments = self._peak_segments = self._retries = self._ooms = 0
        self._next_addr = _BASE
        self._va = _VA_DEFAULT if capacity is None else capacity + capacity // 8
        self._plain_rounding = max(settings.roundup_power2_divisions) <= 1

    allocated = property(lambda self: self._allocated)
    reserved = property(lambda self: self._reserved)
    max_allocated = property(lambda self: self._max_allocated)
    max_reserved = property(lambda self: self._max_reserved)
    num_segments = property(lambda self: self._segments)
    num_alloc_retries = property(lambda self: self._retries)
    num_ooms = property(lambda self: self._ooms)
    segments_at_max_reserved = property(lambda self: self._peak_segments)

    # -- the public calls --------------------------------------------------------------------

    def malloc(self, key: int, nbytes: int) -> None:
        """``NativeCachingAllocator::allocate`` + ``DeviceCachingAllocator::malloc``. A zero-byte
        request allocates nothing (``allocate`` calls malloc only when size != 0)."""
        if key in self._live:
            raise ValueError(f"allocator model: key {key} is already allocated")
        if nbytes < 0:
            raise ValueError(f"allocator model: negative request {nbytes} for key {key}")
        if nbytes == 0:
            self._live[key] = None
            return
        s = self.settings
        if self._plain_rounding:  # round_size without power-2 divisions, inlined for speed
            size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else (nbytes + K_MIN_BLOCK - 1) & -K_MIN_BLOCK
        else:
            size = round_size(nbytes, s)
        pool = self._small if size <= K_SMALL_SIZE else self._large
        alloc_size = get_allocation_size(size, s)
        block = self._get_free_block(pool, size)
        if block is None:
            block = (self._alloc_block(pool, size, alloc_size, False)
                     or (self._release_available_cached_blocks(pool, size)
                         and self._alloc_block(pool, size, alloc_size, False))
                     or (self._release_cached_blocks() and self._alloc_block(pool, size, alloc_size, True)))
        if not block:
            self._ooms += 1
            raise SimulatedOutOfMemory(nbytes, alloc_size, self._reserved, self._allocated, self.capacity)
        self._live[key] = self._alloc_found_block(pool, block, size, should_split(block.size, size, pool.small, s))

    def free(self, key: int) -> None:
        """``DeviceCachingAllocator::free``: the block returns to its pool, merged with free
        neighbours (``free_block``); its segment stays reserved."""
        try:
            block = self._live.pop(key)
        except KeyError:
            raise ValueError(f"allocator model: free of key {key}, which is not allocated") from None
        if block is None:
            return
        block.allocated = False
        self._allocated -= block.size
        pool = self._small if block.small else self._large
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert(block)

    def empty_cache(self) -> None:
        """``emptyCache`` -> ``release_cached_blocks``."""
        self._release_cached_blocks()

    # -- finding and placing a block -----------------------------------------------------------

    def _get_free_block(self, pool: _Pool, size: int) -> Block | None:
        """``get_free_block``: the smallest free block of at least ``size`` (ties: lowest address),
        subject to the oversize rules; with expandable segments a block is weighed by what it can
        grow to (its size plus an unmapped range right after it)."""
        blocks = pool.blocks
        i = bisect_left(blocks, (size, 0))
        if i == len(blocks):
            return None
        b = blocks[i][2]
        if b.seg is not None and self.settings.expandable_segments:
            grow = _expandable_size
            while i + 1 < len(blocks) and grow(blocks[i + 1][2]) < grow(b):
                i += 1
                b = blocks[i][2]
        if not may_reuse(b.size, size, self.settings):
            return None
        del blocks[i]
        return b

    def _alloc_block(self, pool: _Pool, size: int, alloc_size: int, is_retry: bool) -> Block | None:
        """``alloc_block``: a new cudaMalloc segment of ``alloc_size`` (or, with expandable
        segments, pages mapped for ``size``); None where the capacity would be exceeded."""
        if is_retry:
            self._retries += 1
        if self.settings.expandable_segments:
            return self._try_allocate_expandable_block(pool, size)
        if self.capacity is not None and self._reserved + alloc_size > self.capacity:
            return None
        block = Block(alloc_size, self._next_addr, pool.small)
        self._next_addr += alloc_size
        self._segments += 1
        self._grow(alloc_size)
        return block

    def _alloc_found_block(self, pool: _Pool, block: Block, size: int, split: bool) -> Block:
        """``alloc_found_block``: with ``split`` the front ``size`` bytes become the allocation and
        the remainder stays free in the pool."""
        if split:
            rest = block
            block = Block(size, rest.addr, rest.small, rest.seg)
            _splice(block, rest.prev, rest)
            rest.addr += size
            rest.size -= size
            pool.insert(rest)
        block.allocated = True
        self._allocated += block.size
        if self._allocated > self._max_allocated:
            self._max_allocated = self._allocated
        return block

    def _try_merge(self, dst: Block, src: Block | None, pool: _Pool) -> int:
        """``try_merge_blocks``: fold a free neighbour of the same mapping into ``dst``."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        if src.mapped:
            pool.erase(src)
        else:
            pool.erase_unmapped(src)
        return src.size

    def _grow(self, nbytes: int) -> None:
        self._reserved += nbytes
        if self._reserved > self._max_reserved:
            self._max_reserved = self._reserved
            self._peak_segments = self._segments

    # -- giving memory back --------------------------------------------------------------------

    def _release_available_cached_blocks(self, pool: _Pool, size: int) -> bool:
        """``release_available_cached_blocks`` (only with a ``max_split_size``): free one cached
        oversize block of at least max(size, max_split_size), else the largest oversize blocks
        until that much is freed."""
        mss = self.settings.max_split_size
        if mss == SIZE_MAX or self.settings.expandable_segments:
            return False
        key = max(size, mss)
        blocks = pool.blocks
        i = bisect_left(blocks, (key, 0))
        if i < len(blocks):
            self._release_block(pool, blocks[i][2])
            return True
        released = 0
        i -= 1
        while i >= 0 and released < key and blocks[i][0] >= mss:
            released += blocks[i][0]
            self._release_block(pool, blocks[i][2])
            i -= 1
        return released >= key

    def _release_cached_blocks(self) -> bool:
        """``release_cached_blocks``: every unsplit free segment goes back to the driver, and with
        expandable segments every whole free page is unmapped (``release_blocks``)."""
        for pool in (self._large, self._small):
            to_unmap = []
            for _, _, b in list(pool.blocks):
                if b.seg is not None:
                    to_unmap.append(b)
                elif b.prev is None and b.next is None:
                    self._release_block(pool, b)
            for b in to_unmap:
                self._unmap_block(pool, b)
                if b.prev is None and b.next is None:
                    pool.erase_unmapped(b)  # release_expandable_segment
        return True

    def _release_block(self, pool: _Pool, block: Block) -> None:
        """``release_block``: cudaFree of one unsplit segment."""
        pool.erase(block)
        self._reserved -= block.size
        self._segments -= 1

    # -- expandable segments -------------------------------------------------------------------

    def _find_expandable_block(self, pool: _Pool, size: int) -> Block:
        """``find_expandable_block``: the lowest-address unmapped range (or the free block right
        before it) with ``size`` bytes of free or unmapped space from there; else a new segment."""
        for _, c in pool.unmapped:
            if c.prev is not None and not c.prev.allocated:
                c = c.prev
            room, b = 0, c
            while room < size and b is not None and not b.allocated:
                room += b.size
                b = b.next
            if room >= size:
                return c
        page = K_SMALL_BUFFER if pool.small else self.settings.large_segment_size
        seg = _Seg(self._next_addr, page)
        span = -(-self._va // page) * page
        self._next_addr += span
        c = Block(span, seg.base, pool.small, seg, mapped=False)
        insort(pool.unmapped, (c.addr, c))
        return c

    def _map_block(self, pool: _Pool, block: Block, size: int) -> bool:
        """``map_block``: map whole pages from the start of an unmapped range to cover ``size``;
        reserved grows by the pages mapped. False where the capacity would be exceeded."""
        page = block.seg.page
        mapped = -(-size // page) * page
        if self.capacity is not None and self._reserved + mapped > self.capacity:
            return False
        pool.erase_unmapped(block)
        block.mapped = True
        if mapped < block.size:
            rest = Block(block.size - mapped, block.addr + mapped, block.small, block.seg, mapped=False)
            _splice(rest, block, block.next)
            insort(pool.unmapped, (rest.addr, rest))
            block.size = mapped
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert(block)
        self._grow(mapped)
        return True

    def _try_allocate_expandable_block(self, pool: _Pool, size: int) -> Block | None:
        """``try_allocate_expandable_block``: map pages at the lowest free address until one free
        block of ``size`` exists, and take it out of the pool."""
        c = self._find_expandable_block(pool, size)
        if not c.mapped and not self._map_block(pool, c, min(c.size, size)):
            return None
        while c.size < size:
            nxt = c.next
            if not self._map_block(pool, nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt
        pool.erase(c)
        return c

    def _unmap_block(self, pool: _Pool, block: Block) -> None:
        """``unmap_block``: unmap the whole pages inside a free block; the partial pages at either
        end stay mapped as free blocks."""
        seg = block.seg
        page = seg.page
        off = block.addr - seg.base
        begin, end = -(-off // page), (off + block.size) // page
        if begin >= end:
            return
        start, length = seg.base + begin * page, (end - begin) * page
        pool.erase(block)
        before = start - block.addr
        if before > 0:
            b = Block(before, block.addr, block.small, seg)
            _splice(b, block.prev, block)
            pool.insert(b)
        after = block.size - before - length
        if after > 0:
            a = Block(after, start + length, block.small, seg)
            _splice(a, block, block.next)
            pool.insert(a)
        block.addr, block.size, block.mapped = start, length, False
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        insort(pool.unmapped, (block.addr, block))
        self._reserved -= length


def _expandable_size(b: Block) -> int:
    """``get_free_block``'s ``expandable_size``: a block's size plus the unmapped range after it."""
    n = b.next
    return b.size + (n.size if n is not None and not n.mapped else 0)


@dataclass(frozen=True)
class ReplayResult:
    """What one replay gives: peaks and end state in bytes, the segments held at the reserved
    peak, torch's ``num_alloc_retries``, whether it ran out of ``capacity`` (and at which event),
    and the index of the event where ``max_reserved`` was first reached (None without events)."""

    max_reserved: int
    max_allocated: int
    final_reserved: int
    final_allocated: int
    num_segments_peak: int
    num_alloc_retries: int
    oom: bool
    at_event: int | None
    oom_event: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def replay(events: Iterable[tuple[int, int]], settings: AllocatorSettings,
           capacity: int | None = None) -> ReplayResult:
    """Run ``(key, nbytes)`` events through a fresh model: nbytes >= 0 allocates storage ``key``,
    ``FREE`` (-1) frees it. Stops at the first simulated out-of-memory."""
    m = CachingAllocatorModel(settings, capacity)
    malloc, free = m.malloc, m.free
    at, peak, oom_event, i = None, 0, None, -1
    try:
        for i, (key, nbytes) in enumerate(events):
            if nbytes == FREE:
                free(key)
            else:
                malloc(key, nbytes)
                if m._max_reserved != peak:
                    peak, at = m._max_reserved, i
    except SimulatedOutOfMemory:
        oom_event = i
        if m._max_reserved != peak:
            at = i
    return ReplayResult(m.max_reserved, m.max_allocated, m.reserved, m.allocated, m.segments_at_max_reserved,
                        m.num_alloc_retries, oom_event is not None, at, oom_event)
