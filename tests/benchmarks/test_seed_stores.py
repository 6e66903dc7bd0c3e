import json

from benchmarks.seed_stores import SeedStoresBench, _run


def _write(folder, method, seed, main):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"sst2__{method}__s{seed}.json").write_text(
        json.dumps({"task": "sst2", "method": method, "seed": seed, "main": main}))


def test_flat_layout_finds_each_row_in_its_own_folder(tmp_path):
    _write(tmp_path / "runs", "kd", 1, 0.70)
    _write(tmp_path / "runs", "retrikt", 1, 0.72)
    _write(tmp_path / "no-relational", "retrikt", 1, 0.71)
    _write(tmp_path / "kd-oracle", "kd", 1, 0.75)
    cfg = SeedStoresBench(runs=str(tmp_path))
    got = {row: (_run(cfg, row, 1) or {}).get("main") for row in ("kd", "retrikt", "retrikt-no-relational",
                                                                   "kd-oracle", "retrikt-teacher-keys")}
    assert got == {"kd": 0.70, "retrikt": 0.72, "retrikt-no-relational": 0.71, "kd-oracle": 0.75,
                   "retrikt-teacher-keys": None}
    assert _run(cfg, "kd", 2) is None  # another seed's run is never taken


def test_per_seed_layout_wins_over_the_flat_one(tmp_path):
    _write(tmp_path / "runs", "kd", 1, 0.70)
    _write(tmp_path / "sst2-s1" / "kd", "kd", 1, 0.66)
    assert _run(SeedStoresBench(runs=str(tmp_path)), "kd", 1)["main"] == 0.66
