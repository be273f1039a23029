# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The multithreaded sender: walks a dataset tree parent-first and hands each
dataset to the next free worker; each worker holds one reusable connection
to the receiver and runs ``zfs send`` with the socket as its stdout.

Unlike the original, it never hangs on an already-synced dataset, skips
datasets without snapshots cleanly, reports every worker's outcome in its
exit status, and never sends a list that does not fit a frame to a peer that
cannot take the rest. With a receiver of ours that offers it (``xrsync``)
and a zfs that can ``send -t``, a cut stream resumes where it stopped.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from . import __version__, protocol
from .connection import (ConnectionClosed, FramedConnection, FrameTimeout, TlsRelay, connect, enable_keepalive,
                         tls_context)
from .logs import Log
from .zfs import Zfs, ZfsError

PEER_OURS = "zfsync"
PEER_ORIGINAL = "original"


@dataclass
class SyncOptions:
    root: str
    receiver: str
    port: int = 30
    threads: int = 4
    bind_address: Optional[str] = None
    frame_size: int = protocol.DEFAULT_FRAME_SIZE
    log_file: Optional[str] = None
    verbose: bool = False
    timeout: float = 300.0  # wait for a reply to a frame
    connect_timeout: float = 30.0
    stream_idle_timeout: float = 600.0  # no stream bytes moving for this long
    plan_only: bool = False  # ask what would be sent (xplan); send nothing
    tls_cert: Optional[str] = None  # mutual TLS with a zfsync receiver of ours
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_server_name: Optional[str] = None  # the name the receiver's certificate must carry
    resume: bool = True  # resume cut streams where both sides can (xrsync, zfs send -t)


@dataclass
class DatasetResult:
    dataset: str
    suffix: str
    snapshots: int = 0
    action: str = "pending"  # new|full|incremental|uptodate|skipped|failed
    from_snapshot: Optional[str] = None
    to_snapshot: Optional[str] = None
    bytes: Optional[int] = None
    seconds: float = 0.0
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    resumed: bool = False  # a partial receive was continued (zfs send -t)

    @property
    def failed(self) -> bool:
        return self.action == "failed"


@dataclass
class RunResult:
    root: str
    receiver: str
    port: int
    peer: Optional[str] = None
    peer_version: Optional[str] = None
    peer_extensions: List[str] = field(default_factory=list)
    resumable: bool = False  # xrsync negotiated: the receiver may offer resume tokens
    datasets: List[DatasetResult] = field(default_factory=list)
    seconds: float = 0.0
    errors: List[str] = field(default_factory=list)
    plan_only: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not any(d.failed for d in self.datasets)

    @property
    def bytes(self) -> int:
        return sum(d.bytes or 0 for d in self.datasets)

    @property
    def counts(self) -> Dict[str, int]:
        counts = {a: 0 for a in ("new", "full", "incremental", "uptodate", "skipped", "failed")}
        for result in self.datasets:
            counts[result.action] = counts.get(result.action, 0) + 1
        return counts

    @property
    def sent(self) -> bool:
        """True when a stream went out (what ``changed`` means to Ansible)."""
        return not self.plan_only and any(d.action in ("new", "full", "incremental") for d in self.datasets)

    def summary_line(self) -> str:
        counts = " ".join("%s=%d" % item for item in self.counts.items())
        resumed = sum(1 for d in self.datasets if d.resumed)
        if resumed:
            counts += " resumed=%d" % resumed
        line = "%s%s -> %s port %d: %d datasets, %d bytes, %.2f s; %s" % (
            "plan " if self.plan_only else "", self.root, self.receiver, self.port,
            len(self.datasets), self.bytes, self.seconds, counts)
        if self.errors:
            line += "; errors: " + "; ".join(self.errors)
        return line

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(ok=self.ok, bytes=self.bytes, counts=self.counts, sent=self.sent)
        return data


class SenderError(RuntimeError):
    pass


@dataclass
class Pending:
    """A dataset whose streams went out and whose ``0:OK`` is still unread
    (the protocol reads it lazily, before the next command)."""

    result: DatasetResult
    started: float
    acked_before: Optional[int]
    frame_bytes: int


class Run:
    """Shared state of one run: the work queue, the options, the results."""

    def __init__(self, options: SyncOptions, zfs: Zfs, log: Log, result: RunResult):
        self.options = options
        self.zfs = zfs
        self.log = log
        self.result = result
        self.work: "queue.Queue[Optional[Tuple[DatasetResult, List[str]]]]" = queue.Queue()
        self.lock = threading.Lock()
        self.active = options.threads
        self.ours = result.peer == PEER_OURS
        self.resumable = result.resumable


class Worker:
    def __init__(self, run: Run, number: int):
        self.run = run
        self.number = number
        self.conn: Optional[FramedConnection] = None
        self.pending: Optional[Pending] = None
        self.error: Optional[BaseException] = None

    @property
    def options(self) -> SyncOptions:
        return self.run.options

    def log(self, message: str) -> None:
        self.run.log.main(str(self.number), message)

    # -- connection ----------------------------------------------------------

    def connection(self) -> FramedConnection:
        if self.conn is None:
            self.conn = open_connection(self.options)
        return self.conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def reply(self, timeout: Optional[float] = None) -> protocol.Reply:
        if self.conn is None:
            raise ConnectionClosed("no connection to read a reply from")
        return protocol.parse_reply(self.conn.read_frame(timeout or self.options.timeout))

    # -- the loop ------------------------------------------------------------

    def __call__(self) -> None:
        try:
            while True:
                item = self.run.work.get()
                if item is None:
                    break
                result, snapshots = item
                self.finish_pending()
                self.sync(result, snapshots)
            self.finish_pending()
            self.finish_run()
        except BaseException as error:  # collected by the main thread
            self.error = error
            self.drop_connection()

    def finish_pending(self) -> None:
        """Read the ``0:OK`` of the previous dataset; anything else fails it
        and closes the connection."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        result = pending.result
        try:
            reply = self.reply()
        except (ConnectionClosed, FrameTimeout, OSError, protocol.ProtocolError) as error:
            self.fail(result, "no answer after the stream: %s" % error)
            return
        result.seconds = time.monotonic() - pending.started
        if not (reply.ok and reply.text == protocol.REPLY_OK):
            self.fail(result, "receiver: %s" % reply)
            return
        acked = self.conn.bytes_sent() if self.conn else None
        if acked is not None and pending.acked_before is not None:
            result.bytes = max(0, acked - pending.acked_before - pending.frame_bytes)
        self.log("%s: %s done (%s bytes, %.2f s)" % (result.dataset, result.action, result.bytes, result.seconds))

    def receiver_reason(self) -> Optional[str]:
        """When a stream breaks because the receiver gave up (a full pool, a
        refused stream), its ``1:`` answer is usually waiting on the socket:
        it says more than our side's broken pipe."""
        if self.conn is None or not self.conn.readable(0.5):
            return None
        try:
            reply = protocol.parse_reply(self.conn.read_frame(2.0))
        except (ConnectionError, FrameTimeout, OSError, protocol.ProtocolError):
            return None
        return None if reply.ok else str(reply)

    def fail(self, result: DatasetResult, error: str) -> None:
        result.action = "failed"
        result.error = error
        self.log("%s: failed: %s" % (result.dataset, error))
        self.drop_connection()

    def sync(self, result: DatasetResult, snapshots: List[str]) -> None:
        """One dataset: frame, decision, streams; the OK is read later."""
        started = time.monotonic()
        named = [s for s in snapshots if ":" not in s]
        if len(named) < len(snapshots):
            result.warnings.append("snapshots with ':' in their name cannot be listed on the wire: %s"
                                   % ", ".join(s for s in snapshots if ":" in s))
        if not named:
            result.action = "skipped"
            result.warnings.append("no snapshots")
            return
        result.snapshots = len(named)
        extended = None
        if self.options.plan_only:
            extended = protocol.CMD_XPLAN
        elif self.run.resumable:
            extended = protocol.CMD_XRSYNC
        else:
            text = protocol.format_sync(named, result.suffix)
            if not protocol.fits_frame(text, self.options.frame_size):
                extended = protocol.CMD_XSYNC
        extra = b""
        if extended:
            extra = protocol.format_snapshot_list(named).encode("utf-8")
            if not self.run.ours:
                self.fail(result, "the snapshot list (%d snapshots, %d bytes) does not fit a %d-byte frame "
                          "and the receiver is an original zfsync without the extension; nothing sent"
                          % (len(named), len(extra), self.options.frame_size))
                return
            text = protocol.format_extended(extended, result.suffix, extra)
        try:
            conn = self.connection()
            acked_before = conn.bytes_sent()
            frames_before = conn.frames_sent
            conn.send_frame(text)
            if extra:
                conn.send_raw(extra)
            reply = self.reply()
            if reply.ok and extended == protocol.CMD_XRSYNC:
                reply = self.resume_if_offered(conn, result, named, reply)
        except (ConnectionError, FrameTimeout, OSError, protocol.ProtocolError) as error:
            self.fail(result, str(error))
            return
        if reply is None:  # a resume stream failed; the dataset is failed
            return
        if not reply.ok:
            self.fail(result, "receiver: %s" % reply)
            return
        try:
            plan = protocol.plan_streams(reply.text, named, self.options.frame_size)
        except protocol.ProtocolError as error:
            self.fail(result, str(error))
            return
        if not result.resumed:
            result.action = plan.action
            result.from_snapshot = plan.base if plan.action == "incremental" else None
        result.to_snapshot = named[-1]
        if self.options.plan_only:
            result.seconds = time.monotonic() - started
            return
        if plan.action == "uptodate":
            result.bytes = 0
            if not self.run.ours:
                # An original receiver now waits for a stream that will not
                # come and never answers: close instead of hanging with it.
                self.drop_connection()
                result.seconds = time.monotonic() - started
                return
        for stream in plan.streams:
            argv = self.run.zfs.send_argv(result.dataset, stream.to, stream.base)
            status, stderr = conn.run_zfs(self.run.zfs.spawn, argv, "send", watch_peer=True)
            if status != 0:
                reason = self.receiver_reason()
                self.fail(result, "receiver: %s" % reason if reason else
                          "zfs send %s@%s failed: %s" % (result.dataset, stream.to, stderr))
                return
        frame_bytes = (conn.frames_sent - frames_before) * self.options.frame_size + len(extra)
        self.pending = Pending(result, started, acked_before, frame_bytes)

    def resume_if_offered(self, conn: FramedConnection, result: DatasetResult, snapshots: List[str],
                          reply: protocol.Reply) -> Optional[protocol.Reply]:
        """A ``0:RESUME:<action>:<N>`` reply carries a resume token (N bytes
        after the frame). Resume with ``zfs send -t`` when the token names a
        stream of this dataset's own snapshots, else say why not (the
        receiver then aborts the partial state and answers as to a sync).
        Returns the receiver's next reply (what is still missing after the
        resume), or None when the resume stream failed (dataset failed)."""
        offer = protocol.parse_resume_offer(reply.text)
        if offer is None:
            return reply
        action, length = offer
        token = conn.read_raw(length, self.options.timeout).decode("ascii", "replace")
        stream_from, refusal = self.check_resume_token(result, snapshots, token)
        if refusal:
            self.log("%s: cannot resume: %s; the receiver starts over" % (result.dataset, refusal))
            result.warnings.append("could not resume a partial receive (%s); sent in full again" % refusal)
            conn.send_frame(_fit_frame(protocol.format_reply(False, "cannot resume: " + refusal), conn))
            return self.reply_after_offer()
        conn.send_frame(protocol.format_reply(True, protocol.REPLY_RESUME))
        status, stderr = conn.run_zfs(self.run.zfs.spawn, self.run.zfs.resume_send_argv(token), "send",
                                      watch_peer=True)
        if status != 0:
            reason = self.receiver_reason()
            self.fail(result, "receiver: %s" % reason if reason else
                      "zfs send -t (resuming %s) failed: %s" % (result.dataset, stderr))
            return None
        result.resumed = True
        result.action = action
        result.from_snapshot = stream_from if action == "incremental" else None
        self.log("%s: resumed the partial %s receive" % (result.dataset, action))
        return self.reply_after_offer()

    def reply_after_offer(self) -> protocol.Reply:
        """One offer per request: a second one would be a receiver bug that
        could loop."""
        reply = self.reply()
        if reply.ok and protocol.parse_resume_offer(reply.text) is not None:
            raise protocol.ProtocolError("the receiver offered a second resume token for one sync")
        return reply

    def check_resume_token(self, result: DatasetResult, snapshots: List[str],
                           token: str) -> Tuple[Optional[str], Optional[str]]:
        """(the stream's from snapshot name, why it must not be sent or
        None). ``zfs send -nvP -t`` says what the token would send, by the
        snapshots' guids, and fails when one of them is gone."""
        try:
            protocol.validate_resume_token(token)
            stream_from, stream_to = self.run.zfs.resume_stream(token)
        except protocol.ProtocolError as error:
            return None, str(error)
        except ZfsError as error:
            return None, "zfs send -t: %s" % (error.stderr or error)
        refusal = protocol.resume_refusal(result.dataset, snapshots, stream_from, stream_to)
        return (stream_from.partition("@")[2] if stream_from else None), refusal

    def finish_run(self) -> None:
        """The last worker to finish asks for ``cleanbuffer``; every worker
        then says ``close``."""
        with self.run.lock:
            self.run.active -= 1
            last = self.run.active == 0
        if last and not self.options.plan_only:
            self.clean_buffer()
        if self.conn is not None:
            try:
                self.conn.send_frame(":" + protocol.CMD_CLOSE, timeout=10)
            except (ConnectionError, FrameTimeout, OSError):
                pass
        self.drop_connection()

    def clean_buffer(self) -> None:
        try:
            conn = self.connection()
            conn.send_frame(":" + protocol.CMD_CLEANBUFFER)
            reply = self.reply()
        except (ConnectionError, FrameTimeout, OSError, protocol.ProtocolError) as error:
            self.run.result.errors.append("cleanbuffer: %s" % error)
            self.drop_connection()
            return
        if not (reply.ok and reply.text == protocol.REPLY_OK):
            self.run.result.errors.append("cleanbuffer: receiver answered %s" % reply)
        # Both the original and ours close after cleanbuffer.
        self.drop_connection()


def open_connection(options: SyncOptions) -> FramedConnection:
    """A connection to the receiver: plain TCP, or mutual TLS carried by a
    relay so that frames and streams see an ordinary socket."""
    sock = connect(options.receiver, options.port, options.connect_timeout, options.bind_address)
    if not options.tls_cert:
        return FramedConnection(sock, options.frame_size, options.stream_idle_timeout)
    enable_keepalive(sock)
    context = tls_context(False, options.tls_cert, options.tls_key or options.tls_cert, options.tls_ca or "")
    host = options.tls_server_name or options.receiver.strip("[]")
    try:
        sock.settimeout(options.connect_timeout)
        tls = context.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError) as error:
        sock.close()
        raise ConnectionError("TLS with %s port %d failed: %s" % (options.receiver, options.port, error))
    relay = TlsRelay(tls)
    return FramedConnection(relay.local, options.frame_size, options.stream_idle_timeout, relay)


def _fit_frame(text: str, conn: FramedConnection) -> str:
    """Cut a message to what one frame holds (reasons may be long)."""
    size = conn.frame_size or protocol.DEFAULT_FRAME_SIZE
    return text.encode("utf-8")[: size - 1].decode("utf-8", "ignore")


@dataclass(frozen=True)
class Peer:
    """The receiver as the probe found it."""

    kind: str  # PEER_OURS | PEER_ORIGINAL
    version: Optional[str] = None
    extensions: Tuple[str, ...] = ()


def probe_peer(options: SyncOptions) -> Tuple[str, Optional[str]]:
    """(kind, version) of the receiver; see ``probe``."""
    peer = probe(options)
    return peer.kind, peer.version


def probe(options: SyncOptions) -> Peer:
    """Ask ``:xhello``: ours answers with its version and extensions; an
    original answers ``1:Unknown cmd xhello`` and closes. Nothing else."""
    conn = open_connection(options)
    sock = conn.sock
    try:
        sock.settimeout(options.connect_timeout)
        sock.sendall(protocol.encode_frame(":" + protocol.CMD_HELLO, options.frame_size))
        sock.settimeout(min(options.timeout, 60.0))
        data = b""
        # Read up to one frame; an old 256-byte original answers in 256
        # bytes and closes, which must still count as an answer.
        while len(data) < options.frame_size:
            chunk = sock.recv(options.frame_size - len(data))
            if not chunk:
                break
            data += chunk
        if b"\0" not in data:
            raise SenderError("receiver %s port %d did not answer the protocol probe" % (options.receiver, options.port))
        reply = protocol.parse_reply(protocol.decode_frame(data))
        hello = protocol.parse_hello(reply.text) if reply.ok else None
        if hello:
            try:
                sock.sendall(protocol.encode_frame(":" + protocol.CMD_CLOSE, options.frame_size))
            except OSError:
                pass
            return Peer(PEER_OURS, hello[0], hello[1])
        return Peer(PEER_ORIGINAL)
    except (OSError, protocol.ProtocolError) as error:
        raise SenderError("protocol probe of %s port %d failed: %s" % (options.receiver, options.port, error))
    finally:
        conn.close()


def sync_tree(options: SyncOptions, zfs: Optional[Zfs] = None, log: Optional[Log] = None) -> RunResult:
    """Replicate ``options.root`` and its descendants to the receiver."""
    if options.frame_size not in protocol.FRAME_SIZES:
        raise ValueError("frame size must be 256 or 512")
    if options.threads < 1:
        raise ValueError("threads must be at least 1")
    zfs = zfs or Zfs()
    log = log or Log(options.log_file, options.verbose)
    started = time.monotonic()
    result = RunResult(options.root, options.receiver, options.port, plan_only=options.plan_only)
    try:
        datasets = zfs.filesystems(options.root)
        snapshots = zfs.snapshots_tree(options.root)
    except ZfsError as error:
        result.errors.append(str(error))
        result.seconds = time.monotonic() - started
        return result
    try:
        peer = probe(options)
        result.peer, result.peer_version, result.peer_extensions = peer.kind, peer.version, list(peer.extensions)
    except (SenderError, ConnectionError, OSError, ValueError) as error:
        result.errors.append(str(error))
        result.seconds = time.monotonic() - started
        log.main("main", "zfsync_send %s: %s" % (__version__, error))
        return result
    if options.plan_only and result.peer != PEER_OURS:
        result.errors.append("planning needs a zfsync receiver; %s port %d is an original zfsync, "
                             "and a sync frame would act on it" % (options.receiver, options.port))
        result.seconds = time.monotonic() - started
        return result
    # Resume needs both ends: the receiver's zfs can receive -s (it says
    # xrsync) and ours can send -t.
    try:
        result.resumable = (options.resume and not options.plan_only
                            and protocol.CMD_XRSYNC in result.peer_extensions and zfs.capabilities.send_resume)
    except ZfsError as error:
        log.main("main", "cannot tell whether zfs can send -t, not resuming: %s" % error)
    log.main("main", "zfsync_send %s: %s -> %s port %d (%s%s%s), %d datasets, %d threads" % (
        __version__, options.root, options.receiver, options.port, result.peer,
        " " + result.peer_version if result.peer_version else "", ", resumable" if result.resumable else "",
        len(datasets), options.threads))
    run = Run(options, zfs, log, result)
    for dataset in datasets:
        item = DatasetResult(dataset, protocol.suffix_of(dataset, options.root))
        result.datasets.append(item)
        run.work.put((item, snapshots.get(dataset, [])))
    workers = [Worker(run, n) for n in range(1, options.threads + 1)]
    for _worker in workers:
        run.work.put(None)
    threads = [threading.Thread(target=w, name="zfsync-send-%d" % w.number, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        if worker.error is not None:
            result.errors.append("worker %d crashed: %r" % (worker.number, worker.error))
    for item in result.datasets:
        if item.action == "pending":
            item.action = "failed"
            item.error = item.error or "not processed"
    result.seconds = time.monotonic() - started
    log.main("main", result.summary_line())
    return result
