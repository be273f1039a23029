# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""Logs in the original's formats.

Main log:        ``DD/MM/YYYY HH:MM:SS:uuuuuu | th:<thread> | msg``
Per-worker (-v): ``<stem>.th<N>.<ext>`` with
                 ``DD/MM/YYYY HH:MM:SS:uuuuuu | fd:<fd> | (<S>:<cmd>) msg``

``reopen()`` (SIGUSR1) reopens the main log, for newsyslog/logrotate, and
rotates the per-worker logs the way the original does: rename with a
timestamp, start a new file.
"""
from __future__ import annotations

import datetime
import os
import sys
import threading
from typing import Dict, IO, Optional


def timestamp(now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now()
    return now.strftime("%d/%m/%Y %H:%M:%S:") + "%06d" % now.microsecond


def worker_log_path(path: str, thread: int) -> str:
    stem, ext = os.path.splitext(path)
    return "%s.th%d%s" % (stem, thread, ext)


class Log:
    """The main log and, when verbose, one log per worker thread."""

    def __init__(self, path: Optional[str], verbose: bool = False, stream: IO = sys.stderr):
        self.path = path
        self.verbose = verbose
        self._stream = stream
        self._lock = threading.Lock()
        self._main: Optional[IO] = None
        self._workers: Dict[int, IO] = {}
        self._open_main()

    def _open(self, path: str) -> IO:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def _open_main(self) -> None:
        self._main = self._open(self.path) if self.path else None

    def _write(self, handle: Optional[IO], line: str) -> None:
        try:
            (handle or self._stream).write(line)
        except (OSError, ValueError):
            pass  # a full or vanished log disk must not stop replication

    def main(self, thread: str, message: str) -> None:
        with self._lock:
            self._write(self._main, "%s | th:%s | %s\n" % (timestamp(), thread, message))

    def worker(self, thread: int, fd: int, suffix: str, command: str, message: str) -> None:
        if not self.verbose:
            return
        with self._lock:
            handle = self._workers.get(thread)
            if handle is None and self.path:
                handle = self._workers[thread] = self._open(worker_log_path(self.path, thread))
            self._write(handle, "%s | fd:%d | (%s:%s) %s\n" % (timestamp(), fd, suffix, command, message))

    def reopen(self) -> None:
        with self._lock:
            if self._main:
                self._main.close()
            self._open_main()
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            for thread, handle in list(self._workers.items()):
                handle.close()
                path = worker_log_path(self.path, thread) if self.path else None
                if path and os.path.exists(path):
                    os.replace(path, "%s.%s" % (path, stamp))
            self._workers.clear()

    def close(self) -> None:
        with self._lock:
            for handle in list(self._workers.values()) + [self._main]:
                if handle:
                    handle.close()
            self._workers.clear()
            self._main = None
