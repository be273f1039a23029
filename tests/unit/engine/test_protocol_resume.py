"""Resumable receive between our peers (the ``xrsync`` extension): the
negotiation, the offer frame, token validation, the sender's check of what a
token would send, and the receiver's plan for partial receive state. The
original path (``sync``, the hello without ``xrsync``) stays as it was."""
import pytest

from zfsync import protocol
from zfsync.protocol import Decision, PartialPlan, ProtocolError, Request
from zfsync.zfs import RESUME_SEND_USAGE
from zfsync.zfs import parse_resume_dry_run

# A token as OpenZFS 2.1.11 printed it for a cut full stream (lab VM).
TOKEN = ("1-ae0b3c513-d8-789c636064000310a500c4ec50360710e72765a52697303030419460caa7a515a7968064a6c1e5d990e"
         "4932a4b528b81f482b41958f597e4a79766a630306432c81fbebb7d438b06923c27583e2f3137154827e665eb1717253b1"
         "41bc2cde16640b83b393fb7a028b5b8383f9b010e00ab441bf4")


# --- negotiation ------------------------------------------------------------

def test_hello_without_receive_s_is_the_one_before_resume_existed():
    assert protocol.hello_reply("1.2") == "zfsync 1.2 ext=xsync,xplan"


def test_hello_of_a_receiver_that_can_receive_s_adds_xrsync():
    text = protocol.hello_reply("1.2", resumable=True)
    assert text == "zfsync 1.2 ext=xsync,xplan,xrsync"
    assert protocol.parse_hello(text) == ("1.2", ("xsync", "xplan", "xrsync"))


def test_xrsync_is_parsed_like_xsync_a_list_of_n_bytes_after_the_frame():
    assert protocol.parse_request("12:/a/b:xrsync") == Request("xrsync", "/a/b", None, 12)


@pytest.mark.parametrize("text", ["0:/a:xrsync", ":/a:xrsync", "x:/a:xrsync", "%d:/a:xrsync" % (4 * 2 ** 20 + 1)])
def test_xrsync_without_a_valid_list_length_is_refused(text):
    with pytest.raises(ProtocolError):
        protocol.parse_request(text)


def test_xrsync_suffix_is_validated_like_any_other():
    with pytest.raises(ProtocolError, match="'..'"):
        protocol.parse_request("4:/a/..:xrsync")


# --- the offer --------------------------------------------------------------

def test_offer_names_the_action_and_the_token_length_and_fits_any_frame():
    text = protocol.format_resume_offer("new", TOKEN)
    assert text == "RESUME:new:%d" % len(TOKEN)
    assert protocol.fits_frame(protocol.format_reply(True, text), 256)
    assert protocol.parse_resume_offer(text) == ("new", len(TOKEN))


@pytest.mark.parametrize("text", ["NEW", "FULL", "OK", "s1", "RESUME", "RESUMEx"])
def test_ordinary_replies_are_not_offers(text):
    # A snapshot may be called RESUME; it cannot contain ':'.
    assert protocol.parse_resume_offer(text) is None


@pytest.mark.parametrize("text", ["RESUME:", "RESUME:new", "RESUME:new:", "RESUME:copy:10", "RESUME:new:-1",
                                  "RESUME:new:0", "RESUME:new:65537", "RESUME:new:10:x"])
def test_malformed_offers_are_protocol_errors(text):
    with pytest.raises(ProtocolError):
        protocol.parse_resume_offer(text)


def test_an_offer_is_only_made_for_a_stream_action():
    with pytest.raises(ValueError):
        protocol.format_resume_offer("uptodate", TOKEN)


# --- tokens -----------------------------------------------------------------

def test_a_token_as_zfs_prints_it_is_valid():
    protocol.validate_resume_token(TOKEN)


@pytest.mark.parametrize("token", [
    "", "-t", "--help", "1-ab-cd", "1-ab-cd-ef gh", "1-ab-cd-ef;rm", "1-AB-cd-ef", "1-ab-cd-ef\n", "x-ab-cd-ef",
    "1-ab-cd-ef-", "1-ab-cd-" + "0" * (64 * 1024),
])
def test_anything_else_never_reaches_a_zfs_command_line(token):
    with pytest.raises(ProtocolError):
        protocol.validate_resume_token(token)


# --- the sender's check of what a token would send ---------------------------

def test_a_token_for_one_of_the_listed_snapshots_of_this_dataset_is_sent():
    assert protocol.resume_refusal("tank/src", ["s1", "s2"], None, "tank/src@s1") is None
    assert protocol.resume_refusal("tank/src", ["s1", "s2"], "tank/src@s1", "tank/src@s2") is None


@pytest.mark.parametrize("stream_from, stream_to, reason", [
    (None, "tank/other@s1", "not a snapshot of tank/src"),
    (None, "tank/src/child@s1", "not a snapshot of tank/src"),
    (None, "tank/srcx@s1", "not a snapshot of tank/src"),
    (None, "tank/src@s9", "@s9 is not in the list"),
    ("tank/other@s1", "tank/src@s2", "from snapshot tank/other@s1"),
    ("tank/src#bookmark", "tank/src@s2", "from snapshot"),
    (None, "tank/src", "not a snapshot"),
])
def test_a_token_for_anything_else_is_refused(stream_from, stream_to, reason):
    refusal = protocol.resume_refusal("tank/src", ["s1", "s2"], stream_from, stream_to)
    assert refusal is not None and reason in refusal


# --- the receiver's plan for partial state ----------------------------------

NEW = Decision("new")
FULL = Decision("full")
INCR = Decision("incremental", "s1")
UPTODATE = Decision("uptodate", "s2")


def test_a_resume_capable_sender_is_offered_the_token_of_the_dataset_it_will_receive_into():
    # NEW: the first stream into the buffer entry was cut.
    assert protocol.plan_partial({"buf/2F61": TOKEN}, {"buf/2F61"}, NEW, "buf/2F61", True, {}) == \
        PartialPlan("buf/2F61", ())
    # An incremental into the copy in place was cut.
    assert protocol.plan_partial({"r/a": TOKEN}, set(), INCR, "r/a", True, {}) == PartialPlan("r/a", ())
    # FULL: the new copy's first stream into the buffer was cut.
    assert protocol.plan_partial({"buf/2F61": TOKEN}, {"buf/2F61"}, FULL, "buf/2F61", True, {}) == \
        PartialPlan("buf/2F61", ())


@pytest.mark.parametrize("decision, fresh", [(NEW, {"r/a"}), (FULL, {"r/a"}), (INCR, set())])
def test_any_other_sender_gets_the_partial_state_aborted_first(decision, fresh):
    plan = protocol.plan_partial({"r/a": TOKEN}, fresh, decision, "r/a", False, {})
    assert plan == PartialPlan(None, ("r/a",))


def test_partial_state_where_nothing_will_be_received_is_stale_and_aborted():
    # A FULL's first stream was cut in the buffer, but the sender now shares
    # a snapshot with the copy in place: the incremental goes there.
    plan = protocol.plan_partial({"buf/2F61": TOKEN}, {"buf/2F61"}, INCR, "r/a", True, {})
    assert plan == PartialPlan(None, ("buf/2F61",))


@pytest.mark.parametrize("decision, fresh", [(FULL, set()), (INCR, {"r/a"})])
def test_a_token_of_the_other_kind_of_stream_is_not_offered(decision, fresh):
    # FULL into a buffered copy whose incremental was cut: that copy is
    # replaced, its incremental would be wasted.
    plan = protocol.plan_partial({"r/a": TOKEN}, fresh, decision, "r/a", True, {})
    assert plan == PartialPlan(None, ("r/a",))


def test_an_uptodate_dataset_never_resumes():
    plan = protocol.plan_partial({"r/a": TOKEN}, set(), UPTODATE, "r/a", True, {})
    assert plan == PartialPlan(None, ("r/a",))


def test_a_token_whose_resume_already_failed_without_progress_is_not_offered_again():
    plan = protocol.plan_partial({"r/a": TOKEN}, set(), INCR, "r/a", True, {"r/a": TOKEN})
    assert plan == PartialPlan(None, ("r/a",))
    # Progress made since (a new token): offered.
    assert protocol.plan_partial({"r/a": TOKEN}, set(), INCR, "r/a", True, {"r/a": TOKEN[:-1] + "0"}).offer == "r/a"


def test_a_token_zfs_printed_in_an_unexpected_shape_is_aborted_not_offered():
    plan = protocol.plan_partial({"r/a": "1-xyz"}, set(), INCR, "r/a", True, {})
    assert plan == PartialPlan(None, ("r/a",))


def test_both_target_and_entry_holding_state_offer_one_and_abort_the_other():
    plan = protocol.plan_partial({"r/a": TOKEN, "buf/2F61": TOKEN}, {"buf/2F61"}, INCR, "r/a", True, {})
    assert plan == PartialPlan("r/a", ("buf/2F61",))


def test_without_partial_state_nothing_happens():
    assert protocol.plan_partial({}, set(), NEW, "buf/2F61", True, {}) == PartialPlan()


# --- what a token would send (zfs send -nvP -t), as OpenZFS 2.1.11 prints it --

DRY_RUN_FULL = """resume token contents:
nvlist version: 0
\tobject = 0x2
\toffset = 0x960000
\tbytes = 0x9866a0
\ttoguid = 0x84b0b7ddc31f0069
\ttoname = tank/src@s1
\tcompressok = 1
full\ttank/src@s1\t15235024
size\t15235024
"""

DRY_RUN_INCREMENTAL_RENAMED = """resume token contents:
nvlist version: 0
\tfromguid = 0x84b0b7ddc31f0069
\ttoguid = 0xaa7f8f89df1e4c94
\ttoname = tank/src@s2
incremental\ttank/src@s1\ttank/src@s2x\t19302832
size\t19302832
"""


def test_the_dry_run_says_what_would_be_sent():
    assert parse_resume_dry_run(DRY_RUN_FULL) == (None, "tank/src@s1")


def test_the_dry_run_names_snapshots_by_guid_not_the_tokens_stale_toname():
    # @s2 was renamed @s2x after the cut: zfs sends @s2x, and @s2x is what
    # the sender must check against its list.
    assert parse_resume_dry_run(DRY_RUN_INCREMENTAL_RENAMED) == ("tank/src@s1", "tank/src@s2x")


def test_a_dry_run_without_a_stream_line_is_an_error():
    with pytest.raises(ValueError):
        parse_resume_dry_run("cannot resume send: 'tank/src2@a' used in the initial send no longer exists\n")


# --- capabilities -------------------------------------------------------------

OPENZFS_SEND_USAGE = """missing snapshot argument
usage:
\tsend [-DnPpRVvLecwhb] [-[i|I] snapshot] <snapshot>
\tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>
\tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>
\tsend [-nVvPe] -t <receive_resume_token>
\tsend [-PnVv] --saved filesystem
"""
ZFS_FUSE_SEND_USAGE = """missing snapshot argument
usage:
\tsend [-RDp] [-[iI] snapshot] <snapshot>
"""


def test_send_t_is_read_from_the_usage_text():
    assert RESUME_SEND_USAGE.search(OPENZFS_SEND_USAGE)
    assert not RESUME_SEND_USAGE.search(ZFS_FUSE_SEND_USAGE)
