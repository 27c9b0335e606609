"""Hub publishing: everything up to the upload, on a local folder (the Hub client is replaced)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jsnsynth.cli import main
from jsnsynth.synth import publish
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.sources import FingerJointsSource
from test_sources import make_fingerjoint_folder


class FakeApi:
    """Records the calls the publisher makes; optionally fails like an unreachable Hub."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail = fail

    def create_repo(self, *args, **kwargs):
        if self.fail is not None:
            raise self.fail
        self.calls.append(("create_repo", args, kwargs))

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pub")
    source = FingerJointsSource(make_fingerjoint_folder(root / "fj", n_series=3, visits=1))
    build_dataset(source, root / "ds", 3, seed=0, quiet=True, layers_every=0)
    return root / "ds"


def test_publish_uploads_the_card_and_shards(dataset_dir: Path, monkeypatch, capsys) -> None:
    api = FakeApi()
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen_tokens = []
    monkeypatch.setattr(publish, "_hub_api", lambda token: seen_tokens.append(token) or api)
    rc = main(["publish", str(dataset_dir), "--repo-id", "someone/jsn-pairs", "--private"])
    out = capsys.readouterr().out
    assert rc == 0 and "https://huggingface.co/datasets/someone/jsn-pairs" in out
    assert seen_tokens == ["hf_test_token"]
    (_, args, create), (_, _, upload) = api.calls
    assert args == ("someone/jsn-pairs",) and create["repo_type"] == "dataset" and create["private"] is True
    assert upload["folder_path"] == str(dataset_dir) and upload["repo_type"] == "dataset"
    assert "README.md" in upload["allow_patterns"] and "data/*.parquet" in upload["allow_patterns"]


def _one_line_error(capsys, argv: list[str], exit_code: int = 1) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == exit_code and err.startswith("jsnsynth: error:") and len(err.strip().splitlines()) == 1
    return err


def test_no_token_is_a_clear_error(dataset_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.setattr(publish, "_hub_api", lambda token: pytest.fail("no upload without a token"))
    assert "no Hugging Face token" in _one_line_error(capsys, ["publish", str(dataset_dir), "--repo-id", "a/b"])


def test_no_network_is_a_clear_error(dataset_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(publish, "_hub_api", lambda token: FakeApi(fail=ConnectionError("Name or service not known")))
    err = _one_line_error(capsys, ["publish", str(dataset_dir), "--repo-id", "a/b"])
    assert "could not reach the Hugging Face Hub" in err


def test_only_complete_jsnsynth_datasets_are_published(tmp_path: Path, dataset_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(publish, "_hub_api", lambda token: pytest.fail("no upload of an invalid folder"))
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "README.md").write_text("hello")
    assert "not a jsnsynth dataset" in _one_line_error(capsys, ["publish", str(tmp_path / "random"), "--repo-id", "a/b"])
    assert "no such" in _one_line_error(capsys, ["publish", str(tmp_path / "absent"), "--repo-id", "a/b"])
    # a file of the dataset given for the dataset is named as a file, not as missing
    shard = sorted((dataset_dir / "data").glob("*.parquet"))[0]
    assert "is a file, not a dataset folder" in _one_line_error(capsys, ["publish", str(shard), "--repo-id", "a/b"])
    # a misspelt option value is a usage error, as the README says (exit 2), before any dataset is read
    assert "'no-slash' is not OWNER/NAME" in _one_line_error(capsys, ["publish", str(tmp_path / "absent"), "--repo-id",
                                                                     "no-slash"], exit_code=2)


@pytest.mark.parametrize("record", ['"x"', '["a", "b"]'])
def test_a_run_record_that_is_not_an_object_is_named(tmp_path: Path, dataset_dir: Path, monkeypatch, capsys,
                                                      record: str) -> None:
    """Such a record gave "AttributeError: 'str' object has no attribute 'get'"."""
    import shutil

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(publish, "_hub_api", lambda token: pytest.fail("no upload of an invalid folder"))
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    (copy / ".jsnsynth_state.json").write_text(record)
    err = _one_line_error(capsys, ["publish", str(copy), "--repo-id", "a/b"])
    assert ".jsnsynth_state.json: not a jsnsynth run record" in err
