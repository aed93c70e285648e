"""benchmarks.der's label flips: a change of the label covering one reference speaker, and its collar variant."""

from __future__ import annotations

from benchmarks.der_scoring import label_flips, to_annotation


def test_a_speaker_split_into_two_labels_flips_twice_and_one_label_throughout_never() -> None:
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0)])
    assert label_flips(reference, to_annotation([("x", 0.0, 10.0), ("y", 10.0, 20.0)])) == 0
    split = to_annotation([("x", 0.0, 4.0), ("z", 4.0, 6.0), ("x", 6.0, 10.0), ("y", 10.0, 20.0)])
    assert label_flips(reference, split) == 2
    assert label_flips(reference, split, collar=0.25) == 2  # far from any reference boundary: still flips


def test_the_collar_skips_a_boundary_drawn_slightly_off_but_not_a_longer_lead() -> None:
    reference = to_annotation([("A", 0.0, 10.0), ("B", 10.0, 20.0), ("A", 20.0, 30.0)])
    early = to_annotation([("x", 0.0, 9.9), ("y", 9.9, 20.0), ("x", 20.0, 30.0)])  # B starts 0.1 s early
    assert label_flips(reference, early) == 2 and label_flips(reference, early, collar=0.25) == 0
    late = to_annotation([("x", 0.0, 10.6), ("y", 10.6, 20.0), ("x", 20.0, 30.0)])  # A's label runs 0.6 s into B
    assert label_flips(reference, late, collar=0.25) == 1
