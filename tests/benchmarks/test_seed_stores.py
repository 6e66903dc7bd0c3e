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


def test_store_stats_of_gone_folders_come_from_the_previous_table_and_say_so(tmp_path):
    from benchmarks.seed_stores import _all_store_stats
    store = tmp_path / "stores" / "sst2-qwen-0.5b-s3"
    store.mkdir(parents=True)
    (store / "manifest.json").write_text(json.dumps({"counts": {"entries": 512}, "stats": {}, "build_seconds": 3600}))
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"config": {"task": "sst2", "store_suffix": ""},
                                "stores": {"1": {"entries": 567}, "3": {"entries": 216}},
                                "oracles": {"1": {"entries": 217}}}))
    cfg = SeedStoresBench(task="sst2", seeds=[1, 2, 3], stores=str(tmp_path / "stores"), previous=str(prev))
    stores, oracles, carried = _all_store_stats(cfg)
    # a store on disk wins over the earlier table; a seed in neither has none
    assert [(stores[s] or {}).get("entries") for s in (1, 2, 3)] == [567, None, 512]
    assert oracles[1] == {"entries": 217} and oracles[3] is None
    assert carried == ["store seed 1", "oracle seed 1"]
    assert _all_store_stats(SeedStoresBench(task="sst2", seeds=[1], stores=str(tmp_path / "stores")))[2] == []


def test_previous_table_of_another_task_is_refused(tmp_path):
    import pytest
    from benchmarks.seed_stores import _all_store_stats
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"config": {"task": "cb", "store_suffix": ""}, "stores": {"1": {"entries": 5}}}))
    with pytest.raises(SystemExit, match="task 'cb', not 'sst2'"):
        _all_store_stats(SeedStoresBench(task="sst2", seeds=[1], stores=str(tmp_path), previous=str(prev)))


def test_extra_rows_are_read_from_their_folder_and_listed_before_the_oracle(tmp_path):
    import pytest
    from benchmarks.seed_stores import _rows
    _write(tmp_path / "rel3", "retrikt", 2, 0.74)
    cfg = SeedStoresBench(runs=str(tmp_path), extra=["rel3=retrikt, relational weight 3"])
    rows, retrikt_rows = _rows(cfg)
    names = [r for r, _ in rows]
    assert names.index("retrikt-no-relational") < names.index("rel3") < names.index("kd-oracle")
    assert retrikt_rows[-1] == "rel3" and _run(cfg, "rel3", 2)["main"] == 0.74
    for bad in ("rel3", "kd=again", "=label"):  # no label; a built-in row; no name
        with pytest.raises(SystemExit, match="name=label"):
            _rows(SeedStoresBench(extra=[bad]))
    # a kd* row is read as kd runs, per seed's folder too, and has no retrieval variants to list
    _write(tmp_path / "sst2-s2" / "kd-prior", "kd", 2, 0.71)
    _write(tmp_path / "sst2-s2" / "kd-prior", "retrikt", 2, 0.90)
    cfg = SeedStoresBench(runs=str(tmp_path), extra=["kd-prior=kd, k-shot prior"])
    rows, retrikt_rows = _rows(cfg)
    assert ("kd-prior", "kd, k-shot prior") in rows and "kd-prior" not in retrikt_rows
    assert _run(cfg, "kd-prior", 2)["main"] == 0.71


def test_paired_rows_are_compared_on_their_predictions_by_row_name(tmp_path):
    from benchmarks.seed_stores import _paired_lines
    y = [0, 1] * 10

    def run(preds):
        return {"task": "sst2", "method": "retrikt", "seed": 1, "main": 0.0,
                "predictions": [{"idx": i, "label": g, "pred": p} for i, (g, p) in enumerate(zip(y, preds))]}
    # both runs are retrikt runs; the rows' names are what pairs them
    runs = {("retrikt", 1): run(y), ("retrikt-prior", 1): run([1 - g for g in y[:4]] + y[4:]), ("kd", 1): None}
    lines = "\n".join(_paired_lines(SeedStoresBench(paired=["retrikt:retrikt-prior", "retrikt:kd"]), runs))
    assert "| retrikt − retrikt-prior | sst2 | +20.0 | +20.0 | 1 / 1 | 4 / 0 | 0.125 |" in lines
    assert "retrikt − kd" not in lines  # no kd run: nothing to pair
    assert _paired_lines(SeedStoresBench(paired=["none"]), runs) == []
