"""Loading a trained model (or its base) and generating text, whole or streamed.

A ModelForge model folder holds a LoRA adapter, the tokenizer and ``modelforge.json`` (which
names the base). Loading puts the base back under the adapter; ``base_only`` gives the
untouched base, for the Playground's side-by-side comparison.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from core.errors import ModelLoadError


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    card: dict


def read_card(model_dir: str | Path) -> dict:
    p = Path(model_dir) / "modelforge.json"
    if not p.exists():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def load_model(path_or_base: str, *, base_only: bool = False, trust_remote_code: bool = False) -> LoadedModel:
    """Load a ModelForge model folder, a plain model folder, 'demo' or a hub id.

    Raises:
        ModelLoadError: when nothing loadable is there (OfflineError for an unreachable hub).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.providers.huggingface import prepare_tokenizer, resolve_model_path

    p = Path(path_or_base).expanduser()
    card = read_card(p) if p.is_dir() else {}
    is_adapter = p.is_dir() and (p / "adapter_config.json").exists()
    if is_adapter:
        base = card.get("base_model") or json.loads((p / "adapter_config.json").read_text()).get(
            "base_model_name_or_path", "")
        base_path = resolve_model_path(base, trust_remote_code=trust_remote_code)
        tok_src = base_path if base_only else str(p)
    else:
        base_path = resolve_model_path(path_or_base, trust_remote_code=trust_remote_code)
        tok_src = base_path
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(tok_src, trust_remote_code=trust_remote_code))
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if is_adapter and not base_only:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(p))
    except OSError as exc:
        raise ModelLoadError(f"could not load {path_or_base}: {str(exc).splitlines()[0]}",
                             "check the folder; it should hold a model or a ModelForge adapter") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    name = card.get("name") or p.name
    return LoadedModel(model=model, tokenizer=tokenizer, name=name if not base_only else f"{name} (base)", card=card)


def _inputs(lm: LoadedModel, prompt: str | list[dict], system_prompt: str = ""):
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    enc = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    return {k: v.to(lm.model.device) for k, v in enc.items()}


def _gen_kwargs(lm: LoadedModel, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id,
                              eos_token_id=lm.tokenizer.eos_token_id)
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def generate(lm: LoadedModel, prompt: str | list[dict], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 0.95, system_prompt: str = "") -> str:
    """The model's answer to ``prompt`` (greedy when temperature is 0)."""
    import torch

    enc = _inputs(lm, prompt, system_prompt)
    with torch.no_grad():
        out = lm.model.generate(**enc, **_gen_kwargs(lm, max_new_tokens, temperature, top_p))
    return lm.tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def stream(lm: LoadedModel, prompt: str | list[dict], *, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 0.95, system_prompt: str = "") -> Iterator[str]:
    """Yield the answer so far as it grows (for the Playground)."""
    import torch
    from transformers import TextIteratorStreamer

    enc = _inputs(lm, prompt, system_prompt)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def _run():
        with torch.no_grad():
            lm.model.generate(**enc, **_gen_kwargs(lm, max_new_tokens, temperature, top_p), streamer=streamer)

    thread = threading.Thread(target=_run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
