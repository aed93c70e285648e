"""benchmarks/der.py's rechka variants: one options set per (latency, step), named so that old tables keep their
names at the default step, a latency below a step skipped (the diarizer refuses it)."""

from __future__ import annotations

import pytest

from benchmarks.der import rechka_base, rechka_variants
from streaming.config import SAMPLE_RATE, DiarizationOptions


def test_steps_other_than_the_default_are_named_and_a_latency_below_a_step_is_skipped() -> None:
    base = DiarizationOptions()
    default, other = base.step / SAMPLE_RATE, 2 * base.step / SAMPLE_RATE
    variants, skipped = rechka_variants(base, [default, 1.5 * other, 9.0], [default, other])
    named = dict(variants)
    assert list(named) == [f"{default:g}s", f"{1.5 * other:g}s", f"{1.5 * other:g}s/step{other:g}s", "9s",
                           f"9s/step{other:g}s"]
    assert skipped == [f"{default:g}s/step{other:g}s"]
    assert named[f"{1.5 * other:g}s"].step == base.step
    assert named[f"{1.5 * other:g}s/step{other:g}s"].step == 2 * base.step
    assert named[f"{1.5 * other:g}s/step{other:g}s"].latency == int(1.5 * other * SAMPLE_RATE)
    assert named["9s"].latency == named[f"9s/step{other:g}s"].latency == base.window  # capped at the window


def test_without_steps_the_base_step_is_kept() -> None:
    variants, skipped = rechka_variants(DiarizationOptions(), [1.5])
    assert [n for n, _ in variants] == ["1.5s"] and not skipped
    with pytest.raises(ValueError):  # what the skip avoids: the diarizer refuses a latency below its step
        DiarizationOptions(step=SAMPLE_RATE, latency=SAMPLE_RATE // 2)


def test_a_longer_step_scales_the_counts_of_embeddings_as_the_server_does() -> None:
    base = DiarizationOptions()
    named = dict(rechka_variants(base, [1.5], [2 * base.step / SAMPLE_RATE])[0])
    (options,) = named.values()
    assert options.step == 2 * base.step
    assert options.borderline_count == base.borderline_count // 2 and options.merge_count == base.merge_count // 2


def test_set_overrides_come_after_the_models_tracking_and_are_scaled_with_the_step() -> None:
    class Segmentation:
        window = 10 * SAMPLE_RATE  # segmentation-3.0's

    class Embedding:
        tracking = {"new_speaker_threshold": 0.55, "probe_gap": 0}  # CAM++'s kind of preset

    class Pair:
        segmentation, embedding = Segmentation(), Embedding()

    base = rechka_base(Pair(), ["borderline_count=40", "probe_gap=8000", "fresh_evidence=false"])
    assert base.window == 10 * SAMPLE_RATE and base.new_speaker_threshold == base.update_threshold == 0.55
    assert (base.borderline_count, base.probe_gap, base.fresh_evidence) == (40, 8000, False)
    (options,) = dict(rechka_variants(base, [1.5], [2 * base.step / SAMPLE_RATE])[0]).values()
    assert options.borderline_count == 20 and options.fresh_evidence is False
    with pytest.raises(ValueError, match="no_such_field"):
        rechka_base(Pair(), ["no_such_field=1"])
