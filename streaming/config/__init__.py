"""Frozen option dataclasses for the streaming core, validated at construction.

Every duration is in samples at 16 kHz (``SAMPLE_RATE``); use :func:`ms` to write them readably. A bad value raises
``ValueError`` with a message that names the field and the fix. The server's CLI only fills these in. One module per
stage (``units``, ``vad``, ``partials``, ``diarization``, ``session``); import from here.
"""

from streaming.config.diarization import FRESH_EVIDENCE_BELOW, DiarizationOptions
from streaming.config.partials import ENCODER_FRAME, PartialOptions
from streaming.config.session import AudioFormat, SessionConfig
from streaming.config.units import MAX_SPEAKERS, SAMPLE_RATE, VAD_CHUNK, ms
from streaming.config.vad import VadOptions

__all__ = ["AudioFormat", "DiarizationOptions", "ENCODER_FRAME", "FRESH_EVIDENCE_BELOW", "MAX_SPEAKERS",
           "PartialOptions", "SAMPLE_RATE", "SessionConfig", "VAD_CHUNK", "VadOptions", "ms"]
