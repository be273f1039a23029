"""Properties of the frame parser and the suffix validator over generated
input: nothing raises but ProtocolError, and nothing accepted can name a
dataset outside the receiver's root."""
from hypothesis import given, settings
from hypothesis import strategies as st

from zfsync import protocol

component = st.text(alphabet="abcXYZ019_.- ", min_size=1, max_size=20).filter(lambda c: c not in (".", ".."))
suffixes = st.lists(component, max_size=5).map(lambda parts: "".join("/" + p for p in parts))
snapshot_lists = st.lists(component, min_size=1, max_size=8)


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_any_bytes_decode_to_text_or_a_protocol_error(data):
    try:
        text = protocol.decode_frame(data)
    except protocol.ProtocolError:
        return
    assert "\0" not in text


@settings(max_examples=600)
@given(st.text(max_size=300))
def test_any_text_parses_to_a_request_or_a_protocol_error(text):
    try:
        request = protocol.parse_request(text)
    except protocol.ProtocolError as error:
        assert str(error)
        return
    assert request.command in ("sync", "xsync", "xplan", "cleanbuffer", "close", "xhello")
    protocol.validate_suffix(request.suffix)


@settings(max_examples=600)
@given(st.text(max_size=120))
def test_an_accepted_suffix_never_escapes_the_root(suffix):
    try:
        protocol.validate_suffix(suffix)
    except protocol.ProtocolError:
        return
    parts = suffix.split("/")[1:] if suffix else []
    assert suffix == "" or suffix.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert not any(ch in suffix for ch in "@:%#\0\n\r\t")
    assert len(suffix.encode()) <= protocol.MAX_SUFFIX


@given(snapshot_lists, suffixes)
def test_sync_frames_round_trip(snapshots, suffix):
    text = protocol.format_sync(snapshots, suffix)
    assert protocol.parse_request(text) == protocol.Request("sync", suffix, tuple(snapshots))


@given(suffixes)
def test_hex_names_round_trip(suffix):
    if suffix:
        assert protocol.unhex_suffix(protocol.hex_suffix(suffix)) == suffix


@given(snapshot_lists, st.booleans(), st.lists(component, max_size=8, unique=True))
def test_decide_never_names_a_snapshot_the_sender_lacks(sender, exists, receiver):
    decision = protocol.decide(sender, exists, receiver)
    if decision.base is not None:
        assert decision.base in sender and decision.base in receiver
        assert not set(decision.destroy_first) & set(sender)
    plan_text = decision.reply_text if decision.action != "refuse" else None
    if plan_text is not None:
        plan = protocol.plan_streams(plan_text, sender)
        assert all(s.to == sender[-1] or s.to == sender[0] for s in plan.streams)
