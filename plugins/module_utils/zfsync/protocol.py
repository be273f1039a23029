# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The zfsync wire protocol v1: frames, messages, validation, decisions.

No I/O happens here: everything is a pure function of its arguments, so the
whole protocol can be unit-tested and fuzzed without sockets or ZFS.

Extensions (spoken only between two zfsync peers of ours, see
docs/protocol.md) are negotiated by ``:xhello``; an original receiver
answers ``1:Unknown cmd xhello`` and closes, after which we speak plain v1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import AbstractSet, List, Mapping, Optional, Sequence, Tuple

FRAME_SIZES = (256, 512)
DEFAULT_FRAME_SIZE = 512

# ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL.
MAX_DATASET_NAME = 255
MAX_SUFFIX = MAX_DATASET_NAME
# An xsync/xplan snapshot list travels after its frame; bound what we accept.
MAX_EXTENDED_LIST_BYTES = 4 * 1024 * 1024
# A resume token travels after its offer frame. OpenZFS 2.1 tokens are a few
# hundred bytes (hex of a compressed nvlist); this bound leaves room for more.
MAX_RESUME_TOKEN_BYTES = 64 * 1024

CMD_SYNC = "sync"
CMD_CLEANBUFFER = "cleanbuffer"
CMD_CLOSE = "close"
# Extensions, ours only.
CMD_HELLO = "xhello"
CMD_XSYNC = "xsync"
CMD_XPLAN = "xplan"
# A sync from a sender that can resume (``zfs send -t``): the receiver
# receives with ``zfs receive -s`` and may offer a resume token first.
# Advertised only by a receiver whose zfs has ``receive -s``.
CMD_XRSYNC = "xrsync"
EXTENSIONS = (CMD_XSYNC, CMD_XPLAN)

REPLY_NEW = "NEW"
REPLY_FULL = "FULL"
REPLY_OK = "OK"
# ``0:RESUME:<action>:<N>`` offers a resume token of N bytes (they follow the
# frame); the sender answers ``0:RESUME`` (the stream follows) or
# ``1:<reason>`` (it cannot: the receiver aborts the partial receive and
# answers as to a sync). No snapshot name can collide: ':' is never in one.
REPLY_RESUME = "RESUME"
RESUME_ACTIONS = ("new", "full", "incremental")
# zfs(8)'s token: <version>-<checksum>-<packed length>-<zlib'd nvlist>, in hex.
_RESUME_TOKEN_RE = re.compile(r"[0-9]+-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+")

# Characters ZFS accepts in a name component, minus the ones that would break
# our framing or our naming: ':' separates protocol fields, '@' snapshot
# lists, '%' is ZFS's own temporary-clone marker, '#' bookmarks.
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.\- ]+$")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text is the reason
    sent back to the peer after ``1:``."""


@dataclass(frozen=True)
class Request:
    """One parsed sender->receiver message."""

    command: str
    suffix: str = ""
    snapshots: Optional[Tuple[str, ...]] = None
    # For xsync/xplan: how many bytes of snapshot list follow the frame.
    list_length: Optional[int] = None


@dataclass(frozen=True)
class Reply:
    ok: bool
    text: str

    def __str__(self) -> str:
        return format_reply(self.ok, self.text)


# --- frames -----------------------------------------------------------------

def encode_frame(text: str, size: int = DEFAULT_FRAME_SIZE) -> bytes:
    """Text, a NUL, then zero padding, exactly ``size`` bytes."""
    if size not in FRAME_SIZES:
        raise ValueError("frame size must be one of %s, not %r" % (FRAME_SIZES, size))
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ProtocolError("message contains a NUL byte")
    if len(data) >= size:
        raise ProtocolError("message of %d bytes does not fit a %d-byte frame" % (len(data), size))
    return data + b"\0" * (size - len(data))


def decode_frame(frame: bytes) -> str:
    """The message is the text before the first NUL; whatever follows it is
    padding (the original leaves stale bytes there, e.g. ``:close\\0uffer``)."""
    end = frame.find(b"\0")
    if end < 0:
        raise ProtocolError("frame not terminated")
    try:
        return frame[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("frame is not valid UTF-8")


def fits_frame(text: str, size: int) -> bool:
    return len(text.encode("utf-8")) < size


# --- names ------------------------------------------------------------------

def validate_component(name: str, what: str = "name") -> None:
    if not name:
        raise ProtocolError("empty %s" % what)
    if name in (".", ".."):
        raise ProtocolError("%s %r is not allowed" % (what, name))
    if len(name.encode("utf-8")) > MAX_DATASET_NAME:
        raise ProtocolError("%s too long" % what)
    if not _COMPONENT_RE.match(name):
        raise ProtocolError("invalid character in %s '%s'" % (what, _printable(name)))


def validate_suffix(suffix: str) -> None:
    """A suffix is empty (the root) or ``/`` followed by valid ZFS name
    components; anything that could escape the receiver's root is refused."""
    if suffix == "":
        return
    if len(suffix.encode("utf-8")) > MAX_SUFFIX:
        raise ProtocolError("dataset suffix too long")
    if not suffix.startswith("/"):
        raise ProtocolError("dataset suffix must start with '/'")
    for component in suffix[1:].split("/"):
        validate_component(component, "dataset name component")


def validate_snapshot_name(name: str) -> None:
    validate_component(name, "snapshot name")


def suffix_of(dataset: str, root: str) -> str:
    """``root/a/b`` -> ``/a/b``; the root itself -> ``""``."""
    if dataset == root:
        return ""
    if not dataset.startswith(root + "/"):
        raise ValueError("%s is not under %s" % (dataset, root))
    return dataset[len(root):]


def hex_suffix(suffix: str) -> str:
    """HEX(S) of the original: the bytes of S as uppercase hexadecimal."""
    return suffix.encode("utf-8").hex().upper()


def unhex_suffix(name: str) -> str:
    """Inverse of hex_suffix; ProtocolError when ``name`` is not HEX(S)."""
    if not name or len(name) % 2 or not re.match(r"^[0-9A-F]+$", name):
        raise ProtocolError("%r is not a hex-encoded suffix" % name)
    try:
        return bytes.fromhex(name).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("%r does not encode a UTF-8 suffix" % name)


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:80]


# --- messages ---------------------------------------------------------------

def format_sync(snapshots: Sequence[str], suffix: str, command: str = CMD_SYNC) -> str:
    return "".join("@" + s for s in snapshots) + ":" + suffix + ":" + command


def format_snapshot_list(snapshots: Sequence[str]) -> str:
    return "".join("@" + s for s in snapshots)


def format_extended(command: str, suffix: str, list_bytes: bytes) -> str:
    """``<N>:<S>:xsync``: the snapshot list (N bytes) follows the frame."""
    return "%d:%s:%s" % (len(list_bytes), suffix, command)


def format_reply(ok: bool, text: str) -> str:
    return ("0:" if ok else "1:") + text


def parse_reply(text: str) -> Reply:
    if len(text) < 2 or text[1] != ":" or text[0] not in "01":
        raise ProtocolError("malformed reply %r" % _printable(text))
    return Reply(text[0] == "0", text[2:])


def parse_snapshot_list(text: str) -> Tuple[str, ...]:
    """``@s1@s2`` -> ("s1", "s2"), each name validated."""
    if text == "":
        return ()
    if not text.startswith("@"):
        raise ProtocolError("snapshot list must start with '@'")
    names = tuple(text[1:].split("@"))
    for name in names:
        validate_snapshot_name(name)
    return names


def parse_request(text: str) -> Request:
    """Parse as the original does: the command is after the last ``:``; if
    another ``:`` precedes it, the suffix lies between the two and the
    snapshot list before them."""
    if ":" not in text:
        raise ProtocolError("cmd=NULL")
    rest, command = text.rsplit(":", 1)
    if not command:
        raise ProtocolError("cmd=NULL")
    if ":" in rest:
        head, suffix = rest.rsplit(":", 1)
    else:
        head, suffix = None, rest
    if command in (CMD_SYNC,):
        validate_suffix(suffix)
        snapshots = parse_snapshot_list(head or "")
        if not snapshots:
            raise ProtocolError("sync without snapshots")
        return Request(command, suffix, snapshots)
    if command in (CMD_XSYNC, CMD_XPLAN, CMD_XRSYNC):
        validate_suffix(suffix)
        if head is None or not head.isdigit():
            raise ProtocolError("%s needs a list length" % command)
        length = int(head)
        if length == 0 or length > MAX_EXTENDED_LIST_BYTES:
            raise ProtocolError("%s list length %d out of range" % (command, length))
        return Request(command, suffix, None, length)
    if command in (CMD_CLEANBUFFER, CMD_CLOSE, CMD_HELLO):
        return Request(command)
    raise ProtocolError("Unknown cmd %s" % _printable(command))


def hello_reply(version: str, resumable: bool = False) -> str:
    """``zfsync <version> ext=xsync,xplan[,xrsync]``: ``xrsync`` only from a
    receiver whose zfs can ``receive -s``."""
    extensions = EXTENSIONS + ((CMD_XRSYNC,) if resumable else ())
    return "zfsync %s ext=%s" % (version, ",".join(extensions))


def parse_hello(text: str) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """(version, extensions) from our receiver's hello reply, else None."""
    match = re.match(r"^zfsync (\S+) ext=(\S*)$", text)
    if not match:
        return None
    return match.group(1), tuple(e for e in match.group(2).split(",") if e)


# --- resume -----------------------------------------------------------------

def validate_resume_token(token: str) -> None:
    """A token goes on a zfs(8) command line (``send -t``): only the shape
    zfs prints, bounded. ProtocolError otherwise."""
    if not token:
        raise ProtocolError("empty resume token")
    if len(token) > MAX_RESUME_TOKEN_BYTES:
        raise ProtocolError("resume token of %d bytes is too long" % len(token))
    if not _RESUME_TOKEN_RE.fullmatch(token):
        raise ProtocolError("malformed resume token '%s'" % _printable(token))


def format_resume_offer(action: str, token: str) -> str:
    """The reply text (after ``0:``) of a resume offer; the token follows."""
    if action not in RESUME_ACTIONS:
        raise ValueError("resume action must be one of %s, not %r" % (RESUME_ACTIONS, action))
    validate_resume_token(token)
    return "%s:%s:%d" % (REPLY_RESUME, action, len(token.encode("ascii")))


def parse_resume_offer(text: str) -> Optional[Tuple[str, int]]:
    """(action, token length) of a ``RESUME:<action>:<N>`` reply text; None
    for any other reply; ProtocolError for a malformed offer."""
    if not text.startswith(REPLY_RESUME + ":"):
        return None
    parts = text.split(":")
    if len(parts) != 3 or parts[1] not in RESUME_ACTIONS or not parts[2].isdigit():
        raise ProtocolError("malformed resume offer '%s'" % _printable(text))
    length = int(parts[2])
    if length == 0 or length > MAX_RESUME_TOKEN_BYTES:
        raise ProtocolError("resume token length %d out of range" % length)
    return parts[1], length


def resume_refusal(dataset: str, snapshots: Sequence[str], stream_from: Optional[str],
                   stream_to: str) -> Optional[str]:
    """Why the sender must not send what a token describes, or None. The
    receiver chose the token: the stream it names must be one of this
    dataset's own snapshots (from and to), never another dataset's data."""
    have = set(snapshots)
    for what, name in (("to", stream_to), ("from", stream_from)):
        if name is None:
            continue
        owner, sep, snap = name.partition("@")
        if not sep or owner != dataset:
            return "the token's %s snapshot %s is not a snapshot of %s" % (what, _printable(name), dataset)
        if snap not in have:
            return "the token's %s snapshot @%s is not in the list sent" % (what, _printable(snap))
    return None


@dataclass(frozen=True)
class PartialPlan:
    """What the receiver does with partial receive state (``zfs receive -s``
    leftovers) before a sync: offer one dataset's token to the sender, and
    abort the rest (OpenZFS refuses a normal receive into a dataset that
    holds such state, and its ``%recv`` clone keeps snapshots from being
    pruned)."""

    offer: Optional[str] = None
    abort: Tuple[str, ...] = ()


def plan_partial(partials: Mapping[str, str], fresh: AbstractSet[str], decision: "Decision", dest: Optional[str],
                 resumable: bool, stuck: Mapping[str, str]) -> PartialPlan:
    """``partials``: {dataset: resume token} of the target and its buffer
    entry; ``fresh``: those whose partial state is a first (full) stream,
    the others hold a cut incremental; ``dest``: the dataset ``decision``
    receives into; ``stuck``: {dataset: token} whose resume already failed
    without progress (not offered again: the bounded fallback).

    Only a resume-capable sender (xrsync) is offered a token, and only one
    that continues the stream the decision needs anyway (a first stream for
    NEW/FULL, an incremental for an incremental); every other partial state
    is stale and aborted."""
    offer = None
    if (resumable and dest in partials and decision.action in RESUME_ACTIONS
            and (decision.action != "incremental") == (dest in fresh)
            and stuck.get(dest) != partials[dest]):
        try:
            validate_resume_token(partials[dest])
            offer = dest
        except ProtocolError:
            offer = None
    return PartialPlan(offer, tuple(sorted(d for d in partials if d != offer)))


# --- decisions --------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What the receiver answers to ``sync`` for one dataset."""

    action: str  # "new" | "full" | "incremental" | "uptodate" | "refuse"
    base: Optional[str] = None  # the common snapshot, for incremental/uptodate
    # Receiver snapshots newer than ``base`` that the sender no longer has;
    # they must go before an incremental receive can succeed.
    destroy_first: Tuple[str, ...] = ()

    @property
    def reply_text(self) -> str:
        if self.action == "new":
            return REPLY_NEW
        if self.action == "full":
            return REPLY_FULL
        if self.action in ("incremental", "uptodate"):
            return self.base or ""
        raise ValueError("no reply text for %s" % self.action)


def decide(sender: Sequence[str], target_exists: bool, receiver: Sequence[str],
           allow_full: bool = True) -> Decision:
    """The receiver's decision for one dataset, from the sender's snapshot
    list (oldest first) and the receiver's (oldest first)."""
    if not sender:
        raise ValueError("sender list is empty")
    if not target_exists:
        return Decision("new")
    have = set(receiver)
    common = next((s for s in reversed(sender) if s in have), None)
    if common is None:
        return Decision("full" if allow_full else "refuse")
    wanted = set(sender)
    newer = receiver[list(receiver).index(common) + 1:]
    stale = tuple(s for s in newer if s not in wanted)
    action = "uptodate" if common == sender[-1] else "incremental"
    return Decision(action, common, stale)


def snapshots_to_prune(receiver: Sequence[str], sender: Sequence[str]) -> List[str]:
    """Receiver snapshots the sender no longer has, by exact name (the
    original matched substrings, so ``@s1`` survived beside ``@s10``)."""
    wanted = set(sender)
    return [s for s in receiver if s not in wanted]


@dataclass(frozen=True)
class Stream:
    """One ``zfs send`` the sender runs: full of ``to`` when ``base`` is None,
    else incremental with intermediates (``-I``) from ``base`` to ``to``."""

    to: str
    base: Optional[str] = None


@dataclass(frozen=True)
class SendPlan:
    action: str  # "new" | "full" | "incremental" | "uptodate"
    streams: Tuple[Stream, ...] = field(default_factory=tuple)
    base: Optional[str] = None


def plan_streams(reply_text: str, snapshots: Sequence[str], frame_size: int = DEFAULT_FRAME_SIZE) -> SendPlan:
    """What to send after a ``0:`` reply to ``sync``."""
    if not snapshots:
        raise ValueError("no snapshots to send")
    newest = snapshots[-1]
    if reply_text in (REPLY_NEW, REPLY_FULL):
        action = reply_text.lower()
        if frame_size == 256:
            # An old (256-byte) original receiver expects exactly one stream,
            # and zfs send cannot build "full plus intermediates" of a single
            # dataset without -R: send the newest snapshot in full.
            return SendPlan(action, (Stream(newest),))
        first = snapshots[0]
        streams = [Stream(first)]
        if len(snapshots) > 1:
            streams.append(Stream(newest, first))
        return SendPlan(action, tuple(streams))
    if reply_text == newest:
        return SendPlan("uptodate", (), newest)
    if reply_text in snapshots:
        return SendPlan("incremental", (Stream(newest, reply_text),), reply_text)
    raise ProtocolError("receiver named snapshot %r which the sender does not have" % _printable(reply_text))
