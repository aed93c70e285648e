"""The streaming core's units and bounds: time in samples at 16 kHz, and the one validation helper."""

from __future__ import annotations

SAMPLE_RATE = 16000
VAD_CHUNK = 512  # Silero VAD's chunk at 16 kHz (32 ms)
MAX_SPEAKERS = 32  # the most global speakers one channel may have (and the bound when max_speakers is None)


def ms(milliseconds: float) -> int:
    """Milliseconds → samples at 16 kHz."""
    return int(round(milliseconds * SAMPLE_RATE / 1000))


def require(cond: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``cond``: ``message`` names the field and the fix."""
    if not cond:
        raise ValueError(message)
