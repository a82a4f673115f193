import io
import math
import wave

import numpy as np
import pytest
import torch

from fewshot.data import audio
from fewshot.data.classdataset import random_class_split
from fewshot.errors import DataError, DataNotFoundError


def wav_bytes(x: np.ndarray, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_read_wav_round_trip():
    x = np.sin(np.linspace(0, 20, 800)).astype(np.float32) * 0.5
    y, rate = audio.read_wav(wav_bytes(x))
    assert rate == 8000 and torch.allclose(y, torch.from_numpy(x), atol=1e-4)
    with pytest.raises(DataError, match="PCM WAV"):
        audio.read_wav(b"RIFF0000WAVEjunk")


def test_dct_is_orthonormal_and_mel_filters_cover_the_band():
    d = audio.dct_matrix(40, 40)
    assert torch.allclose(d @ d.T, torch.eye(40), atol=1e-5)
    fb = audio.mel_filterbank(8000, 256, 40)
    assert fb.shape == (40, 129) and (fb >= 0).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()  # filters in increasing frequency
    m = torch.tensor([0.0, 500.0, 1000.0, 3000.0])
    assert torch.allclose(audio.mel_to_hz(audio.hz_to_mel(m)), m, atol=1e-3)
    assert audio.hz_to_mel(torch.tensor(1000.0)).item() == pytest.approx(15.0)
    # Slaney's log branch above 1 kHz: 15 + 27·ln(f/1000)/ln 6.4
    for f in (4000.0, 8000.0):
        assert audio.hz_to_mel(torch.tensor(f)).item() == pytest.approx(15 + 27 * math.log(f / 1000) / math.log(6.4), rel=1e-6)
    assert audio.hz_to_mel(torch.tensor(4000.0)).item() == pytest.approx(35.163760, rel=1e-6)
    # Slaney area normalization: each filter integrates to about 1 over frequency (bin width 8000/2048 Hz)
    area = audio.mel_filterbank(8000, 2048, 40).sum(1) * 8000 / 2048
    assert ((area - 1).abs() < 2e-3).all()


def test_mfcc_of_a_tone_and_shapes():
    t = torch.arange(8000) / 8000
    x = torch.sin(2 * math.pi * 440 * t)
    lm = audio.log_mel(x, 8000, n_fft=256, hop=80, n_mels=40)
    assert lm.shape == (40, 101)
    band = audio.mel_filterbank(8000, 256, 40)[:, round(440 / 8000 * 256)].argmax()
    assert lm.mean(1).argmax() == band  # the energy sits in the filter that covers 440 Hz
    assert audio.mfcc(x, 8000, 20, 256, 80, 40).shape == (20, 101)
    assert audio.fix_length(torch.arange(10.0), 6).tolist() == [2, 3, 4, 5, 6, 7]  # centre crop
    assert audio.fix_length(torch.ones(4), 6).tolist() == [0, 1, 1, 1, 1, 0]  # centred zero padding
    # the 80 dB floor: a tone then silence spans exactly top_db (about 118 dB without the floor)
    half = torch.cat([x[:4000], torch.zeros(4000)])
    floored = audio.log_mel(half, 8000, n_fft=256, hop=80, n_mels=40)
    assert (floored.max() - floored.min()).item() == pytest.approx(80.0, rel=1e-5)


def test_mfcc_matches_librosa():
    librosa = pytest.importorskip("librosa")  # development only: librosa is not a dependency
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8000).astype(np.float32) * 0.1
    ours = audio.mfcc(torch.from_numpy(x), 8000, 20, 256, 80, 40).numpy()
    ref = librosa.feature.mfcc(y=x, sr=8000, n_mfcc=20, n_fft=256, hop_length=80, n_mels=40, center=True, pad_mode="constant")
    assert np.allclose(ours, ref, atol=1e-2 * np.abs(ref).max())


def test_class_splits_are_disjoint_and_seeded():
    parts = {p: random_class_split("random:3", p, 40, (26, 4, 10)) for p in ("train", "val", "test")}
    assert [len(v) for v in parts.values()] == [26, 4, 10]
    assert not set(parts["train"]) & set(parts["test"]) and not set(parts["val"]) & set(parts["test"])
    assert not set(parts["train"]) & set(parts["val"])
    assert parts["test"] == random_class_split("random:3", "test", 40, (26, 4, 10))
    with pytest.raises(DataError, match="by class|by identity|random:<seed>"):
        random_class_split("vinyals", "train", 40, (26, 4, 10))


def test_missing_faces_and_audio(tmp_path):
    from fewshot.data.faces import load_faces

    with pytest.raises(DataNotFoundError, match="orl_faces.zip"):
        load_faces(tmp_path)
    with pytest.raises(DataNotFoundError, match="fsdd.zip"):
        audio.load_fsdd(tmp_path)


def test_orl_identity_disjoint(omniglot_root):
    from fewshot.data.faces import orl_faces

    train, test = orl_faces("train", data_dir=omniglot_root), orl_faces("test", data_dir=omniglot_root)
    assert train.blocks.shape == (26, 10, 1, 56, 46) and test.num_classes == 10
    assert not set(train.names) & set(test.names)


def test_fsdd_by_class_with_training_statistics(omniglot_root):
    train, test = audio.fsdd("train", data_dir=omniglot_root), audio.fsdd("test", data_dir=omniglot_root)
    assert train.blocks.shape == (30, 50, 1, 20, 101) and test.num_classes == 20
    assert not set(train.names) & set(test.names)
    per_coefficient = train.images.mean(dim=(0, 1, 3))
    assert per_coefficient.abs().max() < 1e-3  # standardized with the training classes' statistics
    # ...and only those: the test classes, standardized with the same numbers, are not centred themselves
    assert test.images.mean(dim=(0, 1, 3)).abs().max() > 0.05


def test_cats_dogs_split_by_clip(omniglot_root):
    from fewshot.data.audio import cats_dogs

    parts = {p: cats_dogs(p, data_dir=omniglot_root) for p in ("train", "val", "test")}
    assert all(d.names == ["Cats", "Dogs", "Sub_dogs"] for d in parts.values())
    clips = {p: set(d.sources) for p, d in parts.items()}
    assert len(parts["train"].sources) == len(parts["train"].images)
    assert not clips["train"] & clips["test"] and not clips["train"] & clips["val"] and not clips["val"] & clips["test"]
    assert [len({c for c in clips[p] if c.startswith(k + "/")}) for p in ("train", "val", "test") for k in ("Cats",)] == [8, 2, 4]
    assert all(d.min_count >= 10 for d in parts.values())


@pytest.mark.parametrize("split,field,sizes", [("speakers:0", 1, (3, 1, 2)), ("digits:0", 0, (4, 2, 4))])
def test_fsdd_splits_by_speaker_or_digit_hold_them_out(split, field, sizes):
    """Every part holds all (digit, speaker) classes of its own speakers (or digits), none shared."""
    names = [f"{d}_{s}" for d in range(10) for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")]
    groups = {}
    for part, size in zip(("train", "val", "test"), sizes):
        idx = audio.fsdd_classes(split, part, names)
        groups[part] = {names[i].split("_")[field] for i in idx}
        assert len(groups[part]) == size and len(idx) == size * (10 if field == 1 else 6)
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert audio.fsdd_classes(split, "test", names) == audio.fsdd_classes(split, "test", names)  # seeded
    with pytest.raises(DataError, match="speakers:<seed> or digits:<seed>"):
        audio.fsdd_classes("voices:0", "test", names)


def test_fsdd_unseen_speakers_from_the_files(omniglot_root):
    train, test = audio.fsdd("train", "speakers:0", omniglot_root), audio.fsdd("test", "speakers:0", omniglot_root)
    assert train.num_classes == 30 and test.num_classes == 20
    assert not {n.split("_")[1] for n in train.names} & {n.split("_")[1] for n in test.names}
