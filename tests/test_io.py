import json
import os
import subprocess
import sys

import pytest

from retrikt.io import (IntegrityError, RetriktError, append_jsonl, atomic_path, atomic_write_json, folder_lock,
                        read_jsonl, read_manifest, run_metadata, write_manifest)


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"a": 1})
    append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RetriktError, match="line 2"):
        read_jsonl(p)


def test_manifest_detects_truncation_edit_and_deletion(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abcdef")
    (tmp_path / "y.txt").write_text("hello")
    write_manifest(tmp_path, {"schema_version": 1}, ["x.bin", "y.txt"])
    assert read_manifest(tmp_path)["schema_version"] == 1
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(IntegrityError, match="x.bin.*truncated"):
        read_manifest(tmp_path)
    (tmp_path / "x.bin").write_bytes(b"abcdeX")
    with pytest.raises(IntegrityError, match="x.bin.*sha256"):
        read_manifest(tmp_path)
    (tmp_path / "x.bin").unlink()
    with pytest.raises(IntegrityError, match="x.bin.*missing"):
        read_manifest(tmp_path)
    with pytest.raises(IntegrityError, match="no manifest.json"):
        read_manifest(tmp_path / "nothing")


def test_folder_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(proc.pid))
        with pytest.raises(RetriktError, match=f"in use by process {proc.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path) as lock:  # owner is dead now: stale lock is taken over
        assert lock.read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_run_metadata_carries_config_seeds_versions():
    from dataclasses import dataclass

    @dataclass
    class C:
        a: int = 3

    meta = run_metadata(C(), seeds=[1, 2])
    assert meta["config"] == {"a": 3} and meta["seeds"] == [1, 2]
    assert "torch" in meta["versions"] and "python" in meta["versions"]
    assert "git_commit" in meta


def test_the_commit_is_read_when_a_run_parses_its_config_not_when_it_saves(monkeypatch):
    import subprocess
    from dataclasses import dataclass

    from retrikt import io
    from retrikt.config import parse_config

    @dataclass
    class C:
        a: int = 3

    io.git_commit.cache_clear()
    calls = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    parse_config(C, [])
    assert calls and calls[0][:2] == ["git", "rev-parse"]
    n = len(calls)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the commit was read again at save time"))
    first = io.git_commit()
    assert io.run_metadata(C())["git_commit"] == first and len(calls) == n


def test_an_edited_manifest_is_refused_and_one_without_its_hash_is_legacy(tmp_path):
    import json

    from retrikt.io import MANIFEST_HASH, IntegrityError, read_manifest, write_manifest
    (tmp_path / "a.bin").write_bytes(b"x")
    write_manifest(tmp_path, {"schema_version": 1, "teacher": "qwen-0.5b"}, ["a.bin"])
    assert read_manifest(tmp_path)["teacher"] == "qwen-0.5b"
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(m, teacher="qwen-1.5b")))
    with pytest.raises(IntegrityError, match="edited after it was written"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_HASH).unlink()   # written before manifests carried their own hash
    assert read_manifest(tmp_path)["teacher"] == "qwen-1.5b"


def test_edited_results_and_docs_do_not_mark_the_commit_dirty_but_edited_code_does(tmp_path):
    import subprocess

    from retrikt.io import commit_of

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "retrikt").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    files = {"retrikt/a.py": "x = 1\n", "benchmarks/results/t.json": "{}\n", "README.md": "r\n",
             "benchmarks/results/p.png": "p", "train/c.yaml": "a: 1\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    head = commit_of(tmp_path)
    assert len(head) == 40
    for name in ("benchmarks/results/t.json", "README.md", "benchmarks/results/p.png"):
        (tmp_path / name).write_text("changed\n")
    (tmp_path / "untracked.py").write_text("y = 2\n")
    assert commit_of(tmp_path) == head
    (tmp_path / "train/c.yaml").write_text("a: 2\n")
    assert commit_of(tmp_path) == head + "-dirty"
    git("checkout", "--", "train/c.yaml")
    (tmp_path / "retrikt/a.py").write_text("x = 2\n")
    assert commit_of(tmp_path) == head + "-dirty"


def test_peak_rss_is_read_afresh_on_every_call(monkeypatch):
    import resource
    from types import SimpleNamespace

    from retrikt import io
    peaks = iter([1024 ** 2, 3 * 1024 ** 2])  # KiB, as Linux reports ru_maxrss
    monkeypatch.setattr(io.sys, "platform", "linux")
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=next(peaks)))
    # a cached value would report the first peak forever (a build's manifest would show the import's memory)
    assert [io.peak_rss_gib(), io.peak_rss_gib()] == [1.0, 3.0]
