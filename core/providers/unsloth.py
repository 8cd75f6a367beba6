"""The Unsloth provider: faster LoRA/QLoRA on NVIDIA GPUs (``pip install -e .[unsloth]``).

unsloth is imported lazily: importing it patches transformers globally and fails on machines
without its CUDA stack, so only choosing this provider may import it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from core.errors import ModelLoadError
from core.providers.registry import register

_import_error: str | None = None


def _probe() -> tuple[bool, str]:
    global _import_error
    if importlib.util.find_spec("unsloth") is None:
        return False, "not installed (pip install -e '.[unsloth]' on a machine with an NVIDIA GPU)"
    if _import_error is not None:
        return False, _import_error
    try:
        import unsloth  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to show, not a crash
        _import_error = f"installed but failed to import: {str(exc).splitlines()[0][:200]}"
        return False, _import_error
    return True, ""


class UnslothProvider:
    name = "unsloth"
    description = "Unsloth's patched kernels: ~2x faster LoRA/QLoRA on NVIDIA GPUs"

    def available(self) -> tuple[bool, str]:
        return _probe()

    def load(self, config, *, for_training: bool = True) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel  # noqa: I001 - must come before transformers

        from core.providers.huggingface import prepare_tokenizer, resolve_model_path

        path = resolve_model_path(config.model)
        try:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=path, max_seq_length=config.max_length,
                load_in_4bit=config.quantization == "4bit" or config.strategy == "qlora",
                load_in_8bit=config.quantization == "8bit", dtype=None,
                trust_remote_code=config.trust_remote_code)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"unsloth could not load '{config.model}': {str(exc).splitlines()[0]}",
                                 "try provider huggingface") from None
        if for_training:
            targets = config.lora_target_modules
            target_list = (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                           if targets == "all-linear" else [t.strip() for t in targets.split(",")])
            model = FastLanguageModel.get_peft_model(
                model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=target_list, random_state=config.seed,
                use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False)
            model._modelforge_peft_applied = True  # the strategy must not wrap it again
        return model, prepare_tokenizer(tokenizer)


register("unsloth", UnslothProvider)
