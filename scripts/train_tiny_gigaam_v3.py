"""Train tiny GigaAM-v3-format models (end-to-end style: SentencePiece pieces, capitals, commas, full stops) on
espeak-ng Russian speech, for tests that need real v3 checkpoints.

The format is v3's: ``center=False`` 20 ms log-mel windows (``n_fft = win_length = 320``, hop 160), ``conv1d``
subsampling with kernel 5, ``layer_norm`` in the Conformer convolution, a SentencePiece tokenizer saved next to
the checkpoint as ``<checkpoint stem>_tokenizer.model`` (gigaam's naming). Models are built by rechka's own loader
(:func:`server.models.gigaam_compat.build_model`), so the checkpoints load through the same code as real ones.

* ``ctc``: a 3-layer × 96 Conformer with a CTC head, trained from scratch with CTC loss.
* ``rnnt``: the same encoder, initialised from the CTC checkpoint, with an RNNT head (1-layer LSTM prediction
  network, joint), trained with torchaudio's RNNT loss.

Sentences are 1–5 lexicon words (``scripts/lexicon_ru.txt``), the first capitalised, a comma after a word one time
in four, a full stop at the end: espeak-ng pauses at the commas, so the model can hear them. The SentencePiece
vocabulary is trained on such sentences. Held-out voices and word sequences follow ``train_tiny_gigaam.py``.
Training stops on wall time (the CPU is shared).

Usage (each run about 10 CPU-minutes)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_tiny_gigaam_v3.py ctc --minutes 16 \\
        --out tests/assets/tiny_v3_e2e_ctc.ckpt
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_tiny_gigaam_v3.py rnnt --minutes 12 --lr 1e-3 \\
        --init tests/assets/tiny_v3_e2e_ctc.ckpt --out tests/assets/tiny_v3_e2e_rnnt.ckpt

Importing this module has no side effects (the tests use its sentence rules).
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_tiny_gigaam as base  # noqa: E402  (synthesis, augmentation, batching, held-out rules)

VOCAB_SIZE = 96
D_MODEL = 96


def e2e_sentence(words: Sequence[str], rng: random.Random) -> str:
    """``Слово слово, слово.``: capitalised, a comma after a word one time in four, a full stop at the end."""
    out = []
    for i, word in enumerate(words):
        comma = i < len(words) - 1 and rng.random() < 0.25
        out.append((word.capitalize() if i == 0 else word) + ("," if comma else ""))
    return " ".join(out) + "."


def plain(sentence: str) -> str:
    """The lower-case words of an e2e sentence (what the held-out rule is computed on)."""
    return " ".join(w.strip(",.").lower() for w in sentence.split())


def make_jobs(count: int, seed: int, voices: Sequence[str], held_out: bool) -> list[tuple[str, str, int, int]]:
    """``count`` (sentence, voice, speed, pitch), reproducible from ``seed``; held out as in train_tiny_gigaam."""
    rng = random.Random(seed)
    words = base.load_lexicon()
    jobs = []
    for _ in range(count):
        text = base.random_sequence(rng, words, held_out)
        jobs.append((e2e_sentence(text.split(), rng), rng.choice(voices), rng.randint(*base.SPEED_RANGE),
                     rng.randint(*base.PITCH_RANGE)))
    return jobs


def train_tokenizer(path: Path, seed: int) -> None:
    """A unigram SentencePiece model of :data:`VOCAB_SIZE` pieces over 20 000 e2e sentences from the lexicon."""
    import sentencepiece as spm

    rng = random.Random(seed)
    words = base.load_lexicon()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        lines = [e2e_sentence([rng.choice(words) for _ in range(rng.randint(1, base.MAX_WORDS))], rng)
                 for _ in range(20000)]
        corpus.write_text("\n".join(lines), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=VOCAB_SIZE, model_type="unigram",
            character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, num_threads=1, minloglevel=2)
        shutil.copy(Path(tmp) / "sp.model", path)


def model_config(head: str, tokenizer: Path) -> Any:
    """gigaam's cfg layout for a tiny v3 model with ``head`` ``ctc`` or ``rnnt``."""
    import omegaconf

    classes = VOCAB_SIZE + 1
    if head == "ctc":
        head_cfg: dict[str, Any] = {"_target_": "gigaam.decoder.CTCHead", "feat_in": D_MODEL, "num_classes": classes}
        decoding: dict[str, Any] = {"_target_": "gigaam.decoding.CTCGreedyDecoding", "vocabulary": [],
                                    "model_path": tokenizer.name}
    else:
        head_cfg = {"_target_": "gigaam.decoder.RNNTHead",
                    "decoder": {"pred_hidden": 64, "pred_rnn_layers": 1, "num_classes": classes},
                    "joint": {"enc_hidden": D_MODEL, "pred_hidden": 64, "joint_hidden": 96, "num_classes": classes}}
        decoding = {"_target_": "gigaam.decoding.RNNTGreedyDecoding", "vocabulary": [],
                    "model_path": tokenizer.name, "max_symbols_per_step": 5}
    return omegaconf.OmegaConf.create({
        "model_class": head,
        "model_name": f"tiny_v3_e2e_{head}",
        "sample_rate": base.SAMPLE_RATE,
        "preprocessor": {"_target_": "gigaam.preprocess.FeatureExtractor", "sample_rate": base.SAMPLE_RATE,
                         "features": 64, "n_fft": 320, "win_length": 320, "hop_length": 160, "center": False,
                         "mel_scale": "htk"},
        "encoder": {"_target_": "gigaam.encoder.ConformerEncoder", "feat_in": 64, "n_layers": 3, "d_model": D_MODEL,
                    "subsampling": "conv1d", "subs_kernel_size": 5, "subsampling_factor": 4,
                    "ff_expansion_factor": 4, "self_attention_model": "rotary", "pos_emb_max_len": 5000,
                    "n_heads": 4, "conv_norm_type": "layer_norm", "conv_kernel_size": 15, "flash_attn": False},
        "head": head_cfg,
        "decoding": decoding,
    })


def _loss(net: Any, head: str, features: Any, feature_lengths: Any, targets: list[Any]) -> Any:
    import torch
    import torchaudio

    encoded, encoded_len = net.encoder(features, feature_lengths)  # (B, D, T)
    blank = VOCAB_SIZE
    if head == "ctc":
        log_probs = net.head(encoded)
        return torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), torch.cat(targets), encoded_len.long(),
            torch.tensor([len(t) for t in targets]), blank=blank, zero_infinity=True)
    labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=0)
    start = torch.full((len(targets), 1), blank, dtype=torch.long)  # the prediction network starts from blank
    g, _ = net.head.decoder.lstm(net.head.decoder.embed(torch.cat([start, labels], 1)).transpose(0, 1))
    logits = net.head.joint.joint_net(
        net.head.joint.enc(encoded.transpose(1, 2)).unsqueeze(2) + net.head.joint.pred(g.transpose(0, 1)).unsqueeze(1))
    return torchaudio.functional.rnnt_loss(
        logits, labels.int(), encoded_len.int(), torch.tensor([len(t) for t in targets], dtype=torch.int32),
        blank=blank, reduction="mean", clamp=-1)


def train(head: str, out: Path, minutes: float, utterances: int, seed: int, init: Optional[Path],
          max_batch_seconds: float, lr: float, tokenizer_from: Optional[Path] = None) -> None:
    import sentencepiece as spm
    import torch

    from server.models.gigaam_compat import build_model, load_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = out.with_name(out.stem + "_tokenizer.model")
    source = tokenizer_from or (init.with_name(init.stem + "_tokenizer.model") if init is not None else None)
    if source is not None:
        if source.resolve() != tokenizer.resolve():
            shutil.copy(source, tokenizer)
    else:
        train_tokenizer(tokenizer, seed)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    cfg = model_config(head, tokenizer)
    cfg_for_build = cfg.copy()
    cfg_for_build.decoding.model_path = str(tokenizer)
    net = build_model(cfg_for_build)
    if init is not None:
        encoder = {k: v for k, v in load_checkpoint(init)["state_dict"].items() if not k.startswith("head.")}
        net.load_state_dict(encoder, strict=False)
    print(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters", flush=True)

    t0 = time.monotonic()
    jobs = make_jobs(utterances, seed, base.TRAIN_VOICES, held_out=False)
    audios = base.synthesize_many(jobs, processes=1)
    eval_jobs = make_jobs(60, seed + 1, base.HELD_OUT_VOICES, held_out=True)
    eval_audios = base.synthesize_many(eval_jobs, processes=1)
    print(f"synthesised {len(audios)} utterances in {time.monotonic() - t0:.0f} s", flush=True)
    targets = [torch.tensor(sp.encode(text)) for text, *_ in jobs]

    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    np_rng, py_rng = np.random.default_rng(seed), random.Random(seed)
    start, budget, step = time.monotonic(), minutes * 60.0, 0
    epoch = 0
    while time.monotonic() - start < budget:
        batches = base.make_batches([len(a) + int(0.4 * base.SAMPLE_RATE) for a in audios],
                                    int(max_batch_seconds * base.SAMPLE_RATE), py_rng)
        if epoch == 0:  # shortest utterances first in the first epoch: CTC leaves its all-blank plateau sooner
            batches.sort(key=lambda b: max(len(audios[i]) for i in b))
        epoch += 1
        for batch in batches:
            progress = (time.monotonic() - start) / budget
            if progress >= 1.0:
                break
            scale = min(1.0, (step + 1) / 150) * 0.5 * (1.0 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = lr * max(scale, 0.02)
            net.train()
            wavs = [torch.from_numpy(base.augment(audios[i], np_rng)) for i in batch]
            lengths = torch.tensor([len(w) for w in wavs])
            features, feature_lengths = net.preprocessor(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
                                                         lengths)
            loss = _loss(net, head, base.spec_augment(features, np_rng), feature_lengths, [targets[i] for i in batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f} elapsed {(time.monotonic() - start) / 60:.1f} min",
                      flush=True)
    net.eval()
    torch.save({"cfg": cfg, "state_dict": net.state_dict()}, out)
    cer = base.evaluate(net, eval_jobs, eval_audios)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {step} steps; held-out CER {cer:.4f} "
          f"on {len(eval_jobs)} utterances", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("head", choices=("ctc", "rnnt"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="a tiny v3 checkpoint whose encoder to start from")
    parser.add_argument("--tokenizer", type=Path, default=None, help="reuse this SentencePiece model")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time budget of the training loop")
    parser.add_argument("--utterances", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--max-batch-seconds", type=float, default=30.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    train(args.head, args.out, args.minutes, args.utterances, args.seed, args.init, args.max_batch_seconds, args.lr,
          args.tokenizer)


if __name__ == "__main__":
    main()
