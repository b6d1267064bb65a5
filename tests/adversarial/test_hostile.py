"""Checkpoints and inputs made by someone else: every refusal is a documented exception that
names the file, field or argument; nothing crashes, hangs, reads without bound or answers
silently wrong.

The subprocesses run in a temporary folder: from the checkout's root, ``import pybert`` would
find the source tree (no compiled extension there) instead of the installed package."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from safetensors.torch import save_file

import pybert
from pybert.checkpoint import CheckpointError
from pybert.config import BertConfig
from pybert.tokenization import BERT_RESERVED_TOKENS, Vocab

from helpers import random_model

CONFIG = BertConfig(40, 32, 64, 4, 2, max_len=16)
VOCAB = Vocab.from_tokens(["<unk>", *BERT_RESERVED_TOKENS, *[f"w{i}" for i in range(35)]])


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ckpt"
    pybert.save(random_model(CONFIG), path, vocab=VOCAB)
    return path


def edit_config(path, **model_fields):
    document = json.loads((path / "config.json").read_text())
    document["model"].update(model_fields)
    (path / "config.json").write_text(json.dumps(document))


def write_header(path, header: dict, data_bytes: int = 0, sparse_size: int | None = None):
    """A safetensors file with this header; its data is zeros (sparse when asked)."""
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        if sparse_size is not None:
            f.truncate(8 + len(text) + sparse_size)
        else:
            f.write(b"\0" * data_bytes)


# -- config.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,match", [
    (dict(layer_norm_eps=int("1" + "0" * 400)), "layer_norm_eps is out of range"),
    (dict(layer_norm_eps=float("inf")), "layer_norm_eps must be finite"),
    (dict(dropout="0.1"), "dropout must be a number"),
    (dict(dropout=True), "dropout must be a number"),
    (dict(embedding_layer_norm=True), "no embedding LayerNorm"),
    (dict(ffn_activation="gelu"), "ReLU activations"),
    (dict(embedding_layer_norm="yes"), "embedding_layer_norm must be true or false"),
    (dict(num_layers=2.0), "num_layers must be a positive integer"),
    # Beyond int64_t, what the C++ side takes (found by test_fuzz's checkpoint loader).
    (dict(global_every=2 ** 63), r"global_every must be a positive integer below 2\*\*63"),
    (dict(vocab_size=2 ** 64), r"vocab_size must be a positive integer below 2\*\*63"),
    (dict(local_window=2 ** 63), "local_window must be an integer >= 0"),
    (dict(position_offset=-1), "position_offset must be an integer >= 0"),
])
def test_bad_config_fields(saved, fields, match):
    edit_config(saved, **fields)
    with pytest.raises(CheckpointError, match=match):
        pybert.load(saved)


def test_deeply_nested_or_huge_json(saved):
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply|too large|more than"):
        pybert.load(saved)
    (saved / "config.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(CheckpointError, match="more than the 1048576"):
        pybert.load(saved)


def test_another_model_type_is_named(saved):
    (saved / "config.json").write_text(json.dumps({"model_type": "mpnet",
                                                   "hidden_size": 32}))
    with pytest.raises(CheckpointError, match="model_type .mpnet. is not served"):
        pybert.load(saved)


@pytest.mark.parametrize("name", ["config.json", "vocab.txt"])
@pytest.mark.parametrize("special", ["dev-zero", "fifo", "directory"])
def test_special_files_are_refused_not_read(saved, name, special):
    """/dev/zero would be read forever, a FIFO would block forever: both are refused, in a
    subprocess that would otherwise hang (and is killed by the timeout)."""
    target = saved / name
    target.unlink()
    if special == "dev-zero":
        target.symlink_to("/dev/zero")
    elif special == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    code = textwrap.dedent(f"""
        import pybert
        from pybert.checkpoint import CheckpointError
        try:
            pybert.load({str(saved)!r})
        except CheckpointError as err:
            print("refused:", err)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=saved.parent)
    assert "refused:" in done.stdout and "regular file" in done.stdout, done.stdout + \
        done.stderr


def test_a_symlink_to_a_regular_file_is_fine(saved, tmp_path):
    """Hugging Face's cache is made of symlinks to blobs: they must keep working."""
    blob = tmp_path / "blob"
    (saved / "config.json").rename(blob)
    (saved / "config.json").symlink_to(blob)
    pybert.load(saved)


# -- vocab.txt --------------------------------------------------------------------------------

def test_a_vocab_without_the_reserved_tokens(saved):
    tokens = ["<unk>", *[f"x{i}" for i in range(39)]]
    (saved / "vocab.txt").write_text("\n".join(tokens) + "\n")
    with pytest.raises(CheckpointError, match=r"lacks the reserved tokens \['<pad>', '<mask>'"):
        pybert.load(saved)


# -- model.safetensors ------------------------------------------------------------------------

def test_a_huge_layer_count_is_refused_at_once(saved):
    edit_config(saved, num_layers=1_000_000_000)
    with pytest.raises(CheckpointError, match="missing encoder.blks.2"):
        pybert.load(saved)


def test_a_huge_unexpected_tensor_is_refused_before_reading(saved):
    state = random_model(CONFIG).state_dict()
    header, offset = {}, 0
    for name, t in state.items():
        size = t.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    huge = 3 << 30
    header["evil"] = {"dtype": "F32", "shape": [huge // 4], "data_offsets": [offset,
                                                                            offset + huge]}
    write_header(saved / "model.safetensors", header, sparse_size=offset + huge)
    with pytest.raises(CheckpointError, match="unexpected evil"):
        pybert.load(saved)


@pytest.mark.parametrize("dtype,match", [("F8_E4M3", "F8_E4M3, not floating point"),
                                         ("I64", "I64, not floating point")])
def test_weights_of_other_dtypes(saved, dtype, match):
    state = {k: v.clone() for k, v in random_model(CONFIG).state_dict().items()}
    if dtype == "F8_E4M3":
        state["nsp.output.bias"] = state["nsp.output.bias"].to(torch.float8_e4m3fn)
    else:
        state["nsp.output.bias"] = torch.tensor([1, 2])
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        pybert.load(saved)


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}},   # past the end
    {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},     # shape vs bytes
    {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}},
    {"a": {"dtype": "F32", "shape": "big", "data_offsets": [0, 8]}},
    {"a": [1, 2, 3]},
    [1, 2],
])
def test_corrupt_safetensors_headers(saved, header):
    write_header(saved / "model.safetensors", header, data_bytes=8)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        pybert.load(saved)


def test_a_header_longer_than_the_file(saved):
    (saved / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="the header claims"):
        pybert.load(saved)


def test_weights_that_overflow_the_engines_dtype(saved):
    state = {k: v.double() for k, v in random_model(CONFIG).state_dict().items()}
    state["encoder.blks.0.ffn.dense1.bias"][0] = 1e300
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        pybert.load(saved)


# -- what refusing costs ----------------------------------------------------------------------

def test_refusing_malicious_checkpoints_costs_little_memory(saved, tmp_path):
    """Peak memory while refusing each hostile checkpoint stays under 64 MB above what the
    process had before (measured in a fresh process: ru_maxrss is its peak)."""
    cases = []
    for i, edit in enumerate(("layers", "sparse", "header", "json")):
        path = tmp_path / f"case{i}"
        pybert.save(random_model(CONFIG), path, vocab=VOCAB)
        if edit == "layers":
            edit_config(path, num_layers=1_000_000_000)
        elif edit == "sparse":
            header = {"evil": {"dtype": "F32", "shape": [1 << 30],
                               "data_offsets": [0, 4 << 30]}}
            write_header(path / "model.safetensors", header, sparse_size=4 << 30)
        elif edit == "header":
            entries = {f"t{j}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
                       for j in range(19_000)}
            write_header(path / "model.safetensors", entries, data_bytes=4)
        else:
            (path / "config.json").write_text('{"a": "' + "x" * 1_000_000 + '"}')
        cases.append(str(path))
    code = textwrap.dedent(f"""
        import resource
        import pybert
        from pybert.checkpoint import CheckpointError
        pybert.load({str(saved)!r})  # warm up: the first load's one-time costs
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in {cases!r}:
            try:
                pybert.load(path)
                print("accepted", path)
            except CheckpointError:
                pass
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert "accepted" not in done.stdout, done.stdout
    grew = int(done.stdout.split("grew_kb")[1])
    assert grew < 64 * 1024, f"peak RSS grew by {grew} KB while refusing"


# -- Hugging Face directories -----------------------------------------------------------------

def hf_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "hf"
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.BertForPreTraining(config).save_pretrained(path, safe_serialization=True)
    (path / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(35)]]) + "\n")
    return path


def test_hf_weights_with_nan_are_refused(tmp_path):
    from safetensors.torch import load_file

    path = hf_dir(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    name = next(k for k in state if k.endswith("intermediate.dense.bias"))
    state[name][1] = float("nan")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or infinity"):
        pybert.load(path)


def test_hf_huge_layer_count_and_unexpected_huge_tensor(tmp_path):
    from safetensors.torch import load_file

    path = hf_dir(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config,
                                                  "num_hidden_layers": 1_000_000_000}))
    with pytest.raises(CheckpointError, match="1000000000 layers but"):
        pybert.load(path)
    (path / "config.json").write_text(json.dumps(config))
    # An unused tensor the format ignores is never read, however large it claims to be.
    state = load_file(str(path / "model.safetensors"))
    header, offset = {}, 0
    blobs = []
    for name, t in state.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["classifier.weight"] = {"dtype": "F32", "shape": [1 << 30],
                                   "data_offsets": [offset, offset + (4 << 30)]}
    text = json.dumps(header).encode()
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        f.truncate(8 + len(text) + offset + (4 << 30))
    engine = pybert.load(path)
    assert engine.has_nsp and engine.has_mlm


@pytest.mark.parametrize("edit,match", [
    ("index-list", "must hold a JSON object"),
    ("index-escape", "shard names must be files"),
    ("tokenizer", "the tokenizer cannot be read"),
    ("modules-escape", "leaves the model directory"),
])
def test_hf_bad_files(tmp_path, edit, match):
    path = hf_dir(tmp_path)
    if edit.startswith("index"):
        (path / "model.safetensors").rename(path / "shard.safetensors")
        index = [1, 2] if edit == "index-list" else \
            {"weight_map": {"a": "../../etc/passwd"}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif edit == "tokenizer":
        (path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    else:
        (path / "modules.json").write_text(json.dumps(
            [{"path": "../..", "type": "sentence_transformers.models.Transformer"}]))
    with pytest.raises(CheckpointError, match=match):
        pybert.load(path)


# -- the engine's inputs ----------------------------------------------------------------------

def test_ctrl_c_stops_a_long_forward_between_layers(tmp_path):
    """SIGINT during a long CPU forward ends it at the next layer, not after the last."""
    code = textwrap.dedent("""
        import signal, sys, time, torch, pybert
        from pybert.config import BertConfig
        # A shell's background job starts with SIGINT ignored: take Python's usual handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        config = BertConfig(50, 64, 128, 4, 400, max_len=128)
        engine = pybert.Engine.from_model(config.build_model().eval())
        tokens = torch.randint(0, 50, (16, 128))
        start = time.perf_counter()
        engine.encode(tokens[:2, :8])
        print("ready", flush=True)
        try:
            for _ in range(50):
                start = time.perf_counter()
                engine.encode(tokens)
                print("forward", time.perf_counter() - start, flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert proc.stdout.readline().strip() == "ready"
    import signal
    import time

    first = proc.stdout.readline()  # one whole forward, to know how long one takes
    forward_s = float(first.split()[1])
    time.sleep(min(0.5, forward_s / 4))
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    # Timed to the "interrupted" line, not to the process's exit: the interpreter's shutdown
    # (torch's teardown, 0.3-0.5 s on a loaded machine) is not the forward's stopping.
    rest = []
    for line in proc.stdout:
        rest.append(line)
        if line.strip() == "interrupted":
            break
    waited = time.perf_counter() - sent
    rest = "".join(rest) + proc.communicate(timeout=120)[0]
    assert "interrupted" in rest, rest
    assert waited < max(0.5, forward_s / 3), (waited, forward_s)


def test_empty_text_lists_give_empty_results(tmp_path):
    model = pybert.TextModel.from_model(random_model(CONFIG), VOCAB)
    assert pybert.encode(model, []).shape == (0, CONFIG.num_hiddens)
    assert pybert.encode(model.engine, []).shape == (0, CONFIG.num_hiddens)
    with pytest.raises(ValueError, match="no vocabulary"):
        pybert.encode(pybert.Engine.from_model(random_model(CONFIG)), [])


def test_threads_sharing_an_engine_while_one_changes_its_inputs():
    """The engine runs on its own checked copies: a thread that rewrites its tensor while a
    call is under way gets either answer for its own call, never a crash or another's."""
    engine = pybert.Engine.from_model(random_model(CONFIG))
    tokens = torch.randint(0, 40, (4, 16))
    expected = engine.encode(tokens)
    stop = threading.Event()
    shared = tokens.clone()

    def scribble():
        while not stop.is_set():
            shared.fill_(10**6)
            shared.copy_(tokens)

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        for _ in range(200):
            try:
                out = engine.encode(shared)
            except ValueError:
                continue  # the check saw a bad id: refused
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize("options", [{}, {"dtype": torch.bfloat16}, {"quantize": "int8"}],
                         ids=["fp32", "bf16", "int8"])
def test_weights_too_large_for_float32_arithmetic_are_reported(options):
    """Finite weights can still overflow float32 inside the forward (attention scores of
    1e50): the CPU engine says so instead of returning NaN (or, in int8, quantising an
    infinity into a finite wrong answer)."""
    net = random_model(CONFIG)
    with torch.no_grad():
        net.encoder.token_embedding.weight[3] *= 1e25
    engine = pybert.Engine.from_model(net, **options)
    with pytest.raises(ValueError, match="NaN or infinity"):
        engine(torch.tensor([[3, 1, 2]]))
    engine(torch.tensor([[4, 1, 2]]))  # the other ids are fine
