"""The shared transformers/peft helpers: what providers, strategies, tasks and inference all use.

Resolves ``demo`` / a local folder / a hub id without waiting on an unreachable hub, picks the
dtype a run trains in (``precision: auto`` as :func:`core.hardware.auto_precision` decides it),
builds the quantisation config, picks the Auto class a task needs, and gives a tokenizer a pad
token and a chat template. No plugin imports another plugin: they all import this module, which
imports no plugin (it used to live in ``providers/huggingface.py``, which made that provider the
library everyone else imported). torch and transformers are imported inside the functions, so
importing this module costs nothing at the app's start-up.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError, OfflineError

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP connect instead of the hub client's minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in ("1", "true", "True", "ON"):
        return False
    try:
        with socket.create_connection((os.environ.get("MODELFORGE_HUB_HOST", HUB_HOST), 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_path(name: str, *, trust_remote_code: bool = False, task: str = "text-generation") -> str:
    """Turn the config's ``model`` into something ``from_pretrained`` can load without waiting.

    Returns the demo folder (``demo`` follows ``task``: see :func:`core.demo_model.demo_for`), a
    local folder, or the hub id when it is cached or the hub is reachable.

    Raises:
        ModelLoadError: a local path that does not exist or holds no model.
        OfflineError: a hub id that is not cached while the hub cannot be reached.
    """
    from core.demo_model import demo_for

    demo = demo_for(name, task)
    if demo is not None:
        return str(demo)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ModelLoadError(f"{p} holds no model (no config.json)",
                                 "point --model at a folder saved with save_pretrained, or use 'demo'")
        return str(p.resolve())
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model folder not found: {name}", "check the path, or use 'demo'")
    if _cached_on_disk(name):
        return name
    if not hub_reachable():
        raise OfflineError(
            f"cannot download '{name}': the Hugging Face Hub is not reachable (offline)",
            "use --model demo, a local folder, or connect to the network and try again",
        )
    return name


def _cached_on_disk(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:  # noqa: BLE001 - a broken cache just means "not cached"
        return False


def pick_dtype(precision: str, quantization: str = "none") -> str:
    """'bf16' | 'fp16' | 'fp32' for the given config precision on this machine.

    "auto" is decided by :func:`core.hardware.auto_precision` (the one rule the hardware report
    and the memory estimate show); here torch says which device this process trains on.
    """
    if precision != "auto":
        return precision
    import torch

    from core.hardware import auto_precision

    if torch.cuda.is_available():
        # Native bf16 only (compute capability 8.0+, or ROCm): torch's default also counts an
        # emulated bf16 (a T4), which is slow, and which the hardware report calls fp16.
        return auto_precision("cuda", torch.cuda.is_bf16_supported(including_emulation=False))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return auto_precision("mps")
    return auto_precision("cpu", quantization=quantization)


def quantization_config(kind: str, compute_dtype: str = "bf16", skip_modules: list[str] | None = None):
    """The shared quantisation factory: 'none' -> None, '4bit' (NF4, QLoRA), '8bit'.

    ``skip_modules`` stay in full precision: task heads that train fully (a QA span head has 2
    outputs, which bitsandbytes' CPU kernels cannot even pack).
    """
    if kind == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{kind} quantisation needs bitsandbytes, which failed to import: {exc}",
                             "pip install bitsandbytes, or set quantization: none") from None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype, torch.float32)
    skip = {"llm_int8_skip_modules": skip_modules} if skip_modules else {}
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype, **skip)
    return BitsAndBytesConfig(load_in_8bit=True, **skip)


CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def prepare_tokenizer(tokenizer: Any, chat: bool = True) -> Any:
    """Give the tokenizer what training needs: a pad token and (``chat``) a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if chat and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_FALLBACK
    return tokenizer


# What each kind of model is, and the Auto class that loads it.
MODEL_KINDS = ("causal", "seq2seq", "qa", "reward")


def model_kind(path: str, task: str = "text-generation", *, trust_remote_code: bool = False) -> str:
    """Which head ``task`` needs on the model at ``path``: 'causal', 'seq2seq' or 'qa'.

    Summarization uses a seq2seq head when the model is an encoder-decoder (T5, BART) and a
    causal LM with a summarization prompt otherwise.
    """
    if task == "extractive-qa":
        return "qa"
    if task == "summarization":
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not read the config of '{path}': {str(exc).splitlines()[0]}",
                                 "check the folder or hub id") from None
        return "seq2seq" if getattr(cfg, "is_encoder_decoder", False) else "causal"
    return "causal"


def auto_class(kind: str):
    """The transformers Auto class for a model kind (see MODEL_KINDS)."""
    import transformers

    return getattr(transformers, {
        "causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
        "qa": "AutoModelForQuestionAnswering", "reward": "AutoModelForSequenceClassification",
    }[kind])


# Heads that start untrained and train fully: never quantised (see quantization_config).
_HEADS = {"qa": ["qa_outputs"], "reward": ["score", "classifier"]}
_KIND_TEXT = {"causal": "causal language model", "seq2seq": "sequence-to-sequence model (T5, BART)",
              "qa": "encoder (BERT-style) for question answering", "reward": "sequence classifier"}




def device() -> str:
    """The device this process trains on: 'cuda', 'mps' or 'cpu'."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def train_dtype(config, device: str) -> str:
    """Mixed-precision mode for the trainer ('bf16', 'fp16' or 'fp32'): the config's precision,
    with "auto" resolved by :func:`core.hardware.auto_precision`, the one rule that the provider
    loads the weights with (:func:`pick_dtype`) and that the hardware report and the memory
    estimate show."""
    if config.precision != "auto":
        return config.precision
    if device == "cpu":
        from core.hardware import auto_precision

        return auto_precision("cpu", quantization=getattr(config, "quantization", "none"))
    return pick_dtype("auto")  # asks torch whether the GPU has native bf16


def device_map(config, cuda: bool):
    """The ``device_map`` for ``from_pretrained`` in this process.

    One process: "auto" on CUDA (a model too big for one GPU is spread over all of them), None
    on CPU. In a multi-process run (``WORLD_SIZE`` > 1) every process needs its own copy on its
    own GPU for DDP (``{"": LOCAL_RANK}``; also what a 4-bit base needs), while FSDP and DeepSpeed
    place and shard the model themselves (None: loaded on the CPU first).
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return "auto" if cuda else None
    if not cuda or config.distributed != "ddp":
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0") or 0)}
