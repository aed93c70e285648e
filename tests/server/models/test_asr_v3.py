"""GigaAM v3 through rechka's loader: tiny v3-format checkpoints made by ``scripts/train_tiny_gigaam_v3.py`` (v3's
``center=False`` 20 ms front end, conv1d subsampling and layer-norm convolutions, a SentencePiece vocabulary with
capitals and punctuation; a CTC and an RNNT head, taught by the tiny v2 model), loaded by name from gigaam's cache
and by path; ragged batches, cross-session batching, word times, the ONNX engine."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from streaming.config import SAMPLE_RATE
from server.batcher import Batcher
from server.models import gigaam_models
from server.models.asr import GigaAmAsr, ModelUnavailable
from server.models.gigaam_compat import build_model, load_checkpoint
from server.models.gigaam_net import LogMelFeatures
from server.models.gigaam_spec import FrontEnd, parse_cfg
from streaming.work import AsrKind, AsrRequest
from tests.server.conftest import small_gigaam_cfg
from tests.server.models.test_asr_onnx import cache  # noqa: F401  (RECHKA_CACHE in a temporary folder)

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets"
V3_CTC = ASSETS / "tiny_v3_e2e_ctc.ckpt"
V3_RNNT = ASSETS / "tiny_v3_e2e_rnnt.ckpt"
SR = SAMPLE_RATE
PUNCTUATION = ",."


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requests(audios: list[np.ndarray], session: str = "s") -> list[AsrRequest]:
    return [AsrRequest(session, i, 0, 0, a, utterance_id=i, kind=AsrKind.FINAL) for i, a in enumerate(audios)]


@pytest.fixture(scope="module")
def ctc() -> GigaAmAsr:
    torch.set_num_threads(1)
    return GigaAmAsr(str(V3_CTC), device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def rnnt() -> GigaAmAsr:
    return GigaAmAsr(str(V3_RNNT), device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], list[np.ndarray]]:
    """e2e sentences from the held-out voices and word sequences of the training scripts."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    v3, base = _script("train_tiny_gigaam_v3"), _script("train_tiny_gigaam")
    jobs = v3.make_jobs(12, seed=2025, voices=base.HELD_OUT_VOICES, held_out=True)
    assert all(base.is_held_out_sequence(v3.plain(text)) for text, *_ in jobs)
    return [text for text, *_ in jobs], [base.synthesize(*job) for job in jobs]


def _assert_aligned(result, n_samples: int) -> None:
    assert " ".join(w.text for w in result.words) == result.text
    for i, word in enumerate(result.words):
        assert 0 <= word.start < word.end <= n_samples
        assert word.text and " " not in word.text
        # punctuation belongs to the word before it; only a leading mark has none to join
        assert i == 0 or word.text.strip(PUNCTUATION), f"punctuation-only word {word.text!r} in {result.text!r}"
    for a, b in zip(result.words, result.words[1:]):
        assert a.start <= b.start and a.end <= b.end


# -- the tiny v3 checkpoints --------------------------------------------------------------------------------------


def test_tiny_v3_checkpoints_are_v3_format_and_small() -> None:
    for path, head in ((V3_CTC, "ctc"), (V3_RNNT, "rnnt")):
        cfg = load_checkpoint(path)["cfg"]
        spec = parse_cfg(cfg)
        assert spec.head == head and spec.frontend.center is False
        assert (spec.frontend.n_fft, spec.frontend.win_length, spec.frontend.hop_length) == (320, 320, 160)
        assert (spec.encoder.subsampling, spec.encoder.subs_kernel_size) == ("conv1d", 5)  # the published layout
        assert spec.encoder.conv_norm_type == "layer_norm" and spec.tokenizer_path is not None
        assert path.stat().st_size < 4 * 1024 * 1024
        assert path.with_name(path.stem + "_tokenizer.model").is_file()


def test_describe_says_what_the_checkpoint_computes(ctc: GigaAmAsr, rnnt: GigaAmAsr) -> None:
    info = ctc.describe()
    assert info["head"] == "ctc" and info["tokenizer"] == "sentencepiece" and info["subsampling"] == "conv1d x4"
    assert info["frontend"] == "n_fft 320 win 320 hop 160 center False"
    assert rnnt.describe()["head"] == "rnnt" and ctc.spec.samples_per_frame == 640


@pytest.mark.parametrize("n", [320, 321, 479, 480, 481, 1000, 16000, 16321])
def test_center_false_frame_count_is_len_minus_win_over_hop_plus_one(ctc: GigaAmAsr, n: int) -> None:
    frontend = ctc.spec.frontend
    wav = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32))
    features, frames = ctc.model.preprocessor(wav[None], torch.tensor([n]))
    assert int(frames[0]) == features.shape[-1] == (n - 320) // 160 + 1 == frontend.frames(n)


def test_center_false_features_are_torchaudios_uncentred_log_mel(ctc: GigaAmAsr) -> None:
    wav = torch.from_numpy(np.random.default_rng(3).standard_normal(8000).astype(np.float32)) * 0.1
    mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=320, win_length=320, hop_length=160, n_mels=64, center=False)
    ours, _ = LogMelFeatures(ctc.spec.frontend)(wav[None], torch.tensor([8000]))
    torch.testing.assert_close(ours, torch.log(mel(wav[None]).clamp(1e-9, 1e9)))
    centred, frames = LogMelFeatures(FrontEnd())(wav[None], torch.tensor([8000]))  # v2's defaults: centred
    assert int(frames[0]) == centred.shape[-1] == 8000 // 160 + 1


def test_the_checkpoints_window_and_filterbank_are_the_ones_used(ctc: GigaAmAsr) -> None:
    """The tiny checkpoints store float16 tensors (as v3's filterbank is rounded to bfloat16): the loaded buffers,
    not freshly computed ones, make the features."""
    state = load_checkpoint(V3_CTC)["state_dict"]
    for key in ("featurizer.0.mel_scale.fb", "featurizer.0.spectrogram.window"):
        stored = state[f"preprocessor.{key}"]
        assert stored.dtype == torch.float16
        assert torch.equal(ctc.model.preprocessor.state_dict()[key], stored.float())


def test_audio_shorter_than_one_window_transcribes_as_empty(ctc: GigaAmAsr, rnnt: GigaAmAsr) -> None:
    short = np.full(319, 0.1, np.float32)
    for model in (ctc, rnnt):
        results = model.run_batch(_requests([short, np.zeros(0, np.float32), np.full(8000, 0.01, np.float32)]))
        assert results[0].text == "" and results[0].words == () and results[1].text == ""
        assert model.reference_transcribe(short) == ""


# -- decoding -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_ragged_batches_equal_one_by_one_and_gigaams_offline_decoding(head: str, ctc, rnnt, held_out) -> None:
    model = ctc if head == "ctc" else rnnt
    _, audios = held_out
    assert len({len(a) for a in audios}) == len(audios)
    batched = model.run_batch(_requests(audios))
    in_threes = GigaAmAsr(str(V3_CTC if head == "ctc" else V3_RNNT), max_batch=3).run_batch(_requests(audios))
    assert sum(bool(r.text) for r in batched) == len(audios)
    for audio, result, other in zip(audios, batched, in_threes):
        single = model.run_batch(_requests([audio]))[0]
        assert result.text == single.text == other.text == model.reference_transcribe(audio)
        assert result.words == single.words == other.words
        _assert_aligned(result, len(audio))


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_e2e_finals_have_capitals_punctuation_attached_and_low_cer(head: str, ctc, rnnt, held_out) -> None:
    model = ctc if head == "ctc" else rnnt
    texts, audios = held_out
    results = model.run_batch(_requests(audios))
    edit = _script("train_tiny_gigaam").edit_distance
    cer = sum(edit(t, r.text) for t, r in zip(texts, results)) / sum(len(t) for t in texts)
    assert cer <= 0.25, [(t, r.text) for t, r in zip(texts, results)]
    assert sum(r.text[:1].isupper() for r in results) >= len(results) * 3 // 4
    assert sum(r.words[-1].text.endswith(".") for r in results if r.words) >= len(results) * 3 // 4


def test_word_times_follow_the_audio(ctc: GigaAmAsr, held_out) -> None:
    """One second of silence before the speech moves every word by one second (± 3 frames). The tiny model writes
    a capital only at the very start and may hear a comma in the leading silence, so words are compared in lower
    case without punctuation."""
    _, audios = held_out
    pad = SR
    shifted_audios = [np.concatenate([np.zeros(pad, np.float32), a]) for a in audios]
    plain, shifted = ctc.run_batch(_requests(audios)), ctc.run_batch(_requests(shifted_audios))
    frame = ctc.spec.samples_per_frame

    def spoken(result):
        return [(w.text.lower().strip(PUNCTUATION), w.start) for w in result.words if w.text.strip(PUNCTUATION)]

    compared = 0
    for audio, a, b in zip(audios, plain, shifted):
        _assert_aligned(b, len(audio) + pad)
        assert spoken(b)[0][1] >= pad - 3 * frame
        if [w for w, _ in spoken(a)] == [w for w, _ in spoken(b)]:
            compared += 1
            for (_, x), (_, y) in zip(spoken(a), spoken(b)):
                assert abs((y - pad) - x) <= 3 * frame
    assert compared >= len(audios) // 2


def test_cross_session_batching_runs_v3_in_shared_batches(ctc: GigaAmAsr, held_out) -> None:
    """Three sessions submit at once through the real Batcher: one encoder pass serves several sessions, and every
    session gets exactly the result of its own offline decoding."""
    _, audios = held_out
    sizes: list[int] = []

    class Recording:
        name, max_batch = "asr", 8

        def run_batch(self, requests):
            sizes.append(len(requests))
            return ctc.run_batch(requests)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(Recording(), pool, max_batch=8, max_wait=0.2)
            requests = [r for s in ("a", "b", "c") for r in _requests(audios[:3], session=s)]
            results = await asyncio.gather(*(batcher.submit(r) for r in requests))
            await batcher.close()
        return requests, results

    requests, results = asyncio.run(main())
    assert max(sizes) > 1 and len({r.session_id for r in requests}) == 3
    for request, result in zip(requests, results):
        assert (result.session_id, result.seq) == (request.session_id, request.seq)
        assert result.text == ctc.reference_transcribe(request.audio)


# -- loading by name ----------------------------------------------------------------------------------------------


def _char_checkpoint(folder: Path, head: str) -> Path:
    """A small checkpoint of the published v3_ctc / v3_rnnt format (characters, conv1d, layer norm), random weights."""
    torch.manual_seed(0)
    cfg = small_gigaam_cfg(f"v3_{head}")
    path = folder / f"char_{head}.ckpt"
    torch.save({"cfg": cfg, "state_dict": build_model(cfg).state_dict()}, path)
    return path


def test_every_v3_name_loads_from_gigaams_cache_through_the_real_loader(tmp_path: Path) -> None:
    sources = {"v3_e2e_ctc": V3_CTC, "v3_e2e_rnnt": V3_RNNT, "v3_ctc": _char_checkpoint(tmp_path, "ctc"),
               "v3_rnnt": _char_checkpoint(tmp_path, "rnnt")}
    cache = tmp_path / "cache"
    cache.mkdir()
    audio = np.random.default_rng(5).standard_normal(12000).astype(np.float32) * 0.1
    for name, source in sources.items():
        model = gigaam_models.PUBLISHED[name]
        shutil.copy(source, cache / model.checkpoint_file)
        if model.tokenizer_file:
            shutil.copy(source.with_name(source.stem + "_tokenizer.model"), cache / model.tokenizer_file)
        by_name = GigaAmAsr(name, cache_dir=cache, download_url="http://127.0.0.1:9/GigaAM")
        by_path = GigaAmAsr(str(source))
        assert by_name.describe()["checkpoint"] == str(cache / model.checkpoint_file)
        assert by_name.describe()["head"] == model.head
        assert by_name.describe()["tokenizer"] == ("sentencepiece" if model.tokenizer else "characters")
        (named,), (pathed,) = by_name.run_batch(_requests([audio])), by_path.run_batch(_requests([audio]))
        assert (named.text, named.words) == (pathed.text, pathed.words)


def test_uncached_v3_name_says_which_files_it_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        GigaAmAsr("v3_e2e_rnnt", cache_dir=tmp_path, download_url="http://127.0.0.1:9/GigaAM", download_timeout_s=2)
    message = str(err.value)
    assert str(tmp_path / "v3_e2e_rnnt.ckpt") in message and "v3_e2e_rnnt_tokenizer.model" in message
    assert "--asr-model" in message and list(tmp_path.iterdir()) == []


def test_a_download_is_kept_only_with_the_published_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cdn, cache = tmp_path / "cdn", tmp_path / "cache"
    cdn.mkdir()
    shutil.copy(V3_CTC, cdn / "v3_e2e_ctc.ckpt")
    shutil.copy(V3_CTC.with_name(V3_CTC.stem + "_tokenizer.model"), cdn / "v3_e2e_ctc_tokenizer.model")
    with pytest.raises(ModelUnavailable, match="MD5"):
        GigaAmAsr("v3_e2e_ctc", cache_dir=cache, download_url=cdn.as_uri())
    assert not (cache / "v3_e2e_ctc.ckpt").exists() and not list(cache.glob("*.unverified"))
    md5 = hashlib.md5(V3_CTC.read_bytes()).hexdigest()
    entry = dataclasses.replace(gigaam_models.PUBLISHED["v3_e2e_ctc"], md5=md5)
    monkeypatch.setitem(gigaam_models.PUBLISHED, "v3_e2e_ctc", entry)
    fetched = GigaAmAsr("v3_e2e_ctc", cache_dir=cache, download_url=cdn.as_uri())
    assert (cache / "v3_e2e_ctc.ckpt").read_bytes() == V3_CTC.read_bytes()
    assert fetched.describe()["tokenizer"] == "sentencepiece"


def test_random_v3_architecture_is_full_size() -> None:
    info = GigaAmAsr("random:v3_ctc").describe()
    assert info["random_weights"] is True and info["encoder"] == "16x768 rotary"
    assert info["subsampling"] == "conv1d x4" and info["frontend"] == "n_fft 320 win 320 hop 160 center False"


# -- the ONNX Runtime engine --------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["masked-v1", "masked-taps-v2"])  # fp32's graph form and int8's
@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_onnx_engine_gives_the_torch_finals_for_v3(head: str, recipe: str, ctc, rnnt, held_out, cache: Path) -> None:
    from server.models.asr_onnx import OnnxGigaAmAsr

    torch_model = ctc if head == "ctc" else rnnt
    onnx = OnnxGigaAmAsr(str(V3_CTC if head == "ctc" else V3_RNNT), max_batch=8, precision="fp32", recipe=recipe)
    assert onnx.describe()["engine"] == "onnx" and onnx.spec == torch_model.spec
    _, audios = held_out
    for got, want in zip(onnx.run_batch(_requests(audios)), torch_model.run_batch(_requests(audios))):
        assert (got.text, got.words) == (want.text, want.words)


def test_onnx_export_of_the_published_v3_encoder_layout(tmp_path: Path, cache: Path) -> None:
    """conv1d subsampling and layer-norm convolutions export, and ragged batches match the torch encoder."""
    from server.models.asr_onnx import OnnxGigaAmAsr

    path = _char_checkpoint(tmp_path, "ctc")
    onnx, reference = OnnxGigaAmAsr(str(path), precision="fp32"), GigaAmAsr(str(path))
    rng = np.random.default_rng(1)
    audios = [torch.from_numpy((rng.standard_normal(n) * 0.1).astype(np.float32)) for n in (9000, 4000, 320)]
    with torch.inference_mode():
        (got, got_len), (want, want_len) = onnx._encode(audios), reference._encode(audios)
    assert torch.equal(got_len, want_len)
    for row, n in enumerate(want_len.tolist()):
        torch.testing.assert_close(got[row, :n], want[row, :n], atol=1e-4, rtol=1e-4)
