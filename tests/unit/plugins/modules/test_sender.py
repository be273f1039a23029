# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The sender module: where its cron file goes (FreeBSD vs Linux), what the
file says, and that bad options are refused before anything is written.
What it does on a host with real pools is tested in
tests/integration/test_roles.py."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.zfsync.zfsync.plugins.module_utils import cronjob
from ansible_collections.zfsync.zfsync.plugins.modules import sender


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            sender.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def dataset_exists(monkeypatch):
    """The module checks its dataset with zfs(8); these tests need no ZFS."""
    monkeypatch.setattr(sender.SenderSetup, "check_dataset", lambda self: None)


def base_args(tmp_path, **overrides):
    args = dict(dataset="tank/data", receivers=[{"host": "backup1.example.com"}], prefix=str(tmp_path / "prefix"),
                cron_dir=str(tmp_path / "cron.d"))
    args.update(overrides)
    return args


# -- where the cron file goes ------------------------------------------------

def test_freebsd_gets_its_cron_file_under_usr_local(capsys, tmp_path, monkeypatch, dataset_exists):
    monkeypatch.setattr(cronjob.platform, "system", lambda: "FreeBSD")
    args = base_args(tmp_path, _ansible_check_mode=True)
    del args["cron_dir"]

    result = run_module(capsys, **args)

    assert result["cron_file"] == "/usr/local/etc/cron.d/zfsync-tank_data"
    assert "/usr/local/etc/cron.d/zfsync-tank_data" in result["changed_files"]


def test_linux_gets_its_cron_file_in_etc_cron_d(capsys, tmp_path, monkeypatch, dataset_exists):
    monkeypatch.setattr(cronjob.platform, "system", lambda: "Linux")
    args = base_args(tmp_path, _ansible_check_mode=True)
    del args["cron_dir"]

    assert run_module(capsys, **args)["cron_file"] == "/etc/cron.d/zfsync-tank_data"


@pytest.mark.parametrize("system, directory", [("FreeBSD", "/usr/local/etc/cron.d"), ("Linux", "/etc/cron.d"),
                                               ("Darwin", "/etc/cron.d")])
def test_default_cron_dir_per_system(system, directory):
    assert cronjob.default_cron_dir(system) == directory


def test_check_mode_writes_nothing(capsys, tmp_path, dataset_exists):
    result = run_module(capsys, **base_args(tmp_path, _ansible_check_mode=True))

    assert result["changed"] is True
    assert not os.path.exists(str(tmp_path / "cron.d")) and not os.path.exists(str(tmp_path / "prefix"))


# -- what the cron file says -----------------------------------------------------

def test_the_file_runs_zfsyncron_with_the_original_flags_and_every_receiver(capsys, tmp_path, dataset_exists):
    result = run_module(capsys, **base_args(
        tmp_path, receivers=[{"host": "backup1.example.com"}, {"host": "2001:db8::10", "port": 3030}],
        retention={"hourly": 24}, threads=4, window=60, bind_address="192.0.2.5", minute="*/15"))

    path = str(tmp_path / "cron.d" / "zfsync-tank_data")
    with open(path) as handle:
        lines = handle.read().splitlines()
    launcher = str(tmp_path / "prefix" / "bin" / "zfsyncron")
    assert lines[-1] == ("*/15 * * * * root %s -s 1 -m 4 -h 24 -d 2 -t 4 -w 60 -i 192.0.2.5 "
                         "-o /var/log/zfsyncron.log tank/data backup1.example.com:30 '[2001:db8::10]:3030'" % launcher)
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert result["job"]["line"] == lines[-1]
    assert result["receivers"] == ["backup1.example.com:30", "[2001:db8::10]:3030"]


def test_a_second_run_changes_nothing(capsys, tmp_path, dataset_exists):
    assert run_module(capsys, **base_args(tmp_path))["changed"] is True
    again = run_module(capsys, **base_args(tmp_path))
    assert again["changed"] is False and again["changed_files"] == []


def test_diff_shows_the_cron_line(capsys, tmp_path, dataset_exists):
    result = run_module(capsys, **base_args(tmp_path, _ansible_diff=True, _ansible_check_mode=True))

    cron_diff = [d for d in result["diff"] if d["after_header"].endswith("zfsync-tank_data")]
    assert len(cron_diff) == 1 and cron_diff[0]["before"] == ""
    assert "tank/data backup1.example.com:30" in cron_diff[0]["after"]


def test_absent_removes_the_cron_file_and_keeps_the_engine(capsys, tmp_path, dataset_exists):
    run_module(capsys, **base_args(tmp_path))
    result = run_module(capsys, **base_args(tmp_path, state="absent"))

    assert result["changed"] is True and result["changed_files"] == [str(tmp_path / "cron.d" / "zfsync-tank_data")]
    assert not os.path.exists(str(tmp_path / "cron.d" / "zfsync-tank_data"))
    assert os.path.exists(str(tmp_path / "prefix" / "bin" / "zfsyncron"))
    assert run_module(capsys, **base_args(tmp_path, state="absent"))["changed"] is False


def test_a_percent_sign_is_escaped_for_cron_and_the_line_is_valid_sh():
    job = cronjob.CronJob(dataset="tank/data", destinations=(cronjob.destination("fe80::1%em0", 30),),
                          launcher="/usr/local/bin/zfsyncron", log_file="/var/log/zfs sync %d.log")
    command = job.command_line()
    assert "\\%" in command and "%" not in command.replace("\\%", "")
    # cron drops the backslash before %; sh must then parse the line back into the argv.
    unescaped = command.replace("\\%", "%")
    printed = subprocess.run(["sh", "-c", "printf '%s\\n' " + unescaped.split(" ", 1)[1]], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout.splitlines()
    assert printed == job.argv()[1:]


@pytest.mark.parametrize("dataset, name", [("tank/data", "zfsync-tank_data"), ("tank/a.b:c d", "zfsync-tank_a_b_c_d"),
                                           ("/tank/", "zfsync-tank")])
def test_default_file_name_keeps_to_what_cron_reads(dataset, name):
    assert cronjob.default_file_name(dataset) == name


@pytest.mark.parametrize("schedule, expected", [(None, "* * * * *"), ("@hourly", "@hourly"),
                                                ("*/5  *  * * 1-5", "*/5 * * * 1-5")])
def test_schedule(schedule, expected):
    assert cronjob.schedule_from([None] * 5, schedule) == expected


def test_schedule_fields_default_to_star():
    assert cronjob.schedule_from(["0", "3", None, None, "sun"], None) == "0 3 * * sun"


# -- refused before anything is written -------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(receivers=[]), "at least one receiver"),
    (dict(receivers=[{"host": "backup1 -x"}]), "invalid HOST"),
    (dict(receivers=[{"host": "backup1", "port": 70000}]), "port"),
    (dict(schedule="* * *"), "five fields"),
    (dict(minute="0\n* * * * * root rm"), "minute field"),
    (dict(cron_file="zfsync.tank"), "cron ignores"),
    (dict(user="root x"), "not a user name"),
    (dict(retention={"daily": -1}), "daily"),
    (dict(threads=0), "threads and window"),
    (dict(log_file="relative.log"), "absolute path"),
    (dict(dataset="tank/../etc"), "cannot be synced"),
])
def test_bad_options_are_refused_and_nothing_is_written(capsys, tmp_path, dataset_exists, overrides, message):
    result = run_module(capsys, **base_args(tmp_path, **overrides))

    assert result["failed"] is True and message in result["msg"], result["msg"]
    assert not os.path.exists(str(tmp_path / "cron.d")) and not os.path.exists(str(tmp_path / "prefix"))


def test_schedule_and_a_field_are_mutually_exclusive(capsys, tmp_path, dataset_exists):
    result = run_module(capsys, **base_args(tmp_path, schedule="@daily", minute="5"))
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


def test_present_needs_receivers(capsys, tmp_path, dataset_exists):
    args = base_args(tmp_path)
    del args["receivers"]
    result = run_module(capsys, **args)
    assert result["failed"] is True and "receivers" in result["msg"]


def test_a_host_without_zfs_is_told_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sender.AnsibleModule, "get_bin_path", lambda self, name, *args, **kwargs: None)
    result = run_module(capsys, **base_args(tmp_path))
    assert result["failed"] is True and "zfs(8) not found" in result["msg"]
    assert not os.path.exists(str(tmp_path / "cron.d"))


def test_the_module_imports_every_engine_file_so_ansiballz_ships_the_whole_engine():
    """The module installs the engine it was shipped with; AnsiballZ ships
    only the module_utils a module imports."""
    from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine

    with open(sender.__file__) as handle:
        source = handle.read()
    missing = [name for name in engine.ENGINE_MODULES if name != "__init__"
               and "plugins.module_utils.zfsync import %s" % name not in source]
    assert missing == []


def test_tls_files_go_into_the_zfsyncron_line():
    from ansible_collections.zfsync.zfsync.plugins.module_utils import cronjob as cronjob_utils
    from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import cron as engine_cron

    job = cronjob_utils.CronJob(dataset="tank/data", destinations=(engine_cron.Destination("backup1", 30),),
                                launcher="/usr/local/bin/zfsyncron", tls_cert="/etc/zfsync/s.pem",
                                tls_ca="/etc/zfsync/ca.pem")
    argv = job.validate().argv()
    assert argv[argv.index("--tls-cert") + 1] == "/etc/zfsync/s.pem"
    assert argv[argv.index("--tls-ca") + 1] == "/etc/zfsync/ca.pem"
    assert "--tls-key" not in argv and argv[-2:] == ["tank/data", "backup1:30"]
