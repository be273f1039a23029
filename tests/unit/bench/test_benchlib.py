"""The benchmark's pure logic: sizes, lists, parsing of what the VM reports,
medians, ratios, tables and the issue's targets."""
import pytest

import benchlib
from benchlib import Sample


def sample(scenario, contender, seconds, ok=True, run=0, **kw):
    return Sample(scenario=scenario, contender=contender, run=run, ok=ok, seconds=seconds, **kw)


# -- sizes and lists -----------------------------------------------------------

@pytest.mark.parametrize("text,size", [("2G", 2 << 30), ("512M", 512 << 20), ("64k", 64 << 10),
                                       ("1048576", 1 << 20), ("2GiB", 2 << 30)])
def test_parse_size_reads_binary_units(text, size):
    assert benchlib.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "2T", "1.5G", "G", "-1M"])
def test_parse_size_rejects_what_it_cannot_read(text):
    with pytest.raises(ValueError):
        benchlib.parse_size(text)


def test_format_size_picks_the_largest_whole_unit():
    assert benchlib.format_size(2 << 30) == "2 GiB"
    assert benchlib.format_size(1536 << 20) == "1536 MiB"
    assert benchlib.format_size(100) == "100 B"


def test_parse_list_keeps_the_canonical_order():
    assert benchlib.parse_list("bzfs,raw", benchlib.CONTENDERS) == ["raw", "bzfs"]
    assert benchlib.parse_list("3,1", [1, 2, 3, 4], int) == [1, 3]
    assert benchlib.parse_list("all", [1, 2]) == [1, 2]


def test_parse_list_names_the_unknown_item():
    with pytest.raises(ValueError, match="rsync"):
        benchlib.parse_list("raw,rsync", benchlib.CONTENDERS)
    with pytest.raises(ValueError):
        benchlib.parse_list(" , ", benchlib.CONTENDERS)


def test_run_order_rotates_so_no_contender_is_always_first():
    names = ["a", "b", "c"]
    firsts = {benchlib.run_order(names, run)[0] for run in range(3)}
    assert firsts == {"a", "b", "c"}
    assert sorted(benchlib.run_order(names, 4)) == names
    assert benchlib.run_order([], 2) == []


# -- parsing ----------------------------------------------------------------------

def test_parse_proc_stat_survives_spaces_and_parentheses_in_the_name():
    fields = ["S"] + ["0"] * 10 + ["700", "300", "50", "25"] + ["0"] * 30
    text = "1234 (python3 (x) y) " + " ".join(fields)
    assert benchlib.parse_proc_stat(text) == {"self": 1000, "children": 75}


def test_parse_shim_log_reads_calls_and_skips_broken_lines():
    lines = ["100.0 100.5 0 recv list -H -o name x", "garbage", "101.0 101.25 1 send send -p a@b",
             "102.0 notatime 0 tool list"]
    calls = benchlib.parse_shim_log(lines)
    assert [(c.side, c.subcommand, c.status) for c in calls] == [("recv", "list", 0), ("send", "send", 1)]
    assert calls[0].end - calls[0].start == pytest.approx(0.5)


def test_summarize_calls_counts_per_side_and_subcommand_inside_the_window():
    calls = benchlib.parse_shim_log(["10 11 0 recv list", "12 12.5 0 recv list", "13 14 0 send send",
                                     "50 51 0 recv list"])
    summary = benchlib.summarize_calls(calls, since=10, until=20)
    assert summary["recv list"] == {"count": 2, "seconds": pytest.approx(1.5)}
    assert summary["send send"]["count"] == 1
    assert summary["total"]["count"] == 3


def test_zfsync_bytes_reads_the_json_report():
    assert benchlib.zfsync_bytes({"bytes": 4096, "ok": True}) == 4096
    assert benchlib.zfsync_bytes({"ok": False}) is None
    assert benchlib.zfsync_bytes(None) is None


# -- numbers ----------------------------------------------------------------------

def test_median_ignores_missing_values():
    assert benchlib.median([3.0, None, 1.0, 2.0]) == 2.0
    assert benchlib.median([4.0, 1.0]) == 2.5
    assert benchlib.median([None]) is None


def test_ratio_needs_both_values():
    assert benchlib.ratio(3.0, 2.0) == 1.5
    assert benchlib.ratio(None, 2.0) is None
    assert benchlib.ratio(3.0, 0.0) is None


def test_aggregate_takes_medians_of_good_runs_and_ratios_to_raw():
    samples = [sample(2, "raw", s, run=r) for r, s in enumerate([2.0, 4.0, 3.0])]
    samples += [sample(2, "zfsync-4", s, run=r, cpu={"total": 1.0, "py_send": 0.5, "py_recv": 0.25})
                for r, s in enumerate([6.0, 9.0, 7.5])]
    samples += [sample(2, "bzfs", None, ok=False, error="bzfs: not found")]
    samples += [sample(1, "raw", 100.0)]  # another scenario: ignored
    rows = {r.contender: r for r in benchlib.aggregate(samples, 2, ["raw", "zfsync-4", "bzfs"])}
    assert rows["raw"].seconds == 3.0 and rows["raw"].ratio == 1.0
    assert rows["zfsync-4"].seconds == 7.5 and rows["zfsync-4"].ratio == 2.5
    assert rows["zfsync-4"].cpu_python == 0.75
    assert rows["bzfs"].seconds is None and rows["bzfs"].ok == 0 and rows["bzfs"].runs == 1
    assert rows["bzfs"].error == "bzfs: not found"


def test_a_failed_run_does_not_count_towards_the_median():
    samples = [sample(3, "raw", 1.0), sample(3, "loop", 0.1, ok=False, error="x"), sample(3, "loop", 5.0)]
    rows = {r.contender: r for r in benchlib.aggregate(samples, 3, ["raw", "loop"])}
    assert rows["loop"].seconds == 5.0 and rows["loop"].ok == 1 and rows["loop"].runs == 2


def test_per_dataset_and_per_gib():
    assert benchlib.per_dataset_ms(2.01, 201) == pytest.approx(10.0)
    assert benchlib.per_dataset_ms(None, 201) is None
    assert benchlib.per_gib(3.0, 2 << 30) == pytest.approx(1.5)


# -- tables -----------------------------------------------------------------------

def test_render_table_is_a_pipe_table_with_aligned_columns():
    text = benchlib.render_table(["name", "s"], [["raw", "1.00"], ["zfsync-4", "12.50"]])
    lines = text.splitlines()
    assert lines[0] == "| name     |     s |"
    assert lines[1] == "|----------|------:|"
    assert lines[3] == "| zfsync-4 | 12.50 |"
    assert len({len(l) for l in lines}) == 1


def test_scenario_table_shows_ms_per_dataset_for_the_tree_and_throughput_for_the_big_one():
    rows = benchlib.aggregate([sample(3, "raw", 2.01)], 3, ["raw"])
    assert "ms/dataset" in benchlib.scenario_table(rows, 3, 201, 0)
    assert " 10.0 |" in benchlib.scenario_table(rows, 3, 201, 0)
    rows = benchlib.aggregate([sample(4, "raw", 20.48)], 4, ["raw"])
    table = benchlib.scenario_table(rows, 4, 1, 2 << 30)
    assert "MiB/s" in table and "100.0" in table


def test_a_failure_shows_its_reason_in_the_table_not_a_number():
    rows = benchlib.aggregate([sample(1, "raw", 1.0), sample(1, "syncoid", None, ok=False,
                                                             error="exit 2: mbuffer: not found\nmore")],
                              1, ["raw", "syncoid"])
    line = [l for l in benchlib.scenario_table(rows, 1, 10, 0).splitlines() if "syncoid" in l][0]
    assert "exit 2: mbuffer: not found" in line and "0/1" in line and "more" not in line


def test_short_error_cuts_and_keeps_pipes_out_of_table_cells():
    assert benchlib.short_error("\n  a|b  \nc") == "a/b"
    assert len(benchlib.short_error("x" * 200, 20)) == 20


# -- targets ----------------------------------------------------------------------

def full_set(z4_s2, z4_s3, z4_s4, peer=10.0):
    samples = [sample(s, "raw", 1.0) for s in (2, 3)] + [sample(4, "raw", 10.0)]
    samples += [sample(2, "zfsync-4", z4_s2), sample(3, "zfsync-4", z4_s3), sample(4, "zfsync-4", z4_s4)]
    samples += [sample(s, p, peer) for s in (2, 3) for p in ("loop", "syncoid", "zfs-autobackup", "bzfs")]
    return samples


def test_targets_met():
    targets = benchlib.check_targets(full_set(1.5, 1.9, 11.0), benchlib.CONTENDERS)
    assert [t.met for t in targets] == [True] * 7


def test_the_shell_loop_is_a_baseline_not_a_peer():
    samples = full_set(1.5, 1.9, 11.0)
    samples = [s for s in samples if s.contender != "loop"] + [sample(s, "loop", 1.0) for s in (2, 3)]
    targets = {t.name: t for t in benchlib.check_targets(samples, benchlib.CONTENDERS)}
    assert targets["scenario 2: zfsync-4 faster than every peer"].met is True
    assert targets["scenario 2: (baseline) zfsync-4 faster than the shell loop"].met is False


def test_targets_missed_say_by_how_much():
    targets = {t.name: t for t in benchlib.check_targets(full_set(2.5, 12.0, 12.0), benchlib.CONTENDERS)}
    assert targets["scenario 4: zfsync within 1.15x of the raw pipe"].met is False
    assert targets["scenario 4: zfsync within 1.15x of the raw pipe"].detail == "zfsync-4 at 1.20x"
    assert targets["scenario 2: zfsync-4 within 2x of raw -R -I"].met is False
    faster = targets["scenario 3: zfsync-4 faster than every peer"]
    assert faster.met is False and "not faster than: syncoid, zfs-autobackup, bzfs" in faster.detail


def test_a_peer_that_did_not_run_is_said_so():
    samples = full_set(1.5, 1.9, 11.0)
    samples = [s for s in samples if s.contender != "bzfs"] + [sample(2, "bzfs", None, ok=False, error="x")]
    target = {t.name: t for t in benchlib.check_targets(samples, benchlib.CONTENDERS)}[
        "scenario 2: zfsync-4 faster than every peer"]
    assert "did not run: bzfs" in target.detail
    assert target.met is None


def test_targets_not_measured_are_neither_met_nor_missed():
    targets = benchlib.check_targets([sample(1, "raw", 1.0)], benchlib.CONTENDERS)
    assert all(t.met is None for t in targets)
    assert "NOT MEASURED" in benchlib.format_targets(targets)


def test_parse_importtime_lists_stdlib_imports_slowest_first_without_ours():
    text = ("import time: self [us] | cumulative | imported package\n"
            "import time:       100 |        100 |   _io\n"
            "import time:       500 |       2500 | ssl\n"
            "import time:       300 |        300 |     _ssl\n"
            "import time:       200 |      90000 | zfsync.cli\n")
    assert benchlib.parse_importtime(text) == [["ssl", 2500, 0], ["_ssl", 300, 2], ["_io", 100, 1]]


def test_summary_table_has_a_column_per_scenario_and_says_what_did_not_run():
    samples = [sample(1, "raw", 2.0), sample(1, "zfsync-4", 5.0), sample(4, "raw", 10.0),
               sample(4, "zfsync-4", None, ok=False, error="x")]
    text = benchlib.summary_table(samples, ["raw", "zfsync-4", "loop"], [1, 4], big_contenders=["raw", "zfsync-4"])
    lines = text.splitlines()
    assert "scenario 1" in lines[0] and "scenario 4" in lines[0]
    assert "5.0 s (2.50x)" in lines[3] and "failed" in lines[3]
    loop = lines[4].split("|")
    assert loop[2].strip() == "-" and loop[3].strip() == ""
