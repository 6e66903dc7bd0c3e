import sys

from benchmarks.peak_ram import PeakRamBench, commands, measure, table


def test_measure_reports_the_childs_own_peak_and_failure():
    big = measure([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    small = measure([sys.executable, "-c", "pass"])
    assert big["exit_code"] == 0 and big["peak_rss_gib"] > 0.29 > small["peak_rss_gib"]
    bad = measure([sys.executable, "-c", "raise SystemExit('no such model: foo')"])
    assert bad["exit_code"] == 1 and bad["error"] == "no such model: foo"


def test_stage_commands_share_the_store_and_pass_smoke():
    cmds = commands(PeakRamBench(tiny=True), "/w")
    store = cmds["build"][cmds["build"].index("--out") + 1]
    assert cmds["retrikt"][cmds["retrikt"].index("--store") + 1] == store
    assert all("--smoke" in c for s, c in cmds.items() if s != "import")
    rows = {"import": {"peak_rss_gib": 0.5, "wall_s": 1, "exit_code": 0},
            "build": {"peak_rss_gib": 2.0, "wall_s": 9, "exit_code": 0}}
    assert "| build | 2.00 | 4.0 | 9 | 0 |" in table(rows)
