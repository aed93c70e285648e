"""server.models.device: automatic choice, explicit CUDA without a GPU is an error, malformed names."""

from __future__ import annotations

import logging

import pytest
import torch

from server.models.device import DeviceUnavailable, resolve_device


def fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, count: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("requested", [None, "", "auto", "AUTO"])
def test_automatic_choice_follows_cuda_availability(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                    requested: str) -> None:
    fake_cuda(monkeypatch, available=False)
    with caplog.at_level(logging.INFO, logger="server.models.device"):
        assert resolve_device(requested) == torch.device("cpu")
    assert "automatic choice" in caplog.text
    fake_cuda(monkeypatch, available=True, count=2)
    assert resolve_device(requested) == torch.device("cuda", 0)


def test_explicit_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, available=True, count=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda", 0)  # with its index, as tensors report it
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailable, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, available=False)
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            resolve_device(requested)


@pytest.mark.parametrize("requested", ["gpu", "cuda:x", "cuda0", "cpu:1", "tpu"])
def test_malformed_names(requested: str) -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N|has no index"):
        resolve_device(requested)


def test_mps_is_refused() -> None:
    with pytest.raises(DeviceUnavailable, match="mps"):
        resolve_device("mps")
