"""Live caption state built from server events, across reconnects (sans-I/O: no sockets, no clock).

:class:`LiveCaptions` keeps the finals, the current partial of each channel, speaker turns and the labels seen.
A stream that reconnects starts a new server session whose times begin at 0 again; :meth:`LiveCaptions.new_session`
records the absolute sample where that session's audio begins and every later event is shifted by it, so the
transcript keeps one time line. Speaker labels are per server session: after a reconnect ``S1`` may be a different
person (the server cannot know); :attr:`LiveCaptions.sessions` says how many sessions the transcript spans. A
``speaker_revision`` re-splits one final; a ``speaker_merge`` relabels every final, word, partial and turn of its
session and channel that carries the merged label.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from streaming import wire

from streaming.transcript import relabel, revise

from clients.formats import merge_turns, speaker_of, turns_from_finals

__all__ = ["LiveCaptions"]


def _shift_words(words: tuple[wire.WordTiming, ...], offset: int) -> tuple[wire.WordTiming, ...]:
    return tuple(dataclasses.replace(w, start=w.start + offset, end=w.end + offset) for w in words)


class LiveCaptions:
    """What the user sees: finals, the partial per channel, speakers, warnings, errors, and progress counters.

    acknowledged: absolute sample up to which the transcript is final (the end of the newest final, or of all the
        audio a session's ``end`` reports); a client that reconnects resends audio from here.
    heard_until: absolute end of the newest partial or final.
    lag: samples of audio sent but not yet covered when the newest partial/final arrived (``None`` before one).
    """

    def __init__(self) -> None:
        self.finals: list[wire.Final] = []
        self.partials: dict[int, wire.Partial] = {}
        self.turns: list[wire.Turn] = []
        self.speakers: list[str] = []
        self.warnings: list[wire.Warning] = []
        self.errors: list[wire.Error] = []
        self.ready: Optional[wire.Ready] = None
        self.end: Optional[wire.End] = None
        self.offset = 0
        self.sessions = 0
        self.revisions = 0  # revisions applied
        self.merges = 0  # speaker merges applied
        self._session_first = 0  # index in ``finals`` of this session's first final
        self._session_turns = 0  # index in ``turns`` of this session's first turn
        self.acknowledged = 0
        self.heard_until = 0
        self.lag: Optional[int] = None

    def new_session(self, offset: int) -> None:
        """A new server session begins; its sample 0 is absolute sample ``offset`` (≤ ``acknowledged`` is wasteful,
        > ``acknowledged`` loses audio, both allowed). Open partials are dropped: the new session redoes them."""
        if offset < 0:
            raise ValueError("session offset must be >= 0 samples")
        self.offset = offset
        self.sessions += 1
        self._session_first = len(self.finals)
        self._session_turns = len(self.turns)
        self.partials.clear()
        self.ready = None
        self.end = None

    def _see_speaker(self, label: Optional[str]) -> None:
        if label and label not in self.speakers:
            self.speakers.append(label)

    def receive(self, event: wire.ServerEvent, audio_sent: int = 0) -> wire.ServerEvent:
        """Apply one decoded event; return it with times made absolute. ``audio_sent`` (absolute samples sent so
        far) feeds :attr:`lag`."""
        off = self.offset
        if isinstance(event, wire.Partial):
            event = dataclasses.replace(event, start=event.start + off, end=event.end + off)
            self.partials[event.channel] = event
            self._see_speaker(event.speaker)
            self._progress(event.end, audio_sent)
        elif isinstance(event, wire.Final):
            event = dataclasses.replace(event, start=event.start + off, end=event.end + off,
                                        words=_shift_words(event.words, off))
            current = self.partials.get(event.channel)
            if current is not None and current.utterance_id == event.utterance_id:
                del self.partials[event.channel]
            if event.text.strip():
                self.finals.append(event)
            self._see_speaker(speaker_of(event))
            for w in event.words:
                self._see_speaker(w.speaker)
            self.acknowledged = max(self.acknowledged, event.end)
            self._progress(event.end, audio_sent)
        elif isinstance(event, wire.SpeakerRevision):
            event = dataclasses.replace(event, words=_shift_words(event.words, off))
            self._revise(event)
        elif isinstance(event, wire.SpeakerMerge):
            event = dataclasses.replace(event, at=event.at + off)
            self._merge(event)
        elif isinstance(event, wire.SpeakerTurns):
            shifted = tuple(dataclasses.replace(t, start=t.start + off, end=t.end + off) for t in event.turns)
            event = wire.SpeakerTurns(shifted)
            self.turns.extend(shifted)
            for t in shifted:
                self._see_speaker(t.speaker)
        elif isinstance(event, wire.Warning):
            self.warnings.append(event)
        elif isinstance(event, wire.Error):
            self.errors.append(event)
        elif isinstance(event, wire.Ready):
            self.ready = event
        elif isinstance(event, wire.End):
            event = dataclasses.replace(event, audio_samples=event.audio_samples + off,
                                        speakers=tuple(self.speakers) or event.speakers)
            self.end = event
            self.acknowledged = max(self.acknowledged, event.audio_samples)  # the server flushed all it had
            self.partials.clear()
        return event

    def _revise(self, revision: wire.SpeakerRevision) -> None:
        """Replace the final ``revision`` names (this session's, newest first) by its re-split parts."""
        for i in range(len(self.finals) - 1, self._session_first - 1, -1):
            final = self.finals[i]
            if final.utterance_id == revision.utterance_id and final.channel == revision.channel:
                self.finals[i:i + 1] = revise(final, revision)
                self.revisions += 1
                for w in revision.words:
                    self._see_speaker(w.speaker)
                self._see_speaker(revision.speaker)
                return

    def _merge(self, merge: wire.SpeakerMerge) -> None:
        """Relabel this session's finals, partials and turns of the merge's channel; the merged label leaves
        :attr:`speakers` unless an earlier session still uses it."""
        first = self._session_first
        self.finals[first:] = [relabel(f, merge) for f in self.finals[first:]]
        self.partials = {c: dataclasses.replace(p, speaker=merge.relabel(p.speaker)) if c == merge.channel else p
                         for c, p in self.partials.items()}
        self.turns[self._session_turns:] = [merge.relabel_turn(t) for t in self.turns[self._session_turns:]]
        self.merges += 1
        used = ({speaker_of(f) for f in self.finals} | {w.speaker for f in self.finals for w in f.words}
                | {t.speaker for t in self.turns} | {p.speaker for p in self.partials.values()})
        if merge.merged in self.speakers and merge.merged not in used:
            self.speakers.remove(merge.merged)
        self._see_speaker(merge.into)

    def revised(self, revision: wire.SpeakerRevision) -> list[wire.Final]:
        """The finals of the utterance a (received, absolute-time) revision named, as they are now."""
        return [f for f in self.finals[self._session_first:]
                if f.utterance_id == revision.utterance_id and f.channel == revision.channel]

    def _progress(self, end: int, audio_sent: int) -> None:
        self.heard_until = max(self.heard_until, end)
        if audio_sent:
            self.lag = max(0, audio_sent - end)

    def speaker_turns(self) -> list[wire.Turn]:
        """The server's ``speaker_turns`` if it sent any, else turns derived from the finals; merged and sorted."""
        return merge_turns(self.turns) if self.turns else turns_from_finals(self.finals)

