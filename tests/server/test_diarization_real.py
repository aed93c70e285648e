"""The streaming diarizer with the real segmentation (PyanNet) and embedding (resemblyzer) adapters, end to end on
pyannote's shipped two-speaker ``sample.wav``, scored against its ``sample.rttm`` with pyannote.metrics.

Thresholds, measured with ``benchmarks/der.py`` (CPU, torch 2.9.1, default ``DiarizationOptions``, 1 s chunks):
rechka scores DER 0.145 at collar 0 (missed 0.035, false alarm 0.025, confusion 0.085) and 0.020 with a ±0.25 s
collar. It finds the 2 speakers, plus a third label on 0.8 s of the overlapped handover at 18 s (short segments are
embedded on their audio repeated up to 1.6 s, which lowered DER here from 0.162 and on every other data set, and
brought this duplicate). For scale, on the same two models pyannote's own offline ``SpeakerDiarization`` pipeline
scores 0.147 and diart 0.190 at the same 1.5 s latency (collar 0). The DER bounds below (0.22 and 0.12) leave
about five points or more for numerical differences between machines and devices, which can move a borderline frame
or assignment; a real regression (a lost or split speaker: 0.35-0.6 here) fails them, and so does a split speaker's
extra label (the labels beyond the two largest may hold at most ``MAX_EXTRA_SPEECH``).
Skips when the segmentation checkpoint cannot be had (offline machine without the cached whisperx wheel).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from server.offline import drive_diarizer, run_requests_by_kind
from streaming.config import SAMPLE_RATE, DiarizationOptions
from streaming.diarization import StreamingDiarizer
from streaming.work import EmbeddingRequest, SegmentationRequest
from tests.fakes_diarization import ArrayBuffer

pytestmark = pytest.mark.slow

SAMPLE = Path(pytest.importorskip("pyannote.audio").__file__).parent / "sample"
MAX_DER = 0.22
MAX_DER_COLLAR = 0.12
MAX_EXTRA_SPEECH = 2.0  # seconds of hypothesis speech under labels beyond the two largest (measured 0.8)


@pytest.fixture(scope="module")
def models() -> tuple:
    segmentation = pytest.importorskip("server.models.segmentation")
    embedding = pytest.importorskip("server.models.embedding")
    cache = pytest.importorskip("server.models.cache")
    try:
        seg = segmentation.SegmentationModel(device="cpu", max_batch=16)
    except cache.ModelUnavailable as error:
        pytest.skip(f"segmentation checkpoint unavailable: {error}")
    return seg, embedding.ResemblyzerEmbedding(device="cpu", max_batch=16)


def diarize(audio: np.ndarray, models: tuple, chunk: int = SAMPLE_RATE) -> tuple[StreamingDiarizer, list]:
    segmentation, embedding = models

    run = run_requests_by_kind({SegmentationRequest: segmentation.run_batch, EmbeddingRequest: embedding.run_batch})
    seq = itertools.count()
    diarizer = StreamingDiarizer(DiarizationOptions(), "real", 0, lambda: next(seq))
    return diarizer, drive_diarizer(diarizer, ArrayBuffer(), audio, run, chunk)


def test_sample_wav_der_against_its_reference(models: tuple) -> None:
    soundfile = pytest.importorskip("soundfile")
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.database.util import load_rttm

    audio, rate = soundfile.read(SAMPLE / "sample.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    reference = next(iter(load_rttm(SAMPLE / "sample.rttm").values()))
    diarizer, turns = diarize(audio, models)
    hypothesis = Annotation()
    for i, turn in enumerate(turns):
        hypothesis[Segment(turn.start / SAMPLE_RATE, turn.end / SAMPLE_RATE), i] = turn.speaker
    uem = Timeline([Segment(0, len(audio) / SAMPLE_RATE)])
    der = metrics.DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, hypothesis, uem=uem)
    der_collar = metrics.DiarizationErrorRate(collar=0.5, skip_overlap=False)(reference, hypothesis, uem=uem)
    assert der <= MAX_DER, f"DER {der:.3f} (collar 0) above {MAX_DER}"
    assert der_collar <= MAX_DER_COLLAR, f"DER {der_collar:.3f} (±0.25 s collar) above {MAX_DER_COLLAR}"
    speech = sorted((hypothesis.label_duration(label) for label in hypothesis.labels()), reverse=True)
    assert len(speech) >= 2 and min(speech[:2]) > 5.0, speech  # both speakers found, each with a label of its own
    assert sum(speech[2:]) <= MAX_EXTRA_SPEECH, f"labels beyond the two speakers hold {sum(speech[2:]):.1f} s"
    assert diarizer.speakers[0] == "S1" and set(diarizer.speakers) == set(hypothesis.labels())
    assert diarizer.final_until == len(audio) and diarizer.idle


def test_voice_split_keeps_voices_apart_on_a_composed_conversation(models: tuple) -> None:
    """Three espeak-ng voices, 90 s with short pauses between turns (``benchmarks.compose``, seed 8). PyanNet often
    gives a voice that follows another after a short pause the previous one's local speaker; the voice split
    (``change_threshold``) catches that. Measured on CPU: with it DER 0.157 (confusion 0.064), 3 label flips and the
    3 speakers; without it (``change_threshold=2``) two voices share one label: 2 speakers, DER 0.388 (confusion
    0.295). A 1 s step (``at_step``) keeps the three voices on half the windows."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from benchmarks.compose import compose
    from benchmarks.der_scoring import score, to_annotation

    conversation = compose(3, minutes=1.5, seed=8)
    reference = to_annotation([(s, a / SAMPLE_RATE, b / SAMPLE_RATE) for s, a, b in conversation.reference])
    duration = len(conversation.audio) / SAMPLE_RATE

    def run(options: DiarizationOptions) -> dict:
        segmentation, embedding = models
        windows = []
        def segment(requests: list) -> list:
            windows.extend(requests)
            return segmentation.run_batch(requests)

        run_batch = run_requests_by_kind({SegmentationRequest: segment, EmbeddingRequest: embedding.run_batch})
        seq = itertools.count()
        diarizer = StreamingDiarizer(options, "composed", 0, lambda: next(seq))
        turns = drive_diarizer(diarizer, ArrayBuffer(), conversation.audio, run_batch, SAMPLE_RATE)
        hypothesis = to_annotation([(t.speaker, t.start / SAMPLE_RATE, t.end / SAMPLE_RATE) for t in turns])
        return {**score(reference, hypothesis, duration), "windows": len(windows)}

    split, merged = run(DiarizationOptions()), run(DiarizationOptions(change_threshold=2.0))
    assert split["hyp_speakers"] == split["ref_speakers"] == 3
    assert split["confusion"] < merged["confusion"] and split["der_c0"] < merged["der_c0"], (split, merged)
    assert split["der_c0"] <= 0.22 and split["flips"] <= 6, split  # measured 0.157 and 3; about the sample's margin
    # The server's --diarization-step 1 (at_step: counts scaled): half the windows, the three voices still apart
    # (measured: 96 windows against 191, DER 0.147, 1 flip).
    coarse = run(DiarizationOptions().at_step(SAMPLE_RATE))
    assert coarse["windows"] <= split["windows"] // 2 + 1 and coarse["hyp_speakers"] == 3, coarse
    assert coarse["der_c0"] <= 0.22 and coarse["flips"] <= 6, coarse
