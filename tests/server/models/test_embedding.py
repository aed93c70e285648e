"""server.models.embedding: batched resemblyzer equals VoiceEncoder.embed_utterance; pyannote embedding models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.models.cache import ModelUnavailable
from server.models.embedding import (PyannoteEmbedding, ResemblyzerEmbedding, VoiceEncoderNet, load_embedding_model,
                                     normalize_volume, partial_starts, slaney_mel_filters)
from streaming.work import EmbeddingRequest, VadRequest

SPEAKERS = Path(__file__).resolve().parents[3].parent / "shared" / "speech" / "speakers"


@pytest.fixture(scope="module")
def resemblyzer() -> ResemblyzerEmbedding:
    return ResemblyzerEmbedding("cpu", max_batch=8)


@pytest.fixture(scope="module")
def voice_encoder() -> Any:
    """resemblyzer's own ``VoiceEncoder``: the reference the adapter's network and mel frontend must equal."""
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


def speech_clips() -> list[np.ndarray]:
    """Two clips of each of two speakers from the shared recordings (skips when they are absent)."""
    import soundfile as sf

    if SPEAKERS.is_dir():
        files = sorted(SPEAKERS.glob("*.wav"))
        by_speaker: dict[str, list[Path]] = {}
        for f in files:
            by_speaker.setdefault(f.name.split("__")[0], []).append(f)
        clips = []
        for name in sorted(n for n, fs in by_speaker.items() if len(fs) >= 2)[:2]:
            for f in by_speaker[name][:2]:
                audio, rate = sf.read(f, dtype="float32")
                assert rate == 16000
                clips.append(audio[:16000 * 6])
        if len(clips) == 4:
            return clips
    pytest.skip("shared single-speaker recordings are absent")


@pytest.mark.parametrize("rate,n_fft,n_mels", [(16000, 400, 40), (8000, 256, 20), (22050, 2048, 128)])
def test_mel_filters_equal_librosas(rate: int, n_fft: int, n_mels: int) -> None:
    import librosa

    theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels)
    ours = slaney_mel_filters(rate, n_fft, n_mels)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-7 * float(theirs.max()))


def test_voice_encoder_net_holds_resemblyzers_weights(voice_encoder: Any) -> None:
    ours = VoiceEncoderNet.pretrained()
    theirs = voice_encoder.state_dict()
    assert set(ours.state_dict()) == set(theirs) and not ours.training
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    mels = torch.rand(3, 160, 40)
    with torch.inference_mode():
        _, (hidden, _) = ours.lstm(mels)
        ours_out = ours.relu(ours.linear(hidden[-1]))
        ours_out = ours_out / ours_out.norm(dim=1, keepdim=True)
        torch.testing.assert_close(ours_out, voice_encoder(mels), rtol=0, atol=1e-6)


def test_partial_slicing_matches_resemblyzer() -> None:
    from resemblyzer import VoiceEncoder

    for samples in (0, 300, 8000, 25599, 25600, 41000, 59000, 160000, 160123):
        _, mel_slices = VoiceEncoder.compute_partial_slices(samples, 1.3, 0.75)
        assert partial_starts(samples) == [s.start for s in mel_slices], samples
    with pytest.raises(ValueError, match="rate"):
        partial_starts(16000, rate=0.1)


def test_batched_embeddings_equal_embed_utterance(resemblyzer: ResemblyzerEmbedding, voice_encoder: Any) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 4) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audios = [tone[:8000], tone[:25600], (rng.standard_normal(59000) * 0.05).astype(np.float32), tone, tone[:300]]
    ours = resemblyzer.embed(audios)  # ragged: 0.5 s, 1.6 s, 3.7 s, 4 s and 19 ms in one batch
    reference = np.stack([voice_encoder.embed_utterance(a) for a in audios])
    assert ours.shape == (5, 256)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_run_batch_normalizes_volume_like_preprocess_wav(resemblyzer: ResemblyzerEmbedding, voice_encoder: Any) -> None:
    from resemblyzer.audio import normalize_volume as theirs

    quiet = (np.random.default_rng(1).standard_normal(30000) * 0.003).astype(np.float32)
    np.testing.assert_allclose(normalize_volume(quiet), theirs(quiet, -30, increase_only=True), rtol=1e-5)
    loud = quiet * 100
    np.testing.assert_array_equal(normalize_volume(loud), loud)  # never lowered
    assert np.array_equal(normalize_volume(np.zeros(100, np.float32)), np.zeros(100))  # silence stays finite
    (result,) = resemblyzer.run_batch([EmbeddingRequest("s", 3, 0, 0, quiet)])
    expected = voice_encoder.embed_utterance(theirs(quiet, -30, increase_only=True))
    assert (result.session_id, result.seq) == ("s", 3) and result.embedding.dtype == np.float32
    np.testing.assert_allclose(result.embedding, expected, atol=1e-5)


def test_short_audio_is_repeated_up_to_one_partial_not_zero_padded(resemblyzer: ResemblyzerEmbedding,
                                                                    voice_encoder: Any) -> None:
    t = np.arange(11200) / 16000  # 0.7 s: embed_utterance would zero-pad it to 1.6 s
    short = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    prepared = resemblyzer.prepare(short)
    assert len(prepared) == 25600
    np.testing.assert_array_equal(prepared[:11200], short)
    np.testing.assert_array_equal(prepared[11200:22400], short)  # cyclic, not padded
    (result,) = resemblyzer.run_batch([EmbeddingRequest("s", 0, 0, 0, short)])
    np.testing.assert_allclose(result.embedding, voice_encoder.embed_utterance(np.resize(short, 25600)),
                               atol=1e-5)
    assert 1.0 - float(result.embedding @ voice_encoder.embed_utterance(short)) > 1e-3  # it does differ
    long = np.resize(short, 30000)
    np.testing.assert_array_equal(resemblyzer.prepare(long), long)  # a partial's worth or more: untouched
    assert len(resemblyzer.prepare(np.zeros(0, np.float32))) == 0
    plain = ResemblyzerEmbedding("cpu", max_batch=2, repeat_short=False)
    (unpadded,) = plain.run_batch([EmbeddingRequest("s", 1, 0, 0, short)])
    np.testing.assert_allclose(unpadded.embedding, voice_encoder.embed_utterance(short), atol=1e-5)
    assert plain.describe()["repeat_short"] is False and resemblyzer.describe()["repeat_short"] is True


def test_silence_gives_a_finite_embedding(resemblyzer: ResemblyzerEmbedding) -> None:
    results = resemblyzer.run_batch([EmbeddingRequest("s", 0, 0, 0, np.zeros(16000, np.float32)),
                                     EmbeddingRequest("s", 1, 0, 0, np.zeros(0, np.float32))])
    for result in results:
        assert result.embedding.shape == (256,) and np.isfinite(result.embedding).all()


def test_same_speaker_embeddings_are_closer(resemblyzer: ResemblyzerEmbedding) -> None:
    a1, a2, b1, b2 = speech_clips()
    e = np.stack([r.embedding for r in resemblyzer.run_batch(
        [EmbeddingRequest("s", i, 0, 0, clip) for i, clip in enumerate((a1, a2, b1, b2))])])
    similarity = e @ e.T
    assert min(similarity[0, 1], similarity[2, 3]) > max(similarity[0, 2], similarity[0, 3],
                                                         similarity[1, 2], similarity[1, 3])


def test_rejects_bad_requests(resemblyzer: ResemblyzerEmbedding) -> None:
    with pytest.raises(TypeError, match="only runs EmbeddingRequest"):
        resemblyzer.run_batch([VadRequest("s", 0, 0, 0, np.zeros(512, np.float32))])
    with pytest.raises(ValueError, match="1-D"):
        resemblyzer.run_batch([EmbeddingRequest("s", 0, 0, 0, np.zeros((2, 800), np.float32))])
    assert resemblyzer.run_batch([]) == []


def test_adapter_interface(resemblyzer: ResemblyzerEmbedding) -> None:
    resemblyzer.warmup()
    assert set(resemblyzer.modules()) == {"voice_encoder", "mel"}
    info = resemblyzer.describe()
    assert info["name"] == "embedding" and info["dimension"] == 256 and Path(info["checkpoint"]).is_file()


def test_pyannote_embedding_groups_equal_lengths_exactly() -> None:
    from pyannote.audio.models.embedding import XVectorMFCC

    torch.manual_seed(0)
    adapter = PyannoteEmbedding.from_model(XVectorMFCC(dimension=32), "cpu", 4, checkpoint="tiny x-vector")
    rng = np.random.default_rng(2)
    audios = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000, 24000, 16000, 800)]
    batch = adapter.run_batch([EmbeddingRequest("s", i, 0, 0, a) for i, a in enumerate(audios)])
    for audio, result in zip(audios, batch):
        padded = audio if len(audio) >= 8000 else np.resize(audio, 8000)  # short requests are repeated
        with torch.inference_mode():
            alone = adapter.model(torch.from_numpy(padded)[None, None])[0].numpy()
        assert result.embedding.shape == (32,)
        np.testing.assert_allclose(result.embedding, alone, atol=1e-5)
    assert adapter.describe()["architecture"] == "XVectorMFCC" and set(adapter.modules()) == {"pyannote"}


def test_unreachable_pyannote_embedding_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable, match="embedding model 'pyannote/wespeaker-voxceleb-resnet34-LM'"):
        load_embedding_model("pyannote/wespeaker-voxceleb-resnet34-LM", "cpu", 4)
