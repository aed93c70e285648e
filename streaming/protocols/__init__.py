"""One sans-I/O protocol object per wire protocol: client text/bytes → Session calls; Session events → messages
and a close. ``base`` holds what they share (close codes, phase, limits); ``v1``, ``deepgram``, ``vosk`` one each."""

from streaming.protocols.base import CloseCode, Close, Limits, Outgoing, Phase, StreamProtocol

__all__ = ["CloseCode", "Close", "Limits", "Outgoing", "Phase", "StreamProtocol"]
