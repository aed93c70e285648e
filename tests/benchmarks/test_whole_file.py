"""benchmarks/whole_file.py: the variants it compares side by side (the timed runs themselves are benchmarks)."""

from __future__ import annotations

import pytest

from benchmarks.whole_file import Variant, parse_args
from server.offline import DIARIZATION_LEAD


def test_variants_name_the_driver_its_thread_split_and_lead() -> None:
    assert Variant.parse("overlap", 2) == Variant(True, 2, 2, DIARIZATION_LEAD)
    assert Variant.parse("sequential:1", 2) == Variant(False, 1, 1)
    assert Variant.parse("overlap:2:1:60", 2) == Variant(True, 2, 1, 60.0)
    assert Variant.parse("overlap:2:1:60", 2).name == "overlap:2:1:60"
    assert Variant.parse("sequential:2:2", 2).name == "sequential:2:2"
    assert parse_args([]).variants == [Variant(True, 2, 2)]


@pytest.mark.parametrize("text", ["parallel", "overlap:0", "overlap:2:x", "overlap:1:1:60:9", "overlap:1:1:soon"])
def test_a_bad_variant_exits_2_naming_the_form(text: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--variant", text])
    assert exit_info.value.code == 2 and "overlap|sequential" in capsys.readouterr().err
