"""Admission without ZFS: connection limits, client-root rules, and the
gathering of a frame by the lobby (frame-size detection included)."""
import pytest

from zfsync import clients, protocol
from zfsync.clients import ClientRoots, ConnectionLimits, PendingFrame, parse_client_root
from zfsync.connection import FRAME_DETECT_WAIT


# --- connection limits ------------------------------------------------------

def test_limits_admit_up_to_the_total_then_refuse_with_the_option_named():
    limits = ConnectionLimits(total=3, per_client=10)
    assert [limits.admit("10.0.0.%d" % n) for n in range(3)] == [None, None, None]
    refusal = limits.admit("10.0.0.9")
    assert refusal and "--max-connections 3" in refusal
    assert limits.open_count() == 3


def test_limits_refuse_one_client_beyond_its_share_but_not_the_others():
    limits = ConnectionLimits(total=10, per_client=2)
    assert limits.admit("10.0.0.1") is None and limits.admit("10.0.0.1") is None
    refusal = limits.admit("10.0.0.1")
    assert refusal and "--max-per-client 2" in refusal and "10.0.0.1" in refusal
    assert limits.admit("10.0.0.2") is None


def test_a_released_connection_frees_its_place():
    limits = ConnectionLimits(total=1, per_client=1)
    assert limits.admit("10.0.0.1") is None
    limits.release("10.0.0.1")
    assert limits.open_count() == 0 and limits.open_count("10.0.0.1") == 0
    assert limits.admit("10.0.0.2") is None


def test_releasing_more_than_was_admitted_never_goes_negative():
    limits = ConnectionLimits(total=2, per_client=2)
    limits.release("10.0.0.1")
    assert limits.open_count() == 0
    assert limits.admit("10.0.0.1") is None and limits.admit("10.0.0.1") is None


def test_an_ipv4_client_of_a_dual_stack_listener_counts_as_its_ipv4_address():
    limits = ConnectionLimits(total=10, per_client=1)
    assert limits.admit("::ffff:192.0.2.7") is None
    assert limits.admit("192.0.2.7") is not None


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ConnectionLimits(total=0)


# --- client roots -------------------------------------------------------------

@pytest.mark.parametrize("spec, sub, name, network", [
    ("cn:web1=web1", "web1", "web1", None),
    ("cn:backup.example.org=hosts/backup", "hosts/backup", "backup.example.org", None),
    ("10.0.0.0/24=branch", "branch", None, "10.0.0.0/24"),
    ("192.0.2.7=one", "one", None, "192.0.2.7/32"),
    ("2001:db8::/32=v6", "v6", None, "2001:db8::/32"),
    ("10.0.0.0/24=/branch/", "branch", None, "10.0.0.0/24"),
])
def test_client_root_specs(spec, sub, name, network):
    rule = parse_client_root(spec)
    assert rule.sub == sub and rule.prefix == "/" + sub
    assert rule.common_name == name
    assert (str(rule.network) if rule.network else None) == network


@pytest.mark.parametrize("spec, reason", [
    ("web1", "expected MATCH=SUB"),
    ("cn:web1=", "empty"),
    ("cn:=web1", "empty certificate name"),
    ("10.0.0.0/24=../x", "not allowed"),
    ("10.0.0.0/24=a/../b", "not allowed"),
    ("10.0.0.0/24=a@b", "invalid character"),
    ("10.0.0.0/24=a%2F..", "invalid character"),
    ("10.0.0.0/24=a//b", "empty dataset name component"),
    ("10.0.0.0/33=x", "neither cn:NAME nor a network"),
    ("web1=x", "neither cn:NAME nor a network"),
])
def test_bad_client_root_specs_are_refused_with_the_reason(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_client_root(spec)


def test_overlapping_sub_roots_are_refused_since_one_client_could_overwrite_the_other():
    with pytest.raises(ValueError, match="overlap"):
        ClientRoots(["10.0.0.1=a", "10.0.0.2=a/b"])
    with pytest.raises(ValueError, match="overlap"):
        ClientRoots(["10.0.0.2=a/b", "cn:x=a"])


def test_two_rules_may_name_the_same_sub_root_and_siblings_with_a_common_prefix():
    roots = ClientRoots(["cn:web1=web", "192.0.2.7=web", "10.0.0.1=web2"])
    assert roots.subs == ["web", "web2"]


def test_first_matching_rule_wins_by_address_or_certificate_name():
    roots = ClientRoots(["cn:web1=web1", "127.0.0.2=two", "127.0.0.0/8=loop"])
    assert roots.match("127.0.0.2", "web1").sub == "web1"
    assert roots.match("127.0.0.2", None).sub == "two"
    assert roots.match("127.0.0.5", "other").sub == "loop"
    assert roots.match("::ffff:127.0.0.2").sub == "two"
    assert roots.match("10.1.1.1", "other") is None


def test_certificate_rules_need_a_certificate_name():
    roots = ClientRoots(["cn:web1=web1"])
    assert roots.need_certificates
    assert roots.match("127.0.0.1", None) is None
    assert not ClientRoots(["127.0.0.1=x"]).need_certificates
    assert not ClientRoots()


# --- a frame gathered by the lobby -----------------------------------------

def test_a_fixed_size_frame_is_complete_at_exactly_its_size():
    frame = PendingFrame(256)
    frame.add(b"x" * 100, 0.0)
    assert frame.complete(1.0) is None and frame.want() == 156
    frame.add(b"y" * 156, 0.0)
    assert frame.complete(1.0) == 256 and frame.want() == 0


def test_auto_size_512_bytes_make_a_512_byte_frame_at_once():
    frame = PendingFrame(None)
    frame.add(protocol.encode_frame(":xhello", 512)[:300], 0.0)
    assert frame.complete(0.0) is None
    frame.add(protocol.encode_frame(":xhello", 512)[300:], 0.01)
    assert frame.complete(0.01) == 512


def test_auto_size_256_bytes_and_nothing_more_for_the_detection_wait_make_a_256_byte_frame():
    frame = PendingFrame(None)
    frame.add(protocol.encode_frame(":xhello", 256), 10.0)
    assert frame.complete(10.0) is None
    assert frame.wake_at() == pytest.approx(10.0 + FRAME_DETECT_WAIT)
    assert frame.complete(10.0 + FRAME_DETECT_WAIT) == 256


def test_auto_size_256_bytes_then_end_of_file_is_a_256_byte_frame():
    frame = PendingFrame(None)
    frame.add(protocol.encode_frame(":close", 256), 0.0)
    frame.add(b"", 0.0)
    assert frame.complete(0.0) == 256 and not frame.broken


@pytest.mark.parametrize("count", [0, 1, 255, 257, 511])
def test_a_frame_cut_by_end_of_file_is_broken(count):
    frame = PendingFrame(None)
    frame.add(b"x" * count, 0.0)
    frame.add(b"", 0.0)
    assert frame.broken


def test_a_half_frame_never_completes_however_long_it_waits():
    frame = PendingFrame(None)
    frame.add(b"x" * 300, 0.0)  # a slow client: more than 256, less than 512
    assert frame.complete(1e9) is None and frame.wake_at() is None
    assert frame.want() == 212


def test_the_lobby_never_reads_past_one_frame():
    assert PendingFrame(None).want() == 512
    frame = PendingFrame(512)
    frame.add(b"x" * 512, 0.0)
    assert frame.want() == 0


def test_defaults_leave_room_for_a_sender_with_its_probe():
    assert clients.DEFAULT_MAX_PER_CLIENT > 8
    assert clients.DEFAULT_MAX_CONNECTIONS >= 4 * clients.DEFAULT_MAX_PER_CLIENT


# --- the receiver's command line ----------------------------------------------

def test_receiver_command_line_takes_the_bounds_and_client_roots():
    from zfsync import cli

    args = cli.recv_parser().parse_args(["--max-connections", "20", "--max-per-client", "3",
                                         "--first-request-timeout", "2.5", "--client-root", "127.0.0.2=two",
                                         "--client-root", "10.0.0.0/8=ten", "tank/recv"])
    assert (args.max_connections, args.max_per_client, args.first_request_timeout) == (20, 3, 2.5)
    assert args.client_root == ["127.0.0.2=two", "10.0.0.0/8=ten"]
    defaults = cli.recv_parser().parse_args(["tank/recv"])
    assert (defaults.max_connections, defaults.max_per_client, defaults.first_request_timeout, defaults.client_root) \
        == (clients.DEFAULT_MAX_CONNECTIONS, clients.DEFAULT_MAX_PER_CLIENT, clients.DEFAULT_FIRST_REQUEST_TIMEOUT, [])


@pytest.mark.parametrize("argv, message", [
    (["--client-root", "cn:web1=web1"], "needs TLS"),
    (["--client-root", "10.0.0.1=a", "--client-root", "10.0.0.2=a/b"], "overlap"),
    (["--client-root", "10.0.0.1=../x"], "not allowed"),
    (["--max-connections", "0"], "at least 1"),
    (["--first-request-timeout", "0"], "more than 0"),
])
def test_receiver_command_line_refuses_bad_bounds_and_client_roots(argv, message, capsys):
    from zfsync import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main_recv(argv + ["tank/recv"])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


# --- the lobby's log rate -----------------------------------------------------

def test_log_rate_lets_a_burst_through_each_second_and_counts_the_rest():
    rate = clients.LogRate(burst=3)
    assert [rate.admit(100.1)[0] for _n in range(5)] == [True, True, True, False, False]
    assert rate.admit(101.0) == (True, 2)  # a new second reports what was left out
    assert rate.suppressed == 0


def test_log_rate_reports_suppressed_lines_once_their_second_is_over_without_new_lines():
    rate = clients.LogRate(burst=1)
    rate.admit(5.0)
    rate.admit(5.5)
    assert rate.overdue(5.9) == 0
    assert rate.overdue(6.2) == 1
    assert rate.overdue(7.0) == 0
