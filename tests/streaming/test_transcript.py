"""streaming/transcript.py: event building, ordering, ids, speakers, splitting finals at speaker changes."""

from __future__ import annotations

import itertools
from typing import Optional

from streaming import wire
from streaming.transcript import (MAX_UNSETTLED, MAX_WAITING, ChannelTranscript, absolute_words, relabel, revise,
                                  split_by_speaker)
from streaming.work import Word

W = wire.WordTiming


class ScriptedSpeakers:
    """Speaker turns given up front; ``final_until`` is moved by the test."""

    def __init__(self, turns: list[tuple[str, int, int]]) -> None:
        self.turns = turns
        self.final_until = 0

    def speaker_for(self, start: int, end: int) -> Optional[str]:
        overlap: dict[str, int] = {}
        for label, a, b in self.turns:
            n = min(b, end) - max(a, start)
            if n > 0:
                overlap[label] = overlap.get(label, 0) + n
        return max(overlap, key=overlap.__getitem__) if overlap else None


def counter() -> itertools.count:
    return itertools.count()


def test_absolute_words_offset_and_clip() -> None:
    words = (Word("a", 0, 100), Word("b", 150, 400), Word("c", 390, 900))
    out = absolute_words(words, 1_000, lo=1_000, hi=1_500)
    assert out == [W("a", 1_000, 1_100), W("b", 1_150, 1_400), W("c", 1_390, 1_500)]


def test_a_final_without_speakers_uses_the_decoded_text_and_absolute_words() -> None:
    ids = counter()
    t = ChannelTranscript(0, lambda: next(ids))
    u = t.open(1, 100)
    t.close(u, 900)
    assert t.ready() == []  # no text yet
    t.set_final(u, "привет, мир", [W("привет", 150, 400), W("мир", 500, 800)])
    (final,) = t.ready()
    assert final == wire.Final(0, 0, 100, 900, "привет, мир", (W("привет", 150, 400), W("мир", 500, 800)), None)
    assert t.waiting == 0 and t.finals_emitted == 1


def test_partials_of_a_later_utterance_wait_for_the_earlier_final() -> None:
    ids = counter()
    t = ChannelTranscript(0, lambda: next(ids))
    first = t.open(1, 0)
    assert [e.utterance_id for e in t.partial(first, 500, "a")] == [0]
    t.close(first, 1_000)
    second = t.open(2, 2_000)
    assert t.partial(second, 2_500, "b") == []  # held: the first final is not out
    assert t.partial(second, 3_000, "b c") == []
    t.set_final(first, "a", [W("a", 0, 900)])
    events = t.ready()
    assert [type(e) for e in events] == [wire.Final, wire.Partial]
    assert events[0].utterance_id == 0
    assert (events[1].utterance_id, events[1].text, events[1].end) == (1, "b c", 3_000)  # only the latest
    assert [e.utterance_id for e in t.partial(second, 3_500, "b c d")] == [1]


def test_empty_partials_are_not_sent_and_take_no_id() -> None:
    ids = counter()
    t = ChannelTranscript(0, lambda: next(ids))
    u = t.open(1, 0)
    assert t.partial(u, 500, "") == []
    assert t.partial(u, 900, "x")[0].utterance_id == 0


def test_finals_wait_for_final_speakers_and_split_at_speaker_changes() -> None:
    ids = counter()
    speakers = ScriptedSpeakers([("S1", 0, 5_000), ("S2", 5_000, 9_000)])
    t = ChannelTranscript(0, lambda: next(ids), speakers=speakers, settled=True)
    u = t.open(1, 1_000)
    (partial,) = t.partial(u, 4_000, "a b")
    assert partial.speaker == "S1" and partial.utterance_id == 0
    t.close(u, 8_000)
    t.set_final(u, "a b c d", [W("a", 1_200, 2_000), W("b", 2_500, 4_000), W("c", 5_200, 6_000),
                               W("d", 6_500, 7_800)])
    speakers.final_until = 7_999
    assert t.ready() == []  # speakers not final up to the end yet
    speakers.final_until = 8_000
    finals = t.ready()
    assert [(f.utterance_id, f.speaker, f.text, f.start, f.end) for f in finals] == [
        (0, "S1", "a b", 1_000, 4_600), (1, "S2", "c d", 4_600, 8_000)]
    assert all(w.speaker == f.speaker for f in finals for w in f.words)
    nxt = t.open(2, 9_000)
    assert t.partial(nxt, 9_500, "e")[0].utterance_id == 2  # ids stay consecutive after a split
    assert t.finals_emitted == 2


def test_the_end_of_the_stream_releases_finals_without_final_speakers() -> None:
    speakers = ScriptedSpeakers([("S1", 0, 10_000)])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers, settled=True)
    u = t.open(1, 0)
    t.close(u, 5_000)
    t.set_final(u, "a", [W("a", 100, 4_000)])
    assert t.ready() == []
    (final,) = t.ready(ended=True)
    assert final.speaker == "S1" and final.words[0].speaker == "S1"


def test_a_final_without_words_gets_the_utterance_speaker() -> None:
    speakers = ScriptedSpeakers([("S2", 0, 10_000)])
    speakers.final_until = 10_000
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers)
    u = t.open(1, 0)
    t.close(u, 5_000)
    t.set_final(u, "", [])
    (final,) = t.ready()
    assert (final.text, final.words, final.speaker) == ("", (), "S2")


def test_too_many_waiting_utterances_release_the_oldest() -> None:
    speakers = ScriptedSpeakers([])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers, settled=True)
    utterances = []
    for k in range(MAX_WAITING + 1):
        u = t.open(k, k * 1_000)
        t.close(u, k * 1_000 + 500)
        t.set_final(u, f"w{k}", [])
        utterances.append(u)
    (final,) = t.ready()
    assert final.text == "w0" and t.waiting == MAX_WAITING


def test_multichannel_label_goes_on_everything() -> None:
    t = ChannelTranscript(3, itertools.count().__next__, label="ch3")
    u = t.open(1, 0)
    (partial,) = t.partial(u, 500, "a")
    t.close(u, 1_000)
    t.set_final(u, "a", [W("a", 0, 900)])
    (final,) = t.ready()
    assert (partial.channel, partial.speaker, final.channel, final.speaker) == (3, "ch3", 3, "ch3")
    assert final.words[0].speaker == "ch3"


def test_split_by_speaker_attaches_unknown_words_to_their_neighbours() -> None:
    words = [W("a", 0, 1, None), W("b", 1, 2, "S1"), W("c", 2, 3, None), W("d", 3, 4, "S2"), W("e", 4, 5, "S2")]
    groups = split_by_speaker(words)
    assert [[(w.word, w.speaker) for w in g] for g in groups] == [
        [("a", "S1"), ("b", "S1"), ("c", "S1")], [("d", "S2"), ("e", "S2")]]
    assert split_by_speaker([W("a", 0, 1, None)]) == [[W("a", 0, 1, None)]]
    assert split_by_speaker([]) == []


# --------------------------------------------------------------------------------------------- revisions (default)
def _sent_then_settled() -> tuple[ChannelTranscript, ScriptedSpeakers, list[wire.Final]]:
    """An utterance whose final goes out while diarization still says S1 for all of it."""
    speakers = ScriptedSpeakers([("S1", 0, 9_000)])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers)
    u = t.open(1, 1_000)
    t.close(u, 8_000)
    t.set_final(u, "a b c d", [W("a", 1_200, 2_000), W("b", 2_500, 4_000), W("c", 5_200, 6_000),
                               W("d", 6_500, 7_800)])
    finals = t.ready()
    return t, speakers, finals


def test_a_final_goes_out_at_once_with_provisional_speakers_and_one_revision_follows() -> None:
    t, speakers, finals = _sent_then_settled()
    assert [(f.utterance_id, f.speaker, f.text) for f in finals] == [(0, "S1", "a b c d")]
    assert t.waiting == 1  # it may still be revised
    speakers.turns = [("S1", 0, 5_000), ("S2", 5_000, 9_000)]  # diarization changed its mind
    speakers.final_until = 7_999
    assert t.ready() == []  # not settled yet
    speakers.final_until = 8_000
    (revision,) = t.ready()
    assert isinstance(revision, wire.SpeakerRevision)
    assert (revision.utterance_id, revision.channel, revision.speaker) == (0, 0, "S1")
    assert [(w.word, w.start, w.end, w.speaker) for w in revision.words] == [
        ("a", 1_200, 2_000, "S1"), ("b", 2_500, 4_000, "S1"), ("c", 5_200, 6_000, "S2"), ("d", 6_500, 7_800, "S2")]
    assert t.ready() == [] and t.waiting == 0  # at most one revision per final
    assert (t.words_sent, t.words_revised) == (4, 2)
    pieces = revise(finals[0], revision)
    assert [(f.utterance_id, f.speaker, f.text, f.start, f.end) for f in pieces] == [
        (0, "S1", "a b", 1_000, 4_600), (0, "S2", "c d", 4_600, 8_000)]


def test_no_revision_when_the_settled_speakers_agree() -> None:
    t, speakers, finals = _sent_then_settled()
    speakers.final_until = 8_000
    assert t.ready() == [] and t.waiting == 0 and t.words_revised == 0


def test_a_split_final_is_revised_per_sent_part_that_changed() -> None:
    speakers = ScriptedSpeakers([("S1", 0, 5_000), ("S2", 5_000, 9_000)])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers)
    u = t.open(1, 0)
    t.close(u, 8_000)
    t.set_final(u, "a b c", [W("a", 500, 2_000), W("b", 4_200, 4_800), W("c", 6_000, 7_000)])
    finals = t.ready()
    assert [(f.utterance_id, f.text, f.speaker) for f in finals] == [(0, "a b", "S1"), (1, "c", "S2")]
    speakers.turns = [("S1", 0, 4_000), ("S2", 4_000, 9_000)]  # "b" was S2's
    speakers.final_until = 9_000
    (revision,) = t.ready()
    assert revision.utterance_id == 0 and [w.speaker for w in revision.words] == ["S1", "S2"]
    assert [(f.text, f.speaker) for f in revise(finals[0], revision)] == [("a", "S1"), ("b", "S2")]


def test_the_end_of_the_stream_settles_every_sent_final() -> None:
    t, speakers, _ = _sent_then_settled()
    speakers.turns = [("S2", 0, 9_000)]
    (revision,) = t.ready(ended=True)
    assert revision.speaker == "S2" and {w.speaker for w in revision.words} == {"S2"}
    assert t.waiting == 0


def test_a_final_without_words_is_revised_by_its_speaker() -> None:
    speakers = ScriptedSpeakers([("S1", 0, 9_000)])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers)
    u = t.open(1, 0)
    t.close(u, 5_000)
    t.set_final(u, "что-то", [])
    (final,) = t.ready()
    speakers.turns, speakers.final_until = [("S3", 0, 9_000)], 5_000
    (revision,) = t.ready()
    assert (revision.words, revision.speaker) == ((), "S3")
    assert [(f.text, f.speaker) for f in revise(final, revision)] == [("что-то", "S3")]


def test_unsettled_finals_are_bounded() -> None:
    speakers = ScriptedSpeakers([("S1", 0, 1 << 40)])
    t = ChannelTranscript(0, itertools.count().__next__, speakers=speakers)
    for k in range(MAX_UNSETTLED + 5):
        u = t.open(k, k * 1_000)
        t.close(u, k * 1_000 + 500)
        t.set_final(u, f"w{k}", [W(f"w{k}", k * 1_000, k * 1_000 + 400)])
        assert len(t.ready()) == 1  # the final, never held
    assert t.waiting == MAX_UNSETTLED


def test_multichannel_and_undiarized_finals_are_never_held_for_revision() -> None:
    t = ChannelTranscript(0, itertools.count().__next__)
    u = t.open(1, 0)
    t.close(u, 1_000)
    t.set_final(u, "a", [W("a", 0, 900)])
    assert len(t.ready()) == 1 and t.waiting == 0


def test_relabel_applies_a_merge_to_the_final_and_its_words_on_its_channel_only() -> None:
    W = wire.WordTiming
    final = wire.Final(3, 0, 0, 30, "a b c", (W("a", 0, 10, "S7"), W("b", 10, 20, "S2"), W("c", 20, 30, None)), "S7")
    merge = wire.SpeakerMerge(0, "S7", "S2", 100)
    got = relabel(final, merge)
    assert (got.speaker, [w.speaker for w in got.words]) == ("S2", ["S2", "S2", None])
    assert (got.utterance_id, got.text, got.start, got.end) == (3, "a b c", 0, 30)
    assert relabel(final, wire.SpeakerMerge(1, "S7", "S2", 100)) == final  # another channel's labels
