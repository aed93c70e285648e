"""Silero VAD on ONNX Runtime: :class:`~server.models.vad.VadModel`'s network exported once at load, run on the CPU.

torch's fixed cost per call and per op (~1.3-1.5 ms CPU for a handful of chunks) is most of the VAD's cost on a
CPU; the same graph on ONNX Runtime costs a fraction of it (``benchmarks/vad_engines.py``, docs/benchmarks.md #14).
The graph is :class:`~server.models.vad.SileroVadNet` itself (same weights, same front end), exported by torch's
TorchScript exporter once into the model cache (``onnx/silero-vad-KEY.onnx``, keyed by the weights, opset and torch
version, like GigaAM's graphs) with one change: the ONNX LSTM's ``sequence_lens`` input is wired to a ``lengths`` graph input,
so a batch of ragged requests is one zero-padded ``(streams, steps, CONTEXT + 512)`` call and every stream's final
``h``/``c`` is the state after its own last chunk. Requests, results and :class:`~server.models.vad.SileroState`
are the torch adapter's, unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from server.models.asr_onnx import OPSET, engine_for, ensure_onnx_graph, session_options
from server.models.audit import note_onnx_parameters
from server.models.vad import CONTEXT, HIDDEN, SileroState, SileroVadNet, VadModel
from streaming.config import VAD_CHUNK

WINDOW = CONTEXT + VAD_CHUNK


def vad_engine_for(device_type: str, engine: str = "auto") -> str:
    """``--vad-engine`` resolved for a device (:func:`~server.models.asr_onnx.engine_for`)."""
    return engine_for("VAD", "--vad-engine", device_type, engine)


class _Sequences(nn.Module):
    """What is exported: windows (B, T, WINDOW), h and c (1, B, HIDDEN) → probabilities (B, T), h, c."""

    def __init__(self, net: SileroVadNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, windows: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        streams, steps, width = windows.shape
        features = self.net.features(windows.reshape(streams * steps, width)).reshape(streams, steps, HIDDEN)
        outputs, (h_n, c_n) = self.net.lstm(features, (h, c))
        return self.net.probability(outputs.reshape(streams * steps, HIDDEN)).reshape(streams, steps), h_n, c_n


def export_graph(net: SileroVadNet) -> bytes:
    """The ONNX graph of ``net`` with ragged lengths (``lengths``: int32 (B,), chunks per stream, each >= 1)."""
    import onnx
    from onnx import TensorProto, helper

    buffer = io.BytesIO()
    batch, steps = {0: "streams", 1: "steps"}, {1: "streams"}
    torch.onnx.export(_Sequences(net).eval(), (torch.zeros(2, 3, WINDOW), torch.zeros(1, 2, HIDDEN),
                                               torch.zeros(1, 2, HIDDEN)), buffer,
                      input_names=["windows", "h", "c"], output_names=["probs", "h_n", "c_n"], opset_version=OPSET,
                      dynamic_axes={"windows": batch, "probs": batch, "h": steps, "c": steps, "h_n": steps,
                                    "c_n": steps}, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    (lstm,) = [node for node in graph.graph.node if node.op_type == "LSTM"]
    lstm.input[4] = "lengths"  # sequence_lens: ORT stops each stream's recurrence after its own last chunk
    graph.graph.input.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["streams"]))
    return graph.SerializeToString()


def ensure_vad_graph(net: SileroVadNet, root: Optional[Path] = None) -> Path:
    """The cached graph of ``net`` (:func:`export_graph`), exported first if it is missing."""
    return ensure_onnx_graph("silero-vad", net, lambda: export_graph(net), root, recipe="silero-vad-sequence-lens")


class OnnxVadModel(VadModel):
    """The "vad" batch model on ONNX Runtime (CPU, ``threads`` intra-op threads; default 1)."""

    def __init__(self, device: str = "cpu", max_batch: int = 64, weights: Optional[Path] = None,
                 threads: int = 1) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError("OnnxVadModel runs on the CPU only; use VadModel (torch) on CUDA")
        super().__init__("cpu", max_batch, weights)
        import onnxruntime as ort

        self.threads = threads
        self.session = ort.InferenceSession(str(ensure_vad_graph(self.net)), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        note_onnx_parameters(self.session, sum(p.numel() for p in self.net.parameters()))

    def _run(self, audios: list[np.ndarray], states: list[SileroState]) -> tuple[list[np.ndarray], list[SileroState]]:
        counts = [len(a) // VAD_CHUNK for a in audios]
        signals = [np.concatenate([s.context, a]) for s, a in zip(states, audios)]
        live = [i for i, k in enumerate(counts) if k]  # a stream without chunks keeps its state as it is
        probs = [np.zeros(0, np.float32) for _ in audios]
        h = [s.h for s in states]
        c = [s.c for s in states]
        if live:
            steps = max(counts[i] for i in live)
            windows = np.zeros((len(live), steps, WINDOW), np.float32)
            for row, i in enumerate(live):
                windows[row, :counts[i]] = np.lib.stride_tricks.sliding_window_view(signals[i], WINDOW)[::VAD_CHUNK]
            feed = {"windows": windows, "lengths": np.array([counts[i] for i in live], np.int32),
                    "h": np.stack([h[i] for i in live])[None], "c": np.stack([c[i] for i in live])[None]}
            out, h_n, c_n = self.session.run(None, feed)
            for row, i in enumerate(live):
                probs[i] = out[row, :counts[i]].astype(np.float32)
                h[i], c[i] = h_n[0, row].copy(), c_n[0, row].copy()
        new_states = [SileroState(h[i], c[i], signals[i][-CONTEXT:].copy()) for i in range(len(audios))]
        return probs, new_states

    def modules(self) -> dict[str, Any]:
        return {"silero": self.session}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": "onnx", "threads": self.threads}
