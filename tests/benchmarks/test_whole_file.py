"""benchmarks/whole_file.py: the variants it compares side by side (the timed runs themselves are benchmarks)."""

from __future__ import annotations

import pytest

from benchmarks.whole_file import Variant, parse_args
from server.offline import DIARIZATION_LEAD


def test_variants_name_the_driver_its_thread_split_lanes_and_lead() -> None:
    assert Variant.parse("overlap", 2) == Variant(True, 1, 2, 2, DIARIZATION_LEAD)  # rechka-transcribe's plan
    assert Variant.parse("sequential,asr=1", 2) == Variant(False, 1, 2)
    assert Variant.parse("overlap,asr=2,torch=1,lanes=1,lead=60", 2) == Variant(True, 2, 1, 1, 60.0)
    assert Variant.parse("overlap,lanes=1,lead=60", 2).name == "overlap,asr=1,torch=2,lanes=1,lead=60"
    assert Variant.parse("sequential", 3).name == "sequential,asr=3,torch=3"
    assert parse_args([]).variants == [Variant(True, 1, 2, 2)]


@pytest.mark.parametrize("text", ["parallel", "overlap,asr=0", "overlap,asr=x", "overlap,cores=2", "overlap,lead",
                                  "sequential,lanes=2"])
def test_a_bad_variant_exits_2_naming_the_form(text: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--variant", text])
    assert exit_info.value.code == 2 and "overlap|sequential" in capsys.readouterr().err
