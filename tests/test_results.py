"""results.py: atomic appends, torn lines, resume ids, schema refusal, environment."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from lamda_bench.results import files as results
from lamda_bench.results.files import (
    SCHEMA_VERSION,
    ResultsError,
    append_record,
    completed_ids,
    environment,
    fingerprint,
    load_records,
    load_results,
)


def rec(i, status="ok", **kw):
    return {"id": f"cell-{i}", "status": status, "error": None, **kw}


def test_append_then_load_round_trips(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    append_record(path, rec(1, memory={"peak": 2**40}))
    append_record(path, rec(2, status="oom"))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3  # two complete, newline-terminated lines
    records = load_records(path)
    assert [r["id"] for r in records] == ["cell-1", "cell-2"]
    assert records[0]["schema"] == SCHEMA_VERSION
    assert records[0]["memory"]["peak"] == 2**40  # raw bytes, not scaled


def test_missing_file_is_empty(tmp_path):
    assert load_records(tmp_path / "nope.jsonl") == []
    assert completed_ids(tmp_path / "nope.jsonl") == set()


def test_torn_last_line_is_skipped_and_reported(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, rec(1))
    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"id": "cell-2", "status": "o')
    loaded = load_results(path)
    assert [r["id"] for r in loaded.records] == ["cell-1"]
    assert loaded.skipped_lines == [2]
    assert "line 2" in loaded.warnings(path)[0]
    # The next append must not glue itself onto the fragment.
    append_record(path, rec(3))
    loaded = load_results(path)
    assert [r["id"] for r in loaded.records] == ["cell-1", "cell-3"]
    assert loaded.skipped_lines == [2]


def test_incompatible_schema_is_one_clear_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"schema": 99, "id": "x", "status": "ok"}) + "\n")
    with pytest.raises(ResultsError) as e:
        load_records(path)
    msg = str(e.value)
    assert "\n" not in msg and "schema" in msg and str(path) in msg and "incompatible" in msg


def test_record_without_schema_is_incompatible(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"id": "x", "status": "ok"}) + "\n")
    with pytest.raises(ResultsError):
        load_records(path)


def test_append_refuses_foreign_schema(tmp_path):
    with pytest.raises(ResultsError):
        append_record(tmp_path / "r.jsonl", {"id": "x", "status": "ok", "schema": 0})
    assert not (tmp_path / "r.jsonl").exists()


def test_completed_ids_and_retry_failed(tmp_path):
    path = tmp_path / "results.jsonl"
    for i, status in enumerate(["ok", "oom", "error", "timeout"]):
        append_record(path, rec(i, status=status))
    assert completed_ids(path) == {"cell-0", "cell-1", "cell-2", "cell-3"}
    assert completed_ids(path, retry_failed=True) == {"cell-0", "cell-1"}
    # A retry that succeeded supersedes the failed attempt.
    append_record(path, rec(2, status="ok"))
    assert completed_ids(path, retry_failed=True) == {"cell-0", "cell-1", "cell-2"}


def _append_many(path, worker, n):
    for i in range(n):
        append_record(path, rec(f"{worker}-{i}", pad="x" * 20000))


def test_concurrent_appends_never_interleave(tmp_path):
    # Only the launcher parent writes in practice; O_APPEND single writes hold even so.
    path = tmp_path / "results.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 20)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    loaded = load_results(path)
    assert loaded.skipped_lines == []
    assert len(loaded.records) == 60


def test_environment_fields_and_fingerprint(tmp_path, monkeypatch):
    env = environment(device_name="cpu")
    for key in ("torch", "transformers", "peft", "python", "harness", "git_commit", "platform",
                "device_name", "driver", "cuda", "PYTORCH_CUDA_ALLOC_CONF", "fingerprint"):
        assert key in env
    assert env["torch"] and env["harness"]
    assert env["fingerprint"] == fingerprint(env)
    # The commit does not change the fingerprint; the device and the allocator settings do.
    assert fingerprint({**env, "git_commit": "abc"}) == env["fingerprint"]
    assert fingerprint({**env, "device_class": "NVIDIA H100"}) != env["fingerprint"]
    # The CPU model is reported but does not change byte counts, so it is not fingerprinted.
    cpu = environment(device_name="Intel Xeon", device_class="cpu")
    assert cpu["fingerprint"] == environment(device_name="AMD EPYC", device_class="cpu")["fingerprint"]
    assert fingerprint({**env, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}) != env["fingerprint"]
    assert "hostname" not in json.dumps(env).lower()
    assert os.uname().nodename not in json.dumps(env) or os.uname().nodename in ("", "localhost")


def test_git_commit_outside_git_does_not_crash(tmp_path):
    assert results.git_commit(tmp_path) == (None, None)
