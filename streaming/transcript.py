"""Words and speakers → ``wire.Partial`` / ``wire.Final`` events of one channel, in order, with utterance ids.

:class:`ChannelTranscript` keeps the channel's utterances from VAD open to final. Ids are allocated from a
session-wide counter when an utterance's first event is emitted, and an utterance emits nothing until every earlier
utterance of its channel has its final out. So, per channel, a client sees at most one utterance with partials at a
time, ids increase in emission order, and a final split at speaker changes takes consecutive ids.

Speakers come from a :class:`SpeakerSource` (the channel's ``StreamingDiarizer``) or a fixed label (multichannel
``ch{c}``, or ``None`` without diarization). With a source, each word gets ``speaker_for(word)`` and the final is
split at word boundaries where the speaker changes. By default a final goes out as soon as its words are back, with
the speakers diarization holds for them then (provisional past ``final_until``); once ``final_until`` reaches the
utterance's end (or the stream ended) its words are labelled again, and every final sent for it whose labels
changed gets one :class:`~streaming.wire.SpeakerRevision` (:func:`revise` applies it). With ``settled=True`` a
final instead waits for ``final_until`` and is never revised. Partials carry the provisional speaker of the
utterance so far. When diarization merges two speakers (a :class:`~streaming.wire.SpeakerMerge`, sent by the
session), :meth:`ChannelTranscript.merge` relabels the finals kept for revision as clients do (:func:`relabel`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol, Sequence

from streaming import wire
from streaming.work import Word

MAX_WAITING = 32  # utterances held for speakers at most; beyond, the oldest goes out with provisional speakers
MAX_UNSETTLED = 64  # sent utterances kept for a revision at most; beyond, the oldest is never revised


class SpeakerSource(Protocol):
    """What the transcript needs from ``streaming.diarization.StreamingDiarizer``."""

    final_until: int

    def speaker_for(self, start: int, end: int) -> Optional[str]: ...


def absolute_words(words: Sequence[Word], offset: int, lo: int, hi: int) -> list[wire.WordTiming]:
    """Request-relative words → absolute :class:`wire.WordTiming`, clipped to ``[lo, hi]``."""
    out = []
    for w in words:
        start = min(max(w.start + offset, lo), hi)
        out.append(wire.WordTiming(w.text, start, min(max(w.end + offset, start), hi)))
    return out


@dataclass(eq=False)
class Utterance:
    """One VAD utterance of a channel. ``key`` is the session's internal number (also ``AsrRequest.utterance_id``);
    ``utterance_id`` is the wire id, set when its first event goes out."""

    key: int
    start: int
    end: Optional[int] = None  # None while open
    utterance_id: Optional[int] = None
    final_text: Optional[str] = None
    final_words: Optional[list[wire.WordTiming]] = None
    held_partial: Optional[tuple[int, str]] = None  # (end, text) computed while an earlier final was pending

    @property
    def closed(self) -> bool:
        return self.end is not None


class ChannelTranscript:
    """The utterances of one channel awaiting events; see the module docstring for the ordering rules."""

    def __init__(self, channel: int, allocate_id: Callable[[], int], label: Optional[str] = None,
                 speakers: Optional[SpeakerSource] = None, settled: bool = False) -> None:
        self.channel = channel
        self.label = label
        self.speakers = speakers
        self.settled = settled
        self._allocate_id = allocate_id
        self._queue: deque[Utterance] = deque()
        self._unsettled: deque[tuple[int, list[wire.Final]]] = deque()  # (utterance end, its finals as sent)
        self.finals_emitted = 0
        self.words_sent = 0  # words in finals
        self.words_revised = 0  # words whose speaker a revision changed

    @property
    def waiting(self) -> int:
        """Utterances whose final is not out yet (the open one included) or that may still be revised."""
        return len(self._queue) + len(self._unsettled)

    @property
    def closed_waiting(self) -> bool:
        """An ended utterance whose final is not out yet."""
        return any(u.closed for u in self._queue)

    def open(self, key: int, start: int) -> Utterance:
        utterance = Utterance(key, start)
        self._queue.append(utterance)
        return utterance

    def close(self, utterance: Utterance, end: int) -> None:
        utterance.end = end

    def set_final(self, utterance: Utterance, text: str, words: list[wire.WordTiming]) -> None:
        utterance.final_text = text
        utterance.final_words = words

    def partial(self, utterance: Utterance, end: int, text: str) -> list[wire.ServerEvent]:
        """A partial of ``utterance`` up to ``end``: out now if it leads the channel, else held for later."""
        if not text or utterance.closed:
            return []
        if not self._queue or self._queue[0] is not utterance:
            utterance.held_partial = (end, text)
            return []
        return [self._partial_event(utterance, end, text)]

    def ready(self, ended: bool = False) -> list[wire.ServerEvent]:
        """Finals now due, in order, then the new leading utterance's held partial. ``ended``: no more speaker
        information will come, emit every final that has its text."""
        events: list[wire.ServerEvent] = []
        while self._queue:
            head = self._queue[0]
            if head.final_text is None:
                if head.held_partial is not None and not head.closed:
                    events.append(self._partial_event(head, *head.held_partial))
                head.held_partial = None
                break
            assert head.end is not None
            if self.settled and not (self._speakers_final(head.end, ended) or len(self._queue) > MAX_WAITING):
                break
            self._queue.popleft()
            finals = self._finals(head)
            events.extend(finals)
            self.words_sent += sum(len(f.words) for f in finals)
            if self.speakers is not None and not self.settled and not self._speakers_final(head.end, ended):
                self._unsettled.append((head.end, finals))
        while self._unsettled and (self._speakers_final(self._unsettled[0][0], ended)
                                   or len(self._unsettled) > MAX_UNSETTLED):
            end, finals = self._unsettled.popleft()
            if self._speakers_final(end, ended):
                events.extend(self._revisions(finals))
        return events

    def merge(self, merge: wire.SpeakerMerge) -> None:
        """Diarization merged two speakers: the finals kept for a revision read as the client now has them (so a
        revision compares settled speakers with the relabelled ones)."""
        self._unsettled = deque((end, [relabel(f, merge) for f in finals]) for end, finals in self._unsettled)

    # ------------------------------------------------------------------------------------------------ internals
    def _speakers_final(self, end: int, ended: bool) -> bool:
        return self.speakers is None or ended or self.speakers.final_until >= end

    def _labelled(self, words: Sequence[wire.WordTiming]) -> list[wire.WordTiming]:
        """``words`` with the speakers diarization holds for them now; unheard words take a neighbour's."""
        assert self.speakers is not None
        labelled = [wire.WordTiming(w.word, w.start, w.end, self.speakers.speaker_for(w.start, w.end)) for w in words]
        return [w for group in split_by_speaker(labelled) for w in group]

    def _revisions(self, finals: list[wire.Final]) -> list[wire.SpeakerRevision]:
        """One revision per final of one utterance whose settled speakers differ from those sent."""
        assert self.speakers is not None
        settled = iter(self._labelled([w for f in finals for w in f.words]))
        out = []
        for final in finals:
            words = tuple(next(settled) for _ in final.words)
            speaker = words[0].speaker if words else self.speakers.speaker_for(final.start, final.end)
            changed = sum(a.speaker != b.speaker for a, b in zip(words, final.words))
            if changed or (not words and speaker != final.speaker):
                self.words_revised += changed
                out.append(wire.SpeakerRevision(final.utterance_id, final.channel, words, speaker))
        return out

    def _id_of(self, utterance: Utterance) -> int:
        if utterance.utterance_id is None:
            utterance.utterance_id = self._allocate_id()
        return utterance.utterance_id

    def _partial_event(self, utterance: Utterance, end: int, text: str) -> wire.Partial:
        speaker = self.label
        if self.speakers is not None:
            speaker = self.speakers.speaker_for(utterance.start, max(end, utterance.start + 1))
        return wire.Partial(self._id_of(utterance), self.channel, utterance.start, end, text, speaker)

    def _finals(self, utterance: Utterance) -> list[wire.Final]:
        assert utterance.end is not None and utterance.final_text is not None
        words = utterance.final_words or []
        if self.speakers is None:
            labelled = [wire.WordTiming(w.word, w.start, w.end, self.label) for w in words]
            self.finals_emitted += 1
            return [wire.Final(self._id_of(utterance), self.channel, utterance.start, utterance.end,
                               utterance.final_text, tuple(labelled), self.label)]
        groups = split_by_speaker(self._labelled(words))
        if len(groups) <= 1:
            speaker = groups[0][0].speaker if groups else self.speakers.speaker_for(utterance.start, utterance.end)
            self.finals_emitted += 1
            return [wire.Final(self._id_of(utterance), self.channel, utterance.start, utterance.end,
                               utterance.final_text, tuple(groups[0]) if groups else (), speaker)]
        finals = []
        for i, (group, (a, b)) in enumerate(zip(groups, _bounds(groups, utterance.start, utterance.end))):
            uid = self._id_of(utterance) if i == 0 else self._allocate_id()
            finals.append(wire.Final(uid, self.channel, a, b, " ".join(w.word for w in group), tuple(group),
                                     group[0].speaker))
        self.finals_emitted += len(finals)
        return finals


def _bounds(groups: Sequence[Sequence[wire.WordTiming]], start: int, end: int) -> list[tuple[int, int]]:
    """The span of each group of a split final: cut halfway between neighbouring groups, the outer ends kept."""
    cuts = [start] + [(a[-1].end + b[0].start) // 2 for a, b in zip(groups, groups[1:])] + [end]
    return list(zip(cuts, cuts[1:]))


def revise(final: wire.Final, revision: wire.SpeakerRevision) -> list[wire.Final]:
    """A final as its revision says: its words with their settled speakers, split where the speaker changes into
    finals that keep the utterance id (text = the group's words joined by spaces; cut halfway between groups).
    A final without words only takes the revision's speaker."""
    if not final.words or len(revision.words) != len(final.words):
        return [wire.Final(final.utterance_id, final.channel, final.start, final.end, final.text, final.words,
                           revision.speaker)]
    groups = split_by_speaker(revision.words)
    if len(groups) == 1:
        return [wire.Final(final.utterance_id, final.channel, final.start, final.end, final.text, tuple(groups[0]),
                           groups[0][0].speaker)]
    return [wire.Final(final.utterance_id, final.channel, a, b, " ".join(w.word for w in group), tuple(group),
                       group[0].speaker) for group, (a, b) in zip(groups, _bounds(groups, final.start, final.end))]


def relabel(final: wire.Final, merge: wire.SpeakerMerge) -> wire.Final:
    """A final as a :class:`~streaming.wire.SpeakerMerge` says: the merged label, on the final
    and on each word, becomes the kept one; everything else stays. Merges of another channel change nothing."""
    if final.channel != merge.channel:
        return final
    words = tuple(replace(w, speaker=merge.relabel(w.speaker)) for w in final.words)
    return replace(final, speaker=merge.relabel(final.speaker), words=words)


def split_by_speaker(words: Sequence[wire.WordTiming]) -> list[list[wire.WordTiming]]:
    """Consecutive words of one speaker, grouped. A word nobody was heard in (speaker ``None``) joins the group
    before it (the one after it at the start), taking that group's speaker."""
    known = [w.speaker for w in words if w.speaker is not None]
    if not known:
        return [list(words)] if words else []
    groups: list[list[wire.WordTiming]] = []
    current = known[0]
    for w in words:
        speaker = w.speaker if w.speaker is not None else current
        w = wire.WordTiming(w.word, w.start, w.end, speaker)
        if groups and groups[-1][0].speaker == speaker:
            groups[-1].append(w)
        else:
            groups.append([w])
        current = speaker
    return groups
