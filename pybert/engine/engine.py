"""pybert.Engine: fast batched BERT inference through the C++/CUDA extension pybert._C.

The engine computes; it knows nothing of text. It holds the packed weights of one BERT (fused
QKV, contiguous, in its dtype and on its device, each checked finite), takes batches of token
ids (checked by pybert.engine.inputs, with messages that name the bad argument) and runs the whole
forward pass (embeddings, every layer, the MLM and NSP heads) in one C++ call. Activations are
packed (padding removed) inside that call; encodings at padded positions are returned as zeros.
Texts go through a :class:`~pybert.text.TextModel`, which tokenises, pools and normalises
around an engine; checkpoints come in through pybert.loader.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch

from .. import _C
from ..config import BertConfig
from ..d2l import config_from_model, pack_d2l_state_dict
from .cpu_plan import CpuPlan, default_plan, plan_cpu, time_ratio
from .precision import PRECISIONS, QUANTIZATIONS, compute_dtypes, quantizations
from .inputs import PackedBatch, device_packed_batch, packed_batch, padded_batch

__all__ = ["Engine", "SlowPrecisionWarning", "auto_dtype", "CPU_DTYPES", "CUDA_DTYPES",
           "QUANTIZATIONS", "WEIGHT_DTYPES"]

CPU_DTYPES = compute_dtypes("cpu")
CUDA_DTYPES = compute_dtypes("cuda")
# dtype="auto" on the CPU takes bfloat16 where its GEMMs take at most this share of float32's
# time here (its accuracy: the bfloat16 bounds in the README); an engine whose precision
# takes more than SLOW_PRECISION_RATIO of float32's time says so when built.
AUTO_BFLOAT16_RATIO = 0.8
SLOW_PRECISION_RATIO = 1.1
# The dtypes a checkpoint's weights may come in; the engine casts them to its own.
WEIGHT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class SlowPrecisionWarning(UserWarning):
    """The engine's precision runs slower than float32 on this CPU."""


def auto_dtype(config: BertConfig, device: torch.device) -> torch.dtype:
    """dtype="auto": float16 on a GPU; on the CPU bfloat16 where its GEMMs measure at most
    AUTO_BFLOAT16_RATIO of float32's time on this CPU (cpu_plan.time_ratio), else float32."""
    if device.type == "cuda":
        return torch.float16
    ratio = time_ratio(config, "bfloat16")
    return torch.bfloat16 if ratio is not None and ratio <= AUTO_BFLOAT16_RATIO else \
        torch.float32


def warn_if_slower_than_float32(plan: CpuPlan) -> None:
    """A SlowPrecisionWarning where ``plan``'s precision measured slower than float32 on this
    CPU, with the ratio and what to do: bfloat16 GEMMs slower than float32's, or an int8
    plan that took no int8 GEMM anywhere (float won at every shape: int8's accuracy cost for
    none of its speed)."""
    ratio = plan.time_vs_float32
    if ratio is None:
        return
    cpu = plan.cpu.get("model", "?")
    if plan.dtype == "int8":
        if any(path == "int8" for choice in plan.gemm.values() for _, path in choice):
            return
        warnings.warn(f"quantize='int8' gains nothing on this CPU ({cpu}): its int8 GEMMs "
                      f"measured {ratio:.1f}x float32's time and slower at every shape, so "
                      "the engine runs float GEMMs on int8-rounded weights. Use float32.",
                      SlowPrecisionWarning, stacklevel=4)
    elif ratio > SLOW_PRECISION_RATIO:
        warnings.warn(f"{plan.dtype} runs {ratio:.1f}x slower than float32 on this CPU "
                      f"({cpu}): the GEMM libraries have no {plan.dtype} instructions to use "
                      "here (AVX512-BF16, AMX). Use float32 (dtype='auto' picks the faster "
                      "precision).", SlowPrecisionWarning, stacklevel=4)


class Engine:
    """A BERT packed for inference. Build one with :meth:`from_model` or ``pybert.load``.

    ``engine(tokens, segments, valid_lens=None, pred_positions=None)`` returns
    ``(encoded, mlm_Y_hat, nsp_Y_hat)`` with ``BERTModel.forward``'s meaning:
    encoded (B, S, H), zeros at positions >= valid_lens; mlm_Y_hat (B, P, vocab_size) or None
    without pred_positions; nsp_Y_hat (B, 2), or None for a model without an NSP head.

    ``weights`` are the engine's packed tensors by the names of ``pybert._C.weight_shapes``
    (see pybert.engine.weights). On the GPU, calls small enough for the host's kernel launches
    to cost more than the GPU's work replay a CUDA graph captured per size bucket
    (pybert.engine.graphs; at most ``max_graphs`` are kept); ``cuda_graphs=False`` runs every
    call eagerly.

    On the CPU the engine computes in float32 or bfloat16 (AVX512-BF16 or AMX where the CPU has
    them; LayerNorm, softmax and accumulation in float32), with its weight matrices prepacked
    once for the GEMM library its CPU plan chose; ``dtype="auto"`` takes bfloat16 where its
    GEMMs measure faster than float32's on this CPU, and a precision that measures slower
    than float32 says so when the engine is built (SlowPrecisionWarning). ``quantize="int8"``
    (CPU, float32) holds them in int8 per output channel and quantises activations per call (dynamic quantisation, fbgemm's VNNI GEMMs): faster,
    at a small cost in accuracy (measured in benchmarks/RESULTS.md). A CPU engine keeps the
    workspace of its largest batch so far for the next call (fresh memory costs page faults
    every call); it is freed with the engine. Which library each CPU GEMM goes to, and up to
    which length the float attention is batched, is measured on this machine when the first
    engine of a shape is built (``cpu_plan``; ``engine.cpu_plan.summary()`` says what was
    chosen; see pybert.engine.cpu_plan).
    """

    def __init__(self, config: BertConfig, weights: dict, device="cpu",
                 dtype: torch.dtype = torch.float32, *, cuda_graphs: bool | None = None,
                 max_graphs: int = 16, quantize: str | None = None,
                 cpu_plan: str | CpuPlan = "auto"):
        self.config = config
        self.device = torch.device(device)
        if isinstance(dtype, str) and dtype == "auto":
            dtype = auto_dtype(config, self.device)
        self.dtype = dtype
        if self.device.type == "cuda":
            if not _C.cuda_available:
                raise ValueError(f"device {self.device}: this build of pybert has no CUDA "
                                 "kernels (rebuild with nvcc and a CUDA torch, PYBERT_CUDA=1)")
            if not torch.cuda.is_available():
                raise ValueError(f"device {self.device}: no CUDA GPU is available")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            if dtype not in CUDA_DTYPES:
                raise ValueError(f"the CUDA engine computes in {CUDA_DTYPES}, got dtype={dtype}")
        elif self.device.type == "cpu":
            if dtype not in CPU_DTYPES:
                raise ValueError(f"the CPU engine computes in {CPU_DTYPES}, got dtype={dtype}")
        else:
            raise ValueError(f"device {self.device} is not supported: use cpu or cuda")
        if quantize is not None:
            spec = PRECISIONS.get(quantize) if isinstance(quantize, str) else None
            if spec is not None and spec.quantize and spec.refused:
                raise ValueError(f"quantize={quantize!r} is not available yet: {spec.refused}")
            if quantize not in quantizations():
                raise ValueError(f"quantize must be one of {quantizations()} or None, got "
                                 f"{quantize!r}")
            if self.device.type not in spec.devices or dtype != torch.float32:
                raise ValueError(f"quantize={quantize!r} runs on {'/'.join(spec.devices)} from "
                                 f"float32: use device='{spec.devices[0]}', "
                                 "dtype=torch.float32")
        self.quantize = quantize
        weights = self._cast_weights(weights)
        self.cpu_plan = self._cpu_plan(cpu_plan) if self.device.type == "cpu" else None
        if self.cpu_plan is not None:
            warn_if_slower_than_float32(self.cpu_plan)
        precision = PRECISIONS[quantize or str(dtype).replace("torch.", "")]
        self._native = _C.Engine(config.native(), weights, weight_storage=precision.storage,
                                 cpu_plan=None if self.cpu_plan is None
                                 else self.cpu_plan.native())
        self.has_nsp = self._native.has_nsp
        self.has_mlm = self._native.has_mlm
        if self._native.has_embedding_norm != config.embedding_layer_norm:
            have = "lack" if config.embedding_layer_norm else "have"
            raise ValueError(f"the config says embedding_layer_norm={config.embedding_layer_norm} "
                             f"but the weights {have} the embedding LayerNorm")
        self._graphs = None
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs device='cuda'")
        if self.device.type == "cuda" and cuda_graphs is not False:
            from .graphs import GraphCache  # CUDA only: keeps CPU imports light

            self._graphs = GraphCache(self._native, self.device, config, max_graphs)

    def _cpu_plan(self, choice) -> CpuPlan:
        """The GEMM paths and attention limit of this CPU engine: measured on this machine
        ("auto", cached per process and on disk; see pybert.engine.cpu_plan), the built-in
        defaults ("default", or "auto" under PYBERT_CPU_PLAN=default: for before/after
        comparisons), or a given CpuPlan."""
        if isinstance(choice, CpuPlan):
            return choice
        dtype = str(self.dtype).replace("torch.", "")
        if choice not in ("auto", "default"):
            raise ValueError(f"cpu_plan must be 'auto', 'default' or a CpuPlan, got {choice!r}")
        if choice == "default" or os.environ.get("PYBERT_CPU_PLAN") == "default":
            return default_plan(dtype)
        return plan_cpu(self.config, self.dtype, int8=self.quantize == "int8")

    def _cast_weights(self, weights: dict) -> dict[str, torch.Tensor]:
        """The weights in the engine's dtype on its device, each checked finite after the cast
        (a value finite in float64 may overflow float16 or float32)."""
        cast = {}
        for name, value in weights.items():
            if not isinstance(value, torch.Tensor) or value.dtype not in WEIGHT_DTYPES:
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"weight {name} must be a tensor of {WEIGHT_DTYPES}, got {kind}")
            if value.layout != torch.strided or value.is_meta:
                raise TypeError(f"weight {name} must be a dense tensor with data")
            t = value.detach().to(self.device, self.dtype).contiguous()
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"weight {name} holds NaN or infinity in {self.dtype} (a value "
                                 "the file holds may be out of this dtype's range)")
            cast[name] = t
        return cast

    def capture(self, batch_sizes, seq_lens, with_nsp: bool = True) -> None:
        """Capture now, rather than at their first call, the CUDA graphs of padded batches of
        these sizes with every sequence full (shorter ones share the graph while they fit)."""
        if self._graphs is None:
            raise ValueError("this engine runs without CUDA graphs (a CPU engine, or "
                             "cuda_graphs=False)")
        for batch in batch_sizes:
            for seq_len in seq_lens:
                if not 1 <= seq_len <= self.config.max_len or batch < 1:
                    raise ValueError(f"batch {batch} x seq_len {seq_len}: need batch >= 1 and "
                                     f"seq_len in [1, max_len={self.config.max_len}]")
                key = self._graphs.key_for(batch * seq_len, batch, seq_len, 0, False,
                                           with_nsp and self.has_nsp)
                if key is None:
                    raise ValueError(f"batch {batch} x seq_len {seq_len} runs without a graph: "
                                     f"more than {self._graphs.max_tokens} tokens, where the "
                                     "GPU's work outlasts the kernel launches")
                self._graphs.capture(key)

    @classmethod
    def from_state_dict(cls, state_dict: dict, config: BertConfig, device="cpu",
                        dtype: torch.dtype = torch.float32, **engine_options) -> "Engine":
        """An engine for a d2l ``state_dict`` (the book's key names)."""
        return cls(config, pack_d2l_state_dict(state_dict, config), device=device, dtype=dtype,
                   **engine_options)

    @classmethod
    def from_model(cls, net: torch.nn.Module, device="cpu", dtype: torch.dtype = torch.float32,
                   **engine_options) -> "Engine":
        """Pack the weights of a d2l-style ``BERTModel`` (pybert's or the book's).
        ``engine_options``: cuda_graphs, max_graphs, quantize, cpu_plan."""
        return cls.from_state_dict(net.state_dict(), config_from_model(net), device=device,
                                   dtype=dtype, **engine_options)

    def __repr__(self) -> str:
        c = self.config
        quantized = f", quantize={self.quantize!r}" if self.quantize else ""
        return (f"Engine(vocab_size={c.vocab_size}, num_hiddens={c.num_hiddens}, "
                f"num_heads={c.num_heads}, num_layers={c.num_layers}, "
                f"device={self.device}, dtype={self.dtype}{quantized})")

    # -- forward ----------------------------------------------------------------------------

    def __call__(self, tokens, segments=None, valid_lens=None, pred_positions=None):
        if pred_positions is not None and not self.has_mlm:
            raise ValueError("this model has no MLM head, so pred_positions cannot be scored")
        batch = padded_batch(self.config, tokens, segments, valid_lens, pred_positions)
        return self.run(batch, with_nsp=self.has_nsp)

    def encode(self, tokens, segments=None, valid_lens=None) -> torch.Tensor:
        """Only the encodings (B, S, H): the heads are not run."""
        return self.run(padded_batch(self.config, tokens, segments, valid_lens),
                        with_nsp=False)[0]

    def encode_packed(self, tokens, cu_seqlens, segments=None, max_seqlen=None, *,
                      validate: bool = True) -> torch.Tensor:
        """Encodings of sequences already packed without padding (flash-attention's varlen form).

        tokens (total_tokens,) holds the sequences one after another; sequence b is
        ``tokens[cu_seqlens[b]:cu_seqlens[b + 1]]``; segments has the shape of tokens (default
        0). ``max_seqlen``, if given, must bound the longest sequence. Returns
        (total_tokens, H): no padding anywhere, in or out.

        Tensors already on the engine's GPU stay there: give ``max_seqlen`` as an int, and the
        inputs are checked on the device with one small read-back, or not at all with
        ``validate=False`` (then no call waits for the device: the engine can be captured in
        your own CUDA graph; ids out of range are undefined behaviour)."""
        if isinstance(tokens, torch.Tensor) and tokens.device.type == "cuda":
            if tokens.device != self.device:
                raise ValueError(f"tokens are on {tokens.device}, the engine on {self.device}")
            batch = device_packed_batch(self.config, tokens, cu_seqlens, segments, max_seqlen,
                                        validate)
        else:
            batch = packed_batch(self.config, tokens, cu_seqlens, segments, max_seqlen)
        return self.run(batch, with_nsp=False)[0]

    def heads_packed(self, tokens, cu_seqlens, segments=None, pred_positions=None, *,
                     with_nsp: bool = False):
        """(mlm_logits, nsp_logits) of sequences packed as :meth:`encode_packed` takes them:
        the MLM head's (B, P, vocab_size) logits at ``pred_positions`` (B, P), positions inside
        each sequence (0 is its first token), or None; the NSP head's (B, 2) logits if
        ``with_nsp``, or None. No padding is computed by the encoder."""
        if pred_positions is not None and not self.has_mlm:
            raise ValueError("this model has no MLM head, so pred_positions cannot be scored")
        batch = packed_batch(self.config, tokens, cu_seqlens, segments, None, pred_positions)
        _, mlm, nsp = self.run(batch, with_nsp)
        return mlm, nsp

    def run(self, batch: PackedBatch, with_nsp: bool):
        """(encoded, mlm_logits or None, nsp_logits or None) of a checked batch."""
        if with_nsp and not self.has_nsp:
            raise ValueError("this model has no NSP head")
        if self._graphs is not None:
            with torch.cuda.device(self.device):
                replayed = self._graphs.run(batch, with_nsp)
            if replayed is not None:
                return replayed
        batch = batch.to(self.device)
        # On the CPU the forward stops between two layers when Ctrl-C arrives; a GPU forward
        # is only enqueued, which is quick.
        interruptible = self.device.type == "cpu" and \
            threading.current_thread() is threading.main_thread()
        with torch.cuda.device(self.device) if self.device.type == "cuda" else \
                contextlib.nullcontext():
            outputs = self._native.forward(
                batch.tokens, batch.segments, batch.cu_seqlens,
                total_tokens=batch.total_tokens, max_seqlen=batch.max_seqlen,
                pred_positions=batch.pred_positions, with_encoded=True, with_nsp=with_nsp,
                interruptible=interruptible)
        # A CPU forward checks its outputs finite (finite weights can still overflow: an
        # attention score of 1e50) and raises ValueError; on the GPU that check would wait for
        # the device, so there the outputs are returned as computed.
        return outputs
