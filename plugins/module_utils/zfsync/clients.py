# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""Who may talk to the receiver, and the wait for each request without a
worker: the allow-list, connection limits, per-client sub-roots, and the
lobby where connections wait for their next frame.

The original gave every accepted connection a worker thread from its first
byte to its close, so a few silent connections stopped the service. Here a
worker serves one *request*: the lobby (one thread, one selector) holds
every connection between requests, reads each frame without blocking, and
hands a connection to a worker only once a complete frame has arrived. A
connection that never completes a frame is closed when its bound runs out
(``first_request_timeout`` for a new one, ``idle_timeout`` between
requests), having held no worker at all.
"""
from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from . import protocol
from .connection import FRAME_DETECT_WAIT, FramedConnection, TlsRelay, peer_certificate_name

if TYPE_CHECKING:  # pragma: no cover
    from .logs import Log

DEFAULT_MAX_CONNECTIONS = 64
# Above a sender's -t plus its probe connection: ours opens one connection
# per worker right after the probe's, which may not have been released yet.
DEFAULT_MAX_PER_CLIENT = 16
DEFAULT_FIRST_REQUEST_TIMEOUT = 30.0


def client_address(host: str):
    """The address a limit or rule applies to: scope ids dropped, IPv4
    clients of a dual-stack listener (``::ffff:a.b.c.d``) as IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def parse_networks(cidrs: Sequence[str]) -> list:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def address_in(host: str, networks: Sequence) -> bool:
    address = client_address(host)
    return any(address in network for network in networks)


# -- connection limits -------------------------------------------------------

class ConnectionLimits:
    """Open connections in total and per client address (waiting in the
    lobby, queued for a worker, or being served). Thread-safe: the lobby
    admits, whoever closes a connection releases it."""

    def __init__(self, total: int = DEFAULT_MAX_CONNECTIONS, per_client: int = DEFAULT_MAX_PER_CLIENT):
        if total < 1 or per_client < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_client = per_client
        self._open: Dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(host: str) -> str:
        return str(client_address(host))

    def admit(self, host: str) -> Optional[str]:
        """None when the connection may stay (and is counted), else why not."""
        key = self.key(host)
        with self._lock:
            if self._count >= self.total:
                return "%d connections open (--max-connections %d)" % (self._count, self.total)
            mine = self._open.get(key, 0)
            if mine >= self.per_client:
                return "%d connections from %s open (--max-per-client %d)" % (mine, key, self.per_client)
            self._open[key] = mine + 1
            self._count += 1
            return None

    def release(self, host: str) -> None:
        key = self.key(host)
        with self._lock:
            mine = self._open.get(key, 0)
            if mine <= 0:
                return
            self._count -= 1
            if mine == 1:
                del self._open[key]
            else:
                self._open[key] = mine - 1

    def open_count(self, host: Optional[str] = None) -> int:
        with self._lock:
            return self._count if host is None else self._open.get(self.key(host), 0)


# -- per-client sub-roots ----------------------------------------------------

@dataclass(frozen=True)
class ClientRoot:
    """``cn:NAME=SUB`` or ``CIDR=SUB``: a client whose TLS certificate has
    commonName NAME, or whose address is in CIDR, writes only below
    ``ROOT/SUB``; its root dataset lands at ``ROOT/SUB``."""

    spec: str
    sub: str
    common_name: Optional[str] = None
    network: object = None

    @property
    def prefix(self) -> str:
        """What the receiver puts between ROOT and a sender's suffix."""
        return "/" + self.sub

    def matches(self, host: str, common_name: Optional[str]) -> bool:
        if self.common_name is not None:
            return common_name == self.common_name
        return client_address(host) in self.network  # type: ignore[operator]


def parse_client_root(spec: str) -> ClientRoot:
    """``cn:web1=web1``, ``10.0.0.0/24=branch``, ``192.0.2.7=hosts/a``; the
    sub-path is one or more dataset name components below ROOT."""
    if "=" not in spec:
        raise ValueError("client root %r: expected MATCH=SUB (cn:NAME=SUB or CIDR=SUB)" % spec)
    match, sub = spec.rsplit("=", 1)
    sub = sub.strip("/")
    try:
        protocol.validate_suffix("/" + sub)
    except protocol.ProtocolError as error:
        raise ValueError("client root %r: sub-path %r: %s" % (spec, sub, error))
    if not sub:
        raise ValueError("client root %r: empty sub-path" % spec)
    if match.startswith("cn:"):
        name = match[3:]
        if not name:
            raise ValueError("client root %r: empty certificate name" % spec)
        return ClientRoot(spec, sub, common_name=name)
    try:
        network = ipaddress.ip_network(match, strict=False)
    except ValueError as error:
        raise ValueError("client root %r: %s is neither cn:NAME nor a network: %s" % (spec, match, error))
    return ClientRoot(spec, sub, network=network)


class ClientRoots:
    """The configured sub-roots, first match wins. Empty: every client
    writes anywhere below ROOT (the original's behaviour)."""

    def __init__(self, specs: Sequence[str] = ()):
        self.rules: Tuple[ClientRoot, ...] = tuple(parse_client_root(spec) for spec in specs)
        self._check_disjoint()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def need_certificates(self) -> bool:
        return any(rule.common_name is not None for rule in self.rules)

    @property
    def subs(self) -> List[str]:
        return sorted({rule.sub for rule in self.rules})

    def _check_disjoint(self) -> None:
        """One client's tree must not contain another's: a sender confined
        to ``a`` would otherwise overwrite the one confined to ``a/b``."""
        subs = self.subs
        for outer in subs:
            for inner in subs:
                if inner.startswith(outer + "/"):
                    raise ValueError("client roots %s and %s overlap: one sender could overwrite the other's tree"
                                     % (outer, inner))

    def match(self, host: str, common_name: Optional[str] = None) -> Optional[ClientRoot]:
        for rule in self.rules:
            if rule.matches(host, common_name):
                return rule
        return None

    def match_by_address(self, host: str) -> Optional[ClientRoot]:
        """Before a TLS handshake only address rules can be decided."""
        return self.match(host, None)


# -- one frame, gathered without a worker ------------------------------------

class PendingFrame:
    """The bytes of a connection's next frame, read as they come.

    ``size`` is the connection's frame size, or None for the first frame
    of a receiver that detects it: 256 bytes then FRAME_DETECT_WAIT without
    more make a 256-byte frame, 512 bytes a 512-byte one (a sender writes a
    whole frame and waits for the answer, so nothing else can follow)."""

    def __init__(self, size: Optional[int]):
        self.size = size
        self.data = bytearray()
        self.eof = False
        self._half_at: Optional[float] = None

    def want(self) -> int:
        return (self.size or max(protocol.FRAME_SIZES)) - len(self.data)

    def add(self, chunk: bytes, now: float) -> None:
        if not chunk:
            self.eof = True
            return
        self.data += chunk
        if self.size is None and self._half_at is None and len(self.data) >= min(protocol.FRAME_SIZES):
            self._half_at = now

    def complete(self, now: float) -> Optional[int]:
        """The frame size once a whole frame is here, else None."""
        have = len(self.data)
        if self.size is not None:
            return self.size if have >= self.size else None
        if have >= max(protocol.FRAME_SIZES):
            return max(protocol.FRAME_SIZES)
        small = min(protocol.FRAME_SIZES)
        if have == small and self._half_at is not None and (self.eof or now - self._half_at >= FRAME_DETECT_WAIT):
            return small
        return None

    def wake_at(self) -> Optional[float]:
        """When ``complete`` may change without new bytes (the detection wait)."""
        if self.size is None and self._half_at is not None and len(self.data) == min(protocol.FRAME_SIZES):
            return self._half_at + FRAME_DETECT_WAIT
        return None

    @property
    def broken(self) -> bool:
        """The peer closed before a whole frame."""
        return self.eof and self.complete(float("inf")) is None


# -- the lobby ---------------------------------------------------------------

class LogRate:
    """At most ``burst`` lines a second of what the lobby logs per
    connection (accepted, refused, closed), the rest counted and summed up
    in one line: a flood of connections must not fill the log's disk."""

    def __init__(self, burst: int = 20):
        self.burst = burst
        self._second = -1
        self._lines = 0
        self.suppressed = 0

    def admit(self, now: float) -> Tuple[bool, int]:
        """(log this line?, lines suppressed in earlier seconds, to report now)."""
        second = int(now)
        report = 0
        if second != self._second:
            self._second, self._lines = second, 0
            report, self.suppressed = self.suppressed, 0
        self._lines += 1
        if self._lines > self.burst:
            self.suppressed += 1
            return False, report
        return True, report

    def overdue(self, now: float) -> int:
        """Lines suppressed in a second that is over: report them even when
        no new line comes."""
        if self.suppressed and int(now) != self._second:
            report, self.suppressed = self.suppressed, 0
            return report
        return 0


@dataclass(eq=False)
class Session:
    """One accepted connection; a worker holds it for one request at a time."""

    conn: FramedConnection
    peer: str
    host: str
    thread: int = 0
    prefix: str = ""  # "/<sub>" for a client confined to ROOT/<sub>
    owner: object = field(default_factory=object)
    closed: bool = False


@dataclass(eq=False)
class Waiting:
    """A connection between requests, held by no worker."""

    sock: object  # what the selector watches: the TCP socket, the relay's, or a TLS socket in its handshake
    peer: str
    host: str
    deadline: float
    frame: PendingFrame
    session: Optional[Session] = None
    tls: object = None  # an SSL socket whose handshake is not done
    first: bool = True
    since: float = 0.0  # accepted (new) or parked (between requests)


@dataclass
class LobbySettings:
    first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT
    idle_timeout: float = 300.0
    handshake_timeout: float = 30.0
    frame_size: Optional[int] = None
    stream_idle_timeout: float = 600.0
    allow: Tuple[str, ...] = ()
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    client_roots: Tuple[str, ...] = ()


class Lobby:
    """Accepts connections, refuses the ones no rule admits, runs TLS
    handshakes, and reads every frame without blocking; a complete frame
    goes to ``hand_over(session, frame)`` (a worker's queue). Runs in the
    daemon's main thread; workers give a session back with ``park`` or end
    it with ``close``."""

    def __init__(self, listener: socket.socket, settings: LobbySettings, log: "Log",
                 hand_over: Callable[[Session, bytes], None], tls_context=None):
        self.settings = settings
        self.log = log
        self.hand_over = hand_over
        self.tls_context = tls_context
        self.limits = ConnectionLimits(settings.max_connections, settings.max_per_client)
        self.roots = ClientRoots(settings.client_roots)
        self._allowed = parse_networks(settings.allow)
        self._listener = listener
        listener.setblocking(False)  # a client may reset between select and accept
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._waiting: Dict[int, Waiting] = {}
        self._parked: List[Session] = []
        self._parked_lock = threading.Lock()
        self._log_rate = LogRate()

    # -- from workers (any thread) -------------------------------------------

    def park(self, session: Session) -> None:
        """The worker is done with this request; wait for the next frame."""
        with self._parked_lock:
            self._parked.append(session)
        try:
            self._wake_write.send(b"\0")
        except OSError:
            pass  # the pipe is full: the lobby is awake already

    def close(self, session: Session, wait: bool = True) -> None:
        """End a session; ``wait=False`` from the lobby's own thread, which
        must not wait for a TLS relay to flush to a slow peer."""
        if session.closed:
            return
        session.closed = True
        session.conn.close(wait)
        self.limits.release(session.host)

    # -- the loop (main thread) ----------------------------------------------

    def run_once(self, timeout: float = 0.5) -> None:
        now = time.monotonic()
        wakes = [w.deadline for w in self._waiting.values()]
        wakes += [t for t in (w.frame.wake_at() for w in self._waiting.values()) if t is not None]
        if wakes:
            timeout = max(0.0, min(timeout, min(wakes) - now))
        try:
            events = self._selector.select(timeout)
        except InterruptedError:
            events = []
        for key, _mask in events:
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_read:
                self._take_parked()
            else:
                self._progress(key.data)
        now = time.monotonic()
        self._check_waiting(now)
        self._note_suppressed(self._log_rate.overdue(now))

    def shutdown(self) -> None:
        for waiting in list(self._waiting.values()):
            self._drop(waiting)
        self._take_parked()
        for waiting in list(self._waiting.values()):
            self._drop(waiting)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    # -- admission -----------------------------------------------------------

    def _note(self, message: str) -> None:
        log_it, suppressed = self._log_rate.admit(time.monotonic())
        self._note_suppressed(suppressed)
        if log_it:
            self.log.main("main", message)

    def _note_suppressed(self, count: int) -> None:
        if count:
            self.log.main("main", "%d more connection lines not logged (more than %d a second)"
                          % (count, self._log_rate.burst))

    def _accept(self) -> None:
        try:
            sock, address = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        host = address[0]
        peer = "%s:%s" % address[:2]
        if self._allowed and not address_in(host, self._allowed):
            # No answer at all: a refused client learns nothing.
            self._note("refused %s: not in the allow list" % peer)
            sock.close()
            return
        if self.roots and not self.roots.need_certificates and self.roots.match_by_address(host) is None:
            self._note("refused %s: no --client-root matches this address" % peer)
            sock.close()
            return
        refusal = self.limits.admit(host)
        if refusal:
            self._note("refused %s: %s" % (peer, refusal))
            sock.close()
            return
        sock.setblocking(False)
        now = time.monotonic()
        waiting = Waiting(sock, peer, host, now + self.settings.first_request_timeout,
                          PendingFrame(self.settings.frame_size), since=now)
        if self.tls_context is not None:
            try:
                waiting.tls = waiting.sock = self.tls_context.wrap_socket(sock, server_side=True,
                                                                          do_handshake_on_connect=False)
            except (OSError, ValueError) as error:
                self._note("refused %s: TLS handshake failed: %s" % (peer, error))
                sock.close()
                self.limits.release(host)
                return
            waiting.deadline = now + min(self.settings.first_request_timeout, self.settings.handshake_timeout)
        else:
            prefix = self._confinement(waiting, None)
            if prefix is None:
                return
            waiting.session = Session(FramedConnection(sock, self.settings.frame_size,
                                                       self.settings.stream_idle_timeout),
                                      peer, host, prefix=prefix)
        self._note("connection from %s" % peer)
        self._watch(waiting)

    def _confinement(self, waiting: Waiting, common_name: Optional[str]) -> Optional[str]:
        """The client's prefix below ROOT ("" without client roots); None,
        and the connection dropped, when no client root matches it."""
        if not self.roots:
            return ""
        rule = self.roots.match(waiting.host, common_name)
        if rule is None:
            self._note("refused %s%s: no --client-root matches" % (
                waiting.peer, " (certificate %s)" % common_name if common_name else ""))
            self._drop(waiting)
            return None
        return rule.prefix

    def _handshake(self, waiting: Waiting) -> None:
        # Here, not at the top: the sender imports this module too, and ssl
        # costs a start-up of either side without TLS 15 % of its imports.
        import ssl

        tls = waiting.tls
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(tls, selectors.EVENT_READ, waiting)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(tls, selectors.EVENT_WRITE, waiting)
            return
        except (OSError, ValueError) as error:
            self._note("refused %s: TLS handshake failed: %s" % (waiting.peer, error))
            self._drop(waiting)
            return
        self._selector.unregister(tls)
        del self._waiting[id(waiting)]
        waiting.tls = None
        prefix = self._confinement(waiting, peer_certificate_name(tls))
        if prefix is None:
            return
        relay = TlsRelay(tls)  # the relay owns the TLS socket from here on
        conn = FramedConnection(relay.local, self.settings.frame_size, self.settings.stream_idle_timeout, relay)
        waiting.session = Session(conn, waiting.peer, waiting.host, prefix=prefix)
        waiting.sock = relay.local
        waiting.sock.setblocking(False)
        waiting.deadline = waiting.since + self.settings.first_request_timeout
        self._watch(waiting)

    # -- frames --------------------------------------------------------------

    def _watch(self, waiting: Waiting) -> None:
        self._waiting[id(waiting)] = waiting
        self._selector.register(waiting.sock, selectors.EVENT_READ, waiting)

    def _take_parked(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._parked_lock:
            parked, self._parked = self._parked, []
        for session in parked:
            sock = session.conn.sock
            try:
                sock.setblocking(False)
            except OSError:
                self.close(session, wait=False)
                continue
            waiting = Waiting(sock, session.peer, session.host, time.monotonic() + self.settings.idle_timeout,
                              PendingFrame(session.conn.frame_size), session=session, first=False)
            self._watch(waiting)

    def _progress(self, waiting: Waiting) -> None:
        if waiting.tls is not None:
            self._handshake(waiting)
            return
        try:
            while waiting.frame.want() > 0 and not waiting.frame.eof:
                waiting.frame.add(waiting.sock.recv(waiting.frame.want()), time.monotonic())
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            waiting.frame.eof = True
        self._check(waiting, time.monotonic())

    def _check(self, waiting: Waiting, now: float) -> None:
        size = waiting.frame.complete(now)
        if size is not None:
            self._selector.unregister(waiting.sock)
            del self._waiting[id(waiting)]
            session = waiting.session
            if session is None:  # cannot happen: a frame is read only after the session opened
                self._drop(waiting)
                return
            self.hand_over(session, bytes(waiting.frame.data[:size]))
        elif waiting.frame.eof:
            # Closed between requests (a sender that is done), or in the
            # middle of a frame: either way there is nobody to answer.
            self._drop(waiting)

    def _check_waiting(self, now: float) -> None:
        for waiting in list(self._waiting.values()):
            if id(waiting) not in self._waiting:
                continue
            if waiting.frame.wake_at() is not None:
                self._check(waiting, now)
                if id(waiting) not in self._waiting:
                    continue
            if now >= waiting.deadline:
                if waiting.first:
                    what = "TLS handshake" if waiting.tls is not None else "first request"
                    self._note("closing %s: no %s within %.0f s" % (
                        waiting.peer, what, self.settings.first_request_timeout if waiting.tls is None
                        else min(self.settings.first_request_timeout, self.settings.handshake_timeout)))
                else:
                    self._note("closing idle connection %s: no request within %.0f s" % (
                        waiting.peer, self.settings.idle_timeout))
                self._drop(waiting)

    def _drop(self, waiting: Waiting) -> None:
        if id(waiting) in self._waiting:
            del self._waiting[id(waiting)]
            try:
                self._selector.unregister(waiting.sock)
            except (KeyError, ValueError):
                pass
        if waiting.session is not None:
            self.close(waiting.session, wait=False)
            return
        try:
            waiting.sock.close()  # type: ignore[attr-defined]
        except OSError:
            pass
        self.limits.release(waiting.host)
