# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The zfsync engine: a stdlib-only package, importable on any managed host.

Used three ways: by ``bin/*`` from a checkout, by the receiver daemon the
``receiver`` module installs, and in-process by the Ansible modules.  Every
import inside the package is relative so it works both as ``zfsync`` and as
``ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync``.
"""
from __future__ import annotations

__version__ = "0.1.0"

# Every file of the engine, in the order a host install copies them.  The
# ``receiver``/``sender`` modules import all of these so that AnsiballZ ships
# the complete engine with them, and install exactly these files.
ENGINE_MODULES = (
    "__init__",
    "protocol",
    "zfs",
    "connection",
    "clients",
    "logs",
    "receiver",
    "sender",
    "snapshots",
    "cron",
    "service",
    "cli",
)
