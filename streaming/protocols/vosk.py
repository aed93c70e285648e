"""The Vosk server protocol (``/vosk``) as a sans-I/O protocol object, for Jigasi, Asterisk ``res_speech_vosk``,
FreeSWITCH ``mod_vosk`` and other Vosk clients.

Text ``{"config": {"sample_rate": 8000.0, "words": true, …}}`` before the first audio sets the stream up (later
configs change nothing, as with Vosk; without one, ``/vosk?sample_rate=16000`` in the URL or Vosk's 8000); binary messages are mono 16-bit PCM; ``{"eof" : 1}`` ends the stream and
``{"reset" : 1}`` ends the current utterance (both as the exact literals Vosk compares, or any JSON equal to
them). Vosk answers in lockstep, and so does this: exactly one reply per audio message, ``{"partial": "…"}`` or,
once an utterance is final, ``{"result": [{"conf", "end", "start", "word"}…], "text": "…"}``; ``reset`` is
answered with the finals up to it, ``eof`` with everything left, then the close (1000). With diarization each word
and the result carry ``speaker`` (``S1``…). A bad message closes 1008, bad audio 1003 (Vosk has no error message).
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import Any, Optional

from streaming import wire
from streaming.config import AudioFormat
from streaming.errors import InvalidMessage
from streaming.protocols.base import Close, Limits, StreamProtocol
from streaming.transcript import relabel

EOF_LITERAL = '{"eof" : 1}'
RESET_LITERAL = '{"reset" : 1}'
SAMPLE_RATE = 8000  # Vosk server's default (VOSK_SAMPLE_RATE)
CONFIDENCE = 1.0  # rechka's models give no confidence; Vosk clients read the field
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "sample_rate": (int, float), "words": (bool,), "diarization": (bool,),
    # accepted, change nothing here: rechka has one model and no phrase lists or alternatives
    "max_alternatives": (int,), "phrase_list": (list,), "model": (str,), "partial_words": (bool,)}


def parse_query(query: dict[str, list[str]]) -> int:
    """The sample rate of a ``/vosk?sample_rate=N`` URL (8000 without one); ``InvalidMessage`` if not a number."""
    values = query.get("sample_rate")
    if not values:
        return SAMPLE_RATE
    try:
        return int(float(values[-1]))
    except ValueError:
        raise InvalidMessage("sample_rate in the URL must be a number of Hz") from None


def _command(text: str) -> Optional[str]:
    """``"eof"``/``"reset"`` for Vosk's literals (or JSON equal to them), else ``None``."""
    if text in (EOF_LITERAL, RESET_LITERAL):
        return "eof" if text == EOF_LITERAL else "reset"
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if obj == {"eof": 1}:
        return "eof"
    if obj == {"reset": 1}:
        return "reset"
    return None


class VoskProtocol(StreamProtocol):
    """One Vosk stream; the session opens with the first audio message (as Vosk creates its recognizer)."""

    def __init__(self, session_id: str, limits: Limits, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(session_id, limits)
        self.sample_rate = sample_rate  # the URL's ?sample_rate= (for clients that send no config), else 8000
        self.words = True
        self.diarization = limits.session.diarization
        self._replies: deque[str] = deque()  # "audio" or "reset", answered in order
        self._finals: deque[wire.Final] = deque()  # out of the session, not yet in a reply
        self._partial = ""

    # ----------------------------------------------------------------------------------------------- in
    def _on_text(self, text: str) -> None:
        command = _command(text)
        if command == "eof":
            if self.session is None:
                self._send(self._result([]))  # no audio: Vosk's empty final result, then the close
            self._end_by_client()
        elif command == "reset":
            if self.session is not None:
                self.session.receive_finalize()
            self._replies.append("reset")
            self._pump()
        elif "config" in text:
            self._configure(text)
        else:
            raise InvalidMessage('expected {"config": {...}}, {"eof" : 1} or {"reset" : 1}')

    def _configure(self, text: str) -> None:
        try:
            config = json.loads(text)["config"]
        except (ValueError, KeyError, TypeError):
            raise InvalidMessage('a config message is {"config": {"sample_rate": 8000.0, ...}}') from None
        if not isinstance(config, dict):
            raise InvalidMessage('a config message is {"config": {"sample_rate": 8000.0, ...}}')
        for name, value in config.items():
            types = _CONFIG_TYPES.get(name)
            if types is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                raise InvalidMessage(f"config field {name!r} has the wrong type")
        if self.session is not None:
            return  # as with Vosk: the recognizer exists, a later config changes nothing
        rate = config.get("sample_rate", self.sample_rate)
        if rate != int(rate):
            raise InvalidMessage("config sample_rate must be a whole number of Hz")
        self.sample_rate = int(rate)
        self.words = config.get("words", self.words)
        self.diarization = config.get("diarization", self.diarization)

    def _on_bytes(self, data: bytes) -> None:
        if self.session is None:
            base = self.limits.session
            self._start(dataclasses.replace(base, audio=AudioFormat("pcm_s16le", self.sample_rate, 1),
                                            multichannel=False, diarization=self.diarization, speaker_turns=False,
                                            settled_speakers=True))  # Vosk has no revisions: finals wait for them
        assert self.session is not None
        self.session.receive_audio(data)
        self._replies.append("audio")
        self._pump()

    # ----------------------------------------------------------------------------------------------- out
    def _pump(self) -> None:
        super()._pump()
        if self.close is not None:
            return
        while self._replies:  # lockstep: answer every waiting message, in order
            if self._replies[0] == "reset":
                if self.session is not None and self.session.finals_outstanding:
                    return  # the reset's finals are still on their way; later replies wait behind it
                self._send(self._result(list(self._finals)))
                self._finals.clear()
                self._partial = ""
            elif self._finals:
                self._send(self._result([self._finals.popleft()]))
            else:
                self._send(json.dumps({"partial": self._partial}, ensure_ascii=False))
            self._replies.popleft()

    def _on_events(self, events: list[wire.ServerEvent]) -> None:
        for event in events:
            if isinstance(event, wire.Partial):
                self._partial = event.text
            elif isinstance(event, wire.Final):
                self._finals.append(event)
                self._partial = ""
            elif isinstance(event, wire.End):
                for _ in self._replies:  # messages not answered yet get what there is, then eof gets the rest
                    self._send(self._result([self._finals.popleft()]) if self._finals
                               else json.dumps({"partial": ""}))
                self._replies.clear()
                self._send(self._result(list(self._finals)), event)
                self._finals.clear()
            elif isinstance(event, wire.SpeakerMerge):  # no Vosk message: finals not sent yet take the kept label
                self._finals = deque(relabel(f, event) for f in self._finals)
            # warnings, speaker turns, revisions and speech starts have no Vosk message

    def _result(self, finals: list[wire.Final]) -> str:
        s = wire.samples_to_seconds
        words = [w for f in finals for w in f.words]
        body: dict[str, Any] = {}
        if self.words:
            items = []
            for w in words:
                item: dict[str, Any] = {"conf": CONFIDENCE, "end": s(w.end), "start": s(w.start), "word": w.word}
                if self.diarization and w.speaker is not None:
                    item["speaker"] = w.speaker
                items.append(item)
            body["result"] = items
        body["text"] = " ".join(f.text for f in finals if f.text)
        speakers = {f.speaker for f in finals if f.speaker is not None}
        if self.diarization and len(speakers) == 1:
            body["speaker"] = speakers.pop()
        return json.dumps(body, ensure_ascii=False)

    def _error(self, code: str, message: str, close_code: int) -> Close:
        return Close(close_code, message)  # Vosk has no error message: the close reason says it
