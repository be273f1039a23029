# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""Command lines of ``zfsync_recv``, ``zfsync_send`` and ``zfsyncron``: the
original flags unchanged, plus long options and ``--help``."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional

from . import __version__, protocol
from .clients import DEFAULT_FIRST_REQUEST_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT, ClientRoots
from .logs import Log
from .zfs import ZfsError

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_FAILED = 1


class Parser(argparse.ArgumentParser):
    """Usage errors exit 1, as the original programs did."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


def _frame_size(text: str):
    if text == "auto":
        return None
    value = int(text)
    if value not in protocol.FRAME_SIZES:
        raise argparse.ArgumentTypeError("frame size must be auto, 256 or 512")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError("port must be 1..65535")
    return value


def add_tls_options(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument("--tls-cert", metavar="FILE", help="mutual TLS: %s certificate (PEM)" % whose)
    parser.add_argument("--tls-key", metavar="FILE", help="its private key (default: in --tls-cert)")
    parser.add_argument("--tls-ca", metavar="FILE", help="the CA the peer's certificate must come from")


def check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_ca):
        parser.error("--tls-cert and --tls-ca go together")


def _check_networks(parser: argparse.ArgumentParser, networks: List[str]) -> None:
    import ipaddress

    for cidr in networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as error:
            parser.error("--allow %s: %s" % (cidr, error))


def _check_client_roots(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        roots = ClientRoots(args.client_root)
    except ValueError as error:
        parser.error("--client-root: %s" % error)
    if roots.need_certificates and not args.tls_cert:
        parser.error("--client-root cn:NAME=SUB needs TLS (--tls-cert, --tls-ca): the name comes from the "
                     "client's certificate")


def recv_parser() -> Parser:
    parser = Parser(prog="zfsync_recv", description="zfsync receiver daemon: receives ZFS dataset trees from "
                    "zfsync senders (ours or the original) into ROOT_DATASET.")
    parser.add_argument("-v", "--verbose", action="store_true", help="one log per worker thread as well")
    parser.add_argument("-p", "--port", type=_port, default=30, help="TCP port (default 30)")
    parser.add_argument("-b", "--backlog", type=_positive, default=50, help="listen backlog (default 50)")
    parser.add_argument("-t", "--threads", type=_positive, default=4, help="worker threads (default 4)")
    parser.add_argument("-o", "--log-file", default="/var/log/zfshad.log", help="main log (default /var/log/zfshad.log)")
    parser.add_argument("-d", "--flag-dir", default="/var/run/zfshad", help="error flag directory (default /var/run/zfshad)")
    parser.add_argument("-i", "--listen", default="127.0.0.1", help="listen address, IPv4 or IPv6 (default 127.0.0.1)")
    parser.add_argument("--frame-size", type=_frame_size, default=None, metavar="auto|256|512",
                        help="frame size; auto detects it per connection (default)")
    parser.add_argument("--pid-file", help="write the daemon's pid here, remove it on exit")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="close a connection silent this long between requests (s; default 300)")
    parser.add_argument("--first-request-timeout", type=_seconds, default=DEFAULT_FIRST_REQUEST_TIMEOUT,
                        metavar="S", help="close a new connection (TLS handshake included) without a complete "
                        "first request within S seconds (default %.0f); connections waiting for a request "
                        "hold no worker thread" % DEFAULT_FIRST_REQUEST_TIMEOUT)
    parser.add_argument("--max-connections", type=_positive, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="open connections at most, waiting or being served (default %d); beyond, a new "
                        "connection is closed at once, without an answer, and logged" % DEFAULT_MAX_CONNECTIONS)
    parser.add_argument("--max-per-client", type=_positive, default=DEFAULT_MAX_PER_CLIENT, metavar="N",
                        help="open connections at most from one client address (default %d; keep it above the "
                        "senders' -t)" % DEFAULT_MAX_PER_CLIENT)
    parser.add_argument("--stream-idle-timeout", type=float, default=600.0,
                        help="fail a stream that moves no bytes this long (s); streams may take hours")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="grace for a running receive on SIGTERM (s)")
    parser.add_argument("--no-full", action="store_true",
                        help="refuse FULL: never replace a copy that shares no snapshot with the sender")
    parser.add_argument("--allow", action="append", default=[], metavar="CIDR",
                        help="accept clients from this network only (repeatable); others get no answer")
    parser.add_argument("--client-root", action="append", default=[], metavar="MATCH=SUB",
                        help="confine a client to ROOT/SUB (repeatable, first match wins): MATCH is a network "
                        "(10.0.0.0/24, 192.0.2.7) or cn:NAME, the commonName of its TLS certificate; its root "
                        "dataset lands at ROOT/SUB. With any --client-root, a client no rule matches is closed "
                        "without an answer")
    add_tls_options(parser, "this receiver's")
    parser.add_argument("--version", action="version", version="zfsync_recv " + __version__)
    parser.add_argument("root", metavar="ROOT_DATASET")
    return parser


def main_recv(argv: Optional[List[str]] = None) -> int:
    from .receiver import Receiver, ReceiverOptions

    parser = recv_parser()
    args = parser.parse_args(argv)
    check_tls(parser, args)
    _check_networks(parser, args.allow)
    _check_client_roots(parser, args)
    options = ReceiverOptions(
        root=args.root, port=args.port, listen_address=args.listen, backlog=args.backlog,
        threads=args.threads, log_file=args.log_file, flag_dir=args.flag_dir, verbose=args.verbose,
        frame_size=args.frame_size, pid_file=args.pid_file, idle_timeout=args.idle_timeout,
        stream_idle_timeout=args.stream_idle_timeout, stop_timeout=args.stop_timeout,
        allow_full=not args.no_full, allow=tuple(args.allow), tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_ca=args.tls_ca, first_request_timeout=args.first_request_timeout,
        max_connections=args.max_connections, max_per_client=args.max_per_client,
        client_roots=tuple(args.client_root))
    try:
        protocol.validate_suffix("/" + options.root)
    except protocol.ProtocolError as error:
        print("zfsync_recv: invalid ROOT_DATASET %r: %s" % (options.root, error), file=sys.stderr)
        return EXIT_USAGE
    try:
        log = Log(options.log_file, options.verbose)
    except OSError as error:
        print("zfsync_recv: cannot open log %s: %s" % (options.log_file, error), file=sys.stderr)
        return EXIT_FAILED
    try:
        receiver = Receiver(options, log=log)
    except (OSError, ValueError) as error:  # unreadable certificates, mostly
        print("zfsync_recv: cannot start: %s" % error, file=sys.stderr)
        return EXIT_FAILED
    try:
        receiver.prepare()
        receiver.listen()
    except (ZfsError, OSError) as error:
        log.main("main", "cannot start: %s" % error)
        print("zfsync_recv: cannot start: %s" % error, file=sys.stderr)
        return EXIT_FAILED
    receiver.install_signal_handlers()
    if options.pid_file:
        _write_pid_file(options.pid_file)
    try:
        receiver.serve_forever()
    finally:
        if options.pid_file:
            _remove_pid_file(options.pid_file)
        log.close()
    return EXIT_OK


def _write_pid_file(path: str) -> None:
    temp = "%s.%d" % (path, os.getpid())
    with open(temp, "w") as handle:
        handle.write("%d\n" % os.getpid())
    os.replace(temp, path)


def _remove_pid_file(path: str) -> None:
    try:
        with open(path) as handle:
            if handle.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


def send_parser() -> Parser:
    parser = Parser(prog="zfsync_send", description="zfsync sender: replicates ROOT_DATASET and its descendants "
                    "to a zfsync receiver (ours or the original), several datasets in parallel.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every dataset")
    parser.add_argument("-p", "--port", type=_port, default=30,
                        help="receiver port (default 30, the receiver's default; the original sender defaulted to 40)")
    parser.add_argument("-t", "--threads", type=_positive, default=4, help="worker threads (default 4)")
    parser.add_argument("-i", "--bind", default=None,
                        help="local address to connect from (default: chosen by the system; the original "
                        "bound 127.0.0.1, which cannot reach another host)")
    parser.add_argument("-o", "--log-file", default=None, help="log file (default: standard error)")
    parser.add_argument("--frame-size", type=_frame_size, default=protocol.DEFAULT_FRAME_SIZE, metavar="256|512",
                        help="frame size (default 512; 256 for receivers older than 2021-02-18)")
    parser.add_argument("--timeout", type=float, default=300.0, help="wait this long for a reply (s)")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="connect bound (s)")
    parser.add_argument("--stream-idle-timeout", type=float, default=600.0,
                        help="fail a stream that moves no bytes this long (s)")
    parser.add_argument("--plan", action="store_true",
                        help="only ask what would be sent (needs a zfsync receiver of ours); change nothing")
    parser.add_argument("--json", action="store_true", help="print the per-dataset results as JSON")
    parser.add_argument("--no-resume", action="store_true",
                        help="never resume a cut stream (zfs send -t), even where both sides could")
    add_tls_options(parser, "this sender's")
    parser.add_argument("--tls-server-name", metavar="NAME",
                        help="the name the receiver's certificate must carry (default: RECEIVER)")
    parser.add_argument("--version", action="version", version="zfsync_send " + __version__)
    parser.add_argument("root", metavar="ROOT_DATASET")
    parser.add_argument("receiver", metavar="RECEIVER", help="host name, IPv4 or IPv6 address")
    return parser


def main_send(argv: Optional[List[str]] = None) -> int:
    from .sender import SyncOptions, sync_tree

    parser = send_parser()
    args = parser.parse_args(argv)
    check_tls(parser, args)
    if args.frame_size is None:
        args.frame_size = protocol.DEFAULT_FRAME_SIZE
    options = SyncOptions(
        root=args.root, receiver=args.receiver, port=args.port, threads=args.threads,
        bind_address=args.bind, frame_size=args.frame_size, log_file=args.log_file, verbose=args.verbose,
        timeout=args.timeout, connect_timeout=args.connect_timeout,
        stream_idle_timeout=args.stream_idle_timeout, plan_only=args.plan, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name, resume=not args.no_resume)
    try:
        log = Log(options.log_file, options.verbose)
    except OSError as error:
        print("zfsync_send: cannot open log %s: %s" % (options.log_file, error), file=sys.stderr)
        return EXIT_FAILED
    result = sync_tree(options, log=log)
    log.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    for item in result.datasets:
        if item.failed:
            print("zfsync_send: %s: %s" % (item.dataset, item.error), file=sys.stderr)
    print("zfsync_send: " + result.summary_line(), file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK if result.ok else EXIT_FAILED


def main_cron(argv: Optional[List[str]] = None) -> int:
    from .cron import main_cron as run

    return run(argv)
