"""The Hugging Face provider: transformers + peft, on CPU, CUDA or MPS.

Resolves ``demo`` / a local folder / a hub id, picks the dtype from the device (``precision:
auto`` as :func:`core.hardware.auto_precision` decides it), applies the quantisation factory, loads the Auto class the task needs (causal LM for
text generation; seq2seq or causal LM for summarization, by the model's config; a span head for
extractive QA), and makes sure the tokenizer has a pad token and, for causal LMs, a chat template
(ChatML as the fallback for base models that ship none).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError, OfflineError
from core.providers.registry import register

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


def pick_dtype(precision: str) -> str:
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
    return auto_precision("cpu")


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


class HuggingFaceProvider:
    name = "huggingface"
    description = "transformers + peft; CPU, NVIDIA CUDA and Apple MPS"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, config, *, for_training: bool = True) -> tuple[Any, Any]:
        import torch
        from transformers import AutoTokenizer

        path = resolve_model_path(config.model, trust_remote_code=config.trust_remote_code, task=config.task)
        kind = model_kind(path, config.task, trust_remote_code=config.trust_remote_code)
        dtype_name = pick_dtype(config.precision)
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        quant = quantization_config(config.quantization, dtype_name, skip_modules=_HEADS.get(kind))
        kwargs: dict[str, Any] = {
            "trust_remote_code": config.trust_remote_code,
            "use_safetensors": None if config.trust_remote_code else True,
        }
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
            model = auto_class(kind).from_pretrained(
                path, dtype=torch_dtype, quantization_config=quant,
                device_map="auto" if torch.cuda.is_available() else None, **kwargs)
        except OSError as exc:
            raise ModelLoadError(f"could not load model '{config.model}': {str(exc).splitlines()[0]}",
                                 f"check that the folder or hub id holds a {_KIND_TEXT[kind]} "
                                 "with safetensors weights") from None
        except ValueError as exc:
            raise ModelLoadError(f"could not load model '{config.model}': {str(exc).splitlines()[0]}",
                                 f"{config.task} needs a {_KIND_TEXT[kind]}; this model may need "
                                 "trust_remote_code, or be of another kind") from None
        return model, prepare_tokenizer(tokenizer, chat=kind == "causal")


# Heads that start untrained and train fully: never quantised (see quantization_config).
_HEADS = {"qa": ["qa_outputs"], "reward": ["score", "classifier"]}
_KIND_TEXT = {"causal": "causal language model", "seq2seq": "sequence-to-sequence model (T5, BART)",
              "qa": "encoder (BERT-style) for question answering", "reward": "sequence classifier"}


register("huggingface", HuggingFaceProvider)
