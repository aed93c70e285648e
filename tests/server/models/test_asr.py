"""GigaAM adapter: a tiny but really trained CTC model (tests/assets), loaded through the same path as real checkpoints,
decoding espeak-ng speech from voices and word sequences it never heard; ragged batches equal one-by-one decoding
and gigaam's own offline path (CTC, and RNNT on a small random model built from gigaam's classes)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from streaming.config import SAMPLE_RATE
from server.models.asr import MAX_AUDIO_SAMPLES, AsrOptions, GigaAmAsr, ModelUnavailable
from server.models.base import BatchModel
from server.models.gigaam_compat import build_model, encode_batch, load_checkpoint
from streaming.work import AsrKind, AsrRequest, AsrResult

ROOT = Path(__file__).resolve().parents[3]
TINY_CKPT = ROOT / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
SR = SAMPLE_RATE

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _load_training_script():
    spec = importlib.util.spec_from_file_location("train_tiny_gigaam", ROOT / "scripts" / "train_tiny_gigaam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requests(audios: list[np.ndarray]) -> list[AsrRequest]:
    return [AsrRequest("s", i, 0, 0, a, utterance_id=i, kind=AsrKind.FINAL) for i, a in enumerate(audios)]


@pytest.fixture(scope="module")
def asr() -> GigaAmAsr:
    torch.set_num_threads(2)
    return GigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[list[str], list[np.ndarray]]:
    """Utterances from the two held-out voices with held-out word sequences (see scripts/train_tiny_gigaam.py)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    script = _load_training_script()
    jobs = script.make_jobs(16, seed=2024, voices=script.HELD_OUT_VOICES, held_out=True)
    assert {voice for _, voice, _, _ in jobs} == set(script.HELD_OUT_VOICES)
    assert not set(script.HELD_OUT_VOICES) & set(script.TRAIN_VOICES)
    assert all(script.is_held_out_sequence(text) for text, *_ in jobs)
    out = tmp_path_factory.mktemp("held_out")
    texts, audios = [], []
    for n, job in enumerate(jobs):
        audio = script.synthesize(*job)
        np.save(out / f"{n}.npy", audio)
        texts.append(job[0])
        audios.append(np.load(out / f"{n}.npy"))
    return texts, audios


def _cer(reference: str, hypothesis: str) -> int:
    """Character edit distance (the training script's own, so test and training measure alike)."""
    return _load_training_script().edit_distance(reference, hypothesis)


def _assert_words_well_formed(result: AsrResult, n_samples: int, overlap_allowed: bool = False) -> None:
    assert " ".join(w.text for w in result.words) == result.text
    for word in result.words:
        assert 0 <= word.start < word.end <= n_samples
        assert word.text and " " not in word.text
    for a, b in zip(result.words, result.words[1:]):
        assert a.start <= b.start and a.end <= b.end
        if not overlap_allowed:
            assert a.end <= b.start


# -- the tiny checkpoint ------------------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_weights_only_through_gigaam_config() -> None:
    checkpoint = load_checkpoint(TINY_CKPT)
    assert isinstance(checkpoint["cfg"], DictConfig)
    assert checkpoint["cfg"].head._target_ == "gigaam.decoder.CTCHead"
    vocabulary = list(checkpoint["cfg"].decoding.vocabulary)
    assert vocabulary == [" "] + [chr(c) for c in range(ord("а"), ord("я") + 1)]
    assert checkpoint["cfg"].head.num_classes == len(vocabulary) + 1  # blank is the last class
    assert TINY_CKPT.stat().st_size <= 8 * 1024 * 1024


def test_weights_only_loading_rejects_arbitrary_globals(tmp_path: Path) -> None:
    """The allow-list covers omegaconf, not everything: a pickled foreign class is refused, so weights_only holds."""
    checkpoint = load_checkpoint(TINY_CKPT)
    checkpoint["extra"] = Path("/etc/passwd")  # pathlib.PosixPath is not an allowed global
    bad = tmp_path / "bad.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(ModelUnavailable, match="could not be read as a GigaAM checkpoint"):
        load_checkpoint(bad)


def test_adapter_is_a_batch_model(asr: GigaAmAsr) -> None:
    assert isinstance(asr, BatchModel)
    info = asr.describe()
    assert info["name"] == "asr" and asr.name == "asr"
    assert info["checkpoint"] == str(TINY_CKPT)
    assert info["head"] == "ctc" and info["vocab_size"] == 33 and info["random_weights"] is False
    assert list(asr.modules()) == ["gigaam"] and isinstance(asr.modules()["gigaam"], torch.nn.Module)
    asr.warmup()


@needs_espeak
def test_cer_on_unseen_voices_and_word_sequences(asr: GigaAmAsr, held_out) -> None:
    texts, audios = held_out
    results = asr.run_batch(_requests(audios))
    errors = sum(_cer(t, r.text) for t, r in zip(texts, results))
    cer = errors / sum(len(t) for t in texts)
    assert cer <= 0.10, [(t, r.text) for t, r in zip(texts, results)]


@needs_espeak
def test_ctc_ragged_batch_equals_one_by_one_and_gigaam_offline(asr: GigaAmAsr, held_out) -> None:
    _, audios = held_out
    assert len({len(a) for a in audios}) > 1  # ragged
    batched = asr.run_batch(_requests(audios))
    small_batches = GigaAmAsr(str(TINY_CKPT), max_batch=3).run_batch(_requests(audios))
    assert sum(bool(r.text) for r in batched) == len(audios)
    for audio, result, other in zip(audios, batched, small_batches):
        single = asr.run_batch(_requests([audio]))[0]
        assert result.text == single.text == other.text == asr.reference_transcribe(audio)
        assert result.words == single.words == other.words
    assert [(r.session_id, r.seq) for r in batched] == [("s", i) for i in range(len(audios))]


def test_ragged_encoder_frames_equal_unbatched_gigaam_encoder(asr: GigaAmAsr) -> None:
    """Noise up to the last sample, so padding would leak into the STFT and subsampling of the shorter rows."""
    rng = np.random.default_rng(0)
    audios = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000, 7001, 3333, 641)]
    with torch.inference_mode():
        encoded, lengths = encode_batch(asr.model, [torch.from_numpy(a) for a in audios])
        for row, audio in enumerate(audios):
            single, single_len = asr.model(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
            assert int(lengths[row]) == int(single_len[0])
            torch.testing.assert_close(encoded[row, : lengths[row]], single[0].transpose(0, 1), atol=1e-4, rtol=1e-4)


@needs_espeak
def test_word_times_are_monotone_within_audio_and_relative_to_it(asr: GigaAmAsr, held_out) -> None:
    _, audios = held_out
    pad = SR  # one second of silence before the speech
    padded = [np.concatenate([np.zeros(pad, np.float32), a]) for a in audios]
    for audio, plain, shifted in zip(audios, asr.run_batch(_requests(audios)), asr.run_batch(_requests(padded))):
        _assert_words_well_formed(plain, len(audio))
        _assert_words_well_formed(shifted, len(audio) + pad)
        assert shifted.words[0].start >= pad - 3 * asr.spec.samples_per_frame
        if [w.text for w in plain.words] == [w.text for w in shifted.words]:
            for a, b in zip(plain.words, shifted.words):
                assert abs((b.start - pad) - a.start) <= 3 * asr.spec.samples_per_frame


def test_empty_audio_gives_empty_result_and_long_audio_is_refused(asr: GigaAmAsr) -> None:
    result = asr.run_batch(_requests([np.zeros(0, np.float32)]))[0]
    assert result.text == "" and result.words == ()
    assert asr.run_batch(_requests([np.zeros(MAX_AUDIO_SAMPLES, np.float32)]))[0].seq == 0
    with pytest.raises(ValueError, match="at most 25 s"):
        asr.run_batch(_requests([np.zeros(MAX_AUDIO_SAMPLES + 1, np.float32)]))
    with pytest.raises(ValueError, match="1-D"):
        asr.run_batch(_requests([np.zeros((2, 100), np.float32)]))


# -- RNNT, with a small random model built from gigaam's classes -------------------------------------------------


@pytest.fixture(scope="module")
def rnnt_ckpt(tmp_path_factory) -> Path:
    """A small RNNT model from gigaam's classes: the tiny model's trained encoder, a randomly initialised
    prediction network, and a joint whose encoder path reproduces the tiny CTC head's logits (its hidden layer
    holds x and -x, so ReLU passes both signs), perturbed by the random prediction network. Its transcripts are
    not good, but they vary with the audio and with every emitted token, which is what ragged decoding must get
    right."""
    tiny = load_checkpoint(TINY_CKPT)
    cfg = OmegaConf.create(OmegaConf.to_container(tiny["cfg"]))
    cfg.model_class = "rnnt"
    d_model, classes, pred = cfg.encoder.d_model, cfg.head.num_classes, 32
    cfg.head = {"_target_": "gigaam.decoder.RNNTHead",
                "decoder": {"pred_hidden": pred, "pred_rnn_layers": 1, "num_classes": classes},
                "joint": {"enc_hidden": d_model, "pred_hidden": pred, "joint_hidden": 2 * d_model,
                          "num_classes": classes}}
    cfg.decoding = {"_target_": "gigaam.decoding.RNNTGreedyDecoding",
                    "vocabulary": list(tiny["cfg"].decoding.vocabulary), "max_symbols_per_step": 3}
    torch.manual_seed(7)
    model = build_model(cfg)
    state = {k: v for k, v in tiny["state_dict"].items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    ctc_weight = tiny["state_dict"]["head.decoder_layers.0.weight"][:, :, 0]  # (classes, d_model)
    joint = model.head.joint
    with torch.no_grad():
        eye = torch.eye(d_model)
        joint.enc.weight.copy_(torch.cat([eye, -eye]))
        joint.enc.bias.zero_()
        joint.pred.weight.mul_(3.0)
        joint.joint_net[1].weight.copy_(torch.cat([ctc_weight, -ctc_weight], dim=1))
        joint.joint_net[1].bias.copy_(tiny["state_dict"]["head.decoder_layers.0.bias"])
    path = tmp_path_factory.mktemp("rnnt") / "small_rnnt.ckpt"
    torch.save({"cfg": cfg, "state_dict": model.state_dict()}, path)
    return path


@needs_espeak
def test_rnnt_ragged_batch_equals_one_by_one_and_gigaam_offline(rnnt_ckpt: Path, held_out) -> None:
    _, audios = held_out
    asr = GigaAmAsr(str(rnnt_ckpt), max_batch=8)
    assert asr.describe()["head"] == "rnnt"
    batched = asr.run_batch(_requests(audios))
    assert sum(len(r.words) > 1 for r in batched) >= len(audios) // 2
    assert len({r.text for r in batched}) == len(audios)
    for audio, result in zip(audios, batched):
        single = asr.run_batch(_requests([audio]))[0]
        assert result.text == single.text == asr.reference_transcribe(audio)
        assert result.words == single.words
        _assert_words_well_formed(result, len(audio), overlap_allowed=True)


# -- loading and errors -------------------------------------------------------------------------------------------


def test_missing_checkpoint_path_names_the_file_and_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(ModelUnavailable) as err:
        GigaAmAsr(str(missing))
    assert str(missing) in str(err.value) and "--asr-model" in str(err.value)


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelUnavailable, match="v2_ctc, v2_rnnt, v1_ctc, v1_rnnt"):
        GigaAmAsr("v9_ctc")
    with pytest.raises(ModelUnavailable, match="random:v2_ctc"):
        GigaAmAsr("random:v1_ctc")


def test_uncached_name_with_unreachable_download_fails_fast_and_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        GigaAmAsr("v2_rnnt", cache_dir=tmp_path, download_url="http://127.0.0.1:9/GigaAM", download_timeout_s=2)
    message = str(err.value)
    assert str(tmp_path / "v2_rnnt.ckpt") in message and "--asr-model" in message
    assert list(tmp_path.iterdir()) == []  # no truncated file left behind to be mistaken for a cached one


def test_name_loads_from_gigaam_cache_without_network(tmp_path: Path, asr: GigaAmAsr) -> None:
    shutil.copy(TINY_CKPT, tmp_path / "v2_ctc.ckpt")
    cached = GigaAmAsr("ctc", cache_dir=tmp_path, download_url="http://127.0.0.1:9/GigaAM")
    assert cached.describe()["checkpoint"] == str(tmp_path / "v2_ctc.ckpt")
    audio = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1
    assert cached.run_batch(_requests([audio]))[0].words == asr.run_batch(_requests([audio]))[0].words


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="not one of 'cpu', 'cuda', 'cuda:N'"):
        AsrOptions(device="gpu")
    with pytest.raises(ValueError, match="max_batch"):
        AsrOptions(max_batch=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            AsrOptions(device="cuda")


def test_random_weights_are_full_size_and_say_so() -> None:
    model = GigaAmAsr("random:v2_ctc")
    info = model.describe()
    assert info["random_weights"] is True and info["checkpoint"] is None
    assert info["encoder"] == "16x768 rotary" and info["head"] == "ctc" and info["parameters"] > 200e6


def test_random_weights_decode_text_for_every_window() -> None:
    """Random CTC weights never predict the blank: each decode has text, even of near silence, where the plain random
    head gives none (so benchmarks see the partials a trained model shows); a checkpoint's head keeps its bias."""
    model = GigaAmAsr("random:v2_ctc")
    quiet = [np.random.default_rng(k).normal(0, 1e-4, n).astype(np.float32) for k, n in enumerate((5760, 16000))]
    assert all(result.text for result in model.run_batch(_requests(quiet)))
    blank = model.model.spec.num_classes - 1
    assert model.model.head.decoder_layers[0].bias[blank] < -1e3
    tiny = GigaAmAsr(str(TINY_CKPT))
    assert tiny.model.head.decoder_layers[0].bias[tiny.model.spec.num_classes - 1] > -1e3


# -- CUDA -----------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_espeak
def test_fp16_encoder_on_cuda_matches_offline_and_stays_accurate(held_out) -> None:
    texts, audios = held_out
    gpu = GigaAmAsr(str(TINY_CKPT), device="cuda", max_batch=8)
    assert gpu.describe()["fp16"] is True
    assert {p.dtype for p in gpu.model.encoder.parameters()} == {torch.float16}
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    results = gpu.run_batch(_requests(audios))
    assert sum(_cer(t, r.text) for t, r in zip(texts, results)) / sum(len(t) for t in texts) <= 0.10
    for audio, result in zip(audios, results):
        assert result.text == gpu.reference_transcribe(audio)
        _assert_words_well_formed(result, len(audio))


@needs_espeak
def test_int8_quantized_tiny_model_still_transcribes_and_says_so(held_out) -> None:
    """``quantize='int8'`` swaps GigaAM's Linear layers for dynamic int8 ones; batched decoding still equals the
    quantized model's own offline decoding, and held-out accuracy stays usable."""
    quantized = GigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8, quantize="int8")
    assert quantized.describe()["quantize"] == "int8"
    assert any("quantized" in type(m).__module__ for m in quantized.model.modules())
    texts, audios = held_out
    results = quantized.run_batch(_requests(audios))
    for audio, result in zip(audios, results):
        assert result.text == quantized.reference_transcribe(audio)
    cer = sum(_cer(t, r.text) for t, r in zip(texts, results)) / sum(len(t) for t in texts)
    assert cer <= 0.15, [(t, r.text) for t, r in zip(texts, results)]


def test_int8_is_refused_for_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="int8"):
        GigaAmAsr(str(TINY_CKPT), device="cpu", quantize="int4")
