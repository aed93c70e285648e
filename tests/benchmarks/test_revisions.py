"""benchmarks/revisions.py: the stand-in ASR's words and the revised-word count."""

from __future__ import annotations

import numpy as np

from benchmarks.revisions import TiledWords, final_delays, revised_share
from streaming import wire
from streaming.work import AsrKind, AsrRequest

W = wire.WordTiming


def test_tiled_words_cover_the_audio() -> None:
    (result,) = TiledWords(400).run_batch([AsrRequest("s", 1, 0, 0, np.zeros(1_000, np.float32), 0, AsrKind.FINAL)])
    assert [(w.start, w.end) for w in result.words] == [(0, 400), (400, 800), (800, 1_000)]
    assert result.text == "w0 w1 w2"


def test_revised_share_counts_words_whose_speaker_changed() -> None:
    events = [wire.Final(0, 0, 0, 10, "a b", (W("a", 0, 4, "S1"), W("b", 5, 9, "S1")), "S1"),
              wire.Final(1, 0, 10, 20, "c", (W("c", 11, 19, "S2"),), "S2"),
              wire.SpeakerRevision(0, 0, (W("a", 0, 4, "S1"), W("b", 5, 9, "S2")), "S1")]
    share = revised_share(events)
    assert (share["words"], share["revised_words"], share["revisions"]) == (3, 1, 1)
    assert abs(share["revised_share"] - 1 / 3) < 1e-9


def test_a_speaker_merge_is_not_a_revision_of_the_words_it_renames() -> None:
    events = [wire.Final(0, 0, 0, 10, "a b", (W("a", 0, 4, "S7"), W("b", 5, 9, "S7")), "S7"),
              wire.SpeakerMerge(0, "S7", "S2", 10),
              wire.SpeakerRevision(0, 0, (W("a", 0, 4, "S2"), W("b", 5, 9, "S1")), "S2")]
    share = revised_share(events)
    assert (share["words"], share["revised_words"], share["revisions"]) == (2, 1, 1)  # only b changed speaker


def test_final_decodes_come_back_after_the_delay_and_everything_is_flushed() -> None:
    from benchmarks.revisions import drive_with_asr_delay
    from server.offline import run_requests_by_kind
    from streaming.config import SessionConfig
    from streaming.session import Session
    from streaming.work import VadRequest
    from tests.fakes import FakeAsr, FakeVad, pcm16, tone_bursts

    bursts = tone_bursts([(440, 0.8), (660, 0.8)], gaps=1.0, tail=0.2)
    run = run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()})
    config = SessionConfig(interim_results=False, diarization=False)
    audio = pcm16(bursts.audio)
    at: list[int] = []
    prompt = drive_with_asr_delay(Session("a", config), run, audio, 0, emitted_at=at)
    late = drive_with_asr_delay(Session("b", config), run, audio, 16_000 * 10)  # longer than the stream
    assert len(at) == len(prompt) and at == sorted(at)
    first = next(i for i, e in enumerate(prompt) if isinstance(e, wire.Final))
    assert prompt[first].end < at[first] < prompt[first].end + 16_000  # out once the VAD's silence closed it
    finals = [[(e.text, e.start, e.end) for e in events if isinstance(e, wire.Final)] for events in (prompt, late)]
    assert finals[0] == finals[1] and len(finals[0]) == 2
    assert isinstance(late[-1], wire.End)


def test_final_delays_count_the_pieces_of_a_split_final_as_one_utterance() -> None:
    a = wire.Final(0, 0, 16_000, 32_000, "x", speaker="S1")
    b = wire.Final(1, 0, 32_000, 48_000, "y", speaker="S2")  # a's next piece, sent with it
    c = wire.Final(2, 0, 64_000, 80_000, "z", speaker="S1")
    d = wire.Final(3, 0, 96_000, 112_000, "w", speaker="S1")  # flushed by the end of the stream
    delays = final_delays([a, b, wire.Warning("x", "y"), c, d], [56_000, 56_000, 60_000, 88_000, 120_000], 120_000)
    assert delays == [0.5, 0.5]
