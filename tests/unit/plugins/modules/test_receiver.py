# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The receiver module refuses bad options with a clear message before it
touches anything. What it does on a host is tested against real pools in
tests/integration/test_module_receiver.py."""
from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.zfsync.zfsync.plugins.modules import receiver


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            receiver.main()
    return json.loads(capsys.readouterr().out)


def base_args(tmp_path, **overrides):
    args = dict(dataset="tank/backup", service_manager="none", prefix=str(tmp_path / "prefix"),
                pid_file=str(tmp_path / "recv.pid"), log_file=str(tmp_path / "recv.log"))
    args.update(overrides)
    return args


@pytest.mark.parametrize("dataset", ["tank/../etc", "tank/a@b", "tank/a:b", "tank//a"])
def test_a_dataset_that_is_no_valid_root_is_refused(capsys, tmp_path, dataset):
    result = run_module(capsys, **base_args(tmp_path, dataset=dataset))
    assert result["failed"] is True
    assert repr(dataset) in result["msg"] and "not a valid receiver root" in result["msg"]
    assert not os.path.exists(str(tmp_path / "prefix"))


@pytest.mark.parametrize("port", [0, 65536])
def test_a_port_out_of_range_is_refused(capsys, tmp_path, port):
    result = run_module(capsys, **base_args(tmp_path, port=port))
    assert result["failed"] is True and "port must be 1..65535" in result["msg"]


@pytest.mark.parametrize("option", ["threads", "backlog", "max_connections", "max_per_client", "first_request_timeout"])
def test_threads_backlog_and_connection_bounds_must_be_positive(capsys, tmp_path, option):
    result = run_module(capsys, **base_args(tmp_path, **{option: 0}))
    assert result["failed"] is True and option in result["msg"]


def test_a_listen_address_with_spaces_is_refused(capsys, tmp_path):
    result = run_module(capsys, **base_args(tmp_path, listen_address="0.0.0.0 -v"))
    assert result["failed"] is True and "listen_address" in result["msg"]


def test_a_launcher_interpreter_that_does_not_exist_is_refused(capsys, tmp_path):
    missing = str(tmp_path / "no-python")
    result = run_module(capsys, **base_args(tmp_path, python=missing))
    assert result["failed"] is True and missing in result["msg"]
    assert not os.path.exists(str(tmp_path / "prefix"))


def test_an_unknown_frame_size_is_refused_by_the_argument_spec(capsys, tmp_path):
    result = run_module(capsys, **base_args(tmp_path, frame_size="1024"))
    assert result["failed"] is True and "frame_size" in result["msg"]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_non_loopback_listener_needs_an_allow_list_or_tls(capsys, tmp_path, address):
    result = run_module(capsys, **base_args(tmp_path, listen_address=address))
    assert result["failed"] is True
    assert "not loopback" in result["msg"] and "allow" in result["msg"] and "tls_cert" in result["msg"]
    assert not os.path.exists(str(tmp_path / "prefix"))


def test_an_allow_entry_that_is_no_network_is_refused(capsys, tmp_path):
    result = run_module(capsys, **base_args(tmp_path, listen_address="0.0.0.0", allow=["10.0.0.0/8", "nonsense"]))
    assert result["failed"] is True and "nonsense is not a network" in result["msg"]


def test_tls_cert_without_ca_is_refused(capsys, tmp_path):
    result = run_module(capsys, **base_args(tmp_path, tls_cert=str(tmp_path / "c.pem")))
    assert result["failed"] is True and "tls_cert" in result["msg"] and "tls_ca" in result["msg"]


@pytest.mark.parametrize("roots, message", [
    (["web1"], "expected MATCH=SUB"),
    (["10.0.0.1=../x"], "not allowed"),
    (["10.0.0.1=a", "10.0.0.2=a/b"], "overlap"),
    (["cn:web1=web1"], "needs TLS"),
])
def test_bad_client_roots_are_refused_before_anything_changes(capsys, tmp_path, roots, message):
    result = run_module(capsys, **base_args(tmp_path, client_roots=roots))
    assert result["failed"] is True and "client_roots" in result["msg"] and message in result["msg"]
    assert not os.path.exists(str(tmp_path / "prefix"))
