"""Audio for few-shot learning: WAV reading, log-mel and MFCC features in PyTorch, and the Free
Spoken Digit Dataset (FSDD) as a class dataset.

Features follow librosa's defaults so that results can be compared (a development-only test checks
them against librosa when it is installed): Hann-windowed, centred STFT power; a Slaney-scale mel
filterbank with Slaney area normalization; ``10·log10(max(S, 1e-10))`` with an 80 dB floor below the
maximum; MFCC = orthonormal DCT-II of the log-mel over the mel axis.

FSDD (Jakobovski): ``fsdd/recordings/<digit>_<speaker>_<index>.wav``, 10 digits × 6 speakers × 50, 8 kHz.
Classes are (digit, speaker) pairs, 60 × 50 clips; splits are by class (``random:<seed>[:a/b/c]``,
default 30/10/20), never by clip. Items are ``[1, n_mfcc, frames]`` MFCC "images", cropped or padded to
``seconds`` and standardized per coefficient with the statistics of the *training* classes.
"""

from __future__ import annotations

import io
import math
import os
import wave

import numpy as np
import torch

from fewshot.data.archive import find_source, members
from fewshot.data.classdataset import ClassDataset, random_class_split
from fewshot.data.locate import data_root
from fewshot.errors import DataError, DataNotFoundError


def read_wav(data: bytes) -> tuple[torch.Tensor, int]:
    """Mono float waveform in [−1, 1] and its sample rate, from 8/16/32-bit PCM WAV bytes (stdlib only)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, width, channels, frames = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DataError(f"not a PCM WAV file ({exc}); convert it to 16-bit PCM.") from None
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise DataError(f"unsupported WAV sample width of {width} bytes; convert to 16-bit PCM.")
    x = np.frombuffer(frames, dtype=dtype).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    x = x.reshape(-1, channels).mean(1)
    return torch.from_numpy(x.copy()), rate


def read_named_wav(data: bytes, where: str) -> tuple[torch.Tensor, int]:
    """:func:`read_wav` with the file named in the error."""
    try:
        return read_wav(data)
    except DataError as exc:
        raise DataError(f"{where} is {exc}") from None


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft//2 + 1]`` with Slaney area normalization (2 / bandwidth)."""
    fmax = fmax or rate / 2
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(float(fmin)))), float(hz_to_mel(torch.tensor(float(fmax)))),
                                     n_mels + 2, dtype=torch.float64))
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).float()


def dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Orthonormal DCT-II ``[n_out, n_in]``: X_k = s_k Σ_n x_n cos(π k (2n + 1) / (2 n_in))."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def log_mel(x: torch.Tensor, rate: int, n_fft: int = 512, hop: int = 160, n_mels: int = 40, top_db: float = 80.0) -> torch.Tensor:
    """Log-mel power spectrogram in dB: ``[..., n_mels, frames]``."""
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=x.dtype), center=True, pad_mode="constant",
                      return_complex=True).abs().pow(2)
    mel = mel_filterbank(rate, n_fft, n_mels).to(x.dtype) @ spec
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)


def mfcc(x: torch.Tensor, rate: int, n_mfcc: int = 20, n_fft: int = 512, hop: int = 160, n_mels: int = 40) -> torch.Tensor:
    """MFCC ``[..., n_mfcc, frames]``: orthonormal DCT-II of :func:`log_mel` over the mel axis."""
    return dct_matrix(n_mfcc, n_mels).to(x.dtype) @ log_mel(x, rate, n_fft, hop, n_mels)


def fix_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-crop or zero-pad (both sides) a waveform to ``length`` samples."""
    if x.shape[-1] >= length:
        start = (x.shape[-1] - length) // 2
        return x[..., start:start + length]
    missing = length - x.shape[-1]
    return torch.nn.functional.pad(x, (missing // 2, missing - missing // 2))


FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def load_fsdd(data_dir: str | os.PathLike | None = None) -> tuple[dict[str, list[torch.Tensor]], int]:
    """{"<digit>_<speaker>": [waveforms ordered by index]} and the sample rate."""
    root = data_root(data_dir)
    source = find_source(root, "fsdd")
    if source is None:
        raise DataNotFoundError(f"FSDD not found: put fsdd.zip (fsdd/recordings/<digit>_<speaker>_<index>.wav) in {root}, "
                                "or pass --data-dir / set FEWSHOT_DATA to the folder that has it.")
    clips: dict[str, dict[int, torch.Tensor]] = {}
    rate = None
    for rel, data in members(source, "fsdd", (".wav",)):
        try:
            digit, speaker, index = rel.rsplit("/", 1)[-1][:-4].split("_")
            int(index)
        except ValueError:
            raise DataError(f"{source}: {rel} is not named <digit>_<speaker>_<index>.wav like the FSDD recordings.") from None
        wav, rate = read_named_wav(data, f"{source}: {rel}")
        clips.setdefault(f"{digit}_{speaker}", {})[int(index)] = wav
    if len(clips) != 60 or any(len(v) != 50 for v in clips.values()):
        raise DataError(f"{source} holds {len(clips)} (digit, speaker) classes; expected 60 × 50 clips "
                        "(Free Spoken Digit Dataset, 3,000 recordings).")
    return {k: [v[i] for i in sorted(v)] for k, v in sorted(clips.items())}, int(rate)


FSDD_SPLITS = {"random": (30, 10, 20), "speakers": (3, 1, 2), "digits": (4, 2, 4)}  # default part sizes


def fsdd_classes(split: str, part: str, names: list[str]) -> list[int]:
    """Indices of the ``<digit>_<speaker>`` classes of ``part`` under an FSDD split.

    ``random:<seed>[:a/b/c]`` cuts the 60 (digit, speaker) classes (default 30/10/20): a test class is
    new as a pair, but its digit and its speaker occur in training. ``speakers:<seed>[:a/b/c]`` cuts the
    speakers (default 3/1/2) and ``digits:<seed>[:a/b/c]`` the digits (default 4/2/4); a part then holds
    every (digit, speaker) class of its speakers or digits, so no test speaker (or digit) is heard in training.
    """
    kind, _, rest = split.partition(":")
    field = {"speakers": 1, "digits": 0}.get(kind)
    groups = sorted({n.split("_")[field] for n in names}) if field is not None else names
    try:
        if kind not in FSDD_SPLITS:
            raise DataError("unknown split kind")
        chosen = random_class_split(f"random:{rest}", part, len(groups), FSDD_SPLITS[kind])
    except DataError:
        raise DataError(f"cannot use FSDD split {split!r}: write data.split as random:<seed>, speakers:<seed> or "
                        "digits:<seed>, optionally followed by :<train>/<val>/<test> sizes that add up to at most "
                        "60 classes, 6 speakers or 10 digits.") from None
    if field is None:  # random: the (digit, speaker) classes themselves
        return chosen
    keep = {groups[i] for i in chosen}
    return [i for i, n in enumerate(names) if n.split("_")[field] in keep]


def fsdd(part: str, split: str = "random:0", data_dir: str | os.PathLike | None = None, seconds: float = 1.0,
         n_mfcc: int = 20, n_fft: int = 256, hop: int = 80, n_mels: int = 40) -> ClassDataset:
    """One class-disjoint part of FSDD (:func:`fsdd_classes`) as MFCC items ``[1, n_mfcc, frames]``,
    standardized with training statistics."""
    clips, rate = load_fsdd(data_dir)
    names = list(clips)
    length = int(round(seconds * rate))

    def features(idx: list[int]) -> torch.Tensor:
        waves = torch.stack([fix_length(w, length) for i in idx for w in clips[names[i]]])
        return mfcc(waves, rate, n_mfcc, n_fft, hop, n_mels)  # [n, n_mfcc, frames]

    train = features(fsdd_classes(split, "train", names))
    mean, std = train.mean(dim=(0, 2), keepdim=True), train.std(dim=(0, 2), keepdim=True).clamp_min(1e-5)
    idx = fsdd_classes(split, part, names)
    feats = ((features(idx) - mean) / std).view(len(idx), 50, 1, n_mfcc, -1)
    return ClassDataset.from_blocks(feats.contiguous(), [names[i] for i in idx], scale=1.0)


CATS_DOGS = ("Cats", "Dogs", "Sub_dogs")


def cats_dogs(part: str, split: str = "random:0", data_dir: str | os.PathLike | None = None, window: float = 1.0,
              hop_seconds: float = 0.5, n_mfcc: int = 20, n_fft: int = 512, hop: int = 160, n_mels: int = 40) -> ClassDataset:
    """The book's small cat/dog clip set (Cats, Dogs, Sub_dogs; 14 clips each, 16 kHz) split **by clip**.

    Each folder is a class; each clip is cut into ``window``-second windows every ``hop_seconds``, and
    all windows of a clip stay in one part, so no test window shares a recording with training. The
    clips of every class are split ``random:<seed>[:a/b/c]`` (default 8/2/4 clips). Items are MFCC
    ``[1, n_mfcc, frames]`` standardized with the training windows' statistics. Three classes and
    42 clips: a demonstration with an honest held-out metric, not a few-shot benchmark.
    """
    root = data_root(data_dir)
    source = find_source(root, "cats_dogs_audio")
    if source is None:
        raise DataNotFoundError(f"the cat/dog clips were not found: put cats_dogs_audio.zip "
                                f"(cats_dogs_audio/{{Cats,Dogs,Sub_dogs}}/*.wav) in {root}.")
    clips: dict[str, list[tuple[str, torch.Tensor, int]]] = {c: [] for c in CATS_DOGS}
    for rel, data in members(source, "cats_dogs_audio", (".wav",)):
        folder, _, file = rel.partition("/")
        if folder in clips:
            wav, rate = read_named_wav(data, f"{source}: {rel}")
            clips[folder].append((file, wav, rate))
    if any(len(v) < 3 for v in clips.values()):
        raise DataError(f"{source} needs the three folders {CATS_DOGS} with clips in each.")

    def windows(part_name: str) -> tuple[list[torch.Tensor], list[int], list[str]]:
        items, counts, sources = [], [], []
        for c in CATS_DOGS:
            chosen = random_class_split(split, part_name, len(clips[c]), (8, 2, 4))
            n = 0
            for i in chosen:
                file, wav, rate = clips[c][i]
                size, step = int(window * rate), int(hop_seconds * rate)
                starts = range(0, max(1, wav.shape[-1] - size + 1), step)
                for st in starts:
                    items.append(mfcc(fix_length(wav[st:st + size], size), rate, n_mfcc, n_fft, hop, n_mels))
                    sources.append(f"{c}/{file}")
                    n += 1
            counts.append(n)
        return items, counts, sources

    train_items, _, _ = windows("train")
    train = torch.stack(train_items)
    mean, std = train.mean(dim=(0, 2), keepdim=True)[0], train.std(dim=(0, 2), keepdim=True)[0].clamp_min(1e-5)
    items, counts, sources = windows(part)
    x = ((torch.stack(items) - mean) / std)[:, None]
    return ClassDataset(x.contiguous(), torch.tensor(counts), list(CATS_DOGS), scale=1.0, sources=sources)
