"""The wire protocol as pure functions: frames, parsing, validation, decisions."""
import pytest

from zfsync import protocol
from zfsync.protocol import Decision, ProtocolError, Request, SendPlan, Stream


# --- frames -----------------------------------------------------------------

@pytest.mark.parametrize("size", [256, 512])
def test_frame_is_text_nul_and_zero_padding_of_exact_size(size):
    frame = protocol.encode_frame("@s1::sync", size)
    assert len(frame) == size
    assert frame.startswith(b"@s1::sync\0")
    assert set(frame[len("@s1::sync"):]) == {0}


def test_decode_ignores_leftovers_after_the_nul_as_the_original_sends_them():
    assert protocol.decode_frame(b":close\0uffer" + b"\0" * 500) == ":close"
    assert protocol.decode_frame(b"0:OK\0L" + b"\0" * 506) == "0:OK"


def test_frame_without_nul_is_malformed():
    with pytest.raises(ProtocolError, match="not terminated"):
        protocol.decode_frame(b"x" * 512)


def test_frame_with_invalid_utf8_is_malformed():
    with pytest.raises(ProtocolError, match="UTF-8"):
        protocol.decode_frame(b"\xff\xfe:sync\0")


def test_message_that_does_not_fit_is_refused_not_truncated():
    with pytest.raises(ProtocolError, match="does not fit"):
        protocol.encode_frame("x" * 256, 256)
    assert len(protocol.encode_frame("x" * 255, 256)) == 256


def test_frame_size_must_be_256_or_512():
    with pytest.raises(ValueError):
        protocol.encode_frame("x", 1024)


# --- requests ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("@s1::sync", Request("sync", "", ("s1",))),
    ("@s1@s2:/test1/test1.1:sync", Request("sync", "/test1/test1.1", ("s1", "s2"))),
    (":cleanbuffer", Request("cleanbuffer")),
    (":close", Request("close")),
    (":xhello", Request("xhello")),
    ("123:/a:xsync", Request("xsync", "/a", None, 123)),
    ("9:/a:xplan", Request("xplan", "/a", None, 9)),
])
def test_parse_request_as_the_original_splits_on_the_last_colons(text, expected):
    assert protocol.parse_request(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("", "cmd=NULL"),
    ("nocolon", "cmd=NULL"),
    ("@s1:/a:", "cmd=NULL"),
    ("@s1:/a:destroy", "Unknown cmd destroy"),
    (":/a:sync", "without snapshots"),  # crashed the original
    ("s1:/a:sync", "must start with '@'"),
    ("@s1@:/a:sync", "empty snapshot name"),
    ("@s1:/../x:sync", "not allowed"),
    ("@s1:/a/../../x:sync", "not allowed"),
    ("@s1:a:sync", "must start with '/'"),
    ("@s1://a:sync", "empty dataset name component"),
    ("@s1:/a/:sync", "empty dataset name component"),
    ("@s1:/a\tb:sync", "invalid character"),
    ("@s1:/a\x01:sync", "invalid character"),
    ("@s1:/a%b:sync", "invalid character"),
    ("@s1:/a#b:sync", "invalid character"),
    ("@s1@x/y:/a:sync", "invalid character"),
    ("@s1:/" + "a" * 300 + ":sync", "too long"),
    ("abc:/a:xsync", "needs a list length"),
    ("0:/a:xsync", "out of range"),
    ("99999999999:/a:xsync", "out of range"),
])
def test_hostile_or_malformed_requests_are_refused_with_a_reason(text, reason):
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(").replace("'", "'")):
        protocol.parse_request(text)


def test_at_sign_in_suffix_cannot_happen_because_lists_come_first():
    # "@s1:/a@b:sync": the snapshot list is "@s1", the suffix "/a@b" is refused.
    with pytest.raises(ProtocolError, match="invalid character"):
        protocol.parse_request("@s1:/a@b:sync")


def test_suffix_round_trip_through_hex_as_the_buffer_names_it():
    assert protocol.hex_suffix("/test1") == "2F7465737431"
    assert protocol.unhex_suffix("2F7465737431") == "/test1"
    for bad in ("", "2F7", "2f74", "ZZ", "ROOT", "FF"):
        with pytest.raises(ProtocolError):
            protocol.unhex_suffix(bad)


def test_suffix_of_dataset_under_root():
    assert protocol.suffix_of("tank/send/local", "tank/send/local") == ""
    assert protocol.suffix_of("tank/send/local/a/b", "tank/send/local") == "/a/b"
    with pytest.raises(ValueError):
        protocol.suffix_of("tank/send/localx", "tank/send/local")


def test_format_sync_matches_the_original_wire_text():
    assert protocol.format_sync(["s1", "s2"], "/test1") == "@s1@s2:/test1:sync"
    assert protocol.format_sync(["s1"], "") == "@s1::sync"


def test_replies_parse_and_format():
    assert protocol.parse_reply("0:NEW") == protocol.Reply(True, "NEW")
    assert protocol.parse_reply("1:zfs_receive(incr)") == protocol.Reply(False, "zfs_receive(incr)")
    assert str(protocol.Reply(True, "s5")) == "0:s5"
    for bad in ("", "0", "2:x", "OK"):
        with pytest.raises(ProtocolError):
            protocol.parse_reply(bad)


def test_hello_reply_round_trip():
    version, extensions = protocol.parse_hello(protocol.hello_reply("1.2.3"))
    assert version == "1.2.3" and "xsync" in extensions and "xplan" in extensions
    assert protocol.parse_hello("Unknown cmd xhello") is None


# --- the receiver's decision ------------------------------------------------

@pytest.mark.parametrize("sender, exists, receiver, expected", [
    (["s1"], False, [], Decision("new")),
    (["s1", "s2"], True, [], Decision("full")),
    (["s6"], True, ["old"], Decision("full")),
    (["s1", "s2"], True, ["s1"], Decision("incremental", "s1")),
    (["s1", "s2", "s3"], True, ["s1", "s2"], Decision("incremental", "s2")),
    (["s1", "s2"], True, ["s1", "s2"], Decision("uptodate", "s2")),
    (["s2", "s3"], True, ["s1", "s2"], Decision("incremental", "s2")),
    # s3 exists only on the receiver and is newer than the common s2: it must
    # go before the incremental s2..s4 can be received.
    (["s1", "s2", "s4"], True, ["s1", "s2", "s3"], Decision("incremental", "s2", ("s3",))),
    # Names are compared exactly: s1 is not s10.
    (["s10", "s11"], True, ["s1"], Decision("full")),
])
def test_decide(sender, exists, receiver, expected):
    assert protocol.decide(sender, exists, receiver) == expected


def test_decide_refuses_full_when_configured():
    assert protocol.decide(["a"], True, ["b"], allow_full=False) == Decision("refuse")


def test_decision_reply_texts():
    assert Decision("new").reply_text == "NEW"
    assert Decision("full").reply_text == "FULL"
    assert Decision("incremental", "s5").reply_text == "s5"
    assert Decision("uptodate", "s6").reply_text == "s6"


def test_prune_by_exact_name_not_substring():
    assert protocol.snapshots_to_prune(["s1", "s10", "s11"], ["s10", "s11"]) == ["s1"]
    assert protocol.snapshots_to_prune(["s10"], ["s1"]) == ["s10"]
    assert protocol.snapshots_to_prune(["a", "b"], ["a", "b"]) == []


# --- the sender's plan ------------------------------------------------------

def test_new_with_one_snapshot_is_one_full_stream():
    assert protocol.plan_streams("NEW", ["s1"]) == SendPlan("new", (Stream("s1"),))


def test_new_with_several_is_full_of_oldest_then_incremental_to_newest():
    # As the latest original (wire_newmulti): full @s4, then -I @s4..@s5.
    assert protocol.plan_streams("NEW", ["s4", "s5"]) == SendPlan("new", (Stream("s4"), Stream("s5", "s4")))
    assert protocol.plan_streams("FULL", ["a", "b", "c"]) == SendPlan("full", (Stream("a"), Stream("c", "a")))


def test_old_256_byte_receiver_gets_one_full_stream_of_the_newest():
    assert protocol.plan_streams("NEW", ["s4", "s5"], 256) == SendPlan("new", (Stream("s5"),))


def test_common_snapshot_means_one_incremental_with_intermediates():
    assert protocol.plan_streams("s5", ["s4", "s5", "s6", "s7"]) == \
        SendPlan("incremental", (Stream("s7", "s5"),), "s5")


def test_newest_already_there_means_nothing_to_send():
    assert protocol.plan_streams("s7", ["s6", "s7"]) == SendPlan("uptodate", (), "s7")


def test_receiver_naming_an_unknown_snapshot_is_an_error():
    with pytest.raises(ProtocolError, match="does not have"):
        protocol.plan_streams("zz", ["s1"])
