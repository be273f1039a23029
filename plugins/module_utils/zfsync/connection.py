# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""Framed connections: exact frame reads with bounds, and handing the socket
to a zfs process for the stream.

Two rules from measurements on these machines shape this file:

* A Python socket with a timeout is non-blocking at the OS level; handed to
  ``zfs send``/``zfs receive`` it makes them fail with EAGAIN. While a zfs
  process owns the socket, the socket is blocking.
* A stream may legitimately take hours, so a zfs process that owns the
  socket is bounded by *inactivity*: the kernel's SO_RCVTIMEO/SO_SNDTIMEO on
  the (blocking) socket make its read()/write() fail after that many seconds
  without progress, whoever does the I/O (zfs-fuse in userspace, OpenZFS in
  the kernel).
"""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Optional, Sequence, Tuple

from . import protocol

# How long the receiver waits for the second half of a 512-byte frame after
# the first 256 bytes: a sender writes a whole frame at once and then waits
# for the answer, so the rest is already there or never comes.
FRAME_DETECT_WAIT = 0.25
# While zfs owns a stream: how often stop_check() is asked when the process
# exit can be waited for (pidfd), and how often to poll where it cannot.
STREAM_CHECK_INTERVAL = 1.0
STREAM_POLL_INTERVAL = 0.2
# When the peer speaks before a send's process has exited: how long the
# process may take to finish exiting before the send counts as abandoned.
STREAM_EXIT_GRACE = 5.0


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (EOF), possibly in the middle of a frame."""


class FrameTimeout(TimeoutError):
    """No complete frame within the bound."""


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def set_inactivity_bound(sock: socket.socket, seconds: float) -> None:
    """Kernel-level send/receive timeouts; they bound a zfs process doing
    blocking I/O on this socket by inactivity, not by total time."""
    if seconds and seconds > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))


def enable_keepalive(sock: socket.socket, idle: int = 60, interval: int = 15, count: int = 4) -> None:
    """Detect a peer that vanished without a FIN (power loss, cut cable)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


def bytes_acked(sock: socket.socket) -> Optional[int]:
    """Bytes the peer has acknowledged on this socket (Linux tcp_info
    tcpi_bytes_acked); None where the platform does not tell."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(info) < 128:
        return None
    return struct.unpack_from("Q", info, 120)[0]


class FramedConnection:
    """One TCP connection carrying fixed-size frames and raw ZFS streams.

    ``frame_size`` is 256, 512, or None on a receiver that detects it from
    the peer's first frame and then answers in the same size."""

    def __init__(self, sock: socket.socket, frame_size: Optional[int] = protocol.DEFAULT_FRAME_SIZE,
                 stream_idle_timeout: float = 600.0, relay: "Optional[TlsRelay]" = None):
        self.sock = sock
        self.relay = relay
        self.frame_size = frame_size
        self.frames_sent = 0
        self.frames_received = 0
        set_inactivity_bound(sock, stream_idle_timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            enable_keepalive(sock)
            # Every frame waits for an answer: Nagle plus delayed ACKs would
            # add tens of milliseconds to each exchange.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self, wait: bool = True) -> None:
        """``wait=False``: do not wait for a TLS relay to flush (the
        receiver's lobby must not block on one slow peer)."""
        try:
            self.sock.close()
        except OSError:
            pass
        if self.relay is not None:
            self.relay.close(wait)

    def bytes_sent(self) -> Optional[int]:
        """Bytes this side has delivered so far: through the TLS relay, or
        acknowledged by the peer's TCP (Linux); None where unknown."""
        if self.relay is not None:
            return self.relay.bytes_out
        return bytes_acked(self.sock)

    # -- frames --------------------------------------------------------------

    def _recv_exact(self, count: int, deadline: float, partial_ok: bool = False) -> bytes:
        chunks = []
        received = 0
        while received < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if partial_ok:
                    break
                raise FrameTimeout("no complete frame within the time bound (%d of %d bytes)" % (received, count))
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(count - received)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError) as error:
                raise ConnectionClosed("connection reset by peer: %s" % error)
            if not chunk:
                if received == 0 and not chunks:
                    raise ConnectionClosed("peer closed the connection")
                raise ConnectionClosed("peer closed the connection in the middle of a frame (%d of %d bytes)"
                                       % (received, count))
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)

    def read_frame(self, timeout: float) -> str:
        """Read exactly one frame (TCP may split it) and return its message."""
        deadline = time.monotonic() + timeout
        if self.frame_size is None:
            data = self._recv_exact(256, deadline)
            try:
                rest = self._recv_exact(256, min(deadline, time.monotonic() + FRAME_DETECT_WAIT), partial_ok=True)
            except ConnectionClosed:
                rest = b""  # a 256-byte sender that said its last word
            if not rest:
                self.frame_size = 256
            else:
                self.frame_size = 512
                if len(rest) < 256:
                    rest += self._recv_exact(256 - len(rest), deadline)
                data += rest
        else:
            data = self._recv_exact(self.frame_size, deadline)
        self.frames_received += 1
        return protocol.decode_frame(data)

    def accept_frame(self, data: bytes) -> str:
        """A whole frame read by someone else (the receiver's lobby, which
        also detected its size): the connection's frame size from now on."""
        if self.frame_size is None:
            self.frame_size = len(data)
        self.frames_received += 1
        return protocol.decode_frame(data)

    def read_raw(self, count: int, timeout: float) -> bytes:
        """Bytes that follow a frame (an xsync snapshot list)."""
        return self._recv_exact(count, time.monotonic() + timeout)

    def send_frame(self, text: str, timeout: float = 60.0) -> None:
        size = self.frame_size or protocol.DEFAULT_FRAME_SIZE
        self.send_raw(protocol.encode_frame(text, size), timeout)
        self.frames_sent += 1

    def send_raw(self, data: bytes, timeout: float = 60.0) -> None:
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise FrameTimeout("peer did not take %d bytes within %.0f s" % (len(data), timeout))
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ConnectionClosed("connection lost while sending: %s" % error)

    def readable(self, timeout: float = 0.0) -> bool:
        """True when the peer sent something (or closed) without us reading it."""
        try:
            ready = select.select([self.sock], [], [], timeout)[0]
        except (OSError, ValueError):
            return True
        return bool(ready)

    # -- streams -------------------------------------------------------------

    def run_zfs(self, zfs_spawn, argv: Sequence[str], direction: str,
                stop_check=None, watch_peer: bool = False, output=None) -> Tuple[int, str]:
        """Run a zfs process with this socket as its stdout (``direction``
        "send") or stdin ("receive"; its stdout goes to the file ``output``
        if given); wait for it without a total bound (the kernel's
        inactivity bound ends a stalled stream), stop it early when
        ``stop_check()`` turns true or, with ``watch_peer``, when the peer
        writes or closes while we are sending (it gave up on the stream).
        Returns (exit status, stderr)."""
        self.sock.settimeout(None)  # blocking while zfs owns the socket
        if direction == "send":
            proc = zfs_spawn(argv, stdout=self.sock.fileno())
        else:
            proc = zfs_spawn(argv, stdin=self.sock.fileno(), stdout=output)
        reason = None
        exited = _exit_descriptor(proc.pid)
        try:
            while proc.poll() is None:
                # Sleep in select until the process exits (pidfd), the peer
                # stirs, or the interval passes: a blocking wait, where
                # Popen.wait(timeout) polls waitpid about 50 times a second
                # per stream (a CPU-bound cost in a busy sender or receiver).
                watched = [fd for fd in (exited, self.sock if watch_peer else None) if fd is not None]
                interval = STREAM_CHECK_INTERVAL if exited is not None else STREAM_POLL_INTERVAL
                if watched:
                    try:
                        select.select(watched, [], [], interval)
                    except (OSError, ValueError):
                        time.sleep(STREAM_POLL_INTERVAL)
                else:
                    time.sleep(interval)
                if proc.poll() is not None:
                    break
                if stop_check is not None and stop_check():
                    reason = "stopped: the daemon is shutting down"
                elif watch_peer and self.readable() and not _wait_exit(proc, exited, STREAM_EXIT_GRACE):
                    # The peer answered or closed mid-stream. A receiver that
                    # had the whole stream answers while zfs send may still be
                    # exiting (seen under TCG): only a process still running
                    # after the grace is sending to a peer that gave up.
                    reason = "the peer stopped reading the stream"
                if reason:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
                    break
        finally:
            if exited is not None:
                os.close(exited)
            stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        if reason:
            stderr = (reason + "; " + stderr).strip("; ")
        return proc.returncode, stderr.strip()


def _wait_exit(proc: subprocess.Popen, exited: Optional[int], seconds: float) -> bool:
    """True when ``proc`` exits within ``seconds`` (``exited``: its pidfd)."""
    if exited is not None:
        try:
            select.select([exited], [], [], seconds)
        except (OSError, ValueError):
            pass
        return proc.poll() is not None
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _exit_descriptor(pid: int) -> Optional[int]:
    """A descriptor that turns readable when process ``pid`` exits (a
    Linux pidfd, Python 3.9+), or None where there is none (FreeBSD, older
    Linux kernels): the caller then polls."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


def resolve(host: str, port: int) -> list:
    """Addresses for a host name, IPv4 or IPv6 literal (``[::1]`` too)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def connect(host: str, port: int, timeout: float, bind_address: Optional[str] = None) -> socket.socket:
    """Connect with a bound; try every address the name resolves to."""
    last_error: Optional[Exception] = None
    for family, socktype, proto, _canonname, address in resolve(host, port):
        sock = socket.socket(family, socktype, proto)
        try:
            if bind_address:
                sock.bind((bind_address, 0))
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as error:
            last_error = error
            sock.close()
    raise ConnectionError("cannot connect to %s port %d: %s" % (host, port, last_error))


# -- TLS ---------------------------------------------------------------------

RELAY_CHUNK = 256 * 1024
RELAY_BUFFER = 1024 * 1024  # per direction: the relay's memory is bounded
RELAY_FLUSH = 10.0  # after close, seconds to deliver what is still buffered


def tls_context(server: bool, cert: str, key: str, ca: str):
    """Mutual TLS between our peers: each side presents a certificate and
    accepts only certificates issued by ``ca``."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    if not server:
        context.check_hostname = True
    return context


def peer_certificate_name(tls_sock) -> Optional[str]:
    """The commonName of the peer's verified certificate."""
    cert = tls_sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class TlsRelay:
    """Carries a TLS connection over a local socketpair, so that everything
    else stays as on plain TCP: frames are read from, and zfs send/receive
    get, an ordinary socket (``local``), and the protocol inside TLS is
    unchanged. One thread moves bytes both ways with non-blocking I/O (an
    SSL object must not be read and written from two threads), at most
    RELAY_BUFFER bytes per direction in memory."""

    def __init__(self, tls_sock):
        import threading

        self.tls = tls_sock
        self.local, self._inner = socket.socketpair()
        self.bytes_out = 0
        self.bytes_in = 0
        self._stop = False
        self._flush_until: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="zfsync-tls-relay", daemon=True)
        self._thread.start()

    def close(self, wait: bool = True) -> None:
        """Close our end; the relay flushes what is still buffered towards
        the peer (a last reply) for up to RELAY_FLUSH seconds, then closes
        the TLS connection. ``wait``: until it has."""
        self._flush_until = time.monotonic() + RELAY_FLUSH
        try:
            self.local.close()
        except OSError:
            pass
        if wait:
            self._thread.join(RELAY_FLUSH)
            self._stop = True

    def _run(self) -> None:
        import ssl

        tls, inner = self.tls, self._inner
        tls.setblocking(False)
        inner.setblocking(False)
        to_tls, to_inner = bytearray(), bytearray()
        tls_eof = inner_eof = inner_shut = False
        try:
            while not self._stop and not (self._flush_until and time.monotonic() > self._flush_until):
                if tls_eof and not to_inner and not inner_shut:
                    inner.shutdown(socket.SHUT_WR)  # the peer is done: EOF for zfs/frames
                    inner_shut = True
                if inner_eof and not to_tls:
                    break
                if tls_eof and inner_shut and inner_eof:
                    break
                readers, writers = [], []
                if not tls_eof and len(to_inner) < RELAY_BUFFER:
                    readers.append(tls)
                if not inner_eof and len(to_tls) < RELAY_BUFFER:
                    readers.append(inner)
                if to_tls:
                    writers.append(tls)
                if to_inner:
                    writers.append(inner)
                pending = tls in readers and tls.pending()
                ready_r, ready_w, _unused = select.select(readers, writers, [], 0 if pending else 1.0)
                if pending or tls in ready_r:
                    try:
                        data = tls.recv(RELAY_CHUNK)
                        if data:
                            to_inner += data
                            self.bytes_in += len(data)
                        else:
                            tls_eof = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except (ssl.SSLError, OSError):
                        tls_eof = True
                if inner in ready_r:
                    try:
                        data = inner.recv(RELAY_CHUNK)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data:
                        to_tls += data
                    elif data == b"":
                        inner_eof = True
                if tls in ready_w and to_tls:
                    try:
                        sent = tls.send(to_tls[:RELAY_CHUNK])
                        del to_tls[:sent]
                        self.bytes_out += sent
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except (ssl.SSLError, OSError):
                        break
                if inner in ready_w and to_inner:
                    try:
                        sent = inner.send(to_inner[:RELAY_CHUNK])
                        del to_inner[:sent]
                    except BlockingIOError:
                        pass
                    except OSError:
                        to_inner.clear()
                        tls_eof = True
        except (OSError, ValueError):
            pass
        finally:
            for sock in (inner, tls):
                try:
                    sock.close()
                except OSError:
                    pass
