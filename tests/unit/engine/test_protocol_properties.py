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


@settings(max_examples=300)
@given(st.sampled_from([256, 512]), st.lists(st.integers(min_value=1, max_value=600), max_size=20))
def test_a_frame_gathered_in_any_pieces_is_one_whole_frame_of_its_size(size, cuts):
    """The receiver's lobby reads a frame as TCP delivers it: however it is
    split, it completes once, at the sender's frame size, and never reads
    past it."""
    from zfsync.clients import PendingFrame

    frame = protocol.encode_frame("@s1::sync", size)
    pending = PendingFrame(None)
    offset = 0
    for cut in cuts + [size]:
        piece = frame[offset:offset + min(cut, pending.want())]
        offset += len(piece)
        pending.add(piece, 0.0)
        if offset >= size:
            break
    assert bytes(pending.data) == frame
    assert pending.complete(60.0) == size


@settings(max_examples=300)
@given(st.sampled_from(["127.0.0.1=one", "cn:web1=one", "10.0.0.0/8=one/two"]), suffixes)
def test_a_confined_clients_datasets_all_lie_below_its_sub_root(spec, suffix):
    from zfsync.clients import parse_client_root

    rule = parse_client_root(spec)
    protocol.validate_suffix(suffix)
    target = "tank/recv" + rule.prefix + suffix
    assert target == "tank/recv/" + rule.sub or target.startswith("tank/recv/" + rule.sub + "/")
