"""The Hugging Face provider: transformers + peft, on CPU, CUDA or MPS.

Loads the Auto class the task needs (causal LM for text generation; seq2seq or causal LM for
summarization, by the model's config; a span head for extractive QA) in the dtype and quantisation
the run asks for, placed as the process needs it (:func:`core.models.device_map`: one GPU per
process under DDP), with a tokenizer that has a pad token and, for causal LMs, a chat template.
The helpers it uses are shared with every other plugin in :mod:`core.models`.
"""

from __future__ import annotations

from typing import Any

from core.errors import ModelLoadError
# The shared helpers live in core.models; a few are re-exported here because scripts import them
# from this module by their old names.
from core.models import (_HEADS, _KIND_TEXT, auto_class, device_map, hub_reachable, model_kind,  # noqa: F401
                         pick_dtype, prepare_tokenizer, quantization_config, resolve_model_path)


class HuggingFaceProvider:
    name = "huggingface"
    description = "transformers + peft; CPU, NVIDIA CUDA and Apple MPS"
    tasks = ("text-generation", "summarization", "extractive-qa")
    own_process = False
    multi_process = True
    applies_adapter = False  # the strategy adds LoRA (trl's peft_config)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def config_problems(self, config) -> list:
        return []

    def adjust_config(self, config):
        return config

    def prepare(self) -> None:
        pass  # transformers needs no import ahead of the others

    def backend_status(self, report) -> None:
        return None  # transformers and peft have their own lines in the report

    def load(self, config, *, for_training: bool = True) -> tuple[Any, Any]:
        import torch
        from transformers import AutoTokenizer

        path = resolve_model_path(config.model, trust_remote_code=config.trust_remote_code, task=config.task)
        kind = model_kind(path, config.task, trust_remote_code=config.trust_remote_code)
        dtype_name = pick_dtype(config.precision, config.quantization)
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
                device_map=device_map(config, torch.cuda.is_available()), **kwargs)
        except OSError as exc:
            raise ModelLoadError(f"could not load model '{config.model}': {str(exc).splitlines()[0]}",
                                 f"check that the folder or hub id holds a {_KIND_TEXT[kind]} "
                                 "with safetensors weights") from None
        except ValueError as exc:
            raise ModelLoadError(f"could not load model '{config.model}': {str(exc).splitlines()[0]}",
                                 f"{config.task} needs a {_KIND_TEXT[kind]}; this model may need "
                                 "trust_remote_code, or be of another kind") from None
        return model, prepare_tokenizer(tokenizer, chat=kind == "causal")
