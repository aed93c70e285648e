"""benchmarks.long_replay: option overrides and the tracker trace (the replay itself needs the real models)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.long_replay import TrackerTrace, with_overrides
from streaming.config import DiarizationOptions, ms
from streaming.speakers import SpeakerTracker


def test_overrides_parse_json_values_and_name_unknown_fields() -> None:
    options = with_overrides(DiarizationOptions(), ["new_speaker_threshold=0.3", "max_speakers=null",
                                                    "new_speaker_windows=3"])
    assert options.new_speaker_threshold == 0.3 and options.max_speakers is None and options.new_speaker_windows == 3
    assert options.update_threshold == DiarizationOptions().update_threshold  # the rest is untouched
    with pytest.raises(ValueError, match="no_such_field"):
        with_overrides(DiarizationOptions(), ["no_such_field=1"])
    with pytest.raises(ValueError, match="new_speaker_threshold"):  # the options' own validation still runs
        with_overrides(DiarizationOptions(), ["new_speaker_threshold=5"])


def test_the_trace_records_distances_before_each_assignment_and_its_result() -> None:
    tracker = SpeakerTracker(DiarizationOptions(new_speaker_windows=1))
    trace = TrackerTrace(tracker)
    a, b = np.eye(4)[0], np.eye(4)[1]
    assert tracker.assign([a], at=ms(1_000)) == [0]
    assert tracker.assign([a, b], at=ms(2_000)) == [0, 1]
    assert [c["at_s"] for c in trace.calls] == [1.0, 2.0]
    assert trace.calls[0]["distances"] == [[]] and trace.calls[0]["result"] == [0]
    assert trace.calls[1]["distances"] == [[0.0], [1.0]]  # b was 1.0 from S1 before it became S2
    assert trace.calls[1]["promoted"] == [(1, 1)]
