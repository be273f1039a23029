"""zfsyncron snapshot naming, classes, retention and window: pure logic."""
import datetime
import os
import time

import pytest

from zfsync.snapshots import (
    DAILY, HOURLY, MINUTELY, SECONDLY, CronName, Retention, Snapshot, check_fixed_name, classify,
    expired, expired_all, format_name, next_name, parse_name, plan_cron_run, plan_snapshot,
    snapshot_due, window_met)


@pytest.fixture(autouse=True)
def utc():
    """Names are local time; pin the zone so the expectations are exact."""
    with timezone("UTC"):
        yield


class timezone:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.saved = os.environ.get("TZ")
        os.environ["TZ"] = self.name
        time.tzset()

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = self.saved
        time.tzset()


def epoch(text):
    """'2024-01-15 12:00:07' in the current local zone -> epoch seconds."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def snaps(*names):
    return [Snapshot(n) for n in names]


# -- names ---------------------------------------------------------------------

def test_name_is_yymmdd_hhmmss_and_class():
    assert format_name(at("2024-01-05 07:08:09"), DAILY) == "240105-070809_D"


def test_name_uses_local_time_not_utc():
    with timezone("Europe/Paris"):
        name = next_name([], 1705320007)  # 2024-01-15 12:00:07 UTC
    assert name == ("240115-130007_D", DAILY)


def test_parse_name_gives_time_and_class():
    assert parse_name("240115-130007_H") == CronName(at("2024-01-15 13:00:07"), HOURLY)


@pytest.mark.parametrize("name", [
    "240115-130007", "240115-130007_X", "240115-130007_S2", "x240115-130007_S", "backup_S",
    "241315-130007_D",  # month 13
    "240115-250007_D",  # hour 25
    "2401151-30007_D", "",
])
def test_parse_name_refuses_anything_else(name):
    assert parse_name(name) is None


def test_format_then_parse_round_trips():
    taken = at("2031-12-31 23:59:59")
    assert parse_name(format_name(taken, MINUTELY)) == CronName(taken, MINUTELY)


def test_format_refuses_unknown_class():
    with pytest.raises(ValueError):
        format_name(at("2024-01-01 00:00:00"), "X")


@pytest.mark.parametrize("name", ["nightly", "before-upgrade.2024", "a b"])
def test_fixed_names_that_can_travel_are_accepted(name):
    check_fixed_name(name)


@pytest.mark.parametrize("name", ["", "a@b", "a/b", "a:b", "..", "x" * 256, "tab\there"])
def test_fixed_names_that_cannot_travel_are_refused(name):
    with pytest.raises(ValueError, match="cannot be used"):
        check_fixed_name(name)


# -- classes -----------------------------------------------------------------------

@pytest.mark.parametrize("previous, now, expected", [
    ("2024-01-15 12:00:07", "2024-01-15 12:00:59", SECONDLY),
    ("2024-01-15 12:00:59", "2024-01-15 12:01:00", MINUTELY),
    ("2024-01-15 12:00:07", "2024-01-15 12:59:59", MINUTELY),
    ("2024-01-15 12:59:59", "2024-01-15 13:00:00", HOURLY),
    ("2024-01-15 00:00:00", "2024-01-15 23:59:59", HOURLY),
    ("2024-01-15 23:59:59", "2024-01-16 00:00:00", DAILY),
    ("2024-01-15 12:00:07", "2024-01-16 12:00:07", DAILY),  # same time of day, next day
    ("2024-01-15 12:00:07", "2024-02-15 12:00:07", DAILY),  # same day of month, next month
    ("2024-01-15 12:00:07", "2025-01-15 12:00:07", DAILY),
])
def test_class_compares_with_the_previous_snapshot(previous, now, expected):
    assert classify(at(now), at(previous)) == expected


def test_first_snapshot_is_daily():
    assert classify(at("2024-01-15 12:00:07"), None) == DAILY


def test_class_comes_from_the_newest_snapshot_only():
    existing = snaps("240115-120000_D", "240115-120030_S")
    assert next_name(existing, epoch("2024-01-15 12:00:45")) == ("240115-120045_S", SECONDLY)
    # the older one in the same minute does not matter once a newer one is elsewhere
    existing = snaps("240115-120000_D", "240115-110000_H")
    assert next_name(existing, epoch("2024-01-15 12:00:45")) == ("240115-120045_H", HOURLY)


def test_newest_without_zfsyncron_name_counts_by_creation_time():
    existing = [Snapshot("240114-000000_D"), Snapshot("before-upgrade", created=epoch("2024-01-15 12:00:01"))]
    assert next_name(existing, epoch("2024-01-15 12:00:45")) == ("240115-120045_S", SECONDLY)


def test_newest_without_name_time_or_creation_makes_daily():
    assert next_name(snaps("manual"), epoch("2024-01-15 12:00:45")) == ("240115-120045_D", DAILY)


# -- retention -----------------------------------------------------------------------

def test_retention_defaults_are_the_originals():
    assert Retention() == Retention(secondly=1, minutely=4, hourly=3, daily=2)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_retention_refuses_non_counts(value):
    with pytest.raises(ValueError):
        Retention(daily=value)


@pytest.mark.parametrize("keep, destroyed", [
    (0, ["240115-120001_M", "240115-120101_M", "240115-120201_M"]),
    (1, ["240115-120001_M", "240115-120101_M"]),
    (2, ["240115-120001_M"]),
    (3, []),
    (9, []),
])
def test_expired_keeps_the_newest_n_of_a_class(keep, destroyed):
    names = ["240115-110001_H", "240115-120001_M", "240115-120101_M", "240115-120130_S", "240115-120201_M"]
    assert expired(names, MINUTELY, keep) == destroyed


def test_expired_ignores_names_that_only_end_like_a_class():
    # the original's egrep "_M$" would have destroyed both
    assert expired(["backup_M", "my-240115-120001_M", "240115-120001_M"], MINUTELY, 0) == ["240115-120001_M"]


def test_expired_goes_by_creation_order_not_name_order():
    # The clock went back an hour (end of DST): the newest has the older name.
    names = ["240115-025500_M", "240115-023000_M"]
    assert expired(names, MINUTELY, 1) == ["240115-025500_M"]


def test_expired_all_trims_every_class_and_keeps_other_names():
    names = ["240113-000000_D", "240114-000000_D", "240115-000000_D", "manual",
             "240115-010000_H", "240115-020000_H", "240115-020100_M", "240115-020101_S", "240115-020102_S"]
    assert expired_all(names, Retention(secondly=1, minutely=4, hourly=1, daily=2)) == \
        ["240113-000000_D", "240115-010000_H", "240115-020101_S"]


def test_cron_run_prunes_only_the_class_it_made():
    existing = snaps("240113-000000_D", "240114-000000_D", "240115-000000_D",  # 3 D, over the count of 2
                     "240115-010000_H", "240115-010100_M", "240115-010130_S")
    plan = plan_cron_run(existing, epoch("2024-01-15 01:01:40"), Retention())

    assert (plan.create, plan.snapshot_class) == ("240115-010140_S", SECONDLY)
    assert plan.destroy == ("240115-010130_S",)
    assert plan.after[:3] == ("240113-000000_D", "240114-000000_D", "240115-000000_D")


def test_cron_run_with_count_zero_destroys_the_new_snapshot_too():
    plan = plan_cron_run(snaps("240115-010000_D"), epoch("2024-01-15 01:00:30"), Retention(secondly=0))
    assert plan.create == "240115-010030_S"
    assert plan.destroy == ("240115-010030_S",)
    assert plan.after == ("240115-010000_D",)


def test_retention_table_over_a_day_of_runs_every_20_minutes():
    existing = []
    start = epoch("2024-01-15 00:00:07")
    for run in range(72):
        plan = plan_cron_run(existing, start + run * 1200, Retention())
        existing = snaps(*plan.after)
    assert [s.name for s in existing] == [
        "240115-000007_D",
        "240115-210007_H", "240115-220007_H",
        "240115-222007_M", "240115-224007_M", "240115-230007_H",
        "240115-232007_M", "240115-234007_M",
    ]


# -- the module's plan ----------------------------------------------------------------

def test_module_plan_with_fixed_name_is_idempotent():
    assert plan_snapshot(snaps("a"), epoch("2024-01-15 12:00:00"), name="nightly").create == "nightly"
    plan = plan_snapshot(snaps("a", "nightly"), epoch("2024-01-15 12:00:00"), name="nightly")
    assert not plan.changes
    assert plan.after == ("a", "nightly")


def test_module_plan_refuses_a_bad_fixed_name():
    with pytest.raises(ValueError, match="cannot be used"):
        plan_snapshot([], 0, name="a@b")


def test_module_plan_generates_a_name_and_trims_all_classes():
    existing = snaps("240113-000000_D", "240114-000000_D", "240115-000000_S", "240115-000001_S")
    plan = plan_snapshot(existing, epoch("2024-01-15 12:00:00"), retention=Retention())
    assert (plan.create, plan.snapshot_class) == ("240115-120000_H", HOURLY)
    assert plan.destroy == ("240115-000000_S",)


def test_module_plan_without_retention_destroys_nothing():
    existing = snaps(*("240115-0000%02d_S" % s for s in range(5)))
    assert plan_snapshot(existing, epoch("2024-01-15 12:00:00")).destroy == ()


def test_module_plan_inside_min_interval_creates_nothing_but_still_trims():
    existing = snaps("240115-110000_S", "240115-115000_S")
    plan = plan_snapshot(existing, epoch("2024-01-15 12:00:00"), retention=Retention(), min_interval=3600)
    assert plan.create is None and plan.snapshot_class is None
    assert plan.destroy == ("240115-110000_S",)


def test_module_plan_in_the_same_second_takes_a_secondly_snapshot():
    plan = plan_snapshot(snaps("240115-120000_D"), epoch("2024-01-15 12:00:00"))
    assert plan.create == "240115-120000_S"


def test_module_plan_with_the_generated_name_already_there_creates_nothing():
    existing = [Snapshot("240115-120000_H"), Snapshot("manual", created=epoch("2024-01-15 11:30:00"))]
    plan = plan_snapshot(existing, epoch("2024-01-15 12:00:00"))
    assert not plan.changes


@pytest.mark.parametrize("newest, now, min_interval, due", [
    ("240115-115000_M", "2024-01-15 12:00:00", 0, True),
    ("240115-115000_M", "2024-01-15 12:00:00", 601, False),
    ("240115-115000_M", "2024-01-15 12:00:00", 600, True),
    ("240115-130000_M", "2024-01-15 12:00:00", 600, True),  # from the future: the clock went back
])
def test_snapshot_due_after_min_interval(newest, now, min_interval, due):
    assert snapshot_due(snaps(newest), epoch(now), min_interval) is due


def test_snapshot_due_looks_at_zfsyncron_names_only():
    existing = [Snapshot("240115-100000_D"), Snapshot("manual", created=epoch("2024-01-15 11:59:00"))]
    assert snapshot_due(existing, epoch("2024-01-15 12:00:00"), 600)
    assert snapshot_due(snaps("manual"), epoch("2024-01-15 12:00:00"), 600)


# -- window ---------------------------------------------------------------------------

@pytest.mark.parametrize("now, window, met", [
    (1700000000, 1, True), (1700000001, 1, True), (1700000000.9, 1, True),
    (1700000000, 10, True), (1700000005, 10, False), (1700000010.5, 10, True),
    (1700000000, 3600, False), (1699999200, 3600, True),
])
def test_window_is_met_on_multiples_of_w(now, window, met):
    assert window_met(now, window) is met


def test_window_below_one_is_refused():
    with pytest.raises(ValueError):
        window_met(0, 0)
