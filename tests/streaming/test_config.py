"""streaming/config/: defaults, derived values and validation messages that name the fix."""

from __future__ import annotations

import dataclasses

import pytest

from streaming.config import (AudioFormat, DiarizationOptions, PartialOptions, SessionConfig, VadOptions, ms)


def test_ms_converts_to_samples_at_16k() -> None:
    assert (ms(1_000), ms(32), ms(0.5), ms(0)) == (16_000, 512, 8, 0)


def test_defaults_validate_and_derive() -> None:
    vad = VadOptions()
    assert vad.neg_threshold == pytest.approx(vad.threshold - 0.15)
    assert VadOptions(threshold=0.1).neg_threshold == pytest.approx(0.01)  # never below 0.01
    assert DiarizationOptions(new_speaker_threshold=0.7).update_threshold == 0.7
    cfg = SessionConfig()
    assert cfg.audio == AudioFormat() and cfg.diarization and cfg.interim_results and not cfg.multichannel
    assert cfg.partials.max_window > cfg.partials.left_context + cfg.partials.cadence


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        VadOptions().threshold = 0.9  # type: ignore[misc]


@pytest.mark.parametrize("cls, kwargs, field", [
    (VadOptions, dict(threshold=1.0), "threshold"),
    (VadOptions, dict(min_speech=-1), "min_speech"),
    (VadOptions, dict(speech_pad=-1), "speech_pad"),
    (PartialOptions, dict(left_context=-1), "left_context"),
    (PartialOptions, dict(cadence=ms(500), left_context=ms(3_000), max_window=ms(3_400)), "max_window"),
    (PartialOptions, dict(agreement_tolerance=-1), "agreement_tolerance"),
    (DiarizationOptions, dict(window=ms(100)), "window"),
    (DiarizationOptions, dict(step=ms(50)), "step"),
    (DiarizationOptions, dict(latency=ms(11_000), window=ms(10_000)), "latency"),
    (DiarizationOptions, dict(latency=ms(400), step=ms(500)), "latency"),
    (DiarizationOptions, dict(tau_active=1.0), "tau_active"),
    (DiarizationOptions, dict(max_speakers=33), "max_speakers"),
    (DiarizationOptions, dict(binarization="median"), "binarization"),
    (SessionConfig, dict(max_pending_audio=ms(500)), "max_pending_audio"),
])
def test_bad_values_name_the_field(cls: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field}"):
        cls(**kwargs)


def test_speaker_count_hints_are_validated_and_combined() -> None:
    base = DiarizationOptions()
    assert base.with_speaker_counts() == base
    hinted = base.with_speaker_counts(min_speakers=2, max_speakers=4)
    assert (hinted.min_speakers, hinted.max_speakers) == (2, 4)
    assert hinted.with_speaker_counts(num_speakers=3).max_speakers == 3
    assert base.with_speaker_counts(num_speakers=3, min_speakers=3).min_speakers == 3  # consistent: fine
    for kwargs, message in ((dict(min_speakers=0), "'min_speakers' must be between 1 and 32"),
                            (dict(num_speakers=33), "'num_speakers' must be between 1 and 32"),
                            (dict(min_speakers=3, max_speakers=2), "must not exceed 'max_speakers'"),
                            (dict(num_speakers=2, max_speakers=3), "contradicts")):
        with pytest.raises(ValueError, match=message):
            base.with_speaker_counts(**kwargs)
    with pytest.raises(ValueError, match="DiarizationOptions.min_speakers"):
        DiarizationOptions(min_speakers=3, max_speakers=2)


def test_at_step_scales_the_counts_of_embeddings_and_keeps_the_latency_valid() -> None:
    base = DiarizationOptions()
    slower = base.at_step(2 * base.step)
    assert slower.step == 2 * base.step and slower.latency == base.latency  # 1.5 s >= 1 s: kept
    assert (slower.borderline_count, slower.merge_count) == (base.borderline_count // 2, base.merge_count // 2)
    assert base.at_step(base.step) == base
    assert slower.at_step(base.step) == base  # back again: the counts are restored
    longest = base.at_step(base.window)
    assert longest.latency == base.window and longest.new_speaker_windows == 1  # window / step = 1
    for step in (ms(50), base.window + 1):
        with pytest.raises(ValueError, match="diarization step must be between 0.1 s and the window"):
            base.at_step(step)
