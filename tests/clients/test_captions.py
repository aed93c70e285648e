"""clients.captions.LiveCaptions: partials replaced by finals, one time line across sessions, progress counters."""

from __future__ import annotations

import pytest

from streaming import wire

from clients import formats
from clients.captions import LiveCaptions

S = wire.SAMPLE_RATE


def test_final_replaces_the_partial_of_its_utterance_only() -> None:
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Partial(1, 0, 0, S, "один", "S1"))
    c.receive(wire.Partial(7, 1, 0, S, "два", None))
    c.receive(wire.Final(1, 0, 0, S, "один", (), "S1"))
    assert list(c.partials) == [1] and c.partials[1].text == "два"
    assert [f.text for f in c.finals] == ["один"]


def test_empty_finals_close_the_partial_but_are_not_kept() -> None:
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Partial(1, 0, 0, S, "э", "S1"))
    c.receive(wire.Final(1, 0, 0, S, "", (), None))
    assert not c.partials and not c.finals and c.acknowledged == S


def test_new_session_shifts_times_and_keeps_history() -> None:
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Final(0, 0, 0, 2 * S, "один", (wire.WordTiming("один", 0, 2 * S, "S1"),), "S1"))
    c.receive(wire.Partial(1, 0, 2 * S, 3 * S, "два", "S1"))
    c.new_session(2 * S)
    assert not c.partials and c.sessions == 2
    shifted = c.receive(wire.Final(0, 0, 0, S, "два", (wire.WordTiming("два", 0, S, "S2"),), "S2"))
    assert isinstance(shifted, wire.Final)
    assert (shifted.start, shifted.end, shifted.words[0].start) == (2 * S, 3 * S, 2 * S)
    turns = c.receive(wire.SpeakerTurns((wire.Turn("S2", 0, S),)))
    assert turns == wire.SpeakerTurns((wire.Turn("S2", 2 * S, 3 * S),))
    end = c.receive(wire.End(S, 1, ("S2",)))
    assert isinstance(end, wire.End) and end.audio_samples == 3 * S
    assert end.speakers == ("S1", "S2")  # every label of the whole transcript, in order of appearance
    assert [f.text for f in c.finals] == ["один", "два"] and c.acknowledged == 3 * S


def test_lag_is_audio_sent_beyond_the_newest_result() -> None:
    c = LiveCaptions()
    c.new_session(0)
    assert c.lag is None
    c.receive(wire.Partial(0, 0, 0, S, "x"), audio_sent=3 * S)
    assert c.lag == 2 * S and c.heard_until == S
    c.receive(wire.Final(0, 0, 0, 2 * S, "x"), audio_sent=2 * S)
    assert c.lag == 0


def test_speaker_turns_prefer_the_servers_turns() -> None:
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Final(0, 0, 0, S, "x", (), "S1"))
    assert c.speaker_turns() == [wire.Turn("S1", 0, S)]  # derived from finals
    c.receive(wire.SpeakerTurns((wire.Turn("S2", 0, S // 2), wire.Turn("S2", S // 2 + 10, S))))
    assert c.speaker_turns() == [wire.Turn("S2", 0, S)]  # the server's, merged


def test_errors_warnings_and_ready_are_recorded() -> None:
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Ready("id", {}, {}))
    c.receive(wire.Warning("overloaded", "slow"))
    c.receive(wire.Error("internal", "boom"))
    assert c.ready is not None and c.ready.session_id == "id"
    assert [w.code for w in c.warnings] == ["overloaded"] and [e.code for e in c.errors] == ["internal"]
    with pytest.raises(ValueError):
        c.new_session(-1)


def test_a_speaker_revision_re_splits_its_final_in_this_session_only() -> None:
    W = wire.WordTiming
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Final(0, 0, 0, 4 * S, "a b", (W("a", 0, S, "S1"), W("b", 2 * S, 3 * S, "S1")), "S1"))
    c.new_session(4 * S)  # a reconnect: ids start over
    c.receive(wire.Final(0, 0, 0, 4 * S, "x y", (W("x", 0, S, "S1"), W("y", 2 * S, 3 * S, "S1")), "S1"))
    c.receive(wire.SpeakerRevision(0, 0, (W("x", 0, S, "S1"), W("y", 2 * S, 3 * S, "S2")), "S1"))
    assert [(f.utterance_id, f.text, f.speaker, f.start, f.end) for f in c.finals] == [
        (0, "a b", "S1", 0, 4 * S), (0, "x", "S1", 4 * S, 4 * S + 3 * S // 2), (0, "y", "S2", 4 * S + 3 * S // 2, 8 * S)]
    assert c.revisions == 1 and c.speakers == ["S1", "S2"]
    assert [w.start for f in c.finals[1:] for w in f.words] == [4 * S, 6 * S]  # revision times shifted too
    assert formats.to_txt(c.finals).splitlines()[1:] == [
        "[00:00:04.000 - 00:00:05.500] S1: x", "[00:00:05.500 - 00:00:08.000] S2: y"]
    assert [(t.speaker, t.start) for t in c.speaker_turns()][-2:] == [("S1", 4 * S), ("S2", 6 * S)]


def test_a_speaker_merge_relabels_this_sessions_finals_words_partials_and_turns() -> None:
    W = wire.WordTiming
    c = LiveCaptions()
    c.new_session(0)
    c.receive(wire.Final(0, 0, 0, S, "old", (W("old", 0, S, "S2"),), "S2"))
    c.new_session(2 * S)  # a reconnect: this session's S2 may be somebody else
    c.receive(wire.Final(0, 0, 0, 2 * S, "a b", (W("a", 0, S, "S1"), W("b", S, 2 * S, "S2")), "S1"))
    c.receive(wire.Final(1, 0, 2 * S, 3 * S, "c", (W("c", 2 * S, 3 * S, "S2"),), "S2"))
    c.receive(wire.Final(2, 1, 2 * S, 3 * S, "other channel", (), "S2"))
    c.receive(wire.SpeakerTurns((wire.Turn("S2", 2 * S, 3 * S), wire.Turn("S3", 3 * S, 4 * S))))
    c.receive(wire.Partial(3, 0, 3 * S, 4 * S, "d", "S2"))
    merge = c.receive(wire.SpeakerMerge(0, "S2", "S1", 3 * S))
    assert merge.at == 5 * S and c.merges == 1  # times made absolute like every event's
    assert [(f.text, f.speaker, [w.speaker for w in f.words]) for f in c.finals] == [
        ("old", "S2", ["S2"]), ("a b", "S1", ["S1", "S1"]), ("c", "S1", ["S1"]), ("other channel", "S2", [])]
    assert [t.speaker for t in c.turns] == ["S1", "S3"] and c.partials[0].speaker == "S1"
    assert c.speakers == ["S2", "S1", "S3"]  # S2 stays: the first session and channel 1 still show it
    c.receive(wire.SpeakerMerge(0, "S3", "S1", 4 * S))  # merges chain: S3 too is S1 now
    assert [t.speaker for t in c.turns] == ["S1", "S1"] and c.speakers == ["S2", "S1"]
    assert [(t.speaker, t.start, t.end) for t in c.speaker_turns()] == [("S1", 4 * S, 6 * S)]
