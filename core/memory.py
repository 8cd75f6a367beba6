"""How much memory a fine-tuning run needs, whether it fits here, and which models to suggest.

Everything is computed from a model's ``config.json`` alone (no weights, no torch), so the
Configure tab can warn before a download and ``modelforge models`` can advise offline.

The estimate is the sum of six terms, each documented where it is computed:
weights + adapters + gradients + optimizer + activations (logits included) + overhead.
It aims to be a little pessimistic: a run that was promised to fit and then runs out of memory
is worse than one that was told to shorten its sequences.

The overhead depends on the device (``estimate(..., device=)``). On a CPU what runs out is the
process's resident memory, so the estimate there is calibrated against the peak RSS of real runs
(``benchmarks/memory_estimate.py``, table in ``docs/benchmarks_memory.md``): a fixed 0.65 GiB for
Python + torch + transformers + trl + peft + the engine, plus 20% on top of the tensors for what
the allocator keeps (malloc's freed blocks, oneDNN's scratch buffers). On CUDA the overhead is the
context plus 10%, and the activations are calibrated against ``torch.cuda.max_memory_allocated`` on
an H200 (``benchmarks/gpu_check.py``, docs/benchmarks.md "GPU check"): a 1.24B Llama, LoRA, bf16,
batch 4 x 512-2048 tokens, with and without gradient checkpointing and LoRA dropout, within +11-12%
(QLoRA +26%).

:func:`fits` compares an estimate with a :class:`~core.hardware.HardwareReport` and, when it does
not fit, lists concrete fixes with the total each one brings. :func:`recommend` ranks the models
of ``assets/model_catalog.json`` for the machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, ModelForgeError, NotAvailableError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from core.config import RunConfig
    from core.hardware import HardwareReport

GIB = 1024**3
CATALOG_PATH = Path(__file__).resolve().parent.parent / "assets" / "model_catalog.json"
CATALOG_FIELDS = ("id", "task", "params", "architecture", "context_length", "license", "config")

QUANTIZATIONS = ("none", "4bit", "8bit")
DTYPES = ("bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adamw_8bit")
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

DEVICES = ("cuda", "mps", "cpu")
# A fixed cost before any tensor. GPU: the CUDA context and kernels (~0.3-0.5 GiB).
RUNTIME_BYTES = int(0.3 * GIB)
# CPU: the resident memory of the training process itself. Measured (docs/benchmarks_memory.md):
# 0.56 GiB right after importing torch, transformers, trl, peft, datasets and the engine, and
# ~0.70 GiB at the end of a run of a 1M-parameter model (the trainer, accelerate, tokenised data,
# oneDNN's kernels and thread pools).
CPU_RUNTIME_BYTES = int(0.65 * GIB)
# Allocator fragmentation, temporary buffers (dequantised 4-bit weights, attention workspaces,
# activation gradients of the layer being back-propagated): 10% on top of everything else.
OVERHEAD_FRACTION = 0.10
# On a CPU the resident memory runs higher still: glibc's malloc keeps freed blocks and oneDNN its
# scratch buffers. 20% fits the measured peaks of 1M-100M models (LoRA, QLoRA, full, fp32/bf16).
CPU_OVERHEAD_FRACTION = 0.20
# CUDA, measured on an H200 (torch 2.11, SDPA, bf16 autocast over a bf16 base, 1.24B Llama, two layer
# counts per setting so one layer's cost is the difference): a block keeps 57.6 bytes per token per
# hidden unit against the formula's 49 (_layer_activations): 1.18x.
CUDA_LAYER_FACTOR = 1.18
# trl's chunked loss (SFTTrainer's default loss_type "chunked_nll") computes the logits of 256
# tokens at a time, so the logits term is that chunk's, not the batch's.
LOSS_CHUNK_TOKENS = 256

# Families whose blocks use a plain (non-gated) MLP, LayerNorm and biases everywhere. Anything
# else is treated as a Llama-like decoder (gated MLP, RMSNorm, no biases): most new models are.
_CLASSIC_DECODERS = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "phi", "opt", "bloom", "falcon",
                     "codegen", "gpt_bigcode", "starcoder2", "biogpt"}
_ENCODERS = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "camembert", "deberta",
             "deberta-v2", "albert", "mpnet", "modernbert"}
_ENCODER_DECODERS = {"t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "marian",
                     "led", "plbart", "blenderbot", "m2m_100", "nllb-moe"}
# Learned absolute position embeddings (the rest use rotary or relative positions).
_LEARNED_POSITIONS = {"gpt2", "gpt_neo", "opt", "biogpt", "gpt_bigcode"}
# Families whose configs may omit tie_word_embeddings because they always tie.
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
# Qwen2 puts a bias on q/k/v without saying so in its config.
_QKV_BIAS = {"qwen2", "qwen2_moe"}

# Names users (and peft docs) give to the linear layers, mapped to the roles counted here.
_TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q",), "q": ("q",), "query": ("q",), "q_lin": ("q",),
    "k_proj": ("k",), "k": ("k",), "key": ("k",), "k_lin": ("k",),
    "v_proj": ("v",), "v": ("v",), "value": ("v",), "v_lin": ("v",),
    "o_proj": ("o",), "o": ("o",), "out_proj": ("o",), "out_lin": ("o",),
    "c_attn": ("q", "k", "v"), "qkv_proj": ("q", "k", "v"), "query_key_value": ("q", "k", "v"),
    "wqkv": ("q", "k", "v"), "c_proj": ("o", "down"), "dense": ("o", "down"),
    "gate_proj": ("gate",), "w1": ("gate",), "wi_0": ("gate",),
    "up_proj": ("up",), "w3": ("up",), "fc1": ("up",), "c_fc": ("up",), "wi": ("gate", "up"),
    "wi_1": ("up",), "lin1": ("up",), "fc_in": ("up",), "dense_h_to_4h": ("up",),
    "gate_up_proj": ("gate", "up"),
    "down_proj": ("down",), "w2": ("down",), "fc2": ("down",), "wo": ("down",), "lin2": ("down",),
    "fc_out": ("down",), "dense_4h_to_h": ("down",),
}


# -- architecture from config.json ---------------------------------------------------------------
@dataclass
class _Linear:
    """A kind of linear layer inside the blocks: what LoRA targets and 4/8-bit loading quantises."""

    role: str      # q k v o gate up down
    fan_in: int
    fan_out: int
    count: int     # how many of them in the whole model
    bias: bool = False


@dataclass
class _Arch:
    kind: str                    # decoder | encoder | encoder-decoder
    model_type: str
    hidden: int
    heads: int
    intermediate: int
    gated: bool
    vocab: int
    encoder_layers: int
    decoder_layers: int
    linears: list[_Linear]
    other_params: int            # embeddings, output head, norms, position tables
    experts_per_token: int = 1
    eager_attention: bool = False  # attention scores materialised (no SDPA, e.g. T5's bias)

    @property
    def layers(self) -> int:
        return self.encoder_layers + self.decoder_layers

    @property
    def linear_weights(self) -> int:
        return sum(lin.count * lin.fan_in * lin.fan_out for lin in self.linears)

    @property
    def linear_biases(self) -> int:
        return sum(lin.count * lin.fan_out for lin in self.linears if lin.bias)

    @property
    def params(self) -> int:
        return self.linear_weights + self.linear_biases + self.other_params


def _get(cfg: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            return value
    return default


def _need(cfg: dict, model_type: str, *keys: str) -> int:
    value = _get(cfg, *keys)
    if value is None:
        raise NotAvailableError(
            f"cannot estimate memory for model type '{model_type or 'unknown'}': its config has "
            f"none of {', '.join(keys)}",
            "check that the folder holds the model's config.json; the estimate knows "
            "Llama/Qwen/Mistral/Phi/GPT-2/GPT-NeoX, T5/BART and BERT-style configs")
    return int(value)


def _arch(model_config: dict) -> _Arch:
    if not isinstance(model_config, dict):
        raise NotAvailableError("cannot estimate memory: the model config is not a mapping",
                                "pass the parsed config.json of the model")
    cfg = model_config
    # Multimodal wrappers (Llava, Gemma 3...) keep the language model's keys in text_config.
    if isinstance(cfg.get("text_config"), dict) and _get(cfg, "hidden_size", "d_model", "n_embd") is None:
        text = cfg["text_config"]
        cfg = {**text, "model_type": text.get("model_type", cfg.get("model_type"))}
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type in _ENCODER_DECODERS or cfg.get("is_encoder_decoder") or "encoder_layers" in cfg:
        return _encoder_decoder(cfg, model_type)
    if model_type in _ENCODERS or ("type_vocab_size" in cfg and not cfg.get("is_decoder")):
        return _encoder(cfg, model_type)
    return _decoder(cfg, model_type)


def _decoder(cfg: dict, mt: str) -> _Arch:
    h = _need(cfg, mt, "hidden_size", "n_embd", "d_model", "dim")
    n = _need(cfg, mt, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    a = _need(cfg, mt, "num_attention_heads", "n_head", "num_heads", "n_heads")
    vocab = _need(cfg, mt, "vocab_size")
    kv = int(_get(cfg, "num_key_value_heads", default=1 if cfg.get("multi_query") else a))
    head_dim = int(_get(cfg, "head_dim", default=h // a))
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * h))
    classic = mt in _CLASSIC_DECODERS
    qkv_bias = bool(cfg.get("attention_bias", classic) or mt in _QKV_BIAS)
    o_bias = bool(cfg.get("attention_bias", classic))
    mlp_bias = bool(cfg.get("mlp_bias", classic))
    experts = int(_get(cfg, "num_local_experts", "num_experts", default=1) or 1)
    moe_inter = int(_get(cfg, "moe_intermediate_size", default=inter)) if experts > 1 else inter
    linears = [
        _Linear("q", h, a * head_dim, n, qkv_bias),
        _Linear("k", h, kv * head_dim, n, qkv_bias),
        _Linear("v", h, kv * head_dim, n, qkv_bias),
        _Linear("o", a * head_dim, h, n, o_bias),
    ]
    if not classic:
        linears.append(_Linear("gate", h, moe_inter, n * experts, mlp_bias))
    linears += [_Linear("up", h, moe_inter, n * experts, mlp_bias),
                _Linear("down", moe_inter, h, n * experts, mlp_bias)]
    tie = bool(cfg.get("tie_word_embeddings", classic or mt in _TIED_BY_DEFAULT))
    norm = 2 * h if classic else h  # LayerNorm has a bias, RMSNorm has not
    other = vocab * h * (1 if tie else 2) + (2 * n + 1) * norm
    if experts > 1:
        other += n * h * experts  # the router
    if mt in _LEARNED_POSITIONS:
        other += int(_get(cfg, "n_positions", "max_position_embeddings", default=0)) * h
    return _Arch("decoder", mt, h, a, inter, not classic, vocab, 0, n, linears, other,
                 experts_per_token=int(_get(cfg, "num_experts_per_tok", default=1)) if experts > 1 else 1)


def _encoder(cfg: dict, mt: str) -> _Arch:
    h = _need(cfg, mt, "hidden_size", "dim", "d_model")
    n = _need(cfg, mt, "num_hidden_layers", "n_layers", "num_layers")
    a = _need(cfg, mt, "num_attention_heads", "n_heads")
    vocab = _need(cfg, mt, "vocab_size")
    inter = int(_get(cfg, "intermediate_size", "hidden_dim", default=4 * h))
    linears = [_Linear(r, h, h, n, True) for r in ("q", "k", "v", "o")]
    linears += [_Linear("up", h, inter, n, True), _Linear("down", inter, h, n, True)]
    positions = int(_get(cfg, "max_position_embeddings", default=512))
    token_types = int(_get(cfg, "type_vocab_size", default=0 if mt == "distilbert" else 2))
    # word + position + token-type tables, the embedding LayerNorm, two LayerNorms per block,
    # and the 2-way start/end head of extractive QA.
    other = (vocab + positions + token_types) * h + 2 * h + n * 4 * h + 2 * h + 2
    return _Arch("encoder", mt, h, a, inter, False, vocab, n, 0, linears, other)


def _encoder_decoder(cfg: dict, mt: str) -> _Arch:
    h = _need(cfg, mt, "d_model", "hidden_size")
    enc = _need(cfg, mt, "encoder_layers", "num_layers", "num_hidden_layers")
    dec = int(_get(cfg, "decoder_layers", "num_decoder_layers", default=enc))
    a = _need(cfg, mt, "encoder_attention_heads", "num_heads", "num_attention_heads")
    vocab = _need(cfg, mt, "vocab_size")
    inter = int(_get(cfg, "encoder_ffn_dim", "d_ff", "intermediate_size", default=4 * h))
    is_t5 = "d_kv" in cfg or mt.endswith("t5")
    inner = a * int(cfg.get("d_kv", h // a))
    gated = str(cfg.get("feed_forward_proj", "")).startswith("gated")
    bias = not is_t5  # T5 has no biases at all; BART-style models have them everywhere
    attn_blocks = enc + 2 * dec  # decoder blocks have self- and cross-attention
    linears = [_Linear("q", h, inner, attn_blocks, bias), _Linear("k", h, inner, attn_blocks, bias),
               _Linear("v", h, inner, attn_blocks, bias), _Linear("o", inner, h, attn_blocks, bias)]
    if gated:
        linears.append(_Linear("gate", h, inter, enc + dec, bias))
    linears += [_Linear("up", h, inter, enc + dec, bias), _Linear("down", inter, h, enc + dec, bias)]
    # transformers 5 always ties T5's output layer to its embeddings; there a saved
    # tie_word_embeddings=false only turns off the output scaling.
    tie = True if is_t5 else bool(cfg.get("tie_word_embeddings", True))
    other = vocab * h * (1 if tie else 2)
    if is_t5:
        buckets = int(cfg.get("relative_attention_num_buckets", 32))
        other += 2 * buckets * a + (2 * enc + 3 * dec + 2) * h  # RMS norms, no bias
    else:
        positions = int(_get(cfg, "max_position_embeddings", default=1024)) + 2  # BART's offset
        other += 2 * positions * h + 2 * 2 * h + (enc * 2 + dec * 3) * 2 * h
    return _Arch("encoder-decoder", mt, h, a, inter, gated, vocab, enc, dec, linears, other,
                 eager_attention=is_t5)


def _checkpoint_bytes(model_config: dict) -> int:
    """Bytes per weight in the saved checkpoint (config.json's dtype; 16-bit when it says none)."""
    text = str(model_config.get("dtype") or model_config.get("torch_dtype") or "bfloat16")
    return 4 if "32" in text else 2


def param_count(model_config: dict) -> int:
    """Number of parameters of a model, from its config.json alone.

    Exact for Llama/Qwen2/Mistral/Phi-3/SmolLM, T5, BART and DistilBERT-style configs; within ~1%
    for the other families it knows (biases and norms are approximated).

    Args:
        model_config: the parsed config.json.

    Raises:
        NotAvailableError: the config lacks the sizes needed (unknown architecture).
    """
    return _arch(model_config).params


# -- the estimate ----------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Peak memory of one training run, in bytes, split by what it is for.

    Attributes:
        weights: the base model's parameters as loaded (quantised or not).
        adapters: the LoRA A/B matrices (fp32). 0 for a full fine-tune.
        gradients: gradients of the trainable parameters.
        optimizer: AdamW's state for the trainable parameters.
        activations: tensors kept for the backward pass, logits included.
        logits: the part of ``activations`` that is the output logits and the loss's copies.
        overhead: the runtime (CUDA context, or on a CPU the Python + torch process itself)
            plus a margin for fragmentation and temporaries (10% on a GPU, 20% on a CPU).
        total: the sum of all of the above (``logits`` counted once, inside activations).
        params: parameters of the base model.
        trainable_params: parameters that receive gradients.
        settings: the arguments the estimate was made with (what :func:`fits` varies).
    """

    weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    params: int
    trainable_params: int
    settings: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict, repr=False)

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def to_dict(self) -> dict:
        """Sizes in GiB (3 decimals), counts and settings; JSON-serialisable."""
        out = {k: round(getattr(self, k) / GIB, 3) for k in
               ("weights", "adapters", "gradients", "optimizer", "activations", "logits",
                "overhead", "total")}
        out["unit"] = "GiB"
        out["params"] = self.params
        out["trainable_params"] = self.trainable_params
        out["settings"] = dict(self.settings)
        return out

    def breakdown_lines(self) -> list[str]:
        """Human-readable lines: the total, then one line per term with what it is."""
        s = self.settings
        quant = {"none": f"in {s['dtype']}", "4bit": "in 4-bit NF4", "8bit": "in 8-bit"}[s["quantization"]]
        if s["full_finetune"]:
            quant = "as fp32 master weights (full fine-tune)"
        how = ("full fine-tune" if s["full_finetune"]
               else f"LoRA r={s['lora_r']} on {s['lora_targets']}")
        gib = _size_text
        adapters = ("none (full fine-tune)" if s["full_finetune"]
                    else f"{_human_count(self.trainable_params)} trainable parameters in fp32")
        lines = [
            f"Estimated peak memory: {self.total / GIB:.2f} GiB ({_human_count(self.params)} "
            f"parameters, {how}, batch {s['batch_size']} x {s['seq_len']} tokens, {s['dtype']}"
            f"{', gradient checkpointing' if s['gradient_checkpointing'] else ''})",
            f"  weights     {gib(self.weights)}  base model {quant}",
            f"  adapters    {gib(self.adapters)}  {adapters}",
            f"  gradients   {gib(self.gradients)}  one fp32 gradient per trainable parameter",
            f"  optimizer   {gib(self.optimizer)}  "
            + ("AdamW: two fp32 states per trainable parameter" if s["optimizer"] == "adamw"
               else "8-bit AdamW: two 1-byte states per trainable parameter"),
            f"  activations {gib(self.activations)}  kept for the backward pass, of which logits "
            f"{gib(self.logits).strip()}",
            f"  overhead    {gib(self.overhead)}  "
            + ("the Python + torch process + 20% allocator margin" if s.get("device") == "cpu"
               else "runtime/CUDA context + 10% margin"),
        ]
        return lines


def _size_text(n: float) -> str:
    """A memory size for the breakdown, right-aligned: GiB from 1 GiB, else MB or KB, so that a
    small model's parts do not all read "0.00 GiB"."""
    if n >= GIB:
        return f"{n / GIB:7.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:7.0f} MB "
    return f"{n / 2**10:7.0f} KB "


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{1 if n < 10 * size else 0}f}{unit}".replace(".0" + unit, unit)
    return str(n)


def _targeted(arch: _Arch, lora_targets: str | list[str] | tuple[str, ...]) -> list[_Linear]:
    if isinstance(lora_targets, str):
        names = [t.strip() for t in lora_targets.split(",") if t.strip()]
    else:
        names = [str(t).strip() for t in lora_targets]
    if not names or any(n.lower() in ("all-linear", "all_linear", "all") for n in names):
        return list(arch.linears)  # peft's all-linear: every block linear, not the output head
    roles = {r for n in names for r in _TARGET_ALIASES.get(n.split(".")[-1].lower(), ())}
    if not roles:
        # Names this estimate does not know: count every linear, which over-estimates a little
        # (adapters are small) rather than promising memory that is not there.
        return list(arch.linears)
    return [lin for lin in arch.linears if lin.role in roles]


def _layer_activations(arch: _Arch, batch: int, seq: int) -> tuple[int, int]:
    """Bytes kept per block at 16-bit: (encoder/decoder-only block, decoder block with cross-attn).

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    eq. 1): ``s*b*h*(34 + 5*a*s/h)`` bytes per layer at 16-bit, where 34 = 11 (attention inputs,
    Q, K, V, output) + 4 (two norms) + 19 (an MLP 4x wide). The MLP part is rescaled for the real
    intermediate size (and a gated MLP keeps four tensors of that size instead of two).
    ``5*a*s^2*b`` is the attention score matrix, its softmax and dropout mask: only kept by
    "eager" attention; SDPA (transformers' default) keeps just a per-row logsumexp in fp32.
    """
    s, b, h, a, i = seq, batch, arch.hidden, arch.heads, arch.intermediate
    attention = 11 * s * b * h
    norms = 4 * s * b * h
    if arch.gated:
        mlp = 2 * s * b * h + 8 * s * b * i   # input + gate, up, act(gate), product
    else:
        mlp = 3 * s * b * h + 4 * s * b * i   # input + act in/out + dropout mask: 19sbh at i=4h
    mlp *= arch.experts_per_token            # a mixture of experts runs top-k MLPs per token
    scores = 5 * a * s * s * b if arch.eager_attention else 4 * a * s * b
    block = attention + norms + mlp + scores
    cross = block + attention + norms // 2 + scores  # decoder block: + cross-attention
    return block, cross


def estimate(
    model_config: dict,
    *,
    quantization: str = "none",
    lora_r: int = 8,
    lora_targets: str | list[str] = "all-linear",
    batch_size: int = 4,
    seq_len: int = 512,
    gradient_checkpointing: bool = False,
    dtype: str = "bf16",
    optimizer: str = "adamw",
    full_finetune: bool = False,
    device: str = "cuda",
    lora_dropout: float = 0.05,
    chunked_loss: bool = False,
) -> MemoryEstimate:
    """Estimate the peak training memory of a model from its config.json.

    Args:
        model_config: the parsed config.json (or a catalog entry's ``config``).
        quantization: how the base is loaded: "none" (in ``dtype``), "4bit" (NF4, QLoRA), "8bit".
        lora_r: LoRA rank.
        lora_targets: "all-linear" or a comma list / list of module names ("q_proj,v_proj").
        batch_size: examples per device step.
        seq_len: tokens per example (``max_length``).
        gradient_checkpointing: recompute activations in the backward pass.
        dtype: compute precision, "bf16", "fp16" or "fp32" (resolve "auto" with
            :func:`train_dtype` first).
        optimizer: "adamw" or "adamw_8bit" (bitsandbytes).
        full_finetune: train every parameter instead of LoRA adapters.
        device: "cuda", "mps" or "cpu": what the overhead is (see the module docstring). On a
            CPU the total is what the process's resident memory peaks at.
        lora_dropout: the adapters' dropout; 0 lets the adapters share their layer's input.
        chunked_loss: the trainer computes the loss a chunk of tokens at a time (trl's SFT), so
            the batch's logits never exist at once.

    Returns:
        A :class:`MemoryEstimate` in bytes.

    Raises:
        ConfigError: an argument has a value outside its choices.
        NotAvailableError: the config lacks the sizes needed (unknown architecture).
    """
    problems = []
    for name, value, choices in (("quantization", quantization, QUANTIZATIONS),
                                 ("precision", dtype, DTYPES), ("optimizer", optimizer, OPTIMIZERS),
                                 ("device", device, DEVICES)):
        if value not in choices:
            problems.append(Problem(f"'{value}' is not one of: {', '.join(choices)}",
                                    "pick one of the listed values", field=name))
    for name, value in (("lora_r", lora_r), ("batch_size", batch_size), ("max_length", seq_len)):
        if not isinstance(value, int) or value < 1:
            problems.append(Problem(f"{value!r} is not a positive whole number",
                                    "use a value >= 1", field=name))
    if full_finetune and quantization != "none":
        problems.append(Problem("a quantised base cannot be fully fine-tuned",
                                "use LoRA (the default) or quantization none", field="quantization"))
    if problems:
        raise ConfigError("cannot estimate memory for these settings", problems=problems)

    arch = _arch(model_config)
    params = arch.params
    cdt = _DTYPE_BYTES[dtype]

    # Weights. The base sits in the compute dtype (the providers load it so, and a full fine-tune
    # trains it in that dtype: no fp32 master copy), except that 4/8-bit loading quantises the
    # block linears only: embeddings, the output head, norms and biases stay in the compute dtype.
    if full_finetune:
        weights = params * cdt
    elif quantization == "4bit":
        # NF4: 4 bits per weight + one fp32 absmax per 64-weight block (0.5 bit per weight;
        # transformers does not turn on double quantisation by default).
        weights = math.ceil(arch.linear_weights * 4.5 / 8) + (params - arch.linear_weights) * cdt
    elif quantization == "8bit":
        # LLM.int8: 1 byte per weight + an fp32 scale per output row.
        rows = sum(lin.count * lin.fan_out for lin in arch.linears)
        weights = arch.linear_weights + rows * 4 + (params - arch.linear_weights) * cdt
    else:
        weights = params * cdt
    if quantization != "none" and device == "cpu":
        # Quantising on load leaves the checkpoint's pages of those linears resident on a CPU (the
        # safetensors file stays mapped): measured +0.43 GiB of RSS for 0.28 GiB of fp32 linears
        # of the 100M benchmark model. Clean file pages, but they count until the OS needs them.
        weights += arch.linear_weights * _checkpoint_bytes(model_config)

    # LoRA adds r*(in+out) parameters per targeted linear (A is r x in, B is out x r); peft keeps
    # them in fp32 even on a 16-bit base, so that small updates are not rounded away.
    targets = [] if full_finetune else _targeted(arch, lora_targets)
    lora_params = sum(lin.count * lora_r * (lin.fan_in + lin.fan_out) for lin in targets)
    trainable = params if full_finetune else lora_params
    adapters = lora_params * 4
    # One gradient per trainable parameter, in the parameter's dtype (fp32 for LoRA adapters, the
    # compute dtype for a full fine-tune); the frozen base gets none.
    pdt = cdt if full_finetune else 4
    gradients = trainable * pdt
    # AdamW keeps two states (first and second moment) per trainable parameter, in the
    # parameter's dtype (torch's AdamW), or 2 x 1 byte with bitsandbytes' 8-bit AdamW (its block
    # scales are negligible).
    optimizer_bytes = trainable * (2 * pdt if optimizer == "adamw" else 2)

    # Activations: see _layer_activations; the formula is for 16-bit tensors, fp32 doubles it.
    scale = cdt / 2
    block, cross = _layer_activations(arch, batch_size, seq_len)
    decoder_block = cross if arch.kind == "encoder-decoder" else block
    per_layer = [block] * arch.encoder_layers + [decoder_block] * arch.decoder_layers
    # The LoRA path keeps its own copy of each targeted layer's input: peft casts it to the
    # adapters' fp32 and applies dropout, and the A matrix saves what it was given. Measured with
    # peft 0.21 (saved-tensor hooks, SmolLM2-135M): ~6 bytes per input element on a bf16 base
    # under autocast (how trl trains; ~8 without autocast), ~5 in fp32; plus the r-wide fp32
    # intermediate. With all-linear targets this is as big as the base layers' own activations.
    # On CUDA (measured, see CUDA_LAYER_FACTOR) the adapters' own cost is ~1 byte per input element
    # (the dropout mask; the dropped-out input is not kept apart from it), and nothing with dropout
    # 0: the adapter then reads the very tensor its layer saved. The CPU figure above was measured
    # against resident memory with the default dropout and stays as it was calibrated.
    if device == "cpu":
        per_input = 5 if cdt == 4 else 6
    else:
        per_input = 1 if lora_dropout > 0 else 0
    lora_path = sum(lin.count * batch_size * seq_len * (lin.fan_in * per_input + lora_r * 4)
                    for lin in targets)
    if device != "cpu":
        per_layer = [int(n * CUDA_LAYER_FACTOR) for n in per_layer]
    if gradient_checkpointing:
        # Only each block's input survives the forward pass (s*b*h at the compute dtype); the
        # block being back-propagated is recomputed in full, one at a time.
        layers = arch.layers * batch_size * seq_len * arch.hidden * cdt + max(per_layer) * scale
        layers += lora_path / max(arch.layers, 1)
    else:
        layers = sum(per_layer) * scale + lora_path
    # Logits: batch*seq*vocab in the compute dtype, then the loss upcasts them to fp32 and keeps
    # fp32 log-probabilities for the backward pass. With vocabularies of 50k-150k this is often
    # the single biggest tensor for models under ~1B parameters. Extractive QA has 2 "classes".
    # With a chunked loss only LOSS_CHUNK_TOKENS tokens' logits exist at once (measured on CUDA: the
    # whole rest of a step, embeddings and norms included, stayed at 0.43-0.56 GiB for a 128k
    # vocabulary from 2,048 to 8,192 tokens a batch).
    classes = 2 if arch.kind == "encoder" else arch.vocab
    tokens = min(batch_size * seq_len, LOSS_CHUNK_TOKENS) if chunked_loss else batch_size * seq_len
    logits = tokens * classes * (cdt + 8)
    activations = int(layers) + logits

    subtotal = weights + adapters + gradients + optimizer_bytes + activations
    if device == "cpu":
        overhead = CPU_RUNTIME_BYTES + int(subtotal * CPU_OVERHEAD_FRACTION)
    else:
        overhead = RUNTIME_BYTES + int(subtotal * OVERHEAD_FRACTION)
    settings = {
        "quantization": quantization, "lora_r": lora_r,
        "lora_targets": lora_targets if isinstance(lora_targets, str) else ",".join(lora_targets),
        "batch_size": batch_size, "seq_len": seq_len,
        "gradient_checkpointing": bool(gradient_checkpointing), "dtype": dtype,
        "optimizer": optimizer, "full_finetune": bool(full_finetune), "device": device,
        "lora_dropout": float(lora_dropout), "chunked_loss": bool(chunked_loss),
    }
    return MemoryEstimate(
        weights=int(weights), adapters=int(adapters), gradients=int(gradients),
        optimizer=int(optimizer_bytes), activations=int(activations), logits=int(logits),
        overhead=int(overhead), total=int(subtotal + overhead), params=int(params),
        trainable_params=int(trainable), settings=settings, model_config=model_config,
    )


def estimate_for_run(config: "RunConfig", model_config: dict,
                     report: "HardwareReport | None" = None, profile: Any = None) -> MemoryEstimate:
    """:func:`estimate` with the values of a :class:`~core.config.RunConfig`.

    ``precision: auto`` is resolved as the engine resolves it (:func:`train_dtype`; bf16 when no
    report is given). The device is the report's (CUDA when no report is given). ``config`` is
    the adjusted one (:func:`core.checks.adjusted`: qlora's 4-bit base is in its quantization).

    Args:
        config: the run configuration.
        model_config: the parsed config.json of ``config.model``.
        report: the hardware report, to resolve ``precision: auto`` and the device.
        profile: the strategy's :class:`~core.plugins.MemoryProfile` (None: LoRA).

    Raises:
        ConfigError: a value outside its choices.
        NotAvailableError: the model's config lacks the sizes needed.
    """
    quant = config.quantization
    full = bool(getattr(profile, "full_finetune", False))
    dtype = config.precision
    if dtype == "auto":
        dtype = train_dtype(report, quant) if report is not None else "bf16"
    device = report.device if report is not None else "cuda"
    return estimate(model_config, quantization=quant, lora_r=config.lora_r,
                    lora_targets=config.lora_target_modules, batch_size=config.batch_size,
                    seq_len=config.max_length, gradient_checkpointing=config.gradient_checkpointing,
                    dtype=dtype, device=device, full_finetune=full, lora_dropout=config.lora_dropout,
                    chunked_loss=bool(getattr(profile, "chunked_loss", False)))


def train_dtype(report: "HardwareReport", quantization: str = "none") -> str:
    """What ``precision: auto`` trains in on this machine: :func:`core.hardware.best_dtype`, the
    same decision (:func:`core.hardware.auto_precision`) the engine trains with. On a CPU that is
    bf16 (base weights) with bf16 matrix units and 2+ threads, else fp32; a quantised base on a
    CPU is fp32. Estimating in another dtype than the run trains in would misstate its memory.
    """
    from core.hardware import best_dtype

    return best_dtype(report, quantization)


# -- does it fit? ------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Whether an estimate fits the device, and what to change when it does not.

    Attributes:
        ok: fits (also True when the free memory could not be measured: see ``measured``).
        needed_gib: the estimated peak on the device (on a CPU: the resident memory).
        available_gib: usable memory on the device after the safety margin.
        device: "cuda", "mps" or "cpu".
        fixes: changes in order of effect, each applied on top of the previous ones and
            followed by the estimated total after it; empty when it fits.
        message: one plain sentence.
        measured: False when the free memory was unknown (then nothing is refused).
    """

    ok: bool
    needed_gib: float
    available_gib: float
    device: str = "cpu"
    fixes: list[str] = field(default_factory=list)
    message: str = ""
    measured: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def available_gib(report: "HardwareReport", device: str | None = None) -> float | None:
    """Memory a run may use on ``device`` (GiB), after a safety margin; None when unknown.

    Args:
        report: from :func:`core.hardware.probe`.
        device: "cuda", "mps" or "cpu"; default ``report.device``.
    """
    device = device or report.device
    if device == "cuda":
        if not report.gpus:
            return None
        gpu = report.gpus[0]  # training uses the first visible GPU
        if gpu.memory_free_mib <= 0:
            return None
        # 5% margin: other processes and the display may grow while training runs.
        return gpu.memory_free_mib / 1024 * 0.95
    if report.ram_available_gib <= 0:
        return None
    if device == "mps":
        # Metal lets one process use only ~70% of the unified memory.
        return min(report.ram_available_gib, report.ram_total_gib * 0.7)
    # CPU: leave 1 GiB (or 10%) to the OS, the browser and the app itself.
    return max(0.0, report.ram_available_gib - max(1.0, report.ram_total_gib * 0.10))


def _for_device(est: MemoryEstimate, device: str) -> MemoryEstimate:
    """``est`` made again for ``device`` when it was made for another (the overhead differs)."""
    if est.settings.get("device") == device or not est.model_config:
        return est
    return estimate(est.model_config, **{**est.settings, "device": device})


def fits(estimate: MemoryEstimate, report: "HardwareReport", device: str | None = None) -> FitResult:
    """Compare an estimate with the memory free on the device; suggest fixes when it is too big.

    Fixes are chosen greedily: at each step the applicable change that lowers the total most is
    added, until the run fits. Each applies only where it makes sense (4-bit needs LoRA and
    bitsandbytes' CUDA or CPU support, the 8-bit optimizer needs CUDA and must save >= 0.1 GiB).

    Args:
        estimate: from :func:`estimate` (made again for ``device`` if it was made for another).
        report: from :func:`core.hardware.probe`.
        device: "cuda", "mps" or "cpu"; default ``report.device``.
    """
    device = device or report.device
    estimate = _for_device(estimate, device)
    needed = estimate.total / GIB
    avail = available_gib(report, device)
    if avail is None:
        return FitResult(True, round(needed, 2), 0.0, device, [],
                         f"Needs about {needed:.1f} GiB; the free memory on {device} could not be "
                         "measured, so this is not checked.", measured=False)
    if needed <= avail:
        return FitResult(True, round(needed, 2), round(avail, 2), device, [],
                         f"Fits: needs about {needed:.1f} GiB of {avail:.1f} GiB usable on {device}.")
    fixes = _fixes(estimate, avail)
    return FitResult(False, round(needed, 2), round(avail, 2), device, fixes,
                     f"Does not fit: needs about {needed:.1f} GiB but only {avail:.1f} GiB is usable "
                     f"on {device}.")


def _fixes(est: MemoryEstimate, avail: float) -> list[str]:
    settings = dict(est.settings)
    device = settings["device"]
    used: set[str] = set()
    fixes: list[str] = []
    total = est.total / GIB
    while total > avail:
        options = []
        for key, text, change in _candidate_fixes(est.model_config, settings, avail, device, used):
            new = estimate(est.model_config, **{**settings, **change}).total / GIB
            # A fix must save something worth the change; the 8-bit optimizer only matters for
            # full fine-tunes (LoRA's optimizer state is tiny), so ask it for 0.1 GiB.
            if total - new >= (0.1 if key == "optimizer" else 0.01):
                options.append((new, key, text, change))
        if not options:
            break
        new, key, text, change = min(options, key=lambda o: o[0])
        settings.update(change)
        used.add(key)
        total = new
        fixes.append(f"{text} (estimated total {new:.1f} GiB)")
    if total > avail:
        fixes.append(f"still about {total:.1f} GiB after these: choose a smaller model "
                     "(see `modelforge models` for what fits here)")
    return fixes


def _candidate_fixes(model_config: dict, s: dict, avail: float, device: str, used: set[str]):
    # bitsandbytes 4-bit runs on CUDA and (slowly) on a CPU; a full fine-tune cannot use it.
    if ("quant" not in used and s["quantization"] != "4bit" and not s["full_finetune"]
            and device in ("cuda", "cpu")):
        slow = ", slow on a CPU" if device == "cpu" else ""
        yield "quant", f"load the base in 4-bit (quantization: 4bit{slow})", {"quantization": "4bit"}
    if "length" not in used and s["seq_len"] > 128:
        # Halve at most (truncating more loses too much of each example), but keep the longest
        # length in between that already fits.
        floor = max(128, s["seq_len"] // 2)
        target = floor
        for n in (4096, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128):
            if floor <= n < s["seq_len"] and estimate(model_config, **{**s, "seq_len": n}).total / GIB <= avail:
                target = n
                break
        yield "length", f"shorten max_length to {target}", {"seq_len": target}
    if "batch" not in used and s["batch_size"] > 1:
        k = s["batch_size"]
        yield ("batch", f"batch_size 1 with gradient_accumulation_steps {k} (same effective batch)",
               {"batch_size": 1})
    if "ckpt" not in used and not s["gradient_checkpointing"]:
        yield "ckpt", "turn on gradient_checkpointing (~30% slower)", {"gradient_checkpointing": True}
    if "optimizer" not in used and s["optimizer"] == "adamw" and device == "cuda":
        yield "optimizer", "use the 8-bit optimizer (adamw_8bit)", {"optimizer": "adamw_8bit"}


# -- the catalog and recommendations ------------------------------------------------------------------
def load_catalog(path: str | Path | None = None) -> list[dict]:
    """The curated models of ``assets/model_catalog.json``.

    Args:
        path: another catalog file (same format); default the bundled one.

    Raises:
        ModelForgeError: the file is missing, not JSON, or an entry lacks a field.
    """
    p = Path(path) if path else CATALOG_PATH
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelForgeError(f"cannot read the model catalog {p}: {exc}",
                              "reinstall ModelForge or fix the JSON") from None
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ModelForgeError(f"the model catalog {p} has no 'models' list", "fix the JSON")
    problems = []
    for i, e in enumerate(entries):
        missing = [f for f in CATALOG_FIELDS if not isinstance(e, dict) or f not in e]
        if missing:
            problems.append(Problem(f"missing {', '.join(missing)}", "add the fields",
                                    file=str(p), line=i))
    if problems:
        raise ModelForgeError(f"the model catalog {p} has {len(problems)} bad entr(ies)",
                              "fix the JSON", problems=problems)
    return entries


# What "demo" means per task (core.demo_model builds a different tiny model for each).
DEMO_IDS = {"text-generation": "demo", "summarization": "demo-seq2seq", "extractive-qa": "demo-qa"}


def _is_demo(model_id: str) -> bool:
    return model_id == "demo" or model_id.startswith("demo-")


def model_config_for(model: str, catalog: list[dict] | None = None,
                     task: str = "text-generation") -> dict | None:
    """The config.json of ``model`` without downloading: a catalog entry or a local folder.

    Args:
        model: "demo" (or "demo-causal", "demo-seq2seq", "demo-qa"), a catalog hub id, or a
            local model folder.
        catalog: entries from :func:`load_catalog` (default: the bundled catalog).
        task: which demo "demo" means (it follows the task, as in ``core.demo_model``).

    Returns:
        The config dict, or None when it is not known offline (a hub id outside the catalog).
    """
    key = model.strip()
    if key.lower() == "demo":
        key = DEMO_IDS.get(task, "demo")
    elif key.lower() == "demo-causal":
        key = "demo"
    try:
        for entry in catalog if catalog is not None else load_catalog():
            if entry["id"] == key:
                return dict(entry["config"])
    except ModelForgeError:
        pass
    folder = Path(model).expanduser()
    try:
        if (folder / "config.json").is_file():
            data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Recommendation:
    """A model that fits this machine, with settings that fit.

    Attributes:
        model_id: a demo ("demo", "demo-seq2seq", "demo-qa") or a hub id.
        task: text-generation, summarization or extractive-qa.
        method: "lora" (16-bit base) or "qlora" (4-bit base).
        batch_size / max_length / gradient_accumulation_steps / gradient_checkpointing:
            suggested settings (accumulation brings the effective batch to 8).
        estimated_gib: estimated peak memory with them, on the device (see :func:`estimate`).
        available_gib: usable memory on the device.
        params: parameters of the model.
        comfortable: fits with at least 1,024 tokens per step.
        note: plain words on what to expect.
    """

    model_id: str
    task: str
    method: str
    batch_size: int
    max_length: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    estimated_gib: float
    available_gib: float
    params: int
    comfortable: bool = True
    note: str = ""

    def config_changes(self) -> dict:
        """RunConfig field values that apply this recommendation."""
        return {
            "model": self.model_id,
            # QLoRA is LoRA on a 4-bit base: the quantisation option, with the plain SFT strategy.
            "quantization": "4bit" if self.method == "qlora" else "none",
            "strategy": "sft",
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "gradient_checkpointing": self.gradient_checkpointing,
        }

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["config_changes"] = self.config_changes()
        return out


# Tokens per second of LoRA training on a CPU scale roughly with cores / parameters. Measured:
# a 29M-parameter Llama did ~716 tokens/s in fp32 on 2 cores (bf16: core.speed) (docs/benchmarks.md, "Engine overhead", the precision rows). A rough guess for bigger
# models, stated as such to the user.
_CPU_TOKENS_PARAMS_PER_CORE = 716 * 29e6 / 2
_EFFECTIVE_BATCH = 8  # gradient accumulation brings small batches up to this many examples
_SMALL_FOR_CPU = 600_000_000  # "~0.5B": Qwen2.5-0.5B counts 494M
_HEADROOM = 0.9  # recommended settings leave 10% of the usable memory spare


def _grid(device: str, context: int) -> list[tuple[int, int]]:
    # On a CPU, compute time grows with tokens per step, so stay at the defaults or below.
    lengths = (512, 256, 128) if device == "cpu" else (1024, 512, 256)
    batches = (4, 2, 1) if device == "cpu" else (8, 4, 2, 1)
    points = {(b, min(n, context)) for n in lengths for b in batches}
    # Most tokens per step first; at equal tokens, the longer sequence (less truncation).
    return sorted(points, key=lambda p: (p[0] * p[1], p[1]), reverse=True)


def _best_fit(config: dict, device: str, limit: float, dtype: str, quant: str, ckpt: bool,
              context: int) -> tuple[int, int, MemoryEstimate] | None:
    for batch, length in _grid(device, context):
        # Recommendations are for SFT (the default strategy), whose trainer computes a chunked loss.
        est = estimate(config, quantization=quant, batch_size=batch, seq_len=length, dtype=dtype,
                       gradient_checkpointing=ckpt, device=device, chunked_loss=True)
        if est.total_gib <= limit:
            return batch, length, est
    return None


def recommend(report: "HardwareReport", catalog: list[dict] | None = None,
              task: str = "text-generation") -> list[Recommendation]:
    """Models of the catalog that fit this machine, best first, each with settings that fit.

    For each model the first of these that fits comfortably (>= 1,024 tokens per step) wins:
    LoRA, QLoRA, LoRA with gradient checkpointing, QLoRA with gradient checkpointing (QLoRA only
    on CUDA: bitsandbytes' 4-bit runs on a CPU, but slowly); failing that, whichever fits the most
    tokens per step. Settings are the largest of a small grid (batch x max_length) that fits
    with 10% to spare.

    On a GPU the biggest model that fits comfortably comes first (the demo last). On a CPU or
    Apple MPS the demo comes first, then models up to ~0.5B parameters, smallest (fastest)
    first, then the bigger ones, each with a plain note on how slow it will be.

    Args:
        report: from :func:`core.hardware.probe`.
        catalog: entries as from :func:`load_catalog` (default: the bundled catalog).
        task: text-generation, summarization or extractive-qa.

    Raises:
        ModelForgeError: the bundled catalog cannot be read.
    """
    entries = catalog if catalog is not None else load_catalog()
    device = report.device
    dtype = train_dtype(report)  # what the run will train in with precision: auto
    avail = available_gib(report, device)
    if avail is None:
        avail = 4.0  # unknown: assume a modest machine rather than recommending nothing
    out: list[Recommendation] = []
    for entry in entries:
        if entry.get("task") != task:
            continue
        try:
            rec = _recommend_one(entry, device, avail, dtype, report)
        except ModelForgeError:
            continue  # a catalog entry with a config the estimate does not know: skip it
        if rec is not None:
            out.append(rec)
    if device == "cuda":
        # Biggest comfortable fit first; the demo is a toy on a GPU: keep it, but last.
        out.sort(key=lambda r: (_is_demo(r.model_id), not r.comfortable, -r.params))
    else:
        out.sort(key=lambda r: (not _is_demo(r.model_id), r.params > _SMALL_FOR_CPU, r.params))
    return out


# The preset whose settings the text demo is recommended with: Apply on the demo must give the
# identity demo as the app opens with it (measured: right in 300 steps), not a grid point.
DEMO_PRESET = "identity-demo"


def _demo_preset_fit(entry: dict, device: str, limit: float, dtype: str) -> tuple[int, int, int, MemoryEstimate] | None:
    """(batch, max_length, accumulation, estimate) of the demo preset when ``entry`` is the text
    demo and the preset fits in ``limit`` GiB; None otherwise (then the grid decides)."""
    if entry.get("id") != DEMO_IDS["text-generation"]:
        return None
    from core.config import load_yaml
    from core.paths import ASSETS

    try:
        preset = load_yaml(ASSETS / "presets" / f"{DEMO_PRESET}.yaml")
    except ModelForgeError:
        return None
    est = estimate(entry["config"], quantization="none", batch_size=preset.batch_size, seq_len=preset.max_length,
                   dtype=dtype, gradient_checkpointing=False, device=device, chunked_loss=True)
    if est.total_gib > limit:
        return None
    return preset.batch_size, preset.max_length, preset.gradient_accumulation_steps, est


def _recommend_one(entry: dict, device: str, avail: float, dtype: str,
                   report: "HardwareReport") -> Recommendation | None:
    config = entry["config"]
    demo = _demo_preset_fit(entry, device, avail * _HEADROOM, dtype)
    if demo is not None:
        batch, length, accumulation, est = demo
        rec = Recommendation(
            model_id=entry["id"], task=entry["task"], method="lora", batch_size=batch, max_length=length,
            gradient_accumulation_steps=accumulation, gradient_checkpointing=False,
            estimated_gib=round(est.total_gib, 2), available_gib=round(avail, 2),
            params=int(entry.get("params") or est.params), comfortable=True)
        rec.note = _note(entry, rec, device, dtype, report)
        return rec
    context = int(entry.get("context_length") or 2048)
    limit = avail * _HEADROOM
    # In order of preference: a 16-bit base trains fastest and best; a 4-bit base (QLoRA, CUDA
    # only) and gradient checkpointing each cost ~30% speed, QLoRA a little quality too, but
    # QLoRA frees far more memory on big models, so it comes before checkpointing.
    options = [("lora", "none", False)]
    if device == "cuda":
        options.append(("qlora", "4bit", False))
    options.append(("lora", "none", True))
    if device == "cuda":
        options.append(("qlora", "4bit", True))
    comfortable_tokens = min(1024, context)
    best = None
    for method, quant, ckpt in options:  # in order of preference
        fit = _best_fit(config, device, limit, dtype, quant, ckpt, context)
        if fit is None:
            continue
        tokens = fit[0] * fit[1]
        if tokens >= comfortable_tokens:
            best = (method, ckpt, fit)  # the first comfortable option wins
            break
        if best is None or tokens > best[2][0] * best[2][1]:
            best = (method, ckpt, fit)  # else the most tokens per step; earlier wins ties
    if best is None:
        return None
    method, ckpt, (batch, length, est) = best
    params = int(entry.get("params") or est.params)
    rec = Recommendation(
        model_id=entry["id"], task=entry["task"], method=method, batch_size=batch,
        max_length=length, gradient_accumulation_steps=max(1, _EFFECTIVE_BATCH // batch),
        gradient_checkpointing=ckpt, estimated_gib=round(est.total_gib, 2),
        available_gib=round(avail, 2), params=params,
        comfortable=batch * length >= comfortable_tokens)
    rec.note = _note(entry, rec, device, dtype, report)
    return rec


def _note(entry: dict, rec: Recommendation, device: str, dtype: str, report: "HardwareReport") -> str:
    parts = []
    size = f"~{rec.estimated_gib:.1f} of {rec.available_gib:.1f} GiB"
    if _is_demo(entry["id"]):
        parts.append("The tiny built-in model: no download, trains in minutes even on a CPU; it "
                     "shows the workflow, not real quality.")
    if device == "cpu":
        cores = max(1, report.cpu.physical_cores)
        from core.speed import CPU_TOKENS_PARAMS_PER_CORE_BF16

        per_core = CPU_TOKENS_PARAMS_PER_CORE_BF16 if dtype == "bf16" else _CPU_TOKENS_PARAMS_PER_CORE
        tps = per_core * cores / max(rec.params, 1)
        minutes = 100_000 / tps / 60
        speed = (f"roughly {tps:,.0f} tokens/s on {cores} cores (a rough guess), "
                 f"so ~{_duration(minutes)} per 100,000 training tokens")
        if not _is_demo(entry["id"]):
            lead = ("CPU training is slow" if rec.params <= _SMALL_FOR_CPU
                    else "Very slow on a CPU, better on a GPU")
            parts.append(f"{lead}: {speed}.")
        parts.append(f"LoRA in {dtype} on the CPU, {size} of RAM.")
        if dtype == "fp32" and report.cpu.bf16_units:
            # The same sentence as `modelforge hardware` and the Hardware tab (one source).
            from core.hardware import cpu_precision_reason

            parts.append(f"Precision auto is fp32 here: {cpu_precision_reason(True)[1]}.")
    elif device == "mps":
        parts.append(f"LoRA in {dtype} on the Apple GPU (MPS), {size}; slower than an NVIDIA GPU.")
    elif rec.method == "qlora":
        parts.append(f"QLoRA (4-bit base, {dtype} compute): {size} of GPU memory; a bit slower "
                     "than LoRA, with nearly the same quality.")
    else:
        parts.append(f"LoRA on a {dtype} base: {size} of GPU memory.")
    if rec.gradient_checkpointing:
        parts.append("Needs gradient checkpointing (on in these settings; ~30% slower).")
    if not rec.comfortable:
        parts.append(f"Tight: only {rec.max_length} tokens x batch {rec.batch_size} fit.")
    if entry.get("gated"):
        parts.append("Gated on the Hub: accept its licence there and log in (hf auth login) first.")
    if entry.get("license") not in (None, "apache-2.0", "mit"):
        parts.append(f"Licence: {entry['license']}.")
    return " ".join(parts)


def _duration(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"
