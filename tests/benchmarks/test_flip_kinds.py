"""benchmarks.flip_kinds: every flip label_flips counts, sorted into slips, late onsets and relabels."""

from __future__ import annotations

from benchmarks.der_scoring import label_flips, to_annotation
from benchmarks.flip_kinds import flip_events, kinds


def test_a_previous_voice_running_into_a_turn_is_two_slips_not_a_relabel() -> None:
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0), ("A", 20.0, 30.0), ("B", 30.0, 40.0)])
    # A's label runs 0.4 s into B's second turn, then B is back under its own label
    hypothesis = to_annotation([("x", 0.0, 10.0), ("y", 10.0, 20.0), ("x", 20.0, 30.4), ("y", 30.4, 40.0)])
    flips = flip_events(reference, hypothesis)
    assert len(flips) == label_flips(reference, hypothesis) == 2
    assert [(f.speaker, f.old, f.new, f.kind) for f in flips] == [("B", "y", "x", "slip"), ("B", "x", "y", "slip")]
    assert abs(flips[0].time - 30.0) < 0.05 and abs(flips[0].run - 0.4) < 0.06


def test_a_returning_speaker_with_a_new_label_is_a_relabel() -> None:
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0), ("A", 20.0, 30.0)])
    hypothesis = to_annotation([("x", 0.0, 10.0), ("y", 10.0, 20.0), ("z", 20.0, 30.0)])
    flips = flip_events(reference, hypothesis)
    assert len(flips) == label_flips(reference, hypothesis) == 1
    assert (flips[0].speaker, flips[0].old, flips[0].new, flips[0].kind) == ("A", "x", "z", "relabel")
    # the same change held only 0.6 s (the speaker's speech ends): a slip, not the label it is known by
    short = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0), ("A", 20.0, 20.6)])
    assert kinds(flip_events(short, to_annotation([("x", 0.0, 10.0), ("y", 10.0, 20.0), ("z", 20.0, 20.6)]))) == \
        {"slip": 1, "onset": 0, "relabel": 0}


def test_a_new_voice_first_heard_under_the_previous_label_is_a_late_onset() -> None:
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0)])
    hypothesis = to_annotation([("x", 0.0, 10.5), ("y", 10.5, 20.0)])  # B confirmed 0.5 s into its first turn
    flips = flip_events(reference, hypothesis)
    assert [(f.speaker, f.old, f.new, f.kind) for f in flips] == [("B", "x", "y", "onset")]
    assert kinds(flip_events(reference, hypothesis, hold=12.0)) == {"slip": 1, "onset": 0, "relabel": 0}


def test_one_label_per_speaker_has_no_flips_of_any_kind() -> None:
    reference = to_annotation([("A", 0.0, 5.0), ("B", 5.0, 9.0), ("A", 9.0, 14.0)])
    assert flip_events(reference, to_annotation([("p", 0.0, 5.0), ("q", 5.0, 9.0), ("p", 9.0, 14.0)])) == []


def test_held_out_conversations_take_their_seeds_from_another_base(monkeypatch, tmp_path) -> None:
    import benchmarks.compose as compose
    from benchmarks.der import datasets

    made = []

    class Conversation:
        def write(self, directory) -> None:
            (directory / f"{made[-1][2]}.wav").write_bytes(b"")

    def fake_compose(n, minutes, seed, source, name):
        made.append((n, seed, name))
        return Conversation()

    monkeypatch.setattr(compose, "OUT_DIR", tmp_path)
    monkeypatch.setattr(compose, "compose", fake_compose)
    items = datasets(["composed-espeak"], speakers={"espeak": [2, 3], "real": []}, composed_seed=300)
    assert [item.name for item in items] == ["espeak_2spk_s302", "espeak_3spk_s303"]
    assert [(n, seed) for n, seed, _ in made] == [(2, 302), (3, 303)]
    assert [item.name for item in datasets(["composed-espeak"], speakers={"espeak": [2], "real": []})] == \
        ["espeak_2spk_s102"]


def test_a_label_that_is_no_speakers_main_label_is_a_phantom() -> None:
    from benchmarks.flip_kinds import label_roles

    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0), ("A", 20.0, 30.0)])
    # A's last turn loses 0.5 s to a third label: A's main label stays x, z belongs to nobody
    hypothesis = to_annotation([("x", 0.0, 10.0), ("y", 10.0, 20.0), ("x", 20.0, 25.0), ("z", 25.0, 25.5),
                                ("x", 25.5, 30.0)])
    roles = label_roles(reference, hypothesis)
    assert roles == {"main": {"A": "x", "B": "y"}, "phantoms": ["z"], "merged": []}
    # two voices under one label: merged, and no phantom
    merged = label_roles(reference, to_annotation([("x", 0.0, 30.0)]))
    assert merged == {"main": {"A": "x", "B": "x"}, "phantoms": [], "merged": ["A", "B"]}


def test_the_summary_keeps_seed_sets_apart_and_weights_der_by_reference_speech() -> None:
    from benchmarks.flip_kinds import summarise

    def row(seed, der, speech, relabel):
        return {"dataset": "composed-real", "seed": seed, "latency": 1.5, "minutes": 5.0, "flips": relabel,
                "slip": 0, "onset": 0, "relabel": relabel, "phantoms": 1, "merged": 0, "der_c0": der,
                "reference_speech": speech}

    summary = summarise([row(400, 0.1, 100.0, 1), row(400, 0.4, 300.0, 2), row(500, 0.2, 50.0, 0)])
    assert set(summary) == {"composed-real/s400@1.5s", "composed-real/s500@1.5s"}
    s400 = summary["composed-real/s400@1.5s"]
    assert s400["der_c0"] == 0.325 and s400["relabel"] == 3 and s400["phantoms"] == 2
    assert s400["relabel_per_min"] == 0.3 and summary["composed-real/s500@1.5s"]["flips"] == 0


def test_flip_causes_tell_a_misplaced_turn_change_from_a_split_voice_and_a_confusion() -> None:
    from benchmarks.flip_kinds import flip_causes, label_roles

    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.2, 20.0), ("A", 20.2, 40.0)])
    hypothesis = to_annotation([
        ("x", 0.0, 10.0), ("x", 10.2, 10.6), ("y", 10.6, 20.0),  # A's label runs 0.4 s into B's first turn: handover (one flip)
        ("x", 20.2, 25.0), ("z", 25.0, 25.5), ("x", 25.5, 30.0),  # a label of nobody's inside A's turn: phantom
        ("y", 30.0, 30.5), ("x", 30.5, 40.0)])                    # B's label 10 s after B spoke: confusion
    flips = flip_events(reference, hypothesis)
    roles = label_roles(reference, hypothesis)
    assert flip_causes(reference, flips, roles["main"]) == ["handover"] + ["phantom"] * 2 + ["confusion"] * 2
    # the same B label close to B's speech is a handover
    assert flip_causes(reference, flips, roles["main"], near=11.0)[-2:] == ["handover", "handover"]
    # the change back is judged where the wrong run began: B's label 0.3 s after B's turn, A's next solo sample later
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.2, 20.0), ("A", 20.2, 20.5), ("C", 20.5, 30.0),
                               ("A", 30.0, 40.0)])
    hypothesis = to_annotation([("x", 0.0, 10.0), ("y", 10.2, 20.0), ("y", 20.2, 20.5), ("z", 20.5, 30.0),
                                ("x", 30.0, 40.0)])
    flips = flip_events(reference, hypothesis)
    assert [(f.old, f.new) for f in flips] == [("x", "y"), ("y", "x")]
    assert flip_causes(reference, flips, label_roles(reference, hypothesis)["main"]) == ["handover"] * 2
