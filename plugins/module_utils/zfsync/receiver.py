# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The receiver daemon: serves senders' requests (between requests their
connections wait in the lobby of clients.py, holding no worker), decides per
dataset what it needs, receives ZFS streams straight from the socket.

Where the original is unsafe, ours differs (docs/architecture.md has the
reasons):

* Every new or replacement copy is received *aside*, into the buffer
  dataset ``ROOT.zfsyncbuffer`` (mountpoint=none), and renamed into place
  only when complete: a broken stream never leaves a half dataset, and FULL
  replaces the old copy only after the new one has fully arrived.
* A buffered copy (a child that came before its parent, or an interrupted
  run) is a valid replica: the next sync continues from it instead of
  starting over.
* Suffixes and snapshot names are validated before anything touches ZFS;
  error flags are flat files whose names cannot escape the flag directory.
* Where zfs has ``receive -s``, a sender of ours that can ``send -t``
  (``xrsync``) gets resumable receives: a cut stream leaves partial state,
  and its next sync is offered the resume token. Any other request finds no
  partial state in its way: it is aborted first (OpenZFS refuses a normal
  receive into a dataset that holds it).
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple
from urllib.parse import quote

from . import __version__, protocol
from .clients import (DEFAULT_FIRST_REQUEST_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT, ClientRoots, Lobby,
                      LobbySettings, Session)
from .connection import ConnectionClosed, FrameTimeout, tls_context
from .logs import Log
from .zfs import Zfs, ZfsError

BUFFER_SUFFIX = ".zfsyncbuffer"
ROOT_ENTRY = "ROOT"  # the buffer entry of the root itself (HEX("") is empty)
OLD_MARK = ".old"  # an old copy set aside during a FULL swap
MAX_RECEIVE_REPORT = 1 << 20  # bytes of `zfs receive -v` output read back


@dataclass
class ReceiverOptions:
    root: str
    port: int = 30
    listen_address: str = "127.0.0.1"
    backlog: int = 50
    threads: int = 4
    log_file: Optional[str] = "/var/log/zfshad.log"
    flag_dir: str = "/var/run/zfshad"
    verbose: bool = False
    frame_size: Optional[int] = None  # None: detect per connection
    pid_file: Optional[str] = None
    idle_timeout: float = 300.0  # between requests
    first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT  # from accept to a new connection's first frame
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open at once: waiting, queued or being served
    max_per_client: int = DEFAULT_MAX_PER_CLIENT  # the same, per client address
    client_roots: Tuple[str, ...] = ()  # "cn:NAME=SUB" / "CIDR=SUB": that client writes only below ROOT/SUB
    stream_idle_timeout: float = 600.0  # no stream bytes for this long
    stop_timeout: float = 30.0  # grace for a running receive on SIGTERM
    lock_wait: float = 600.0  # wait for a subtree lock (FULL swap)
    allow_full: bool = True
    allow: Tuple[str, ...] = ()  # client networks (CIDR); empty: everyone
    tls_cert: Optional[str] = None  # mutual TLS: certificate, key, and the CA clients must hold
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    handshake_timeout: float = 30.0


def parse_buffer_entry(name: str) -> Tuple[str, bool]:
    """(target suffix, is an old copy set aside by a FULL swap) of a buffer
    entry named HEX(suffix), ``ROOT`` for the root, ``.old`` appended for a
    set-aside copy. ProtocolError for any other name."""
    old = name.endswith(OLD_MARK)
    base = name[: -len(OLD_MARK)] if old else name
    return ("" if base == ROOT_ENTRY else protocol.unhex_suffix(base)), old


class Busy(RuntimeError):
    pass


@dataclass(frozen=True)
class Found:
    """What one listing of a dataset's target and buffer entry found."""

    location: Optional[str]  # the copy: in place, in the buffer, or None
    have: List[str]  # its snapshots, oldest first
    target_exists: bool
    entry_exists: bool
    partials: Dict[str, str]  # {dataset: resume token} of partial receive state (zfs receive -s)
    fresh: FrozenSet[str]  # those whose partial state is a first stream: no snapshot, not a copy yet


class TreeLocks:
    """Per-dataset locks. ``one`` locks a dataset; ``tree`` locks it and all
    its descendants (a FULL swap moves children). Two syncs of the same
    dataset never interleave: the second is refused at once."""

    def __init__(self) -> None:
        self._held: Dict[str, Tuple[str, object]] = {}
        self._cond = threading.Condition()

    def _conflict(self, name: str, mode: str, owner: object) -> Optional[str]:
        """"same" when another owner holds this very dataset, "tree" when a
        subtree lock overlaps, None when free."""
        found = None
        for held, (held_mode, held_owner) in self._held.items():
            if held_owner is owner:
                continue
            if held == name:
                return "same"
            if held_mode == "tree" and name.startswith(held + "/"):
                found = "tree"
            if mode == "tree" and held.startswith(name + "/"):
                found = "tree"
        return found

    def acquire(self, name: str, owner: object, mode: str = "one", wait: float = 600.0) -> None:
        """Refuse at once when another sync holds this dataset; wait (up to
        ``wait`` seconds) while a FULL swap moves a subtree it belongs to."""
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                conflict = self._conflict(name, mode, owner)
                if conflict is None:
                    break
                remaining = deadline - time.monotonic()
                if (conflict == "same" and mode == "one") or remaining <= 0:
                    raise Busy("%s is busy (another sync holds it)" % name)
                self._cond.wait(remaining)
            self._held[name] = (mode, owner)

    def release(self, name: str, owner: object) -> None:
        with self._cond:
            if self._held.get(name, (None, None))[1] is owner:
                del self._held[name]
            self._cond.notify_all()


class ErrorFlags:
    """Monitoring flags: ``<flag_dir>/<quoted suffix>.<cmd>``, a symlink to
    ``ERROR`` while the last such command for that dataset failed.

    The original used the raw suffix (``/a/b.sync`` needs a folder, and a
    suffix from the network could plant a symlink anywhere); ours quotes it
    into one flat name: ``/a/b`` -> ``%2Fa%2Fb.sync``, the root -> ``.sync``."""

    def __init__(self, directory: Optional[str]):
        self.directory = directory
        if directory:
            os.makedirs(directory, exist_ok=True)

    def path(self, suffix: str, command: str) -> Optional[str]:
        if not self.directory:
            return None
        return os.path.join(self.directory, quote(suffix, safe="") + "." + command)

    def set(self, suffix: str, command: str) -> None:
        path = self.path(suffix, command)
        if not path:
            return
        temp = "%s.tmp%d.%d" % (path, os.getpid(), threading.get_ident())
        try:
            os.symlink("ERROR", temp)
            os.replace(temp, path)
        except OSError:
            pass

    def clear(self, suffix: str, command: str) -> None:
        path = self.path(suffix, command)
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                pass


class SyncFailed(RuntimeError):
    """A sync step failed; ``reason`` goes back to the sender after ``1:``."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(reason + (": " + detail if detail else ""))


class Receiver:
    def __init__(self, options: ReceiverOptions, zfs: Optional[Zfs] = None, log: Optional[Log] = None):
        self.options = options
        self.root = options.root.rstrip("/")
        self.buffer = self.root + BUFFER_SUFFIX
        self.zfs = zfs or Zfs()
        self.log = log or Log(options.log_file, options.verbose)
        self.flags = ErrorFlags(options.flag_dir)
        self.locks = TreeLocks()
        # Sessions with a complete frame, for the next free worker.
        self._ready: "queue.Queue[Tuple[Session, bytes]]" = queue.Queue()
        self._lobby: Optional[Lobby] = None
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._generation = 0
        self._workers: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._signal_pending: List[int] = []
        self._serial_receive = threading.Lock()
        # {dataset: token} whose resume failed without progress: the next
        # sync aborts that partial state instead of offering it again.
        self._stuck_tokens: Dict[str, str] = {}
        self.client_roots = ClientRoots(options.client_roots)  # ValueError for a bad or overlapping spec
        self._tls = (tls_context(True, options.tls_cert, options.tls_key or options.tls_cert, options.tls_ca or "")
                     if options.tls_cert else None)

    # -- life cycle ----------------------------------------------------------

    def prepare(self) -> None:
        """Check ZFS and create the buffer dataset (never mounted), and, for
        client roots, the datasets their sub-roots are placed under."""
        protocol.validate_component(self.root.split("/")[0], "pool name")
        if not self.zfs.exists(self.buffer):
            self.zfs.create(self.buffer, {"canmount": "off", "mountpoint": "none"}, parents=True)
            self.log.main("main", "created buffer dataset %s" % self.buffer)
        for sub in self.client_roots.subs:
            # The sub-root itself is the replica of its sender's root and
            # arrives with the first sync (created empty here, it would share
            # no snapshot with the sender and need FULL); its parent must exist
            # for that copy to be placed.
            parent = (self.root + "/" + sub).rsplit("/", 1)[0]
            if not self.zfs.exists(parent):
                self.zfs.create(parent, {"canmount": "off"}, parents=True)
                self.log.main("main", "created %s for client root %s" % (parent, sub))

    def listen(self) -> socket.socket:
        address = self.options.listen_address
        infos = socket.getaddrinfo(address or None, self.options.port, 0, socket.SOCK_STREAM,
                                   socket.IPPROTO_TCP, socket.AI_PASSIVE)
        family, socktype, proto, _canonname, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
        # The original did not set this: a restart right after a crash failed
        # to bind for about a minute.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(self.options.backlog)
        self._listener = sock
        return sock

    @property
    def address(self) -> Tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("the receiver is not listening yet")
        return self._listener.getsockname()[:2]

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._signal_pending.append(signum)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.request_stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, handler)

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.options.stop_timeout
            self._stopping.set()

    def _past_stop_deadline(self) -> bool:
        return self._stopping.is_set() and time.monotonic() > self._stop_deadline

    def serve_forever(self) -> None:
        if self._listener is None:
            self.listen()
        host, port = self.address
        self.log.main("main", "zfsync_recv %s listening on %s port %d, root %s, %d threads"
                      % (__version__, host, port, self.root, self.options.threads))
        self._lobby = Lobby(self._listener, self.lobby_settings(), self.log,
                            lambda session, frame: self._ready.put((session, frame)), self._tls)
        self._spawn_workers()
        try:
            while not self._stopping.is_set():
                self._handle_signals()
                self._lobby.run_once(0.5)
        finally:
            self._shutdown()

    def lobby_settings(self) -> LobbySettings:
        options = self.options
        return LobbySettings(
            first_request_timeout=options.first_request_timeout, idle_timeout=options.idle_timeout,
            handshake_timeout=options.handshake_timeout, frame_size=options.frame_size,
            stream_idle_timeout=options.stream_idle_timeout, allow=tuple(options.allow),
            max_connections=options.max_connections, max_per_client=options.max_per_client,
            client_roots=tuple(options.client_roots))

    def _handle_signals(self) -> None:
        while self._signal_pending:
            signum = self._signal_pending.pop(0)
            if signum == signal.SIGUSR1:
                self.log.reopen()
                self.log.main("main", "SIGUSR1: logs reopened")
            elif signum == signal.SIGUSR2:
                self.log.main("main", "SIGUSR2: respawning workers")
                self._generation += 1
                self._spawn_workers()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.log.main("main", "signal %d: stopping" % signum)

    def _spawn_workers(self) -> None:
        generation = self._generation
        self._workers = [w for w in self._workers if w.is_alive()]
        for number in range(1, self.options.threads + 1):
            worker = threading.Thread(target=self._worker, args=(number, generation),
                                      name="zfsync-recv-%d" % number, daemon=True)
            worker.start()
            self._workers.append(worker)

    def _shutdown(self) -> None:
        self._handle_signals()
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + self.options.stop_timeout + 15
        for worker in self._workers:
            worker.join(max(0.1, deadline - time.monotonic()))
        if self._lobby is not None:
            self._lobby.shutdown()
            while not self._ready.empty():
                self._lobby.close(self._ready.get_nowait()[0])
        self.log.main("main", "stopped")

    def _worker(self, number: int, generation: int) -> None:
        """Serve one request at a time; between requests the connection
        waits in the lobby and holds no worker."""
        while not self._stopping.is_set() and generation == self._generation:
            try:
                session, frame = self._ready.get(timeout=0.5)
            except queue.Empty:
                continue
            session.thread = number
            keep = False
            try:
                keep = self.serve_request(session, frame)
            except Exception as error:  # a bug must not kill the worker
                self.log.main(str(number), "connection %s: internal error: %r" % (session.peer, error))
            finally:
                if keep and not self._stopping.is_set() and self._lobby is not None:
                    self._lobby.park(session)
                elif self._lobby is not None:
                    self._lobby.close(session)
                else:
                    session.conn.close()

    # -- one connection ------------------------------------------------------

    def _reply(self, session: Session, ok: bool, text: str) -> bool:
        size = session.conn.frame_size or protocol.DEFAULT_FRAME_SIZE
        message = protocol.format_reply(ok, text)
        raw = message.encode("utf-8")[: size - 1]
        message = raw.decode("utf-8", "ignore")
        try:
            session.conn.send_frame(message, timeout=60)
            return True
        except (ConnectionClosed, FrameTimeout, OSError):
            return False

    def serve_request(self, session: Session, frame: bytes) -> bool:
        """One frame, read whole by the lobby; True when the connection
        stays open for the next (False after ``:close``, an error reply,
        ``cleanbuffer``, or a lost connection)."""
        fd = session.conn.fileno()
        try:
            text = session.conn.accept_frame(frame)
        except protocol.ProtocolError as error:
            self._reply(session, False, str(error))
            self.log.main(str(session.thread), "%s: bad frame: %s" % (session.peer, error))
            return False
        try:
            request = protocol.parse_request(text)
        except protocol.ProtocolError as error:
            self.log.main(str(session.thread), "%s: refused %r: %s" % (session.peer, text[:120], error))
            self._reply(session, False, str(error))
            return False
        self.log.worker(session.thread, fd, session.prefix + request.suffix, request.command,
                        "request from %s" % session.peer)
        if request.command == protocol.CMD_CLOSE:
            return False
        if request.command == protocol.CMD_HELLO:
            return self._reply(session, True, protocol.hello_reply(__version__, self._resumable()))
        if request.command == protocol.CMD_CLEANBUFFER:
            failures = self.clean_buffer(session)
            if failures:
                self._reply(session, False, "cleanbuffer: %d entries could not be placed" % failures)
            else:
                self._reply(session, True, protocol.REPLY_OK)
            return False  # the original closes after cleanbuffer; so do we
        return self._serve_sync(session, request)

    def _serve_sync(self, session: Session, request: protocol.Request) -> bool:
        """sync / xsync / xplan; False when the connection must close."""
        snapshots = request.snapshots
        if request.list_length is not None:
            try:
                raw = session.conn.read_raw(request.list_length, 60.0)
                snapshots = protocol.parse_snapshot_list(raw.decode("utf-8"))
            except (ConnectionClosed, FrameTimeout, OSError) as error:
                self.log.main(str(session.thread), "%s: snapshot list lost: %s" % (session.peer, error))
                return False
            except (protocol.ProtocolError, UnicodeDecodeError) as error:
                self._reply(session, False, "bad snapshot list: %s" % error)
                return False
            if not snapshots:
                self._reply(session, False, "sync without snapshots")
                return False
        if snapshots is None:  # parse_request guarantees a list for sync
            raise RuntimeError("sync request without a snapshot list")
        plan_only = request.command == protocol.CMD_XPLAN
        resumable = request.command == protocol.CMD_XRSYNC and self._resumable()
        # Relative to ROOT: a confined client's suffix always lies below its
        # sub-root (the suffix was validated: no '..', '@', '%', empty parts).
        suffix = session.prefix + request.suffix
        try:
            self.sync_dataset(session, suffix, tuple(snapshots), plan_only, resumable)
        except SyncFailed as failure:
            self.log.main(str(session.thread), "%s: %s%s: %s" % (session.peer, self.root, suffix, failure))
            self.log.worker(session.thread, session.conn.fileno(), suffix, request.command, "failed: %s" % failure)
            if not plan_only:
                self.flags.set(suffix, protocol.CMD_SYNC)
            self._reply(session, False, str(failure))
            return False
        except (ConnectionClosed, FrameTimeout, OSError) as error:
            self.log.main(str(session.thread), "%s: %s%s: connection lost: %s" % (session.peer, self.root, suffix, error))
            if not plan_only:
                self.flags.set(suffix, protocol.CMD_SYNC)
            return False
        if not plan_only:
            self.flags.clear(suffix, protocol.CMD_SYNC)
        return True

    # -- one dataset ---------------------------------------------------------

    def target_of(self, suffix: str) -> str:
        return self.root + suffix

    def buffer_entry(self, suffix: str) -> str:
        return self.buffer + "/" + (protocol.hex_suffix(suffix) if suffix else ROOT_ENTRY)

    def _resumable(self) -> bool:
        """Whether this receiver's zfs keeps cut streams (receive -s/-A)."""
        try:
            return self.zfs.capabilities.receive_resumable
        except ZfsError:
            return False

    def sync_dataset(self, session: Session, suffix: str, snapshots: Tuple[str, ...], plan_only: bool,
                     resumable: bool = False) -> None:
        target = self.target_of(suffix)
        entry = self.buffer_entry(suffix)
        if len(target) > protocol.MAX_DATASET_NAME or len(entry) + len(OLD_MARK) > protocol.MAX_DATASET_NAME:
            raise SyncFailed("dataset name too long", target)
        try:
            self.locks.acquire(target, session.owner, wait=self.options.lock_wait)
        except Busy as error:
            raise SyncFailed("busy", str(error))
        try:
            self._sync_locked(session, suffix, target, entry, snapshots, plan_only, resumable)
        finally:
            self.locks.release(target, session.owner)

    def _locate(self, target: str, entry: str) -> Found:
        """Where the receiver's copy is (in place, in the buffer, or
        nowhere), its snapshots, which of the two exist and which hold
        partial receive state: one zfs(8) call for all of it."""
        found, partials = self.zfs.locate([target, entry])
        # A first stream cut short leaves a dataset without any snapshot
        # (OpenZFS marks it inconsistent): not a copy to sync against.
        fresh = frozenset(name for name in partials if not found[name])
        location, have = None, []
        for name in (target, entry):
            if found[name] is not None and name not in fresh:
                location, have = name, found[name]
                break
        return Found(location, have, found[target] is not None, found[entry] is not None, partials, fresh)

    def _sync_locked(self, session: Session, suffix: str, target: str, entry: str,
                     snapshots: Tuple[str, ...], plan_only: bool, resumable: bool = False) -> None:
        thread = str(session.thread)
        try:
            found = self._locate(target, entry)
        except ZfsError as error:
            raise SyncFailed("zfs_open", str(error))
        location, have, entry_exists = found.location, found.have, found.entry_exists
        decision = protocol.decide(snapshots, location is not None, have, self.options.allow_full)
        if decision.action == "refuse":
            raise SyncFailed("FULL refused", "%s shares no snapshot with the sender and this receiver refuses FULL" % target)
        if plan_only:
            self._reply_or_lost(session, True, decision.reply_text)
            return
        dest = entry if decision.action in ("new", "full") else location
        partial = protocol.plan_partial(found.partials, found.fresh, decision, dest, resumable, self._stuck_tokens)
        for name in partial.abort:
            self._abort_partial(thread, name, "the request cannot resume it" if not resumable else "stale")
            entry_exists = entry_exists and not (name == entry and name in found.fresh)
        if partial.offer is not None:
            if self._resume(session, dest, found.partials[dest], decision):
                self._finish_resumed(session, suffix, target, entry, dest, snapshots, found.target_exists)
                return
            entry_exists = entry_exists and not (dest == entry and dest in found.fresh)
        self._reply_or_lost(session, True, decision.reply_text)
        self.log.main(thread, "%s: %s (%s%s)" % (target, decision.action, location or "absent",
                                                 ", base " + decision.base if decision.base else ""))
        if decision.action == "uptodate":
            # An original sender reads one more frame after 0:<newest>; ours
            # reads it too. The original receiver hung here instead.
            self._prune(session, suffix, location, have, snapshots)
            if location == entry:
                self._place(entry, target)
        elif decision.action == "incremental":
            received = self._receive_incremental(session, location, have, decision, snapshots, resumable)
            self._prune(session, suffix, location, received, snapshots)
            if location == entry:
                self._place(entry, target)
        elif decision.action == "new":
            self._receive_full(session, entry, snapshots, "new", entry_exists, resumable)
            self._place(entry, target)
        else:  # full
            self._replace(session, target, entry, location, snapshots, entry_exists, resumable)
        self._reply_or_lost(session, True, protocol.REPLY_OK)

    # -- resume --------------------------------------------------------------

    def _abort_partial(self, thread: str, name: str, why: str) -> None:
        try:
            self.zfs.abort_receive(name)
        except ZfsError as error:
            raise SyncFailed("zfs_receive(abort)", str(error))
        self._stuck_tokens.pop(name, None)
        self.log.main(thread, "%s: partial receive state aborted (%s)" % (name, why))

    def _resume(self, session: Session, dest: str, token: str, decision: protocol.Decision) -> bool:
        """Offer the token; True when the sender resumed and the cut
        stream is now complete in ``dest``, False when it could not (the
        partial state is then aborted and the sync goes on as usual). A
        resume that fails without moving the token is not offered again."""
        thread = str(session.thread)
        self._reply_or_lost(session, True, protocol.format_resume_offer(decision.action, token))
        session.conn.send_raw(token.encode("ascii"), timeout=60)
        try:
            answer = protocol.parse_reply(session.conn.read_frame(self.options.idle_timeout))
        except protocol.ProtocolError as error:
            raise SyncFailed("resume", "bad answer to the resume offer: %s" % error)
        if not (answer.ok and answer.text == protocol.REPLY_RESUME):
            self._abort_partial(thread, dest, "the sender cannot resume: %s" % answer.text[:200])
            return False
        self.log.main(thread, "%s: resuming the partial %s receive" % (dest, decision.action))
        try:
            self._receive(session, dest, True, "resume", resumable=True)
        except SyncFailed:
            try:
                if self.zfs.resume_token(dest) == token:
                    self._stuck_tokens[dest] = token
            except ZfsError:
                pass
            raise
        self._stuck_tokens.pop(dest, None)
        return True

    def _finish_resumed(self, session: Session, suffix: str, target: str, entry: str, dest: str,
                        snapshots: Sequence[str], target_exists: bool) -> None:
        """After a resumed stream: answer as to a sync from what ``dest``
        holds now (an incremental for what is still missing, or the
        newest), then place a buffered copy or swap in a FULL's new one."""
        thread = str(session.thread)
        try:
            received = self.zfs.snapshots(dest)
        except ZfsError as error:
            raise SyncFailed("zfs_receive(resume)", str(error))
        decision = protocol.decide(snapshots, True, received)
        if decision.action not in ("incremental", "uptodate"):
            raise SyncFailed("zfs_receive(resume)", "%s shares no snapshot with the sender after the resume" % dest)
        self._reply_or_lost(session, True, decision.reply_text)
        self.log.main(thread, "%s: resumed in %s, then %s (base %s)" % (target, dest, decision.action, decision.base))
        if decision.action == "incremental":
            received = self._receive_incremental(session, dest, received, decision, snapshots, True)
        self._prune(session, suffix, dest, received, snapshots)
        if dest == entry:
            if target_exists:  # only a FULL receives into the buffer beside an existing copy
                self._swap_in(session, target, entry)
            else:
                self._place(entry, target)
        self._reply_or_lost(session, True, protocol.REPLY_OK)

    def _reply_or_lost(self, session: Session, ok: bool, text: str) -> None:
        if not self._reply(session, ok, text):
            raise ConnectionClosed("sender went away")

    def _receive(self, session: Session, dest: str, force: bool, what: str,
                 resumable: bool = False) -> Optional[List[str]]:
        """One stream into ``dest``; the snapshots it brought, as zfs
        reported them, or None when that is not known (then list)."""
        argv = self.zfs.receive_argv(dest, force, resumable)
        # Where zfs cannot receive unmounted (zfs-fuse), every receive
        # remounts the dataset and its children, and concurrent receives in
        # one tree fail with "dataset is busy": receive one at a time there.
        serial = self._serial_receive if not self.zfs.capabilities.receive_unmounted else contextlib.nullcontext()
        with serial:
            return self._receive_one(session, dest, argv, what)

    def _receive_one(self, session: Session, dest: str, argv: List[str], what: str) -> Optional[List[str]]:
        # A file, not a pipe: a stream of many snapshots prints a line each,
        # more than a pipe holds while nobody reads it.
        with tempfile.TemporaryFile() as output:
            status, stderr = session.conn.run_zfs(self.zfs.spawn, argv, "receive",
                                                  stop_check=self._past_stop_deadline, output=output)
            output.seek(0)
            report = output.read(MAX_RECEIVE_REPORT + 1)
        # Past the bound the last line may be cut: list instead.
        verbose = report.decode("utf-8", "replace") if len(report) <= MAX_RECEIVE_REPORT else ""
        if status != 0 and not self.zfs.receive_failed_only_to_mount(stderr):
            raise SyncFailed("zfs_receive(%s)" % what, stderr or "exit status %s" % status)
        refused = self.zfs.refused_properties(stderr) if status == 0 else {}
        if "canmount" in refused:
            self._check_canmount(session, dest, what, refused["canmount"])
        if refused:
            self.log.main(str(session.thread), "%s: received without %s" % (dest, ", ".join(
                "%s (%s)" % item for item in sorted(refused.items()))))
        try:
            warning = self.zfs.settle_received(dest)
        except ZfsError as error:
            raise SyncFailed("zfs_receive(%s)" % what, "received, but: %s" % error)
        if warning:
            self.log.main(str(session.thread), "%s: received, still mounted: %s" % (dest, warning))
        # Only a clean exit vouches for every line it printed.
        return self.zfs.received_snapshots(verbose, dest) if status == 0 else None

    def _check_canmount(self, session: Session, dest: str, what: str, reason: str) -> None:
        """zfs exits 0 when it could not apply our -o canmount=noauto (an
        unprivileged receiver without the 'canmount' permission). A copy
        that already had noauto keeps it; one that would mount at the next
        boot, over whatever its mountpoint names, must not stay: a fresh
        copy in the buffer is dropped, any other fails the sync."""
        try:
            value = self.zfs.get(dest, "canmount")
        except ZfsError:
            value = "unknown"
        if value in ("noauto", "off"):
            return
        problem = "received, but canmount=noauto was refused (%s): delegate 'canmount' to the receiver's user" % reason
        if what in ("new", "full") and dest.startswith(self.buffer + "/"):
            try:
                self.zfs.destroy(dest, recursive=True)
                problem += "; the new copy was dropped"
            except ZfsError as error:
                self.log.main(str(session.thread), "%s: could not drop the copy: %s" % (dest, error))
        raise SyncFailed("zfs_receive(%s)" % what, problem)

    def _receive_full(self, session: Session, dest: str, snapshots: Sequence[str], what: str,
                      dest_exists: bool, resumable: bool = False) -> None:
        """A full stream, then, unless it already carried every snapshot
        (a combined stream from older originals), the incremental that the
        latest original and ours send right after it. ``dest_exists``
        comes from the listing made under this dataset's lock."""
        if dest_exists:
            if self.zfs.children(dest):
                raise SyncFailed("zfs_receive(%s)" % what, "%s holds datasets; cleanbuffer must place them first" % dest)
            self.zfs.destroy(dest, recursive=True)  # a stale copy aside, replaced by this stream
        # dest did not exist before this stream: what arrived is all it has.
        received = self._receive(session, dest, True, what, resumable) or self.zfs.snapshots(dest)
        if received and received[-1] == snapshots[-1]:
            return
        if len(snapshots) < 2 or not received:
            raise SyncFailed("zfs_receive(%s)" % what, "stream ended before @%s" % snapshots[-1])
        arrived = self._receive(session, dest, False, what, resumable)
        received = received + arrived if arrived else self.zfs.snapshots(dest)
        if not received or received[-1] != snapshots[-1]:
            raise SyncFailed("zfs_receive(%s)" % what, "stream ended before @%s" % snapshots[-1])

    def _receive_incremental(self, session: Session, location: str, have: Sequence[str], decision: protocol.Decision,
                             snapshots: Sequence[str], resumable: bool = False) -> List[str]:
        """The incremental stream; returns the snapshots it left, checked
        against the sender's newest and handed on to pruning."""
        if decision.destroy_first:
            # Newer than the common snapshot and gone from the sender: the
            # incremental cannot land on top of them.
            try:
                self.zfs.destroy_snapshots(location, decision.destroy_first)
            except ZfsError as error:
                raise SyncFailed("zfs_receive(incr)", str(error))
        # -F rolls back changes made on the replica since the common snapshot.
        arrived = self._receive(session, location, True, "incr", resumable)
        if arrived:
            # What the replica held up to the common snapshot, then what the
            # stream brought: the listing this replaces would show the same.
            kept = [s for s in have if s not in decision.destroy_first]
            if decision.base in kept:
                kept = kept[:kept.index(decision.base) + 1]
            received = kept + arrived
        else:
            received = self.zfs.snapshots(location)
        if not received or received[-1] != snapshots[-1]:
            raise SyncFailed("zfs_receive(incr)", "stream ended before @%s" % snapshots[-1])
        return received

    def _replace(self, session: Session, target: str, entry: str, location: str, snapshots: Sequence[str],
                 entry_exists: bool, resumable: bool = False) -> None:
        """FULL: receive the new copy aside, then swap it in. The old copy
        stays untouched until the new one is complete."""
        if location == entry:
            # A buffered copy that shares nothing with the sender: worthless.
            self._receive_full(session, entry, snapshots, "full", True, resumable)
            self._place(entry, target)
            return
        self._receive_full(session, entry, snapshots, "full", entry_exists, resumable)
        self._swap_in(session, target, entry)

    def _swap_in(self, session: Session, target: str, entry: str) -> None:
        """The complete new copy in ``entry`` replaces ``target``, with the
        subtree locked while children move."""
        try:
            self.locks.acquire(target, session.owner, mode="tree", wait=self.options.lock_wait)
        except Busy as error:
            raise SyncFailed("zfs_receive(full)", "new copy kept aside in %s: %s" % (entry, error))
        try:
            self._swap(session, target, entry)
        finally:
            self.locks.acquire(target, session.owner, mode="one")

    def _swap(self, session: Session, target: str, entry: str) -> None:
        """Old copy (with its children) aside, new copy in, children moved
        under the new copy, old copy destroyed once it has no children left.
        The first rename either works or changes nothing; after it, every
        copy is always somewhere cleanbuffer knows how to finish."""
        old = entry + OLD_MARK
        thread = str(session.thread)
        self.zfs.unmount_tree(target)  # zfs-fuse: a mounted dataset is "busy"
        try:
            self.zfs.rename(target, old)
        except ZfsError as error:
            raise SyncFailed("zfs_receive(full)", "old copy left in place, new copy kept in %s: %s" % (entry, error))
        try:
            self.zfs.rename(entry, target)
        except ZfsError as error:
            try:
                self.zfs.rename(old, target)
            except ZfsError as undo:
                self.log.main(thread, "old copy stays at %s for cleanbuffer: %s" % (old, undo))
            raise SyncFailed("zfs_receive(full)", "new copy kept in %s: %s" % (entry, error))
        self._adopt_children(thread, old, target)

    def _adopt_children(self, thread: str, old: str, target: str) -> bool:
        """Move the children of an old copy under its replacement, then
        destroy the old copy if nothing is left under it."""
        for child in self.zfs.children(old):
            moved = target + child[len(old):]
            try:
                if self.zfs.exists(moved):
                    self.log.main(thread, "%s exists already; %s stays for inspection" % (moved, child))
                    continue
                self.zfs.rename(child, moved)
            except ZfsError as error:
                self.log.main(thread, "child %s stays under the old copy for cleanbuffer: %s" % (child, error))
        if self.zfs.children(old):
            return False
        try:
            self.zfs.destroy(old, recursive=True)
        except ZfsError as error:
            self.log.main(thread, "old copy %s left for cleanbuffer: %s" % (old, error))
            return False
        return True

    def _prune(self, session: Session, suffix: str, location: str, have: Sequence[str], snapshots: Sequence[str]) -> None:
        stale = protocol.snapshots_to_prune(have, snapshots)
        if not stale:
            self.flags.clear(suffix, "prune")
            return
        try:
            self.zfs.destroy_snapshots(location, stale)
            self.flags.clear(suffix, "prune")
            self.log.worker(session.thread, session.conn.fileno(), suffix, "sync",
                            "pruned %s" % " ".join("@" + s for s in stale))
        except ZfsError as error:
            # The data arrived; a snapshot that cannot go (a clone's origin,
            # a hold) is for monitoring, not a failed sync.
            self.flags.set(suffix, "prune")
            self.log.main(str(session.thread), "%s: prune failed: %s" % (location, error))

    def _place(self, entry: str, target: str) -> bool:
        """Rename a complete buffered copy into place if its parent exists.
        The parent is looked at only when the rename fails: a sync places a
        new dataset whose parent is there in all but the first run."""
        try:
            self.zfs.rename(entry, target)
            return True
        except ZfsError:
            parent = target.rsplit("/", 1)[0]
            if "/" in target and not self.zfs.exists(parent):
                return False
        # The parent arrived between the rename and the look (another
        # worker placed it; seen on OpenZFS, where receives run in
        # parallel): once more, and a failure now is a real one.
        self.zfs.rename(entry, target)
        return True

    # -- cleanbuffer ---------------------------------------------------------

    def clean_buffer(self, session: Session) -> int:
        """Place every buffered copy whose target is missing (parents first),
        drop copies whose target exists and old copies left by a FULL swap.
        Entries another sync is working on are left alone, and so is a cut
        first stream of a resumable receive (no snapshot yet, nothing to
        place): the next sync resumes it.
        Returns the number of entries that could not be handled."""
        thread = str(session.thread)
        prefix = session.prefix
        try:
            listed = self.zfs.partial_children(self.buffer)
        except ZfsError as error:
            self.log.main(thread, "cleanbuffer: %s" % error)
            self.flags.set(prefix, protocol.CMD_CLEANBUFFER)
            return 1
        entries = [child[len(self.buffer) + 1:] for child, _token, _fresh in listed]
        partial = {child[len(self.buffer) + 1:]: (token, fresh) for child, token, fresh in listed if token}
        placed: Dict[str, str] = {}
        for name in entries:
            try:
                suffix = parse_buffer_entry(name)[0]
            except protocol.ProtocolError:
                self.log.main(thread, "cleanbuffer: leaving unknown entry %s/%s" % (self.buffer, name))
                continue
            # A confined client places only its own copies.
            if not prefix or suffix == prefix or suffix.startswith(prefix + "/"):
                placed[name] = self.target_of(suffix)
        failures = 0
        # Shallow targets first, so a parent is in place before its children.
        for name in sorted((n for n in placed if not n.endswith(OLD_MARK)), key=lambda n: placed[n].count("/")):
            failures += not self._clean_entry(thread, session, self.buffer + "/" + name, placed[name],
                                              partial=partial.get(name))
        for name in (n for n in placed if n.endswith(OLD_MARK)):
            failures += not self._clean_entry(thread, session, self.buffer + "/" + name, placed[name], old=True)
        if failures:
            self.flags.set(prefix, protocol.CMD_CLEANBUFFER)
        else:
            self.flags.clear(prefix, protocol.CMD_CLEANBUFFER)
        return failures

    def _clean_entry(self, thread: str, session: Session, entry: str, target: str, old: bool = False,
                     partial: Optional[Tuple[str, bool]] = None) -> bool:
        """``partial``: (resume token, a first stream) when the entry holds
        partial receive state. A cut first stream stays (the next sync
        resumes it, also a FULL's whose old copy is still in place); a cut
        incremental moves along with its copy (rename keeps the ``%recv``
        clone) or goes with it."""
        try:
            self.locks.acquire(target, session.owner, wait=0)
        except Busy:
            self.log.main(thread, "cleanbuffer: %s busy, left for the next run" % target)
            return True
        try:
            if partial is not None and partial[1]:
                # A first stream cut short: no snapshot yet, nothing to place.
                self.log.main(thread, "cleanbuffer: %s holds a partial first stream, kept to resume" % entry)
                return True
            if self.zfs.exists(target):
                if old:
                    # A swap that stopped before its children had moved.
                    return self._adopt_children(thread, entry, target)
                if self.zfs.children(entry):
                    self.log.main(thread, "cleanbuffer: %s holds datasets, left for inspection" % entry)
                    return False
                self.zfs.destroy(entry, recursive=True)
                self.log.main(thread, "cleanbuffer: %s exists, dropped %s" % (target, entry))
                return True
            if old:
                # The swap stopped between its two renames and the new copy
                # is gone too: the old copy is the only one; put it back.
                return self._place(entry, target)
            if self._place(entry, target):
                self.log.main(thread, "cleanbuffer: %s -> %s" % (entry, target))
                return True
            self.log.main(thread, "cleanbuffer: parent of %s missing, %s stays buffered" % (target, entry))
            return False
        except ZfsError as error:
            self.log.main(thread, "cleanbuffer: %s: %s" % (entry, error))
            return False
        finally:
            self.locks.release(target, session.owner)
