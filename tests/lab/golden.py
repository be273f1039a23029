"""The golden captures of the original zfsync as replay scripts (stdlib only).

A capture (`tests/data/golden/pcap/*.pcap`, tcpdump on loopback, classic
pcap, Ethernet link type) holds TCP connections from the original sender to
the original receiver. Per connection this module yields *steps*: the bytes
the sender wrote up to the point where the receiver answered (a frame, a
frame and the ZFS streams after it, or streams alone), the receiver's reply
frames that followed, and the sender's closing of its side (an `EOF` step).
Replaying a step means: write its bytes, read as many frames as the receiver
should answer.

This file also runs inside a lab VM (copied there with the pcaps):

  golden.py steps PCAP                          the steps, readable
  golden.py replay PCAP --plan FILE.json        replay against 127.0.0.1:3030;
                                                JSON results on stdout

The comparison with the original's replies lives with the test
(tests/lab/test_golden_replay.py); the replayer only records what it got.
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

RECEIVER_PORT = 3030
FRAME_SIZE = 512

# -- pcap --------------------------------------------------------------------

PCAP_MAGICS = {  # magic as read little-endian -> (byte order, timestamp fraction)
    0xA1B2C3D4: ("<", 1e-6),
    0xD4C3B2A1: (">", 1e-6),
    0xA1B23C4D: ("<", 1e-9),
    0x4D3CB2A1: (">", 1e-9),
}
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
IPPROTO_TCP = 6
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


@dataclass
class TcpPacket:
    time: float
    client_port: int
    from_client: bool
    seq: int
    flags: int
    payload: bytes


def pcap_records(data: bytes) -> Iterator[Tuple[float, bytes]]:
    """(timestamp, captured bytes) of each record of a classic pcap file."""
    if len(data) < 24:
        raise ValueError("not a pcap file: %d bytes" % len(data))
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in PCAP_MAGICS:
        raise ValueError("not a classic pcap file (magic %#x; pcapng is not supported)" % magic)
    order, fraction = PCAP_MAGICS[magic]
    linktype = struct.unpack(order + "I", data[20:24])[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError("link type %d; only Ethernet (1) captures are supported" % linktype)
    offset = 24
    while offset + 16 <= len(data):
        seconds, fractions, captured, _original = struct.unpack(order + "IIII", data[offset:offset + 16])
        offset += 16
        yield seconds + fractions * fraction, data[offset:offset + captured]
        offset += captured


def _tcp_segments(data: bytes) -> Iterator[Tuple[float, int, int, int, int, bytes]]:
    """(time, source port, destination port, seq, flags, payload) of each
    IPv4 TCP packet, in capture order."""
    for when, frame in pcap_records(data):
        if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETHERTYPE_IPV4:
            continue
        ip = frame[14:]
        header_length = (ip[0] & 0x0F) * 4
        total_length = struct.unpack("!H", ip[2:4])[0]
        if ip[9] != IPPROTO_TCP:
            continue
        tcp = ip[header_length:total_length]
        source, dest, seq = struct.unpack("!HHI", tcp[:8])
        yield when, source, dest, seq, tcp[13], bytes(tcp[(tcp[12] >> 4) * 4:])


def receiver_port(data: bytes) -> int:
    """The port the first connection of the capture was opened to (not
    always 3030: the original receiver, restarted after its crash in
    wire_prune, could not bind 3030 again and listened on 3031)."""
    for _when, _source, dest, _seq, flags, _payload in _tcp_segments(data):
        if flags & TCP_SYN and not flags & TCP_ACK:
            return dest
    raise ValueError("no TCP connection opened in the capture")


def tcp_packets(data: bytes, port: int) -> Iterator[TcpPacket]:
    """The TCP packets to or from `port`, in capture order."""
    for when, source, dest, seq, flags, payload in _tcp_segments(data):
        if port in (source, dest):
            from_client = dest == port
            yield TcpPacket(when, source if from_client else dest, from_client, seq, flags, payload)


class _Direction:
    """One direction of a TCP connection: bytes delivered in sequence order,
    retransmissions trimmed, out-of-order segments held until the gap fills."""

    def __init__(self) -> None:
        self.next_seq: Optional[int] = None
        self.held: Dict[int, bytes] = {}
        self.closed = False

    def accept(self, seq: int, payload: bytes) -> bytes:
        if self.next_seq is None:
            raise ValueError("data before the SYN: the capture started mid-connection")
        self.held[seq] = max(payload, self.held.get(seq, b""), key=len)
        delivered = b""
        progress = True
        while progress:
            progress = False
            for start in list(self.held):
                offset = (self.next_seq - start) & 0xFFFFFFFF
                if offset < 0x80000000:  # start <= next_seq (mod 2**32)
                    chunk = self.held.pop(start)[offset:]
                    delivered += chunk
                    self.next_seq = (self.next_seq + len(chunk)) & 0xFFFFFFFF
                    progress = progress or bool(chunk)
        return delivered


# -- ZFS streams ---------------------------------------------------------------

DRR_RECORD_SIZE = 312
DMU_BACKUP_MAGIC = 0x2F5BACBAC
DRR_BEGIN, DRR_OBJECT, DRR_WRITE, DRR_END, DRR_SPILL, DRR_WRITE_EMBEDDED = 0, 1, 3, 5, 7, 8
DMU_COMPOUNDSTREAM = 2


@dataclass
class Snapshot:
    """What a BEGIN record of a (sub)stream says about its snapshot."""
    name: str           # dataset@snap on the sender
    guid: int           # toguid: the snapshot's guid, kept by zfs receive
    from_guid: int      # 0 for a full stream


@dataclass
class Stream:
    size: int
    snapshots: List[Snapshot]


def is_stream_start(data: bytes, offset: int) -> bool:
    if offset + 16 > len(data):
        return False
    record_type, = struct.unpack_from("<I", data, offset)
    magic, = struct.unpack_from("<Q", data, offset + 8)
    return record_type == DRR_BEGIN and magic == DMU_BACKUP_MAGIC


def _record_payload(record: bytes) -> int:
    """Bytes that follow a DRR record before the next one (OpenZFS 2.1 layout)."""
    record_type, payload_length = struct.unpack_from("<II", record, 0)
    if record_type == DRR_BEGIN:
        return payload_length          # the nvlist of a compound stream's header
    if record_type == DRR_OBJECT:
        bonus_length, = struct.unpack_from("<I", record, 28)
        raw_bonus_length, = struct.unpack_from("<I", record, 36)
        return raw_bonus_length or (bonus_length + 7) & ~7
    if record_type == DRR_WRITE:
        logical_size, = struct.unpack_from("<Q", record, 32)
        compressed_size, = struct.unpack_from("<Q", record, 96)
        return compressed_size if record[50] else logical_size   # record[50]: compression type
    if record_type == DRR_SPILL:
        length, = struct.unpack_from("<Q", record, 16)
        compressed_size, = struct.unpack_from("<Q", record, 40)
        return compressed_size or length
    if record_type == DRR_WRITE_EMBEDDED:
        payload_size, = struct.unpack_from("<I", record, 52)
        return (payload_size + 7) & ~7
    return 0


def _record(data: bytes, offset: int) -> bytes:
    if offset + DRR_RECORD_SIZE > len(data):
        raise ValueError("ZFS stream truncated at byte %d" % offset)
    return data[offset:offset + DRR_RECORD_SIZE]


def parse_stream(data: bytes, offset: int) -> Stream:
    """The ZFS send stream at data[offset:]: its size and the snapshots its
    (sub)streams carry. A compound stream (`zfs send -p`, `-R`, `-I`) is a
    BEGIN with an nvlist and an END, then BEGIN..END substreams, then an END."""
    start = offset
    begin = _record(data, offset)
    compound = struct.unpack_from("<Q", begin, 16)[0] & 3 == DMU_COMPOUNDSTREAM
    snapshots: List[Snapshot] = []
    if compound:
        offset += DRR_RECORD_SIZE + _record_payload(begin)
        if struct.unpack_from("<I", _record(data, offset), 0)[0] != DRR_END:
            raise ValueError("compound stream header without its END at byte %d" % offset)
        offset += DRR_RECORD_SIZE
    while True:
        record = _record(data, offset)
        record_type, = struct.unpack_from("<I", record, 0)
        if record_type == DRR_END and compound:
            offset += DRR_RECORD_SIZE       # the END closing the compound stream
            break
        if record_type != DRR_BEGIN:
            raise ValueError("expected a BEGIN record at byte %d, found type %d" % (offset, record_type))
        to_guid, from_guid = struct.unpack_from("<QQ", record, 40)
        name = record[56:56 + 256].split(b"\0")[0].decode("utf-8", "replace")
        snapshots.append(Snapshot(name, to_guid, from_guid))
        while True:                          # the substream's records up to its END
            record = _record(data, offset)
            offset += DRR_RECORD_SIZE + _record_payload(record)
            if struct.unpack_from("<I", record, 0)[0] == DRR_END:
                break
        if not compound:
            break
    return Stream(offset - start, snapshots)


# -- steps -------------------------------------------------------------------


def frame_text(frame: bytes) -> str:
    """A frame's message: the text before the first NUL (the original leaves
    stale bytes after it)."""
    return frame.partition(b"\0")[0].decode("utf-8", "replace")


@dataclass
class Item:
    """A frame (`text`, `residue` after its NUL) or a stream in a step's bytes."""
    text: Optional[str] = None
    residue: bytes = b""
    stream: Optional[Stream] = None

    @property
    def label(self) -> str:
        if self.stream is not None:
            return "stream " + " ".join(s.name for s in self.stream.snapshots)
        return self.text or ""


@dataclass
class Step:
    time: float                      # when the sender began it (capture clock)
    data: bytes = b""                # what the sender wrote
    eof: bool = False                # the sender closed its side (FIN, or RST when killed)
    reply_bytes: bytes = b""         # what the original receiver answered before the next step
    receiver_closed: bool = False    # the original receiver had closed its side by then

    def items(self, frame_size: int = FRAME_SIZE) -> List[Item]:
        items, offset = [], 0
        while offset < len(self.data):
            if is_stream_start(self.data, offset):
                stream = parse_stream(self.data, offset)
                items.append(Item(stream=stream))
                offset += stream.size
            else:
                frame = self.data[offset:offset + frame_size]
                text, _nul, residue = frame.partition(b"\0")
                items.append(Item(text.decode("utf-8", "replace"), residue.rstrip(b"\0")))
                offset += frame_size
        return items

    def label(self, frame_size: int = FRAME_SIZE) -> str:
        """The step's name in the expected-difference table: its first frame's
        text, `stream <snapshots>` when it starts with a stream, or `EOF`."""
        if self.eof:
            return "EOF"
        items = self.items(frame_size)
        return items[0].label if items else ""

    def replies(self, frame_size: int = FRAME_SIZE) -> List[bytes]:
        if len(self.reply_bytes) % frame_size:
            raise ValueError("%d reply bytes are not whole %d-byte frames" % (len(self.reply_bytes), frame_size))
        return [self.reply_bytes[i:i + frame_size] for i in range(0, len(self.reply_bytes), frame_size)]


@dataclass
class Connection:
    client_port: int
    time: float                      # its first packet
    established: bool = False        # the receiver answered the SYN
    steps: List[Step] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The connection's name: the text of the sender's first frame."""
        for step in self.steps:
            if not step.eof:
                return step.label()
        return "(no bytes)"


def connections(data: bytes, port: Optional[int] = None) -> List[Connection]:
    """The TCP connections to the receiver's port (default: the one the
    capture's first connection went to) in the order they began, cut into
    steps at the points where the receiver replied."""
    port = port if port is not None else receiver_port(data)
    found: Dict[int, Connection] = {}
    directions: Dict[Tuple[int, bool], _Direction] = {}
    for packet in tcp_packets(data, port):
        conn = found.setdefault(packet.client_port, Connection(packet.client_port, packet.time))
        direction = directions.setdefault((packet.client_port, packet.from_client), _Direction())
        if packet.flags & TCP_SYN:
            direction.next_seq = (packet.seq + 1) & 0xFFFFFFFF
            if not packet.from_client and packet.flags & TCP_ACK:
                conn.established = True
            continue
        delivered = direction.accept(packet.seq, packet.payload) if packet.payload else b""
        if packet.from_client:
            if delivered:
                last = conn.steps[-1] if conn.steps else None
                if last is None or last.reply_bytes or last.eof or last.receiver_closed:
                    conn.steps.append(Step(packet.time))
                conn.steps[-1].data += delivered
            if packet.flags & (TCP_FIN | TCP_RST) and not direction.closed and conn.established:
                direction.closed = True
                conn.steps.append(Step(packet.time, eof=True))
        else:
            if delivered:
                if not conn.steps:
                    conn.steps.append(Step(packet.time))
                conn.steps[-1].reply_bytes += delivered
            if packet.flags & (TCP_FIN | TCP_RST) and not direction.closed:
                direction.closed = True
                if conn.steps:
                    conn.steps[-1].receiver_closed = True
    return sorted(found.values(), key=lambda c: c.time)


def schedule(conns: Sequence[Connection]) -> List[Tuple[int, int]]:
    """(connection index, step index) of every step, in the order the
    original sender began them across its connections."""
    order = [(step.time, c, s) for c, conn in enumerate(conns) for s, step in enumerate(conn.steps)]
    return [(c, s) for _time, c, s in sorted(order)]


def streams(conns: Sequence[Connection]) -> List[Stream]:
    return [item.stream for conn in conns for step in conn.steps for item in step.items() if item.stream]


# -- replay (runs in the VM) -----------------------------------------------------


def _read_frames(sock: socket.socket, count: Optional[int], frame_size: int, timeout: float,
                 frames: List[bytes]) -> Tuple[List[bytes], bool]:
    """Append up to `count` more frames (None: until EOF) to `frames`, which
    the caller keeps even when this raises; (frames, whether EOF was seen)."""
    count = None if count is None else len(frames) + count
    pending = b""
    deadline = time.monotonic() + timeout
    while count is None or len(frames) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply within %.0f s (got %d frames, %d bytes of another)" % (
                timeout, len(frames), len(pending)))
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(frame_size - len(pending))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if pending:
                frames.append(pending)
            return frames, True
        pending += chunk
        if len(pending) == frame_size:
            frames.append(pending)
            pending = b""
    return frames, False


def replay(conns: Sequence[Connection], plan: Dict[str, List[dict]], host: str = "127.0.0.1",
           port: int = RECEIVER_PORT, frame_size: int = FRAME_SIZE, timeout: float = 300) -> Dict[str, list]:
    """Replay every step in the original's order. After step s of a
    connection read plan[client port][s]["frames"] frames, then, when
    plan[...]["close"], read until the receiver closes; after an `EOF` step
    (the sender closed its side) read until the receiver closes. Returns per
    client port one record per step: frames (base64), eof, error, seconds.
    Connections without steps (refused by a dead receiver) are not opened."""
    sockets: Dict[int, socket.socket] = {}
    results: Dict[str, list] = {str(conn.client_port): [] for conn in conns}
    try:
        for c, s in schedule(conns):
            conn, step = conns[c], conns[c].steps[s]
            expect = plan[str(conn.client_port)][s]
            record = {"step": s, "label": step.label(frame_size), "frames": [], "eof": False, "error": None}
            t0 = time.monotonic()
            frames: List[bytes] = []
            try:
                if conn.client_port not in sockets:
                    sockets[conn.client_port] = socket.create_connection((host, port), timeout=30)
                sock = sockets[conn.client_port]
                if step.eof:
                    sock.shutdown(socket.SHUT_WR)
                    frames, record["eof"] = _read_frames(sock, None, frame_size, timeout, frames)
                else:
                    sock.settimeout(timeout)
                    sock.sendall(step.data)
                    frames, record["eof"] = _read_frames(sock, expect["frames"], frame_size, timeout, frames)
                    if expect["close"] and not record["eof"]:
                        frames, record["eof"] = _read_frames(sock, None, frame_size, 60, frames)
            except (OSError, TimeoutError) as error:
                record["error"] = "%s: %s" % (type(error).__name__, error)
            record["frames"] = [base64.b64encode(f).decode() for f in frames]
            record["seconds"] = round(time.monotonic() - t0, 3)
            results[str(conn.client_port)].append(record)
    finally:
        for sock in sockets.values():
            sock.close()
    return results


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="golden captures: show steps, or replay them")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("steps")
    show.add_argument("pcap")
    play = sub.add_parser("replay")
    play.add_argument("pcap")
    play.add_argument("--plan", required=True,
                      help='JSON {client port: [{"frames": N, "close": BOOL} per step]}: what to read')
    play.add_argument("--port", type=int, default=RECEIVER_PORT)
    play.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    with open(args.pcap, "rb") as handle:
        conns = connections(handle.read())
    if args.command == "steps":
        t0 = min(conn.time for conn in conns)
        for conn in conns:
            print("connection %d (%s)%s" % (conn.client_port, conn.label, "" if conn.established else " refused"))
            for step in conn.steps:
                replies = [frame_text(f) for f in step.replies()]
                closed = " (receiver closed)" if step.receiver_closed else ""
                print("  +%7.3f %-60s %7d B -> %s%s" % (step.time - t0, step.label()[:60], len(step.data), replies, closed))
        return 0
    with open(args.plan) as handle:
        plan = json.load(handle)
    json.dump(replay(conns, plan, port=args.port, timeout=args.timeout), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
