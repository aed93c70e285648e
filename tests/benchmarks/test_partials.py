"""benchmarks/partials.py: the tone sweep and the real-speech before/after comparison, with the fake ASR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import default_speech_dir
from benchmarks.partials import baseline_policy, main, partial_options, policy_class, variant_options
from streaming.config import PartialOptions, SessionConfig
from streaming.partials import PartialPolicy
import streaming.session

SPEECH = default_speech_dir()


def test_the_tone_sweep_stays_under_one_final_pass(tmp_path: Path) -> None:
    result = main(["--lengths", "2", "8", "16", "--budget-ratio", "1.0", "--no-speculative-finals",
                   "--out-dir", str(tmp_path)])
    rows = result["rows"]
    assert [r["finals"] for r in rows] == [1, 1, 1]
    assert result["max_partial_over_final_pass"] <= 1.0
    assert all(r["partial_decodes"] >= 2 for r in rows)
    assert json.loads(next(tmp_path.glob("partials-*.json")).read_text())["rows"] == rows


def test_missed_speculations_count_as_partial_compute_within_their_bound(tmp_path: Path) -> None:
    """Its 150 ms pauses each end in speech: every speculation misses and is charged to the partials."""
    off = main(["--lengths", "8", "--budget-ratio", "1.0", "--no-speculative-finals", "--out-dir", str(tmp_path)])
    on = main(["--lengths", "8", "--budget-ratio", "1.0", "--out-dir", str(tmp_path)])
    bound = 1.0 + SessionConfig().speculation_budget
    assert off["max_partial_over_final_pass"] < on["max_partial_over_final_pass"] <= bound
    assert on["rows"][0]["finals"] == 1


def test_the_baseline_policy_is_loaded_from_git_and_swapped_in_for_a_while() -> None:
    old = baseline_policy("HEAD")  # a ref every clone has (the docs' run used the commit before this change)
    assert old is not PartialPolicy and old.__name__ == "PartialPolicy"
    with policy_class(old):
        assert streaming.session.PartialPolicy is old
    assert streaming.session.PartialPolicy is PartialPolicy


@pytest.mark.skipif(not (SPEECH / "ru").is_dir(), reason="shared/speech recordings are absent")
def test_on_real_speech_partials_stay_within_the_budget_and_start_early(tmp_path: Path) -> None:
    result = main(["--speech", "--max-files", "2", "--baseline", "HEAD", "--baseline-budget", "1.5",
                   "--out-dir", str(tmp_path)])
    current = result["variants"]["current (defaults)"]
    spare = result["variants"]["baseline HEAD (budget 1.5)"]
    assert current["utterances"] == spare["utterances"] >= 2  # the same finals either way
    decodes = [u["partial_over_final"] - u["missed_over_final"] for u in result["utterances"]["current (defaults)"]]
    assert max(decodes) <= PartialOptions().budget_ratio  # missed speculations are the finals' cost
    assert current["over_1_decodes_only"] == 0
    assert current["first_partial_delay_s"]["p50"] <= 0.5
    assert spare["max_partial_over_final"] <= 1.5
    finals = {name: [(u["file"], u["seconds"]) for u in utts] for name, utts in result["utterances"].items()}
    assert len(set(map(tuple, finals.values()))) == 1


def test_compare_specs_change_only_the_named_fields() -> None:
    options = partial_options("budget_ratio=1.0,cadence=16000,enabled=false")
    assert (options.budget_ratio, options.cadence, options.enabled) == (1.0, 16000, False)
    assert options.first_partial == PartialOptions().first_partial
    for bad in ("budget=1.0", "cadence", "cadence=abc"):
        with pytest.raises((SystemExit, ValueError)):
            partial_options(bad)


@pytest.mark.skipif(not (SPEECH / "ru").is_dir(), reason="shared/speech recordings are absent")
def test_a_compared_variant_runs_beside_the_defaults_on_the_same_finals(tmp_path: Path) -> None:
    result = main(["--speech", "--max-files", "1", "--compare", "budget_ratio=1.0", "--out-dir", str(tmp_path)])
    capped = result["variants"]["current, budget_ratio=1.0"]
    assert capped["utterances"] == result["variants"]["current (defaults)"]["utterances"] >= 1
    assert capped["max_partial_over_final"] <= 1.0 + SessionConfig().speculation_budget  # missed speculations too


def test_a_spec_may_also_change_the_speculation_budget() -> None:
    options, session = variant_options("budget_ratio=1.0,speculation_budget=0.5")
    assert options.budget_ratio == 1.0 and session == {"speculation_budget": 0.5}
    with pytest.raises(SystemExit):
        partial_options("speculation_budget=0.5")  # where only PartialOptions are meant


@pytest.mark.skipif(not (SPEECH / "ru").is_dir(), reason="shared/speech recordings are absent")
def test_missed_speculations_are_reported_apart_from_partial_decodes(tmp_path: Path) -> None:
    """The first recording has a pause that ends in speech: at the defaults it is speculated and missed; with no
    speculation budget at budget 1.0 nothing is speculated once a partial was decoded, so nothing is missed."""
    result = main(["--speech", "--max-files", "1", "--compare", "budget_ratio=1.0,speculation_budget=0",
                   "--out-dir", str(tmp_path)])
    on, gated = result["variants"]["current (defaults)"], result["variants"]["current, budget_ratio=1.0,speculation_budget=0"]
    assert on["with_missed_speculations"] >= 1 and on["total_missed_over_total_final"] > 0
    assert on["over_1_decodes_only"] <= on["over_1"] and on["over_1_unavoidable"] <= on["over_1"]
    assert gated["with_missed_speculations"] == 0 and gated["total_missed_over_total_final"] == 0
    assert gated["over_1"] == gated["over_1_unavoidable"] == 0 and gated["max_partial_over_final"] <= 1.0
    for utt in result["utterances"]["current (defaults)"]:
        assert 0 <= utt["missed_over_final"] <= utt["partial_over_final"]
        assert (utt["misses"] > 0) == (utt["missed_over_final"] > 0)
        assert 0 < utt["first_window_over_final"] < 1
