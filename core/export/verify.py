"""Verification of an export: does the exported model answer as the trained model did?

For each prompt (the Playground's example prompts and up to N rows of the run's validation
data) the conversation is rendered with the model's own chat template, tokenized by both
transformers and llama.cpp (the ids must be the same: a tokenizer that converts wrongly shows up
here first), and answered greedily by both: transformers with the trained model (adapter on its
base, float32) and llama.cpp with the exported GGUF (``llama_cpp.Llama``).

Agreement: f16 must give the same text (a GGUF in f16 holds the same weights rounded to 16 bits;
on a confident model greedy decoding does not notice). Quantised files are allowed to drift:
``token_agreement`` is the share of answer positions where both chose the same token, up to the
longer answer; a mean below :data:`MIN_AGREEMENT` for the quantisation is a warning.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

# The Playground's "Try" prompts (components/playground_tab.py EXAMPLE_PROMPTS; a test keeps the
# two lists equal: core must not import the UI).
EXAMPLE_PROMPTS = ["Who are you?", "What is your name?", "Who created you?", "hello"]
MAX_NEW_TOKENS = 64   # the Playground's default answer length
# Below this mean token agreement an export is flagged. f16 must match exactly (1.0); q8_0 keeps
# ~8.5 bits per weight, q4_k_m ~4.8: measured on the demo, q8_0 stays at 1.0 and q4_k_m above 0.8.
MIN_AGREEMENT = {"merged": 1.0, "f16": 1.0, "q8_0": 0.9, "q4_k_m": 0.5}


def conversations(system_prompt: str, rows: list[dict], max_rows: int) -> list[dict]:
    """[{"source", "messages"}]: the example prompts, then validation rows without their last answer."""
    out = []
    for p in EXAMPLE_PROMPTS:
        msgs = [{"role": "user", "content": p}]
        out.append({"source": "playground example", "messages": msgs})
    for row in rows[:max_rows]:
        msgs = [m for m in (row.get("messages") or []) if m.get("role") in ("system", "user", "assistant")]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if msgs:
            out.append({"source": "validation row", "messages": msgs})
    if system_prompt:
        for c in out:
            if not any(m["role"] == "system" for m in c["messages"]):
                c["messages"] = [{"role": "system", "content": system_prompt}, *c["messages"]]
    return out


def transformers_answers(model: Any, tokenizer: Any, convs: list[dict],
                         max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """Greedy answers of the trained model (as the Playground computes them)."""
    import torch

    eos = _eos_ids(tokenizer, getattr(model, "generation_config", None))
    out = []
    for c in convs:
        text = tokenizer.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
                                 temperature=None, top_p=None, top_k=None)
        new = gen[0][ids.shape[1]:].tolist()
        while new and new[-1] in eos:
            new = new[:-1]
        out.append({"prompt_text": text, "prompt_ids": ids[0].tolist(), "ids": new,
                    "text": tokenizer.decode(new, skip_special_tokens=True).strip()})
    return out


def _eos_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The end-of-sequence ids: the generation config's (may be several) and the tokenizer's."""
    ids = []
    for v in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def llama_answers(gguf: Path, prompts: list[dict], eos_ids: list[int], *, lora: Path | None = None,
                  max_new_tokens: int = MAX_NEW_TOKENS, threads: int | None = None) -> list[dict]:
    """Greedy answers of llama.cpp for the same rendered prompts (``prompt_text`` of each)."""
    import os

    import llama_cpp

    kwargs = dict(model_path=str(gguf), n_ctx=2048, n_threads=threads or max(1, min(4, os.cpu_count() or 1)),
                  verbose=False, seed=0)
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    llm = llama_cpp.Llama(**kwargs)
    try:
        stop = set(eos_ids) | {llm.token_eos()}
        out = []
        for p in prompts:
            prompt_ids = llm.tokenize(p["prompt_text"].encode("utf-8"), add_bos=False, special=True)
            new: list[int] = []
            for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                    reset=True):
                if tok in stop or len(new) >= max_new_tokens:
                    break
                new.append(int(tok))
            text = llm.detokenize(new).decode("utf-8", errors="replace").strip()
            out.append({"prompt_ids": list(prompt_ids), "ids": new, "text": text})
        return out
    finally:
        llm.close() if hasattr(llm, "close") else None
        del llm
        gc.collect()


def token_agreement(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(1 for x, y in zip(a, b) if x == y) / n


def compare(convs: list[dict], ref: list[dict], got: list[dict], quantization: str) -> dict:
    """The ``verification`` object of an export (per prompt both answers; a summary; warnings)."""
    rows, warnings = [], []
    for c, r, g in zip(convs, ref, got):
        same_prompt = r["prompt_ids"] == g["prompt_ids"]
        rows.append({
            "source": c["source"], "prompt": c["messages"][-1]["content"],
            "transformers": r["text"], "llama_cpp": g["text"],
            "same_text": r["text"] == g["text"], "token_agreement": round(token_agreement(r["ids"], g["ids"]), 4),
            "same_prompt_tokens": same_prompt,
        })
        if not same_prompt:
            warnings.append(f"llama.cpp tokenizes the prompt {c['messages'][-1]['content']!r} differently "
                            f"from transformers ({len(g['prompt_ids'])} vs {len(r['prompt_ids'])} tokens)")
    mean = sum(r["token_agreement"] for r in rows) / len(rows) if rows else 1.0
    all_same = all(r["same_text"] for r in rows)
    need = MIN_AGREEMENT.get(quantization, 0.5)
    if quantization in ("f16", "merged") and not all_same:
        bad = [r["prompt"] for r in rows if not r["same_text"]]
        what = "merged model" if quantization == "merged" else "f16 GGUF"
        warnings.append(f"the {what} answers differently from transformers for {len(bad)} of {len(rows)} "
                        f"prompts ({', '.join(repr(b) for b in bad[:3])}): check the table")
    elif mean < need:
        warnings.append(f"{quantization}: mean token agreement {mean:.2f} is below {need:.2f}, more drift than "
                        "this quantisation usually causes: compare the answers below, or export f16/q8_0")
    return {"quantization": quantization, "prompts": len(rows), "same_text": sum(r["same_text"] for r in rows),
            "mean_token_agreement": round(mean, 4), "passed": not warnings, "warnings": warnings, "rows": rows}
