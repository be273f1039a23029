# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The sync module: bad options are refused with a clear message before
anything touches ZFS or the network, and the diff and totals say what the
engine's results say. Syncs themselves run against real pools and a real
receiver in tests/integration/test_module_sync.py."""
from __future__ import annotations

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import sender
from ansible_collections.zfsync.zfsync.plugins.modules import sync


def run_module(capsys, **args):
    values = dict(dataset="tank/data", receiver="backup1")
    values.update(args)
    with patch_module_args(values):
        with pytest.raises(SystemExit):
            sync.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("dataset", ["/tank/data", "tank/data@s1", "tank/../etc", "tank//a", "tank/a:b"])
def test_a_dataset_that_cannot_be_synced_is_refused(capsys, dataset):
    result = run_module(capsys, dataset=dataset)
    assert result["failed"] is True and repr(dataset) in result["msg"]


@pytest.mark.parametrize("receiver", ["", "backup1 -p 40"])
def test_a_receiver_that_is_no_host_is_refused(capsys, receiver):
    result = run_module(capsys, receiver=receiver)
    assert result["failed"] is True and "receiver must be a host name or address" in result["msg"]


@pytest.mark.parametrize("option, value, message", [
    ("port", 0, "port must be 1..65535"),
    ("port", 65536, "port must be 1..65535"),
    ("threads", 0, "threads must be at least 1"),
    ("timeout", 0, "timeout must be a positive number"),
    ("stream_idle_timeout", -1, "stream_idle_timeout must be a positive number"),
])
def test_numbers_out_of_range_are_refused(capsys, option, value, message):
    result = run_module(capsys, **{option: value})
    assert result["failed"] is True and message in result["msg"]


def test_a_frame_size_other_than_256_or_512_is_refused_by_the_argument_spec(capsys):
    result = run_module(capsys, frame_size=1024)
    assert result["failed"] is True and "frame_size" in result["msg"]


@pytest.mark.parametrize("name", ["a:b", "a@b", "a/b", "a%b"])
def test_a_snapshot_name_that_cannot_travel_in_a_frame_is_refused(capsys, name):
    result = run_module(capsys, snapshot=name)
    assert result["failed"] is True and "snapshot of tank/data" in result["msg"] and repr(name) in result["msg"]


def entry(suffix, action, frm=None, to="s2"):
    return {"suffix": suffix, "action": action, "from": frm, "to": to}


def test_the_diff_shows_each_replica_that_gets_a_stream():
    datasets = [entry("", "uptodate", to="s2"), entry("/a", "incremental", "s1"), entry("/b", "new"),
                entry("/c", "full"), entry("/d", "failed"), entry("/e", "skipped", to=None)]

    [replica] = sync.diff("tank/data", "backup1", 30, datasets, None)

    assert replica["before"] == "/a: @s1\n/b: absent\n/c: no snapshot in common with the sender (replaced)\n"
    assert replica["after"] == "/a: @s2\n/b: @s2\n/c: @s2\n"
    assert replica["after_header"] == "replica of tank/data on backup1 port 30 (newest snapshot)"


def test_the_diff_of_a_run_with_nothing_to_send_is_empty_but_for_the_snapshot():
    datasets = [entry("", "uptodate")]
    assert sync.diff("tank/data", "backup1", 30, datasets, None) == []
    [snapshot] = sync.diff("tank/data", "backup1", 30, datasets, "s3")
    assert snapshot["before"] == "" and snapshot["after"] == "tank/data@s3 (recursive)\n"


def test_the_diff_says_when_the_plan_is_unknown():
    [replica] = sync.diff("tank/data", "old1", 30, [entry("", "unknown")], None)
    assert replica["before"] == "(root): unknown (an original receiver cannot be asked)\n"


def test_totals_count_every_action_and_sum_the_bytes():
    run = sender.RunResult("tank/data", "backup1", 30, seconds=1.23456)
    for action, sent in (("new", 100), ("incremental", 20), ("uptodate", 0), ("failed", None)):
        item = sender.DatasetResult("tank/data/" + action, "/" + action, action=action)
        item.bytes = sent
        run.datasets.append(item)

    totals = sync.totals(run)

    assert totals == {"datasets": 4, "bytes": 120, "seconds": 1.235, "new": 1, "full": 0, "incremental": 1,
                      "uptodate": 1, "skipped": 0, "failed": 1, "unknown": 0}


def test_a_dataset_entry_names_its_snapshots_from_and_to():
    item = sender.DatasetResult("tank/data/a", "/a", snapshots=2, action="incremental", from_snapshot="s1",
                                to_snapshot="s2", bytes=10, seconds=0.12345)
    assert sync.dataset_entry(item) == {
        "dataset": "tank/data/a", "suffix": "/a", "action": "incremental", "snapshots": 2, "from": "s1",
        "to": "s2", "bytes": 10, "seconds": 0.123, "error": None, "warnings": []}
