# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""receiver_info: reading error flags (ours and the original's layout),
buffer entry names and the kernel's socket table. The facts of a real
receiver are tested in tests/integration/test_module_receiver_info.py."""
from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.zfsync.zfsync.plugins.modules import receiver_info


def flags_in(tmp_path, *names):
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("ERROR", str(path))
    return [(f["suffix"], f["command"], f["dataset"]) for f in receiver_info.error_flags(str(tmp_path), "tank/r")]


def test_a_flag_cleared_while_it_is_read_is_not_reported():
    assert receiver_info.flag_of("/nonexistent", "%2Fa%2Fb c.sync", "tank/r") is None  # gone: not reported


def test_flags_of_every_command_and_the_root(tmp_path):
    found = flags_in(tmp_path, ".sync", ".cleanbuffer", "%2Fa%2Fb%20c.sync", "%2Fa.prune")
    assert sorted(found) == [("", "cleanbuffer", "tank/r"), ("", "sync", "tank/r"),
                             ("/a", "prune", "tank/r/a"), ("/a/b c", "sync", "tank/r/a/b c")]


def test_flags_in_the_original_layout(tmp_path):
    found = flags_in(tmp_path, "a.sync", "a/b.sync")
    assert sorted(found) == [("/a", "sync", "tank/r/a"), ("/a/b", "sync", "tank/r/a/b")]


def test_temporary_links_of_a_flag_being_set_are_ignored(tmp_path):
    assert flags_in(tmp_path, "%2Fa.sync.tmp123.140234") == []


def test_a_missing_flag_directory_has_no_flags(tmp_path):
    assert receiver_info.error_flags(str(tmp_path / "missing"), "tank/r") == []


@pytest.mark.parametrize("entry, expected", [
    ("ROOT", ("", False)),
    ("2F61", ("/a", False)),
    ("2F612F62.old", ("/a/b", True)),
    ("ROOT.old", ("", True)),
    ("not-hex", (None, False)),
])
def test_buffer_entry_names_decode_to_their_target_suffix(entry, expected):
    assert receiver_info.suffix_of_entry(entry) == expected


@pytest.mark.parametrize("hex_address, address", [
    ("0100007F", "127.0.0.1"),
    ("00000000", "0.0.0.0"),
    ("00000000000000000000000001000000", "::1"),
    ("00000000000000000000000000000000", "::"),
])
def test_proc_net_tcp_addresses(hex_address, address):
    assert receiver_info._proc_address(hex_address) == address


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            receiver_info.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("dataset", ["tank/../etc", "tank/a@b", "tank//a"])
def test_an_invalid_root_is_refused(capsys, dataset):
    result = run_module(capsys, dataset=dataset)
    assert result["failed"] is True and "not a valid receiver root" in result["msg"]


def test_probe_needs_a_port(capsys):
    result = run_module(capsys, dataset="tank/r", probe=True)
    assert result["failed"] is True and "probe needs port" in result["msg"]
