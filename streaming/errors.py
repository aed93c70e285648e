"""One exception per kind of bad input; the server maps each to a websocket close code.

Messages are written for the client: they say what was wrong and how to fix it, never how the server works.
"""

from __future__ import annotations


class RechkaError(Exception):
    """Base class. ``code`` is the machine-readable error code sent in ``{"type":"error"}`` events."""

    code = "error"


class InvalidMessage(RechkaError):
    """A text message that is not valid protocol v1 JSON (bad JSON, unknown type, bad field). Close 1008."""

    code = "invalid_message"


class InvalidState(RechkaError):
    """A message that is valid but not allowed now (a second ``start``, a message after ``stop``). Close 1008."""

    code = "invalid_state"


class InvalidAudio(RechkaError):
    """Audio that cannot be decoded (NaN/Inf floats, binary before ``start``). Close 1003."""

    code = "invalid_audio"


class UnsupportedFormat(InvalidAudio):
    """An encoding, sample rate or channel count the server does not accept. Close 1003."""

    code = "unsupported_format"
