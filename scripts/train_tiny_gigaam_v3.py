"""Make tiny GigaAM-v3-format models (end-to-end style: a SentencePiece vocabulary with capitals, commas and full
stops; v3's front end and encoder layout) for tests that need real v3 checkpoints, taught by the trained tiny v2
model (``train_tiny_gigaam.py``).

Training a Conformer from scratch takes far more CPU than a shared test machine gives, so three cheaper steps:

* ``ctc``: the tiny v2 model's encoder moved onto v3's front end (``center=False`` 20 ms windows:
  ``n_fft = win_length = 320``, hop 160; the v2 encoder transcribes these features at about the same CER), its
  character head onto a SentencePiece vocabulary built from the espeak lexicon (each character's row copied to that
  character's piece, the space's to ``▁``; capitals, punctuation and whole-word pieces start silent); then the head
  and the last Conformer layer fine-tuned with CTC loss on e2e sentences (first word capitalised, a comma after a
  word one time in four, a full stop at the end; espeak-ng pauses at the commas). Its encoder still has v2's
  ``conv2d`` subsampling and ``batch_norm`` convolutions.
* ``distill``: the published v3 encoder layout (``conv1d`` subsampling with kernel 5, ``layer_norm`` convolutions)
  taught by the ``ctc`` model in three stages: the new subsampling learns the teacher's output, each layer-norm
  convolution the teacher's batch-norm one on the teacher's inputs, then the whole student the teacher's frame
  posteriors (KL divergence).
* ``rnnt``: the encoder of ``--init`` with an RNNT head whose joint starts as the CTC head (its hidden layer holds x
  and -x, so ReLU passes both signs) plus a random 1-layer LSTM prediction network, fine-tuned with torchaudio's RNNT
  loss.

Models are built by rechka's own loader (:func:`server.models.gigaam_compat.build_model`) and saved in gigaam's
format with float16 tensors (a small repository; they load into float32 like any checkpoint), the tokenizer next to
each as ``<checkpoint stem>_tokenizer.model`` (gigaam's naming). The committed checkpoints are the ``distill`` CTC
model (12 minutes on a busy 2-core CPU) and the ``rnnt`` model built on it (6 minutes): 2.6 and 2.8 MB, held-out CER
9.0 % each on 40 e2e sentences from voices and word sequences never trained on, capitals and punctuation counted
(the ``ctc`` step alone gave 4.4 %).

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_tiny_gigaam_v3.py ctc --minutes 6 \\
        --tokenizer tests/assets/tiny_v3_e2e_ctc_tokenizer.model --out /tmp/v3/converted.ckpt
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_tiny_gigaam_v3.py distill --minutes 12 \\
        --init /tmp/v3/converted.ckpt --out tests/assets/tiny_v3_e2e_ctc.ckpt
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_tiny_gigaam_v3.py rnnt --minutes 6 \\
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
from typing import Any, Iterator, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_tiny_gigaam as base  # noqa: E402  (synthesis, augmentation, batching, held-out rules)

VOCAB_SIZE = 96


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


TEACHER = Path(__file__).resolve().parent.parent / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
SILENT_BIAS = -8.0  # a head row that starts silent: never the argmax until fine-tuning teaches it


def v3_config(teacher_cfg: Any, head: str, tokenizer_name: str, classes: int) -> Any:
    """The teacher's cfg with v3's front end and every v3 field spelt out, a SentencePiece ``head``."""
    import omegaconf

    cfg = omegaconf.OmegaConf.create(omegaconf.OmegaConf.to_container(teacher_cfg))
    cfg.model_class, cfg.model_name = head, f"tiny_v3_e2e_{head}"
    cfg.preprocessor.update(n_fft=320, win_length=320, hop_length=160, center=False, mel_scale="htk")
    cfg.encoder.update(subsampling="conv2d", subs_kernel_size=3, conv_norm_type="batch_norm")
    d_model = cfg.encoder.d_model
    if head == "ctc":
        cfg.head = {"_target_": "gigaam.decoder.CTCHead", "feat_in": d_model, "num_classes": classes}
        cfg.decoding = {"_target_": "gigaam.decoding.CTCGreedyDecoding", "vocabulary": [],
                        "model_path": tokenizer_name}
    else:
        cfg.head = {"_target_": "gigaam.decoder.RNNTHead",
                    "decoder": {"pred_hidden": 64, "pred_rnn_layers": 1, "num_classes": classes},
                    "joint": {"enc_hidden": d_model, "pred_hidden": 64, "joint_hidden": 2 * d_model,
                              "num_classes": classes}}
        cfg.decoding = {"_target_": "gigaam.decoding.RNNTGreedyDecoding", "vocabulary": [],
                        "model_path": tokenizer_name, "max_symbols_per_step": 5}
    return cfg


def spell(sp: Any, text: str) -> list[int]:
    """``text`` as character pieces (``▁`` for each space and at the start), the spelling the converted head can
    already emit; it decodes to ``text`` like SentencePiece's own segmentation."""
    ids = [sp.piece_to_id("\u2581" if ch == " " else ch) for ch in " " + text]
    assert sp.unk_id() not in ids, text
    return ids


def _ctc_rows(teacher: dict[str, Any], sp: Any) -> tuple[Any, Any]:
    """(weight, bias) of a CTC head over the SentencePiece classes, rows taken from the teacher's characters."""
    import torch

    vocabulary = list(teacher["cfg"].decoding.vocabulary)
    weight = teacher["state_dict"]["head.decoder_layers.0.weight"][:, :, 0].float()  # (34, d_model)
    bias = teacher["state_dict"]["head.decoder_layers.0.bias"].float()
    new_w = torch.zeros(len(sp) + 1, weight.shape[1])
    new_b = torch.full((len(sp) + 1,), SILENT_BIAS)
    new_w[-1], new_b[-1] = weight[-1], bias[-1]  # blank
    for i in range(len(sp)):
        piece = sp.id_to_piece(i)
        char = " " if piece == "\u2581" else piece.lower() if len(piece) == 1 else None
        if char in vocabulary:
            j = vocabulary.index(char)
            new_w[i] = weight[j]
            new_b[i] = bias[j] + (0.0 if piece in ("\u2581", char) else SILENT_BIAS)
    return new_w, new_b


def convert(head: str, tokenizer: Path, init: Optional[Path]) -> tuple[Any, Any]:
    """(cfg, network) converted from the tiny v2 teacher (``ctc``) or from the v3 CTC ``init`` (``rnnt``)."""
    import sentencepiece as spm
    import torch

    from server.models.gigaam_compat import build_model, load_checkpoint

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    teacher = load_checkpoint(TEACHER)
    cfg = v3_config(teacher["cfg"], head, tokenizer.name, len(sp) + 1)
    built = cfg.copy()
    built.decoding.model_path = str(tokenizer)
    net = build_model(built)
    source = load_checkpoint(init) if init is not None else teacher
    if init is not None:  # the encoder layout of the model it starts from (conv2d/batch norm or conv1d/layer norm)
        cfg.encoder = source["cfg"].encoder
        built.encoder = source["cfg"].encoder
        net = build_model(built)
    encoder = {k: v.float() for k, v in source["state_dict"].items() if k.startswith("encoder.")}
    net.load_state_dict(encoder, strict=False)
    if init is None:
        w, b = _ctc_rows(teacher, sp)
    else:
        w = source["state_dict"]["head.decoder_layers.0.weight"][:, :, 0].float()
        b = source["state_dict"]["head.decoder_layers.0.bias"].float()
    with torch.no_grad():
        if head == "ctc":
            net.head.decoder_layers[0].weight.copy_(w[:, :, None])
            net.head.decoder_layers[0].bias.copy_(b)
        else:
            d_model, joint = w.shape[1], net.head.joint
            eye = torch.eye(d_model)
            joint.enc.weight.copy_(torch.cat([eye, -eye]))
            joint.enc.bias.zero_()
            joint.joint_net[1].weight.copy_(torch.cat([w, -w], dim=1))
            joint.joint_net[1].bias.copy_(b)
    return cfg, net


def _loss(net: Any, head: str, features: Any, feature_lengths: Any, targets: list[Any]) -> Any:
    import torch
    import torchaudio

    encoded, encoded_len = net.encoder(features, feature_lengths)  # (B, D, T)
    blank = net.spec.blank_id
    if head == "ctc":
        log_probs = net.head(encoded)
        return torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), torch.cat(targets), encoded_len.long(),
            torch.tensor([len(t) for t in targets]), blank=blank, zero_infinity=True)
    labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=0)
    start = torch.full((len(targets), 1), blank, dtype=torch.long)  # the prediction network starts from blank
    decoder, joint = net.head.decoder, net.head.joint
    g, _ = decoder.lstm(decoder.embed(torch.cat([start, labels], 1)).transpose(0, 1))
    logits = joint.joint_net(joint.enc(encoded.transpose(1, 2)).unsqueeze(2) + joint.pred(g.transpose(0, 1)).unsqueeze(1))
    return torchaudio.functional.rnnt_loss(
        logits, labels.int(), encoded_len.int(), torch.tensor([len(t) for t in targets], dtype=torch.int32),
        blank=blank, reduction="mean", clamp=-1)


def _timed_batches(audios: Sequence[np.ndarray], max_batch_seconds: float, minutes: float,
                   rng: random.Random) -> Iterator[tuple[list[int], float]]:
    """Length-bucketed batches, epoch after epoch, with the elapsed share of the ``minutes`` budget, until spent."""
    start, budget = time.monotonic(), minutes * 60.0
    while True:
        for batch in base.make_batches([len(a) + int(0.4 * base.SAMPLE_RATE) for a in audios],
                                       int(max_batch_seconds * base.SAMPLE_RATE), rng):
            progress = (time.monotonic() - start) / budget
            if progress >= 1.0:
                return
            yield batch, progress


def _features(net: Any, audios: Sequence[np.ndarray], batch: list[int], rng: np.random.Generator) -> tuple[Any, Any]:
    import torch

    wavs = [torch.from_numpy(base.augment(audios[i], rng)) for i in batch]
    lengths = torch.tensor([len(w) for w in wavs])
    return net.preprocessor(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths)


def _save(net: Any, cfg: Any, out: Path) -> None:
    """Save with float16 tensors (small files) and load them back, so what is evaluated is what was saved."""
    import torch

    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"cfg": cfg, "state_dict": state}, out)
    net.load_state_dict(state)


def train(head: str, out: Path, minutes: float, utterances: int, seed: int, init: Optional[Path],
          max_batch_seconds: float, lr: float, tokenizer_from: Optional[Path] = None) -> None:
    import sentencepiece as spm
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = out.with_name(out.stem + "_tokenizer.model")
    source = tokenizer_from or (init.with_name(init.stem + "_tokenizer.model") if init is not None else None)
    if source is None:
        train_tokenizer(tokenizer, seed)
    elif source.resolve() != tokenizer.resolve():
        shutil.copy(source, tokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    cfg, net = convert(head, tokenizer, init)
    last = f"encoder.layers.{len(net.encoder.layers) - 1}."
    trainable = [p for n, p in net.named_parameters() if n.startswith(("head.", last))]
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(("head.", last)))
    print(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
          f"{sum(p.numel() for p in trainable) / 1e6:.2f} M fine-tuned", flush=True)

    t0 = time.monotonic()
    jobs = make_jobs(utterances, seed, base.TRAIN_VOICES, held_out=False)
    audios = base.synthesize_many(jobs, processes=1)
    eval_jobs = make_jobs(40, seed + 1, base.HELD_OUT_VOICES, held_out=True)
    eval_audios = base.synthesize_many(eval_jobs, processes=1)
    print(f"synthesised {len(audios)} utterances in {time.monotonic() - t0:.0f} s; held-out CER before "
          f"fine-tuning {base.evaluate(net, eval_jobs, eval_audios):.4f}", flush=True)
    targets = [torch.tensor(spell(sp, text)) for text, *_ in jobs]

    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-2)
    np_rng, py_rng, step = np.random.default_rng(seed), random.Random(seed), 0
    for batch, progress in _timed_batches(audios, max_batch_seconds, minutes, py_rng):
        for group in optimizer.param_groups:
            group["lr"] = lr * max(0.5 * (1.0 + math.cos(math.pi * progress)), 0.02)
        net.train()
        for layer in net.encoder.layers:
            layer.conv.batch_norm.eval()  # keep the teacher's statistics
        features, feature_lengths = _features(net, audios, batch, np_rng)
        loss = _loss(net, head, features, feature_lengths, [targets[i] for i in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 5.0)
        optimizer.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f} ({progress:.0%} of the time)", flush=True)
    net.eval()
    _save(net, cfg, out)
    cer = base.evaluate(net, eval_jobs, eval_audios)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {step} steps; held-out CER {cer:.4f} "
          f"on {len(eval_jobs)} utterances", flush=True)


def distill(out: Path, init: Path, minutes: float, utterances: int, seed: int, max_batch_seconds: float,
            lr: float) -> None:
    """The published v3 encoder layout (``conv1d`` subsampling with kernel 5, ``layer_norm`` convolutions) taught
    by the converted CTC model ``init``: the student starts from its weights (new subsampling, fresh layer
    norms) and learns its frame posteriors (KL divergence) and subsampling output (mean squared error)."""
    import omegaconf
    import torch

    from server.models.gigaam_compat import build_model, load_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = out.with_name(out.stem + "_tokenizer.model")
    if init.with_name(init.stem + "_tokenizer.model").resolve() != tokenizer.resolve():
        shutil.copy(init.with_name(init.stem + "_tokenizer.model"), tokenizer)
    source = load_checkpoint(init)
    teacher_cfg = source["cfg"].copy()
    teacher_cfg.decoding.model_path = str(tokenizer)
    teacher = build_model(teacher_cfg, source["state_dict"])
    cfg = omegaconf.OmegaConf.create(omegaconf.OmegaConf.to_container(source["cfg"]))
    cfg.encoder.update(subsampling="conv1d", subs_kernel_size=5, conv_norm_type="layer_norm")
    student_cfg = cfg.copy()
    student_cfg.decoding.model_path = str(tokenizer)
    student = build_model(student_cfg)
    kept = {k: v.float() for k, v in source["state_dict"].items()
            if not k.startswith("encoder.pre_encode.") and ".conv.batch_norm." not in k}
    student.load_state_dict(kept, strict=False)

    t0 = time.monotonic()
    jobs = make_jobs(utterances, seed, base.TRAIN_VOICES, held_out=False)
    audios = base.synthesize_many(jobs, processes=1)
    eval_jobs = make_jobs(40, seed + 1, base.HELD_OUT_VOICES, held_out=True)
    eval_audios = base.synthesize_many(eval_jobs, processes=1)
    print(f"synthesised {len(audios)} utterances in {time.monotonic() - t0:.0f} s; teacher held-out CER "
          f"{base.evaluate(teacher, eval_jobs, eval_audios):.4f}", flush=True)
    # Three stages, each a share of the time: the new subsampling learns the teacher's (mean squared error), then
    # each layer's layer-norm convolution learns the teacher's batch-norm one on the teacher's own inputs, then the
    # whole student learns the teacher's frame posteriors (KL divergence).
    stages = [(0.4, student.encoder.pre_encode), (0.3, torch.nn.ModuleList(l.conv for l in student.encoder.layers)),
              (0.3, student)]
    np_rng, py_rng = np.random.default_rng(seed), random.Random(seed)
    captured: list[tuple[Any, Any, Any]] = []
    hooks = [layer.conv.register_forward_hook(lambda m, args, kwargs, out: captured.append((args[0], kwargs, out)),
                                              with_kwargs=True) for layer in teacher.encoder.layers]
    for number, (share, trained) in enumerate(stages, 1):
        optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=1e-2)
        step = 0
        for batch, progress in _timed_batches(audios, max_batch_seconds, minutes * share, py_rng):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20) * max(0.5 * (1.0 + math.cos(math.pi * progress)), 0.05)
            features, frames = _features(teacher, audios, batch, np_rng)
            captured.clear()
            with torch.no_grad():
                target_sub, sub_len = teacher.encoder.pre_encode(features.transpose(1, 2), frames)
                target_encoded, _ = teacher.encoder(features, frames)
                target = teacher.head(target_encoded)
            valid = (torch.arange(target.shape[1])[None, :] < sub_len[:, None]).float()
            student.train()
            if number == 1:
                sub, _ = student.encoder.pre_encode(features.transpose(1, 2), frames)
                loss = (((sub - target_sub) ** 2).mean(-1) * valid).sum() / valid.sum()
            elif number == 2:
                loss = sum((((layer.conv(x, **kwargs) - y) ** 2).mean(-1) * valid).sum() / valid.sum()
                           for layer, (x, kwargs, y) in zip(student.encoder.layers, captured))
            else:
                log_probs = student.head(student.encoder(features, frames)[0])
                loss = ((target.exp() * (target - log_probs)).sum(-1) * valid).sum() / valid.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained.parameters(), 5.0)
            optimizer.step()
            step += 1
            if step % 20 == 0:
                print(f"stage {number} step {step} loss {loss.item():.4f} ({progress:.0%})", flush=True)
        student.eval()
        print(f"stage {number}: {step} steps; held-out CER {base.evaluate(student, eval_jobs, eval_audios):.4f}",
              flush=True)
    for hook in hooks:
        hook.remove()
    _save(student, cfg, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB); held-out CER "
          f"{base.evaluate(student, eval_jobs, eval_audios):.4f} on {len(eval_jobs)} utterances", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("head", choices=("ctc", "rnnt", "distill"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="rnnt: the tiny v3 CTC checkpoint to start from")
    parser.add_argument("--tokenizer", type=Path, default=None, help="reuse this SentencePiece model")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget of the fine-tuning loop")
    parser.add_argument("--utterances", type=int, default=800)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--max-batch-seconds", type=float, default=30.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.head == "distill":
        distill(args.out, args.init, args.minutes, args.utterances, args.seed, args.max_batch_seconds, args.lr)
        return
    train(args.head, args.out, args.minutes, args.utterances, args.seed, args.init, args.max_batch_seconds, args.lr,
          args.tokenizer)


if __name__ == "__main__":
    main()
