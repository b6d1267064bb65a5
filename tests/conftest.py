import os
import tempfile

import pytest
import torch

import pybert

from helpers import TEXT_CONFIG, VOCAB, random_model


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=0,
                     help="examples per fuzz property (default: a few seconds' worth)")


def pytest_configure(config):
    # A CPU engine measures its GEMM paths once per weight shape and keeps the plan on disk:
    # the tests (and the commands they start) keep theirs in a folder of their own.
    os.environ.setdefault("PYBERT_CACHE_DIR", tempfile.mkdtemp(prefix="pybert-test-cache-"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)




@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory):
    """A pybert checkpoint of the small text model (TEXT_CONFIG, VOCAB, random weights)."""
    path = tmp_path_factory.mktemp("text-checkpoint") / "model"
    pybert.save(random_model(TEXT_CONFIG, seed=4), path, vocab=VOCAB)
    return path
