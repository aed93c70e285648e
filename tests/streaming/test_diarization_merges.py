"""StreamingDiarizer speaker merges (``pop_merges``): one voice that founded two labels ends with one, turns final
before the merge are relabelled by the ``SpeakerMerge`` and none after it carries the merged label.

The fake embedding (``spread_voice``) gives tone 1 a vector 0.4 (cosine) from tone 0's: beyond
``new_speaker_threshold`` (a second label is founded) yet within a ``merge_distance`` of 0.5 — one widely spread
voice, as in the hour-long check.
"""

from __future__ import annotations

import dataclasses
import itertools

from streaming.config import DiarizationOptions, ms
from streaming.diarization import StreamingDiarizer
from server.offline import drive_diarizer
from tests.fakes_diarization import (SPREAD_MERGE, SPREAD_VOICE, SPREAD_VOICE_LENGTH, ArrayBuffer, FakeSegmentation,
                                     Speech, run_fakes, spread_voice, stream, synthesize)

OPTIONS = dataclasses.replace(DiarizationOptions(), **SPREAD_MERGE)


def make() -> StreamingDiarizer:
    seq = itertools.count()
    return StreamingDiarizer(OPTIONS, "session", 0, lambda: next(seq))


def run(turns: list[Speech], total: int) -> tuple[StreamingDiarizer, list[tuple[str, object]]]:
    """Stream with the fakes; the log holds ("turn", Turn) and ("merge", SpeakerMerge) in the order popped (merges
    first, as the session sends them)."""
    diarizer = make()
    log: list[tuple[str, object]] = []

    def pop(_: object = None) -> None:
        log.extend(("merge", m) for m in diarizer.pop_merges())
        log.extend(("turn", t) for t in diarizer.pop_final_turns())

    stream(diarizer, synthesize(turns, total), run_fakes(FakeSegmentation(), spread_voice()), on_chunk=pop)
    pop()
    return diarizer, log


def test_a_phantom_whose_turns_were_final_is_merged_and_relabelled_everywhere() -> None:
    diarizer, log = run(list(SPREAD_VOICE), SPREAD_VOICE_LENGTH)
    merges = [m for kind, m in log if kind == "merge"]
    assert [(m.channel, m.merged, m.into) for m in merges] == [(0, "S2", "S1")]
    first = next(i for i, (kind, _) in enumerate(log) if kind == "merge")
    before = [t for kind, t in log[:first] if kind == "turn"]
    assert [t.speaker for t in before] == ["S1", "S2"]  # S2's turn went out before the merge ...
    assert merges[0].at > before[-1].end
    assert all(t.speaker == "S1" for kind, t in log[first:] if kind == "turn")  # ... and no turn after it is S2
    assert diarizer.speakers == ("S1",) and diarizer.tracker.merged == {1: 0}
    assert diarizer.speaker_for(ms(7000), ms(11000)) == "S1"  # what speaker_for reads is relabelled too
    assert diarizer.pop_merges() == []  # popped once


def test_a_merge_while_the_phantom_talks_hands_its_open_run_to_the_kept_speaker() -> None:
    diarizer, log = run([Speech(0, ms(500), ms(12000)), Speech(1, ms(12500), ms(20000))], ms(22000))
    merges = [m for kind, m in log if kind == "merge"]
    assert merges and all(m.into == "S1" for m in merges)
    retired: set[str] = set()
    turns = []
    for kind, item in log:
        if kind == "merge":
            retired.add(item.merged)  # type: ignore[attr-defined]
        else:
            assert item.speaker not in retired  # type: ignore[attr-defined]
            turns.append(item)
    assert {t.speaker for t in turns} == {"S1"} and diarizer.speakers == ("S1",)
    covered = sum(min(t.end, ms(20000)) - max(t.start, ms(12500)) for t in turns if t.end > ms(12500))
    assert covered >= 0.95 * ms(7500)  # the second sound is S1's throughout: nothing lost at the merge


def test_drive_diarizer_returns_turns_with_the_merges_applied() -> None:
    audio = synthesize(SPREAD_VOICE, SPREAD_VOICE_LENGTH)
    turns = drive_diarizer(make(), ArrayBuffer(), audio, run_fakes(FakeSegmentation(), spread_voice()), ms(250))
    assert {t.speaker for t in turns} == {"S1"}
    assert any(t.start <= ms(7000) and t.end >= ms(11000) for t in turns)  # the phantom's turn, relabelled
