from benchmarks.store_quality import final_kl, rl_label


def test_rl_label_names_only_the_ppo_settings_that_differ_from_the_defaults():
    assert rl_label({}) == "none"
    assert rl_label({"rl": "ppo", "rl_kl_coef": 0.05, "rl_lr": 1e-3}) == "ppo"
    assert rl_label({"rl": "ppo", "rl_kl_coef": 0.2}) == "ppo (kl-coef 0.2)"
    assert rl_label({"rl": "ppo", "rl_lr": 1e-4}) == "ppo (lr 0.0001)"


def test_final_kl_is_the_last_logged_step(tmp_path):
    assert final_kl(str(tmp_path)) is None
    (tmp_path / "rl_log.jsonl").write_text('{"kl": 0.0}\n{"kl": 2.5}\n')
    assert final_kl(str(tmp_path)) == 2.5


def test_build_cost_reads_minutes_memory_and_entries_per_hour_from_the_manifest():
    from benchmarks.store_quality import build_cost
    cost = build_cost({"build_seconds": 1800.0, "peak_rss_gib": 6.1, "counts": {"entries": 500}})
    assert cost == {"build_minutes": 30.0, "peak_rss_gib": 6.1, "entries_per_hour": 1000.0}
    # a store built before the fields existed shows gaps, not zeros
    assert build_cost({"counts": {"entries": 12}}) == {"build_minutes": None, "peak_rss_gib": None,
                                                      "entries_per_hour": None}


def test_completion_lines_give_the_parse_rate_without_the_continued_samples():
    from benchmarks.store_quality import completion_lines
    rows = [{"store": "a", "completed": 30, "completed_parsed": 30, "parse_rate": 59 / 96, "generated": 96},
            {"store": "b", "completed": None, "parse_rate": 0.5, "generated": 10}]
    lines = completion_lines(rows)
    assert len(lines) == 3 and lines[2] == "- a: 30 continued, 30 of them parse; parse rate 0.615, 0.302 without them"
    assert completion_lines(rows[1:]) == []


def test_earlier_rows_keep_only_the_named_stores_and_say_where_they_were_measured(tmp_path):
    import json

    import pytest

    from benchmarks.store_quality import earlier_rows, table_row
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"git_commit": "abc", "rows": [{"store": "/x/cb-s1", "entries": 5},
                                                           {"store": "/x/rte-s1", "entries": 7}]}))
    row = earlier_rows(f"{f}:cb-")
    assert len(row) == 1 and row[0]["store"] == "/x/cb-s1" and row[0]["entries"] == 5
    assert row[0]["measured_in"] == {"file": "old.json", "git_commit": "abc"}
    assert row[0]["build_minutes"] is None  # a column the older file lacks is a gap in the table, not an error
    assert "| /x/cb-s1 |" in table_row(row[0])
    assert [r["entries"] for r in earlier_rows(str(f))] == [5, 7]
    merged = tmp_path / "merged.json"  # a row read again from a merged file keeps where it was measured
    merged.write_text(json.dumps({"git_commit": "def", "rows": row}))
    assert earlier_rows(str(merged))[0]["measured_in"] == {"file": "old.json", "git_commit": "abc"}
    with pytest.raises(SystemExit, match="no row"):
        earlier_rows(f"{f}:copa")
    with pytest.raises(SystemExit, match="cannot read"):
        earlier_rows(str(tmp_path / "missing.json"))
