"""Every control frame the original programs exchanged in the golden
captures (tests/data/golden, decoded from ../shared/golden/*.pcap) parses
the way the original meant it, and our formatting reproduces the sender's
frames byte for byte."""
import glob
import os
import re

import pytest

from zfsync import protocol

GOLDEN = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "data", "golden")
FRAME = re.compile(r"^\s+\+\s+[\d.]+s\s+(send->recv|recv->send)\s+frame (\d+) bytes: '([^']*)'", re.M)


def golden_frames():
    frames = []
    for path in sorted(glob.glob(os.path.join(GOLDEN, "*.decoded.txt"))):
        with open(path) as handle:
            text = handle.read().split("=== all connections merged")[0]
        frames += [(os.path.basename(path), d, int(size), msg) for d, size, msg in FRAME.findall(text)]
    return frames


FRAMES = golden_frames()


def test_the_captures_are_there():
    assert len(glob.glob(os.path.join(GOLDEN, "*.decoded.txt"))) == 8
    assert len(FRAMES) > 100


@pytest.mark.parametrize("capture, direction, size, message", [f for f in FRAMES if f[1] == "send->recv"])
def test_sender_frames_parse_and_format_back_identically(capture, direction, size, message):
    assert size == 512
    request = protocol.parse_request(message)
    if request.command == "sync":
        assert protocol.format_sync(request.snapshots, request.suffix) == message
    else:
        assert ":" + request.command == message


@pytest.mark.parametrize("capture, direction, size, message", [f for f in FRAMES if f[1] == "recv->send"])
def test_receiver_replies_parse(capture, direction, size, message):
    reply = protocol.parse_reply(message)
    assert reply.ok or reply.text.startswith("zfs_receive(")


def test_our_decisions_match_the_original_replies_in_the_incremental_capture():
    # wire_incr: every dataset had @s1, the sender lists @s1@s2 -> 0:s1.
    assert protocol.decide(["s1", "s2"], True, ["s1"]).reply_text == "s1"
    # wire_fullpath: /test3 exists with an unrelated @old -> 0:FULL.
    assert protocol.decide(["s6"], True, ["old"]).reply_text == "FULL"
    # wire_fullpath: /test2 had @s4 @s5, the sender lists @s4@s5@s6 -> 0:s5.
    assert protocol.decide(["s4", "s5", "s6"], True, ["s4", "s5"]).reply_text == "s5"
    # wire_newmulti: /test2 is new -> 0:NEW, then full @s4 + incremental to @s5.
    assert protocol.decide(["s4", "s5"], False, []).reply_text == "NEW"
    plan = protocol.plan_streams("NEW", ["s4", "s5"])
    assert [(s.base, s.to) for s in plan.streams] == [(None, "s4"), ("s4", "s5")]
