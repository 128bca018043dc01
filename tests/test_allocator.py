"""The CUDA caching allocator model (lamda_bench.card.allocator): each rule on a sequence worked
by hand, the settings parser as torch reads PYTORCH_CUDA_ALLOC_CONF, and whole replays."""

from __future__ import annotations

import pytest

from lamda_bench.card.allocator import (
    FREE, CachingAllocatorModel, SimulatedOutOfMemory, get_allocation_size, is_small, may_reuse, replay,
    round_size, should_split)
from lamda_bench.card.allocator_settings import SIZE_MAX, AllocatorSettings, AllocatorSettingsError, parse_settings
from lamda_bench.errors import UserError

KiB, MiB = 1 << 10, 1 << 20
DEFAULT = AllocatorSettings()
EXPANDABLE = parse_settings("expandable")


def model(text=None, capacity=None):
    return CachingAllocatorModel(parse_settings(text), capacity)


# -- round_size ----------------------------------------------------------------------------------

def test_round_size_is_512_bytes_minimum_and_multiple():
    assert [round_size(n, DEFAULT) for n in (1, 511, 512, 513, 5 * MiB + 1)] == [512, 512, 512, 1024, 5 * MiB + 512]


def test_round_size_power2_divisions_apply_above_512_times_divisions():
    four = parse_settings("roundup_power2_divisions:4")
    # 5 MiB + 1 lies in [4, 8) MiB, cut in 4 steps of 1 MiB: the next step is 6 MiB
    assert round_size(5 * MiB + 1, four) == 6 * MiB
    # 1200 B is not above 512 * 4 B: plain 512-byte rounding (torch's doc example 1280 needs that)
    assert round_size(1200, four) == 1536
    eight = parse_settings("roundup_power2_divisions:8")
    # sizes under 1 MiB use the first interval's divisions: 600 KiB + 1 -> 640 KiB (steps of 64 KiB)
    assert round_size(600 * KiB + 1, eight) == 640 * KiB


def test_round_size_divisions_per_interval_as_the_bracket_form_sets_them():
    s = parse_settings("roundup_power2_divisions:[2:4]")
    # the first entry fills the intervals below it: [1, 2) MiB and [2, 4) MiB have 4 divisions
    assert s.roundup_power2_divisions[:3] == (4, 4, 0)
    assert round_size(1536 * KiB + 1, s) == 1792 * KiB
    # [4, 8) MiB is not named: it stays 0, plain rounding
    assert round_size(5 * MiB + 1, s) == 5 * MiB + 512
    s = parse_settings("roundup_power2_divisions:[1:2,>:8]")
    # '>' fills every interval after the last one named
    assert s.roundup_power2_divisions == (2,) + (8,) * 15
    assert round_size(5 * MiB + 1, s) == 5 * MiB + 512 * KiB


# -- pools and segment sizes ---------------------------------------------------------------------

def test_pool_choice_small_is_at_most_1_mib():
    assert is_small(MiB) and not is_small(MiB + 512)
    m = model()
    m.malloc(1, MiB)
    assert m.reserved == 2 * MiB  # small pool: one 2 MiB segment
    m.malloc(2, MiB + 1)
    assert m.reserved == 22 * MiB  # large pool: a 20 MiB segment


def test_get_allocation_size():
    sizes = (MiB, MiB + 512, 10 * MiB - 512, 10 * MiB, 11 * MiB + 512)
    assert [get_allocation_size(n, DEFAULT) for n in sizes] == [2 * MiB, 20 * MiB, 20 * MiB, 10 * MiB, 12 * MiB]
    assert get_allocation_size(3 * MiB, parse_settings("large_segment_size_mb:40")) == 40 * MiB


# -- best fit ------------------------------------------------------------------------------------

def test_best_fit_takes_the_smallest_block_that_fits_not_the_first():
    m = model()
    m.malloc(1, 14 * MiB)  # segment at the lower address
    m.malloc(2, 12 * MiB)
    m.free(1)
    m.free(2)
    m.malloc(3, 11 * MiB)  # fits both; best fit is the 12 MiB block
    assert m._live[3].size == 12 * MiB
    m.malloc(4, 13 * MiB)  # so the 14 MiB block is still there for this one
    assert m.reserved == 26 * MiB and m.num_segments == 2


def test_best_fit_ties_go_to_the_lowest_address():
    m = model()
    for key in (1, 2, 3):
        m.malloc(key, 12 * MiB)
    addresses = [m._live[k].addr for k in (1, 2, 3)]
    for key in (3, 1, 2):
        m.free(key)
    m.malloc(4, 12 * MiB)
    assert m._live[4].addr == min(addresses)


# -- should_split --------------------------------------------------------------------------------

def test_should_split_rules():
    assert should_split(2 * MiB, 2 * MiB - 512, True, DEFAULT)  # small: 512 B left is enough
    assert not should_split(2 * MiB, 2 * MiB, True, DEFAULT)
    assert not should_split(20 * MiB, 19 * MiB, False, DEFAULT)  # large: exactly 1 MiB left stays
    assert should_split(20 * MiB, 19 * MiB - 512, False, DEFAULT)
    assert not should_split(60 * MiB, 50 * MiB, False, parse_settings("max_split_size_mb:40"))
    assert should_split(20 * MiB, 20 * MiB - 512, False, EXPANDABLE)  # expandable: 512 B, any pool


def test_an_unsplit_remainder_counts_as_allocated():
    m = model()
    m.malloc(1, 19 * MiB + 512 * KiB)  # a 20 MiB segment; 512 KiB left is not > 1 MiB
    assert m.allocated == 20 * MiB
    m = model("expandable")
    m.malloc(1, 19 * MiB + 512 * KiB)  # expandable segments split off any 512 B remainder
    assert m.allocated == 19 * MiB + 512 * KiB


# -- merging, and segments kept ------------------------------------------------------------------

def test_free_neighbours_merge_inside_a_segment():
    m = model()
    m.malloc(1, 6 * MiB)  # a 20 MiB segment: [6 | 14 free]
    m.malloc(2, 6 * MiB)  # [6 | 6 | 8 free]
    m.malloc(3, 8 * MiB)  # [6 | 6 | 8]: full
    m.free(1)
    m.free(2)  # the two 6 MiB blocks merge into one free 12 MiB block
    m.malloc(4, 11 * MiB)  # 11 MiB -> 12 MiB request: fits the merged block, no new segment
    assert m.reserved == 20 * MiB and m.num_segments == 1


def test_segments_are_kept_until_empty_cache_and_split_ones_survive_it():
    m = model()
    m.malloc(1, 30 * MiB)
    m.malloc(2, 3 * MiB)  # a 20 MiB segment, split
    m.free(1)
    assert m.reserved == 50 * MiB and m.allocated == 3 * MiB
    m.empty_cache()  # the free 30 MiB segment goes; the split 20 MiB one stays
    assert m.reserved == 20 * MiB and m.num_segments == 1
    m.free(2)
    m.empty_cache()
    assert m.reserved == 0 and m.num_segments == 0 and m.max_reserved == 50 * MiB


def test_zero_bytes_allocate_nothing():
    m = model()
    m.malloc(1, 0)
    assert (m.allocated, m.reserved) == (0, 0)
    m.free(1)
    with pytest.raises(ValueError):
        m.free(1)


# -- max_split_size ------------------------------------------------------------------------------

def test_max_split_size_oversize_blocks_are_not_split():
    for text, allocated in ((None, 50 * MiB), ("max_split_size_mb:40", 60 * MiB)):
        m = model(text)
        m.malloc(1, 60 * MiB)
        m.free(1)
        m.malloc(2, 50 * MiB)  # 60 < 50 + 20: the oversize block is reused whole
        assert (m.allocated, m.reserved) == (allocated, 60 * MiB)


def test_max_split_size_small_requests_never_take_oversize_blocks():
    assert not may_reuse(60 * MiB, 30 * MiB, parse_settings("max_split_size_mb:40"))
    for text, reserved in ((None, 60 * MiB), ("max_split_size_mb:40", 90 * MiB)):
        m = model(text)
        m.malloc(1, 60 * MiB)
        m.free(1)
        m.malloc(2, 30 * MiB)
        assert m.reserved == reserved


def test_max_split_size_oversize_requests_reuse_within_the_non_split_rounding():
    m = model("max_split_size_mb:40")
    m.malloc(1, 100 * MiB)
    m.free(1)
    m.malloc(2, 60 * MiB)  # 100 >= 60 + 20: not reused
    assert m.reserved == 160 * MiB
    m = model("max_split_size_mb:40,max_non_split_rounding_mb:50")
    m.malloc(1, 100 * MiB)
    m.free(1)
    m.malloc(2, 60 * MiB)  # 100 < 60 + 50: reused whole
    assert (m.reserved, m.allocated) == (100 * MiB, 100 * MiB)


def test_max_split_size_retry_releases_oversize_blocks_first():
    # 100 MiB cached; a 60 MiB request does not reuse it (>= 60 + 20) and 100 + 60 > 150:
    # release_available_cached_blocks frees the 100 MiB block, the first retry fits
    m = model("max_split_size_mb:40", capacity=150 * MiB)
    m.malloc(1, 100 * MiB)
    m.free(1)
    m.malloc(2, 60 * MiB)
    assert (m.reserved, m.num_alloc_retries, m.num_segments) == (60 * MiB, 0, 1)


# -- expandable segments -------------------------------------------------------------------------

def test_expandable_segments_map_pages_and_keep_them():
    m = model("expandable")
    m.malloc(1, 1000)  # small pool: one 2 MiB page
    m.malloc(2, 3 * MiB)  # large pool: one 20 MiB page, [3 | 17 free]
    m.malloc(3, 30 * MiB)  # from the free 17 MiB on: one more 20 MiB page covers 30 MiB
    assert (m.reserved, m.num_segments) == (42 * MiB, 0)  # pages are not cudaMalloc segments
    for key in (1, 2, 3):
        m.free(key)
    assert m.reserved == 42 * MiB  # freed pages stay mapped
    m.malloc(4, 40 * MiB)  # the whole mapped 40 MiB range is one free block again
    assert m.reserved == 42 * MiB
    m.free(4)
    m.empty_cache()
    assert m.reserved == 0
    d = model()  # the same without expandable segments: 2 + 20 + 30 MiB, then a new 40 MiB one
    for key, n in ((1, 1000), (2, 3 * MiB), (3, 30 * MiB)):
        d.malloc(key, n)
    for key in (1, 2, 3):
        d.free(key)
    d.malloc(4, 40 * MiB)
    assert d.reserved == 92 * MiB


def test_expandable_segments_map_at_the_lowest_free_address():
    m = model("expandable")
    m.malloc(1, 20 * MiB)
    m.malloc(2, 20 * MiB)
    base = m._live[1].addr
    m.free(1)
    m.empty_cache()  # unmaps the first page only
    assert m.reserved == 20 * MiB
    m.malloc(3, 20 * MiB)  # the gap at the start is the lowest free address
    assert m._live[3].addr == base and m.reserved == 40 * MiB


# -- out of memory -------------------------------------------------------------------------------

def test_oom_retry_frees_unsplit_cached_segments_then_raises():
    m = model(capacity=60 * MiB)
    m.malloc(1, 30 * MiB)
    m.malloc(2, 20 * MiB)
    m.free(1)
    m.malloc(3, 35 * MiB)  # 50 + 36 > 60: the free 30 MiB segment is released, the retry fits
    assert (m.reserved, m.num_alloc_retries, m.num_segments) == (56 * MiB, 1, 2)
    with pytest.raises(SimulatedOutOfMemory) as e:
        m.malloc(4, 30 * MiB)
    assert (e.value.nbytes, e.value.reserved, m.num_ooms, m.num_alloc_retries) == (30 * MiB, 56 * MiB, 1, 2)


def test_replay_stops_at_the_oom():
    r = replay([(1, 30 * MiB), (2, 40 * MiB), (1, FREE)], DEFAULT, capacity=64 * MiB)
    assert (r.oom, r.oom_event, r.max_reserved, r.at_event) == (True, 1, 30 * MiB, 0)


# -- a whole replay ------------------------------------------------------------------------------

def test_replay_of_two_steps_reuses_step_one_blocks():
    W, A, B, C, D, E = range(6)
    step1 = [(A, 12 * MiB), (B, 6 * MiB), (C, 5 * MiB), (B, FREE), (D, 8 * MiB), (A, FREE), (C, FREE), (D, FREE)]
    step2 = [(A, 12 * MiB), (B, 6 * MiB), (C, 5 * MiB), (E, 16 * MiB), (E, FREE), (C, FREE), (B, FREE), (A, FREE)]
    events = [(W, 40 * MiB)] + step1 + step2
    # W: its own 40 MiB segment. Step 1: A its own 12 MiB; B a 20 MiB segment split [6|14];
    # C from the 14: [6|5|9]; B freed leaves a 6 MiB hole; D (8 MiB) best-fits the 9 MiB tail and
    # takes it whole (1 MiB left is not split off); the frees merge the 20 MiB segment back.
    # Reserved 40 + 12 + 20 = 72 MiB. Step 2: A reuses the 12 MiB segment, B and C split the free
    # 20 MiB segment again [6|5|9], E (16 MiB) fits no free block: a new 16 MiB segment.
    # max_reserved = 40 + 12 + 20 + 16 = 88 MiB, first reached at E (event 12), 4 segments.
    r = replay(events, DEFAULT)
    assert r.max_reserved == 88 * MiB and r.at_event == 12 and r.num_segments_peak == 4
    # the allocated peak is at E too: W 40 + A 12 + B 6 + C 5 + E 16
    assert r.max_allocated == 79 * MiB
    assert (r.final_reserved, r.final_allocated, r.num_alloc_retries, r.oom) == (88 * MiB, 40 * MiB, 0, False)
    assert r.to_dict()["max_reserved"] == 88 * MiB


# -- settings ------------------------------------------------------------------------------------

def test_settings_parse_and_round_trip_through_their_text():
    s = parse_settings("expandable_segments:True, max_split_size_mb:128, roundup_power2_divisions:4")
    assert (s.expandable_segments, s.max_split_size, s.roundup_power2_divisions) == (True, 128 * MiB, (4,) * 16)
    assert s.text == "max_split_size_mb:128,roundup_power2_divisions:4,expandable_segments:True"
    bracket = parse_settings("roundup_power2_divisions:[64:8,256:4,>:1]")
    for t in (s, bracket, parse_settings("large_segment_size_mb:40,max_non_split_rounding_mb:60")):
        assert parse_settings(t.text) == t
    assert parse_settings(None) == parse_settings("") == parse_settings("default") == DEFAULT
    assert DEFAULT.text == "" and DEFAULT.to_dict()["max_split_size"] is None
    assert parse_settings("expandable") == parse_settings("expandable_segments:True")
    assert DEFAULT.max_split_size == SIZE_MAX


def test_settings_ignored_options_are_listed():
    s = parse_settings("pinned_use_background_threads:True,backend:native")
    assert s.ignored == ("pinned_use_background_threads:True", "backend:native") and s.text == ""


@pytest.mark.parametrize("text, named", [
    ("garbage_collection_threshold:0.6", "garbage_collection_threshold"),
    ("backend:cudaMallocAsync", "cudaMallocAsync"),
    ("per_process_memory_fraction:0.5", "per_process_memory_fraction"),
    ("expandable_segments:true", "expandable_segments"),
    ("max_split_size_mb:10", "max_split_size_mb"),
    ("roundup_power2_divisions:3", "roundup_power2_divisions"),
    ("no_such_option:1", "no_such_option"),
    ("max_split_size_mb", "max_split_size_mb"),
])
def test_settings_refused_in_one_line_naming_the_option(text, named):
    with pytest.raises(AllocatorSettingsError) as e:
        parse_settings(text)
    assert isinstance(e.value, UserError) and named in str(e.value) and "\n" not in str(e.value)
