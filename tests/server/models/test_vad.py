"""server.models.vad (torch) and server.models.vad_onnx (ONNX Runtime): each engine against silero's own model,
batching across streams, state chaining; the engines against each other in test_vad_engines.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from server.models.vad import CONTEXT, HIDDEN, SileroState, SileroVadNet, VadModel
from server.models.vad_onnx import OnnxVadModel
from streaming.work import SegmentationRequest, VadRequest

SPEECH = Path(__file__).resolve().parents[3].parent / "shared" / "speech" / "ru"
CHUNK = 512


ENGINES = {"torch": VadModel, "onnx": OnnxVadModel}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def vad(request: pytest.FixtureRequest) -> VadModel:
    return ENGINES[request.param]("cpu", max_batch=8)


@pytest.fixture(scope="module")
def silero() -> torch.jit.ScriptModule:
    from silero_vad import load_silero_vad

    return load_silero_vad()


def silero_probs(silero: torch.jit.ScriptModule, audio: np.ndarray) -> np.ndarray:
    """silero's own chunk-by-chunk call (what its VADIterator runs), from a fresh state."""
    return silero.audio_forward(torch.from_numpy(audio)[None], 16000)[0].numpy()


def run_in_pieces(vad: VadModel, audio: np.ndarray, chunks_per_request: list[int]) -> np.ndarray:
    """One stream fed as consecutive requests of varying size, the state chained from result to request."""
    state, out, pos, turn = None, [], 0, 0
    while pos < len(audio):
        size = chunks_per_request[turn % len(chunks_per_request)] * CHUNK
        piece = audio[pos:pos + size]
        (result,) = vad.run_batch([VadRequest("s", turn, 0, pos, piece, state)])
        state, pos, turn = result.state, pos + len(piece), turn + 1
        out.append(result.probs)
    return np.concatenate(out)


def whole_chunks(audio: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(audio[:len(audio) // CHUNK * CHUNK], dtype=np.float32)


def espeak(text: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    raw = subprocess.run(["espeak-ng", "-v", "ru", "--stdout", text], capture_output=True, check=True).stdout
    import io

    audio, rate = sf.read(io.BytesIO(raw), dtype="float32")
    return soxr.resample(audio, rate, 16000).astype(np.float32)


@pytest.mark.skipif(not SPEECH.is_dir(), reason="shared real speech recordings are absent")
@pytest.mark.parametrize("name", ["ru_tinkoff_sample_1.wav", "ru_silero_vad_ru_num.wav"])
def test_matches_silero_on_real_speech(vad: VadModel, silero: torch.jit.ScriptModule, name: str) -> None:
    audio, rate = sf.read(SPEECH / name, dtype="float32")
    assert rate == 16000
    audio = whole_chunks(audio[:16000 * 12])
    ours = run_in_pieces(vad, audio, [3, 1, 7, 20, 2])
    reference = silero_probs(silero, audio)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert reference.max() > 0.9  # real speech: the comparison covers confident speech frames


def test_matches_silero_on_espeak_speech_and_separates_silence(vad: VadModel, silero: torch.jit.ScriptModule) -> None:
    speech = espeak("Добрый день. Сегодня мы проверяем детектор речи на синтезированном голосе.")
    silence = np.zeros(16000, np.float32)
    audio = whole_chunks(np.concatenate([silence, speech, silence]))
    ours = run_in_pieces(vad, audio, [4, 9])
    np.testing.assert_allclose(ours, silero_probs(silero, audio), atol=1e-4)
    lead = len(silence) // CHUNK
    assert ours[:lead - 2].max() < 0.1
    assert np.median(ours[lead + 5:lead + len(speech) // CHUNK - 5]) > 0.5


def test_batched_streams_equal_streams_run_alone(vad: VadModel) -> None:
    rng = np.random.default_rng(1)
    lengths = [5, 0, 2, 1, 3]
    first = [(rng.standard_normal(k * CHUNK) * 0.1).astype(np.float32) for k in lengths]
    second = [(rng.standard_normal(k * CHUNK) * 0.1).astype(np.float32) for k in reversed(lengths)]
    batch1 = vad.run_batch([VadRequest(f"s{i}", 1, 0, 0, a) for i, a in enumerate(first)])
    batch2 = vad.run_batch([VadRequest(f"s{i}", 2, 0, len(first[i]), a, batch1[i].state)
                            for i, a in enumerate(second)])
    for i in range(len(lengths)):
        (alone1,) = vad.run_batch([VadRequest("x", 1, 0, 0, first[i])])
        (alone2,) = vad.run_batch([VadRequest("x", 2, 0, 0, second[i], alone1.state)])
        assert (batch1[i].session_id, batch1[i].seq) == (f"s{i}", 1)
        assert len(batch1[i].probs) == len(first[i]) // CHUNK and batch1[i].probs.dtype == np.float32
        np.testing.assert_allclose(batch1[i].probs, alone1.probs, atol=1e-5)
        np.testing.assert_allclose(batch2[i].probs, alone2.probs, atol=1e-5)
        np.testing.assert_allclose(batch2[i].state.h, alone2.state.h, atol=1e-5)
        np.testing.assert_allclose(batch2[i].state.c, alone2.state.c, atol=1e-5)
        np.testing.assert_array_equal(batch2[i].state.context, alone2.state.context)


def test_state_carries_context_and_lstm(vad: VadModel) -> None:
    audio = (np.random.default_rng(2).standard_normal(3 * CHUNK) * 0.2).astype(np.float32)
    (result,) = vad.run_batch([VadRequest("s", 0, 0, 0, audio)])
    np.testing.assert_array_equal(result.state.context, audio[-CONTEXT:])
    assert result.state.h.shape == (HIDDEN,) and np.abs(result.state.h).max() > 0
    (empty,) = vad.run_batch([VadRequest("s", 1, 0, len(audio), np.zeros(0, np.float32), result.state)])
    assert empty.probs.shape == (0,)
    np.testing.assert_array_equal(empty.state.h, result.state.h)
    np.testing.assert_array_equal(empty.state.context, result.state.context)
    # A fresh stream and an explicit initial state are the same thing.
    (fresh,) = vad.run_batch([VadRequest("s", 2, 0, 0, audio, SileroState.initial())])
    np.testing.assert_array_equal(fresh.probs, result.probs)


def test_rejects_bad_requests(vad: VadModel) -> None:
    with pytest.raises(ValueError, match="multiple of 512"):
        vad.run_batch([VadRequest("s", 0, 0, 0, np.zeros(700, np.float32))])
    with pytest.raises(TypeError, match="only runs VadRequest"):
        vad.run_batch([SegmentationRequest("s", 0, 0, 0, np.zeros(CHUNK, np.float32))])
    with pytest.raises(TypeError, match="SileroState"):
        vad.run_batch([VadRequest("s", 0, 0, 0, np.zeros(CHUNK, np.float32), state=(1, 2))])
    assert vad.run_batch([]) == []


def test_safetensors_weights_load_into_the_same_architecture(tmp_path: Path) -> None:
    from importlib import resources

    from safetensors.torch import save_file

    net = SileroVadNet()
    net.load_silero(Path(str(resources.files("silero_vad.data").joinpath("silero_vad_16k.safetensors"))))
    assert net.stft_basis.abs().sum() > 0 and net.encoder[0].weight.abs().sum() > 0
    fake = tmp_path / "fake.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(fake))
    with pytest.raises(ValueError, match="not a silero VAD"):
        net.load_silero(fake)


def test_adapter_interface(vad: VadModel) -> None:
    vad.warmup()
    assert set(vad.modules()) == {"silero"}
    info = vad.describe()
    assert info["name"] == "vad" and Path(info["checkpoint"]).is_file()
    assert ENGINES[info["engine"]] is type(vad)
    with pytest.raises(ValueError, match="max_batch"):
        type(vad)("cpu", max_batch=0)
