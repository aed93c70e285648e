"""The ONNX Runtime Silero VAD (server.models.vad_onnx) against the torch one on real audio: probabilities, ragged
batches, the endpointer's segments; the engine choice (auto/torch/onnx) and its placement audit."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import ServerConfig
from server.models.audit import audit_model
from server.models.vad import VadModel
from server.models.vad_onnx import OnnxVadModel, vad_engine_for
from streaming.config import VAD_CHUNK, VadOptions
from streaming.vad import SpeechEnd, VadEndpointer
from streaming.work import VadRequest
from tests.server.models.test_pyannet import pyannote_sample

# Measured on pyannote's sample.wav (30 s, 2 speakers) in these ragged batches: max |onnx - torch| 2.1e-6 on the
# probabilities (float32 rounding of the same graph; benchmarks/vad_engines.py: <= 3.2e-6); the bound leaves room
# for other CPUs' kernels.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    audio = pyannote_sample()
    return np.ascontiguousarray(audio[:len(audio) // VAD_CHUNK * VAD_CHUNK])


@pytest.fixture(scope="module")
def engines() -> tuple[VadModel, OnnxVadModel]:
    return VadModel("cpu"), OnnxVadModel("cpu")


def streams_in_batches(model: VadModel, streams: list[np.ndarray], sizes: list[int]) -> list[np.ndarray]:
    """Every stream fed at once, request by request (ragged: stream i's n-th request has sizes[(i + n) % len]
    chunks), one batch per round, state chained; the probabilities of each stream."""
    states: list = [None] * len(streams)
    positions, out = [0] * len(streams), [[] for _ in streams]
    turn = 0
    while any(p < len(s) for p, s in zip(positions, streams)):
        requests = []
        for i, audio in enumerate(streams):
            piece = audio[positions[i]:positions[i] + sizes[(i + turn) % len(sizes)] * VAD_CHUNK]
            requests.append(VadRequest(f"s{i}", turn, 0, positions[i], piece, states[i]))
        for i, result in enumerate(model.run_batch(requests)):
            states[i], positions[i] = result.state, positions[i] + len(requests[i].audio)
            out[i].append(result.probs)
        turn += 1
    return [np.concatenate(parts) for parts in out]


def segments(probs: np.ndarray, options: VadOptions) -> list[SpeechEnd]:
    """Each utterance the streaming endpointer closes in ``probs``."""
    endpointer = VadEndpointer(options)
    events = endpointer.push(probs, 0) + endpointer.flush(len(probs) * VAD_CHUNK)
    return [e for e in events if isinstance(e, SpeechEnd)]


def test_onnx_equals_torch_on_real_speech_in_ragged_batches(sample: np.ndarray, engines) -> None:
    torch_vad, onnx_vad = engines
    # four streams: the file, its second half, its first 10 s and 100 ms of silence, of different lengths at once
    streams = [sample, sample[len(sample) // 2 // VAD_CHUNK * VAD_CHUNK:], sample[:16000 * 10 // VAD_CHUNK * VAD_CHUNK],
               np.zeros(6 * VAD_CHUNK, np.float32)]
    sizes = [128, 3, 1, 0, 40, 7]
    reference = streams_in_batches(torch_vad, streams, sizes)
    ours = streams_in_batches(onnx_vad, streams, sizes)
    for r, o in zip(reference, ours):
        assert r.shape == o.shape
        np.testing.assert_allclose(o, r, atol=TOLERANCE, rtol=0)
    assert reference[0].max() > 0.9 and reference[0].min() < 0.1  # real speech and real pauses are compared
    # alone, one request per 4.1 s: the same probabilities as inside the ragged batches
    (alone,) = streams_in_batches(onnx_vad, [sample], [128])
    np.testing.assert_allclose(alone, ours[0], atol=TOLERANCE, rtol=0)


def test_onnx_gives_the_endpointer_the_same_segments(sample: np.ndarray, engines) -> None:
    torch_vad, onnx_vad = engines
    (reference,) = streams_in_batches(torch_vad, [sample], [4, 1, 9])
    (ours,) = streams_in_batches(onnx_vad, [sample], [4, 1, 9])
    default = segments(reference, VadOptions())
    assert len(default) >= 2 and any(e.cut for e in default)  # one long turn cut at its quietest point, and more
    assert segments(ours, VadOptions()) == default
    short = VadOptions(min_silence=3 * VAD_CHUNK)  # every ~100 ms pause closes an utterance: many edges compared
    fine = segments(reference, short)
    assert len(fine) > len(default)
    assert segments(ours, short) == fine


def test_onnx_session_is_audited_on_the_cpu(engines) -> None:
    _, onnx_vad = engines
    report = audit_model("vad", onnx_vad, "cpu")
    assert report.devices == ("cpu",)
    assert onnx_vad.session.get_session_options().intra_op_num_threads == 1
    assert onnx_vad.describe()["engine"] == "onnx"


def test_engine_choice() -> None:
    assert vad_engine_for("cpu") == "onnx" and vad_engine_for("cuda") == "torch"
    assert vad_engine_for("cpu", "torch") == "torch" and vad_engine_for("cpu", "onnx") == "onnx"
    with pytest.raises(ValueError, match="CPU only"):
        vad_engine_for("cuda", "onnx")
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        vad_engine_for("cpu", "tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        OnnxVadModel("cuda")
    assert ServerConfig().vad_engine == "auto"
    with pytest.raises(ValueError, match="vad_engine must be auto, torch or onnx"):
        ServerConfig(vad_engine="jit")
    with pytest.raises(ValueError, match="vad_engine=onnx needs --device cpu"):
        ServerConfig(vad_engine="onnx", device="cuda")


def test_the_graph_is_exported_once_into_the_model_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.models.vad_onnx as vad_onnx

    monkeypatch.setenv("RECHKA_CACHE", str(tmp_path))
    exports = []
    real_export = vad_onnx.export_graph
    monkeypatch.setattr(vad_onnx, "export_graph", lambda net: exports.append(1) or real_export(net))
    first, second = OnnxVadModel(), OnnxVadModel()
    assert len(exports) == 1 and len(list((tmp_path / "onnx").glob("silero-vad-*.onnx"))) == 1
    request = VadRequest("s", 0, 0, 0, pyannote_sample()[:VAD_CHUNK * 8], None)
    np.testing.assert_array_equal(first.run_batch([request])[0].probs, second.run_batch([request])[0].probs)
