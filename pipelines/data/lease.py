"""One writer per output: an exclusive lease the driver holds while a job runs.

The lease is a numbered file under ``_tierwise/lease/`` of the output (``00000001.json``,
``00000002.json``, ...), created with an exclusive write (``io.create_exclusive``: S3's
``If-None-Match: *``, a local ``os.link``), so of two drivers that try to take the same
number one wins. The highest number is the lease; its holder rewrites it every
``renew_s`` seconds (a heartbeat thread), and marks it released at the end.

A driver finding the highest lease held (not released, renewed within its ``ttl_s``, and
not owned by a dead process on this host) exits with ``OutputLeased``. A stale lease is
taken over by creating the next number: only one of several drivers racing for it wins.
The old holder, if it was only paused, finds a higher number at its next renewal and
stops (``lost``), draining its parts in flight. Times are the holders' wall clocks: hosts
must agree to well within the TTL (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from tierwise.pipelines.data import io
from tierwise.pipelines.data.errors import TierwiseError

log = logging.getLogger(__name__)

LEASE_DIR = "_tierwise/lease"
# A holder renews every RENEW_S; a lease not renewed for TTL_S is stale and may be taken over.
# The TTL outlasts several renewals that fail (a storage hiccup) before anyone may take over.
LEASE_TTL_S = 90.0
LEASE_RENEW_S = 15.0


class OutputLeased(TierwiseError):
    """Another driver holds the output's lease: this one did not start."""


class LeaseLost(TierwiseError):
    """The lease was taken over (this driver stalled past its TTL): the job stopped."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class OutputLease:
    """The output's lease for one driver; ``with OutputLease(...)`` acquires, heartbeats, releases.

    Args:
        out_uri, storage_options: the output location.
        ttl_s: how long the lease stays held without a renewal.
        renew_s: seconds between renewals (the heartbeat thread).
    """

    def __init__(self, out_uri: str, storage_options: dict[str, Any] | None = None,
                 ttl_s: float = LEASE_TTL_S, renew_s: float = LEASE_RENEW_S):
        self.out, self.so, self.ttl_s, self.renew_s = out_uri, storage_options or {}, ttl_s, renew_s
        self.owner = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.gen = 0
        self.acquired_at = 0.0
        self.lost = False
        self._last_renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ protocol
    def _name(self, gen: int) -> str:
        return f"{LEASE_DIR}/{gen:08d}.json"

    def _generations(self) -> list[int]:
        return sorted(int(n[:-5]) for n in io.list_names(self.out, LEASE_DIR, self.so)
                      if n.endswith(".json") and n[:-5].isdigit())

    def _read(self, gen: int) -> dict | None:
        try:
            return io.read_json(self.out, self._name(gen), self.so)
        except (ValueError, OSError):  # unreadable: not a live lease
            return None

    def _body(self, released: bool = False) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid, "acquired_at": self.acquired_at,
                           "renewed_at": now, "ttl_s": self.ttl_s, "released": released}).encode()

    def held_by_other(self, holder: dict | None, now: float | None = None) -> bool:
        """Whether ``holder`` (a lease file's content) still holds the output against us."""
        if not holder or holder.get("released") or holder.get("owner") == self.owner:
            return False
        now = time.time() if now is None else now
        if now - float(holder.get("renewed_at", 0)) > float(holder.get("ttl_s", self.ttl_s)):
            return False
        if holder.get("host") == self.host and holder.get("pid") != self.pid and not _pid_alive(int(holder["pid"])):
            return False  # its driver is dead (this host): no need to wait out the TTL
        return True

    def acquire(self) -> OutputLease:
        """Takes the lease, or raises ``OutputLeased`` naming who holds it."""
        for _ in range(8):
            gens = self._generations()
            top = gens[-1] if gens else 0
            holder = self._read(top) if top else None
            if self.held_by_other(holder):
                raise OutputLeased(self._describe(holder))
            self.gen, self.acquired_at = top + 1, time.time()
            created = io.create_exclusive(self.out, self._name(self.gen), self._body(), self.so)
            if created or (self._read(self.gen) or {}).get("owner") == self.owner:
                break
        else:
            raise OutputLeased(f"output {self.out}: another driver is taking its lease at the same moment")
        self._last_renewed = time.time()
        if holder and not holder.get("released"):
            log.warning("took over the stale lease of %s (pid %s, renewed %.0f s ago)", holder.get("host"),
                        holder.get("pid"), time.time() - float(holder.get("renewed_at", 0)))
        for g in gens:  # numbers below ours are history
            io.remove(self.out, self._name(g), self.so)
        return self

    def _describe(self, holder: dict) -> str:
        age = time.time() - float(holder.get("renewed_at", 0))
        left = float(holder.get("ttl_s", self.ttl_s)) - age
        return (f"output {self.out} is being written by another driver (host {holder.get('host')}, pid "
                f"{holder.get('pid')}, lease renewed {age:.0f} s ago): one writer per output. If that driver is "
                f"dead, its lease goes stale in {max(0.0, left):.0f} s; re-run then")

    def renew(self) -> bool:
        """Rewrites the lease's heartbeat; False (and ``lost``) when a higher number exists."""
        if self.lost:
            return False
        if any(g > self.gen for g in self._generations()):
            self.lost = True
            log.error("lease of %s taken over by another driver: stopping", self.out)
            return False
        io.put_bytes(self.out, self._name(self.gen), self._body(), self.so)
        self._last_renewed = time.time()
        return True

    def release(self) -> None:
        """Stops the heartbeat and marks the lease released (unless it was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_s + 30)
        if self.gen and not self.lost and not any(g > self.gen for g in self._generations()):
            io.put_bytes(self.out, self._name(self.gen), self._body(released=True), self.so)

    # ------------------------------------------------------------ heartbeat
    def _beat(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # storage trouble: keep trying until the TTL runs out
                log.warning("lease renewal of %s failed: %s", self.out, exc)
                if time.time() - self._last_renewed > self.ttl_s:
                    self.lost = True
                    return

    def __enter__(self) -> OutputLease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="tierwise-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        except Exception as e:  # the job's own outcome matters more; the lease goes stale anyway
            log.warning("lease of %s not released: %s", self.out, e)
