"""server.models.audit: every parameter, buffer and tensor attribute of every adapter is on the requested device."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from server.models.audit import PlacementError, audit_model, audit_models
from server.models.cache import ModelUnavailable

ROOT = Path(__file__).resolve().parents[3]
TINY_ASR = ROOT / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.norm = nn.BatchNorm1d(3)  # has buffers (running mean/var, batch count)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(Block(), Block())
        self.head = nn.Linear(3, 1)


class Wrapper:
    """A non-module object holding modules and tensors, as pyannote/gigaam/resemblyzer wrappers do."""

    def __init__(self) -> None:
        self.net = Net()
        self.tables = [torch.zeros(4)]
        self.settings = {"scale": torch.ones(2)}


class Adapter:
    name = "toy"
    max_batch = 1

    def __init__(self) -> None:
        self.wrapper = Wrapper()
        self.extra = Net()

    def modules(self) -> dict[str, Any]:
        return {"wrapper": self.wrapper, "extra": self.extra, "alias": self.extra}


def test_report_is_read_from_the_tensors() -> None:
    adapter = Adapter()
    report = audit_model("toy", adapter, "cpu")
    expected = sum(p.numel() for p in adapter.wrapper.net.parameters()) + sum(
        p.numel() for p in adapter.extra.parameters())
    assert report.parameters == expected  # the aliased module is counted once
    assert report.devices == ("cpu",)
    assert set(report.dtypes) == {"float32", "int64"}  # BatchNorm's num_batches_tracked is int64
    tensors = (len(list(adapter.wrapper.net.parameters())) + len(list(adapter.wrapper.net.buffers())) + 2
               + len(list(adapter.extra.parameters())) + len(list(adapter.extra.buffers())))
    assert report.tensors == tensors
    assert "toy: cpu" in report.summary()


def test_catches_a_nested_submodule_on_another_device() -> None:
    adapter = Adapter()
    block = adapter.wrapper.net.inner[1]
    block.conv = block.conv.to("meta")
    with pytest.raises(PlacementError) as caught:
        audit_models({"toy": adapter}, "cpu")
    message = str(caught.value)
    assert "'toy'" in message and "wrapper.net.inner.1.conv.weight" in message and "meta" in message


def test_catches_a_buffer_and_a_plain_tensor_attribute() -> None:
    adapter = Adapter()
    norm = adapter.extra.inner[0].norm
    norm.running_mean = norm.running_mean.to("meta")
    with pytest.raises(PlacementError, match=r"extra\.inner\.0\.norm\.running_mean \(buffer\)"):
        audit_model("toy", adapter, "cpu")

    adapter = Adapter()
    adapter.extra.head.cache = torch.zeros(3, device="meta")  # not registered: .to() would not move it
    with pytest.raises(PlacementError, match=r"extra\.head\.cache \(tensor attribute\)"):
        audit_model("toy", adapter, "cpu")


def test_catches_tensors_inside_non_module_wrappers() -> None:
    adapter = Adapter()
    adapter.wrapper.tables.append(torch.zeros(1, device="meta"))
    with pytest.raises(PlacementError, match=r"wrapper\.tables\[1\]"):
        audit_model("toy", adapter, "cpu")
    adapter = Adapter()
    adapter.wrapper.settings["scale"] = adapter.wrapper.settings["scale"].to("meta")
    with pytest.raises(PlacementError, match=r"wrapper\.settings\['scale'\]"):
        audit_model("toy", adapter, "cpu")


def test_requested_device_must_match_even_when_all_agree() -> None:
    adapter = Adapter()
    with pytest.raises(PlacementError, match="not on meta"):
        audit_model("toy", adapter, "meta")


# -- real adapters ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vad() -> Any:
    from server.models.vad import VadModel

    return VadModel("cpu")


@pytest.fixture(scope="module")
def embedding() -> Any:
    from server.models.embedding import ResemblyzerEmbedding

    return ResemblyzerEmbedding("cpu")


@pytest.fixture(scope="module")
def segmentation() -> Any:
    from server.models.segmentation import SegmentationModel

    try:
        return SegmentationModel(device="cpu")
    except ModelUnavailable as exc:
        pytest.skip(f"default segmentation weights unavailable: {exc}")


def test_real_adapters_pass_on_cpu(vad: Any, embedding: Any, segmentation: Any) -> None:
    report = audit_models({"vad": vad, "segmentation": segmentation, "embedding": embedding}, "cpu")
    assert report["vad"].parameters == sum(p.numel() for p in vad.net.parameters())
    assert report["segmentation"].parameters == sum(p.numel() for p in segmentation.model.parameters())
    assert report["embedding"].parameters == sum(p.numel() for p in embedding.encoder.parameters())
    for entry in report.values():
        assert entry.devices == ("cpu",) and entry.dtypes == ("float32",)


@pytest.mark.skipif(not TINY_ASR.is_file(), reason="tests/assets/tiny_gigaam_ctc.ckpt is absent")
def test_gigaam_adapter_passes_on_cpu() -> None:
    from server.models.asr import GigaAmAsr

    asr = GigaAmAsr(str(TINY_ASR), "cpu", 4)
    entry = audit_model("asr", asr, "cpu")
    assert entry.devices == ("cpu",) and entry.parameters == sum(p.numel() for p in asr.model.parameters())


def test_catches_misplaced_tensors_nested_in_real_wrappers(embedding: Any, segmentation: Any) -> None:
    encoder = embedding.encoder
    original = encoder.lstm
    try:
        meta_lstm = copy.deepcopy(original)
        encoder.lstm = meta_lstm.to("meta")
        with pytest.raises(PlacementError, match=r"voice_encoder\.lstm\.weight_ih_l0"):
            audit_model("embedding", embedding, "cpu")
    finally:
        encoder.lstm = original
    filterbank = segmentation.model.sincnet.conv1d[0].filterbank
    window = filterbank.window_
    try:
        filterbank.window_ = window.to("meta")
        with pytest.raises(PlacementError, match=r"pyannote\.sincnet\.conv1d\.0\.filterbank\.window_ \(buffer\)"):
            audit_model("segmentation", segmentation, "cpu")
    finally:
        filterbank.window_ = window
    audit_model("segmentation", segmentation, "cpu")  # restored


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adapters_load_on_cuda_and_pass_the_audit(vad: Any) -> None:
    from server.models.device import resolve_device
    from server.models.embedding import ResemblyzerEmbedding
    from server.models.segmentation import SegmentationModel
    from server.models.vad import VadModel
    from streaming.work import EmbeddingRequest, SegmentationRequest, VadRequest

    device = resolve_device("cuda")
    models = {"vad": VadModel(str(device)), "segmentation": SegmentationModel(device=str(device)),
              "embedding": ResemblyzerEmbedding(str(device))}
    report = audit_models(models, device)
    for entry in report.values():
        assert entry.devices == (str(device),)
    audio = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.1).astype(np.float32)
    on_gpu = models["vad"].run_batch([VadRequest("s", 0, 0, 0, audio[:512 * 30])])[0].probs
    on_cpu = vad.run_batch([VadRequest("s", 0, 0, 0, audio[:512 * 30])])[0].probs
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)
    (scores,) = models["segmentation"].run_batch([SegmentationRequest("s", 1, 0, 0, audio)])
    assert scores.scores.shape[1] == 3 and 0.0 <= scores.scores.min() <= scores.scores.max() <= 1.0
    (vector,) = models["embedding"].run_batch([EmbeddingRequest("s", 2, 0, 0, audio)])
    assert vector.embedding.shape == (256,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_start_up_path_loads_all_four_models_on_cuda_with_a_fp16_encoder() -> None:
    """The server's own loader (registry) with the tiny GigaAM: every tensor of every model on CUDA, read back."""
    from pathlib import Path

    from server.models.registry import load_models

    tiny = Path(__file__).resolve().parents[2] / "assets" / "tiny_gigaam_ctc.ckpt"
    models, placement = load_models(str(tiny), device="cuda", warmup=True)
    assert set(placement) == {"vad", "segmentation", "embedding", "asr"}
    for entry in placement.values():
        assert all(d.startswith("cuda") for d in entry.devices)
    encoder = models["asr"].model.encoder
    assert {p.dtype for p in encoder.parameters()} == {torch.float16}
