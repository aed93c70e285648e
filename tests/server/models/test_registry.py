"""server.models.registry: the adapters load on one device, are audited, warmed up, and failures are typed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.models.cache import SEGMENTATION_DEFAULT, ModelUnavailable, segmentation_checkpoint_path
from server.models.registry import Models, load_models

TINY_ASR = Path(__file__).resolve().parents[3] / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"


@pytest.fixture(autouse=True)
def needs_segmentation_weights() -> None:
    try:
        from server.models.cache import fetch_segmentation_checkpoint

        fetch_segmentation_checkpoint()
    except ModelUnavailable as exc:
        pytest.skip(f"default segmentation weights unavailable: {exc}")


def test_loads_audits_and_logs_each_model(caplog: pytest.LogCaptureFixture) -> None:
    asr = str(TINY_ASR) if TINY_ASR.is_file() else None
    with caplog.at_level(logging.INFO, logger="server.models.registry"):
        loaded = load_models(asr, SEGMENTATION_DEFAULT, "resemblyzer", "cpu", max_batch=3)
    assert isinstance(loaded, Models)
    models, placement = loaded  # the server unpacks it like this
    expected = {"vad", "segmentation", "embedding"} | ({"asr"} if asr else set())
    assert set(models) == set(placement) == expected
    for name, model in models.items():
        assert model.name == name and model.max_batch == 3
        assert placement[name].devices == ("cpu",)
        # an adapter whose weights all live in an ONNX Runtime session (the CPU default VAD) has no torch parameters
        assert placement[name].parameters > 0 or model.describe()["engine"] == "onnx"
        assert f"model {name}" in caplog.text
    assert loaded.segmentation.describe()["checkpoint"] == str(segmentation_checkpoint_path())
    assert (loaded.asr is None) == (asr is None)
    assert loaded.vad.describe()["engine"] == "onnx"  # --vad-engine auto on the CPU
    # --diarization-engine auto on the CPU: both diarization models on ONNX Runtime, audited with their weights
    assert loaded.segmentation.describe()["engine"] == loaded.embedding.describe()["engine"] == "onnx"
    assert placement["segmentation"].providers == ("CPUExecutionProvider",) * 2  # the sinc filterbank, the rest
    assert placement["segmentation"].parameters > 1_000_000


def test_server_config_fills_the_arguments_and_asr_errors_become_model_unavailable() -> None:
    from server.config import ServerConfig

    config = ServerConfig(device="cpu", asr_model="no-such-gigaam-model", segmentation_model=SEGMENTATION_DEFAULT,
                          embedding_model="resemblyzer")
    with pytest.raises(ModelUnavailable, match="no-such-gigaam-model"):
        load_models(config)


def test_the_diarizer_fits_the_loaded_models() -> None:
    """The window follows the segmentation model, the thresholds the embedding adapter's calibrated preset."""
    from types import SimpleNamespace

    from server.config import ServerConfig
    from server.models.registry import fit_diarizer, fit_session
    from streaming.config import DiarizationOptions, ms

    base = DiarizationOptions()
    seg30 = SimpleNamespace(window=ms(10_000))
    preset = SimpleNamespace(tracking={"new_speaker_threshold": 0.5, "change_threshold": 0.6})
    fitted = fit_diarizer(base, seg30, preset)
    assert fitted.window == ms(10_000) and fitted.latency == base.latency and fitted.step == base.step
    assert (fitted.new_speaker_threshold, fitted.update_threshold, fitted.change_threshold) == (0.5, 0.5, 0.6)
    plain = fit_diarizer(base, SimpleNamespace(window=ms(5_000)), SimpleNamespace())
    assert plain == base  # resemblyzer's calibration is the options' defaults
    assert fit_session(ServerConfig(), {"segmentation": seg30, "embedding": preset}, "cuda:0").session.diarizer == fitted
    on_cpu = fit_session(ServerConfig(), {"segmentation": seg30, "embedding": preset}, "cpu").session.diarizer
    assert on_cpu == fitted.at_step(ms(1_000))  # the CPU's default step (ServerConfig.diarization_step auto)


def test_threads_have_one_home_and_importing_silero_does_not_change_them() -> None:
    """``load_models(threads=N)`` sets torch's intra-op threads and the ONNX encoder's; the silero-vad package's
    import (which calls ``torch.set_num_threads(1)``) no longer changes them behind the caller's back."""
    import subprocess
    import sys

    script = ("import torch; torch.set_num_threads(2)\n"
              "from server.models.vad import default_weights; default_weights()\n"
              "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.split()[-1] == "2"

    import torch

    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            loaded = load_models(str(TINY_ASR), SEGMENTATION_DEFAULT, "resemblyzer", "cpu", max_batch=2,
                                 warmup=False, asr_engine="onnx", threads=threads)
            assert torch.get_num_threads() == threads
            assert loaded.asr.session.get_session_options().intra_op_num_threads == threads
        with pytest.raises(ValueError, match="threads must be >= 1"):
            load_models(None, device="cpu", threads=0)
    finally:
        torch.set_num_threads(before)


def test_the_embedding_reuse_of_the_config_reaches_the_loaded_adapter() -> None:
    """``--embedding-reuse edge`` builds resemblyzer with its stream-grid partials; the default embeds as before."""
    from server.config import ServerConfig

    edge = load_models(ServerConfig(device="cpu", embedding_reuse="edge", asr_model=str(TINY_ASR)), warmup=False)
    assert edge.embedding.describe()["reuse_partials"] == "edge" and edge.embedding.reuse is not None
    assert edge.embedding.reuse.edge_only
    plain = load_models(None, SEGMENTATION_DEFAULT, "resemblyzer", "cpu", warmup=False)
    assert plain.embedding.describe()["reuse_partials"] is False and plain.embedding.reuse is None
