import hashlib

import pytest

from fewshot.data import locate
from fewshot.errors import DataError, DataNotFoundError


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "env"))
    assert locate.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert locate.data_root() == tmp_path / "env"
    monkeypatch.delenv("FEWSHOT_DATA")
    assert locate.data_root() == locate.DEFAULT_HOME.expanduser()


def test_download_is_verified_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_OFFLINE", "0")
    src = tmp_path / "official.zip"
    src.write_bytes(b"payload" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    target = tmp_path / "data" / "omniglot" / "x.zip"
    locate.download(src.as_uri(), target, md5)
    assert target.read_bytes() == src.read_bytes()
    bad = tmp_path / "data" / "bad.zip"
    with pytest.raises(DataError, match="expected 0000"):
        locate.download(src.as_uri(), bad, "0000")
    assert not bad.exists() and not list(bad.parent.glob("*.part"))
    with pytest.raises(DataNotFoundError, match="could not be downloaded"):
        locate.download((tmp_path / "nothing.zip").as_uri(), tmp_path / "n.zip", md5)


def test_offline_refuses_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="downloads are off"):
        locate.download("https://example.org/x.zip", tmp_path / "x.zip", "0")
