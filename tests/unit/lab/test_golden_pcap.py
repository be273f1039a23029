"""The golden captures as the replay reads them (tests/lab/golden.py): our
pcap reader and TCP reassembly find every frame and stream that the decoded
texts beside the captures list (printed by the project's wire_decode.py),
and cut each connection into the steps the replay sends. No VM."""
import ast
import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
GOLDEN = os.path.join(REPO, "tests", "data", "golden")
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import golden  # noqa: E402

SCENARIOS = ("full", "incr", "noop", "s3", "newmulti", "fullpath", "prune", "prune_noverbose")
CONNECTION = re.compile(r"^=== connection from client port (\d+)")
EVENT = re.compile(r"^\s+\+\s*[\d.]+s\s+(send->recv|recv->send)\s+(frame|ZFS stream) (\d+) bytes(.*)$")


def load(scenario):
    with open(os.path.join(GOLDEN, "pcap", "wire_%s.pcap" % scenario), "rb") as handle:
        return golden.connections(handle.read())


def decoded(scenario):
    """{client port: [(direction, 'frame'|'stream', size, text or snapshot names)]} from the decoded text."""
    result, port = {}, None
    with open(os.path.join(GOLDEN, "wire_%s.decoded.txt" % scenario)) as handle:
        for line in handle:
            if line.startswith("=== all connections"):
                break
            match = CONNECTION.match(line)
            if match:
                port = int(match.group(1))
                result[port] = []
                continue
            match = EVENT.match(line)
            if match:
                direction, kind, size, rest = match.groups()
                if kind == "frame":
                    text = ast.literal_eval(rest.split("   [")[0].lstrip(": "))
                    result[port].append((direction, "frame", int(size), text))
                else:
                    names = re.findall(r"(tank/\S+@\S+) from=", rest)
                    result[port].append((direction, "stream", int(size), names))
    return result


def ours(conn):
    events = []
    for step in conn.steps:
        for item in step.items():
            if item.stream:
                events.append(("send->recv", "stream", item.stream.size, [s.name for s in item.stream.snapshots]))
            else:
                events.append(("send->recv", "frame", golden.FRAME_SIZE, item.text))
        events += [("recv->send", "frame", len(f), golden.frame_text(f)) for f in step.replies()]
    return events


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_reader_finds_every_frame_and_stream_of_the_decoded_text(scenario):
    expected = decoded(scenario)
    conns = {conn.client_port: conn for conn in load(scenario)}
    assert set(conns) == set(expected)
    for port, events in expected.items():
        mine = ours(conns[port])
        for direction in ("send->recv", "recv->send"):
            assert [e for e in mine if e[0] == direction] == [e for e in events if e[0] == direction], (port, direction)


def test_receiver_port_is_read_from_the_capture():
    for scenario in SCENARIOS:
        with open(os.path.join(GOLDEN, "pcap", "wire_%s.pcap" % scenario), "rb") as handle:
            # The original receiver restarted after its crash could not bind 3030 again.
            assert golden.receiver_port(handle.read()) == (3031 if scenario == "prune_noverbose" else 3030)


def test_steps_are_cut_where_the_receiver_replied():
    first, second = load("newmulti")
    assert [(step.label(), [f.partition(b"\0")[0] for f in step.replies()]) for step in first.steps][:2] == [
        ("@s4@s5:/test2:sync", [b"0:NEW"]),
        # NEW with two snapshots: the full stream of @s4 and the incremental
        # to @s5 travel back to back, one step, one 0:OK.
        ("stream tank/send/local/test2@s4", [b"0:OK"]),
    ]
    assert len(first.steps[1].items()) == 2
    assert second.steps[-1].eof and second.steps[-2].label() == ":close" and second.steps[-2].receiver_closed


def test_a_killed_sender_is_an_eof_step_and_the_late_reply_belongs_to_it():
    root, _child = load("noop")
    assert [step.label() for step in root.steps] == ["@s1@s2::sync", "EOF"]
    assert root.steps[1].replies()[0].startswith(b"1:zfs_receive(incr)\0")


def test_a_refused_connection_has_no_steps():
    conns = load("prune")
    assert [conn.established for conn in conns] == [True, True, False]
    assert conns[2].steps == [] and conns[2].label == "(no bytes)"


def test_schedule_follows_the_order_the_sender_began_its_steps():
    conns = load("full")
    order = golden.schedule(conns)
    assert len(order) == sum(len(conn.steps) for conn in conns)
    times = [conns[c].steps[s].time for c, s in order]
    assert times == sorted(times)
    # The root's sync went first, /test1's second (it then went to the buffer).
    assert [conns[c].steps[s].label() for c, s in order[:2]] == ["@s1::sync", "@s1:/test1:sync"]


def test_stream_guids_are_the_snapshots_guids():
    streams = golden.streams(load("incr"))
    root = [s for stream in streams for s in stream.snapshots if s.name == "tank/send/local@s2"]
    assert len(root) == 1 and root[0].from_guid == 0xa03bd8390e7a3efe  # @s1's guid, as the decoded text says
