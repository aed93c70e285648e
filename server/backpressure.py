"""Backpressure for one stream: slow a client that sends faster than real time instead of dropping its audio.

The rule (``docs/protocol.md``, *Limits and backpressure*):

* a client whose audio runs ahead of the wall clock by more than :data:`AHEAD_MARGIN` (a file, a replay, a
  reconnect resending audio) is *unpaced*: once its stream's pending audio reaches ``max_pending_audio``, the
  connection stops reading its socket until the backlog has drained (websockets' receive queue fills, then TCP flow
  control slows the sender). Its audio is never dropped;
* a client at real-time pace (a microphone, a phone call) cannot be slowed down: when the server falls behind it,
  the oldest pending audio is dropped (bounded lag, reported with ``audio_dropped``), as live captions prefer fresh
  text over a growing delay.

:class:`ClientPace` classifies, :class:`ReadGate` is the one awaitable "room for more audio" the receive loop waits
on. Both are free of websockets and of the session, so any protocol's connection can use them.
"""

from __future__ import annotations

import asyncio
from typing import Optional

AHEAD_MARGIN = 2.0  # seconds of audio ahead of the wall clock that still count as real-time pace (network jitter)


class ClientPace:
    """Whether a client sends faster than real time. Once it has been ahead of the wall clock by more than
    ``margin`` seconds it stays *unpaced* for the rest of the stream (a file does not become live)."""

    def __init__(self, margin: float = AHEAD_MARGIN) -> None:
        if margin < 0:
            raise ValueError("ClientPace margin must be >= 0 seconds (2 s tolerates network jitter)")
        self.margin = margin
        self.unpaced = False
        self._first_at: Optional[float] = None

    def note(self, audio_seconds: float, now: float) -> bool:
        """Record that ``audio_seconds`` of audio have arrived in total by wall time ``now`` (seconds, monotonic),
        counting the message just received; return :attr:`unpaced`."""
        if self._first_at is None:
            self._first_at = now
        if not self.unpaced and audio_seconds - (now - self._first_at) > self.margin:
            self.unpaced = True
        return self.unpaced


class ReadGate:
    """Open while the stream may take more audio. The receive loop awaits :meth:`wait` before reading the socket;
    whoever changes the stream's backlog calls :meth:`set` with the new answer."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.pauses = 0  # times reading was paused (tests, logs)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def set(self, room: bool) -> bool:
        """Open or close the gate; True when this call closed it (a new pause)."""
        if room:
            self._open.set()
            return False
        if not self._open.is_set():
            return False
        self._open.clear()
        self.pauses += 1
        return True

    async def wait(self) -> None:
        await self._open.wait()
