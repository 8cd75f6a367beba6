"""Loading a trained model (or its base) and using it: generate text (whole or streamed),
summarize a document, answer a question from a context.

A ModelForge model folder holds a LoRA adapter, the tokenizer and ``modelforge.json`` (which
names the base and the task). Loading puts the base back under the adapter, with the head the
task needs (causal LM, seq2seq LM or a span head for QA); ``base_only`` gives the untouched
base, for the Playground's side-by-side comparison.
"""

from __future__ import annotations

import json
import threading
import time
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
    kind: str = "causal"  # "causal", "seq2seq" or "qa" (see core.models.MODEL_KINDS)


# peft's task type of a saved adapter -> the kind of model under it.
_ADAPTER_KINDS = {"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq", "QUESTION_ANS": "qa", "SEQ_CLS": "reward"}


def read_card(model_dir: str | Path) -> dict:
    p = Path(model_dir) / "modelforge.json"
    if not p.exists():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def load_model(path_or_base: str, *, base_only: bool = False, trust_remote_code: bool = False,
               task: str | None = None) -> LoadedModel:
    """Load a ModelForge model folder, a plain model folder, 'demo' or a hub id.

    Args:
        path_or_base: the folder, 'demo' (or 'demo-seq2seq', 'demo-qa') or a hub id.
        base_only: the base without the adapter.
        trust_remote_code: allow code shipped with a hub model.
        task: what the model is for, when no model card says it ('demo' follows it; a plain
            encoder gets a span head for 'extractive-qa').

    Raises:
        ModelLoadError: when nothing loadable is there (OfflineError for an unreachable hub).
    """
    import torch
    from transformers import AutoTokenizer

    from core.models import auto_class, prepare_tokenizer, resolve_model_path

    p = Path(path_or_base).expanduser()
    card = read_card(p) if p.is_dir() else {}
    task = card.get("task") or task or "text-generation"
    is_adapter = p.is_dir() and (p / "adapter_config.json").exists()
    if is_adapter:
        adapter = json.loads((p / "adapter_config.json").read_text())
        base = card.get("base_model") or adapter.get("base_model_name_or_path", "")
        base_path = resolve_model_path(base, trust_remote_code=trust_remote_code, task=task)
        kind = _ADAPTER_KINDS.get(adapter.get("task_type") or "CAUSAL_LM", "causal")
        tok_src = base_path if base_only else str(p)
    else:
        base_path = resolve_model_path(path_or_base, trust_remote_code=trust_remote_code, task=task)
        kind = _plain_kind(base_path, task, trust_remote_code)
        tok_src = base_path
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(tok_src, trust_remote_code=trust_remote_code),
                                      chat=kind == "causal")
        extra = {"num_labels": 1} if kind == "reward" else {}
        if not trust_remote_code:
            extra["use_safetensors"] = True  # never unpickle weights unless the user trusts the model
        model = auto_class(kind).from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
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
    return LoadedModel(model=model, tokenizer=tokenizer, name=name if not base_only else f"{name} (base)", card=card,
                       kind=kind)


def _plain_kind(path: str, task: str, trust_remote_code: bool) -> str:
    """The kind of a plain (non-adapter) model: by its task, else by its config's architecture."""
    from transformers import AutoConfig

    from core.models import model_kind

    if task != "text-generation":
        return model_kind(path, task, trust_remote_code=trust_remote_code)
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return "causal"  # let the model load report the real problem
    if getattr(cfg, "is_encoder_decoder", False):
        return "seq2seq"
    if any(a.endswith("ForQuestionAnswering") for a in (getattr(cfg, "architectures", None) or [])):
        return "qa"
    return "causal"


def _require(lm: LoadedModel, *kinds: str) -> None:
    if lm.kind not in kinds:
        from core.errors import NotAvailableError

        use = {"qa": "answer(question, context)", "seq2seq": "summarize(document) or generate(text)",
               "causal": "generate(prompt)", "reward": "a reward model only scores answers"}[lm.kind]
        raise NotAvailableError(f"{lm.name} is a {lm.kind} model; this needs a {' or '.join(kinds)} model",
                                f"use {use}")


def _inputs(lm: LoadedModel, prompt: str | list[dict], system_prompt: str = ""):
    _require(lm, "causal", "seq2seq")
    if lm.kind == "seq2seq":  # an encoder-decoder reads the text itself, no chat template
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m["role"] != "system")
        enc = lm.tokenizer(text, return_tensors="pt", truncation=True,
                           max_length=min(getattr(lm.tokenizer, "model_max_length", 1024) or 1024, 4096))
        return {k: v.to(lm.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
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
    new = out[0] if lm.kind == "seq2seq" else out[0][enc["input_ids"].shape[1]:]  # a decoder starts afresh
    return lm.tokenizer.decode(new, skip_special_tokens=True).strip()


STREAM_INTERVAL_S = 0.02  # the shortest time between two pieces of a stream


class _Abandoned(Exception):
    """Raised inside generate() when the stream's reader has gone."""


class _TokenQueue:
    """The cheapest streamer ``generate`` accepts: ``put`` only queues the new token ids.

    transformers' TextIteratorStreamer decodes in ``put``, on the generating thread, once per
    token; with a small model that is a sixth of the time per token (benchmarks/generation.py).
    Here the reader decodes, in batches of whatever arrived while it was busy.
    """

    def __init__(self, skip_prompt: bool):
        import queue

        self.ids: "queue.SimpleQueue" = queue.SimpleQueue()
        self.ended = threading.Event()
        self.abandoned = threading.Event()  # set by the reader: generate stops at its next token
        self._skip = skip_prompt

    def put(self, value) -> None:
        if self.abandoned.is_set():
            raise _Abandoned  # out of generate(), at no cost per token: put is called anyway
        if self._skip:  # the first put is the prompt
            self._skip = False
            return
        self.ids.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ids.put(None)
        self.ended.set()


def stream(lm: LoadedModel, prompt: str | list[dict], *, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 0.95, system_prompt: str = "") -> Iterator[str]:
    """Yield the answer so far as it grows (for the Playground).

    The text is decoded from all the new tokens each time (so multi-token characters come out
    whole); a piece that ends inside a character (U+FFFD) waits for the next token. A reader that
    stops early (the page was closed, the chat cleared) stops the generation after its next token.
    """
    import torch

    enc = _inputs(lm, prompt, system_prompt)
    tokens = _TokenQueue(skip_prompt=lm.kind == "causal")
    failure: list[BaseException] = []

    def _run():
        try:
            with torch.no_grad():
                lm.model.generate(**enc, **_gen_kwargs(lm, max_new_tokens, temperature, top_p), streamer=tokens)
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread
            failure.append(exc)
        finally:
            tokens.end()

    thread = threading.Thread(target=_run, daemon=True)
    thread.start()
    try:
        yield from _pieces(lm, tokens)
    finally:  # also when the reader stops early (GeneratorExit): the thread must not run on
        tokens.abandoned.set()
        thread.join()
    if failure:
        raise failure[0]


def _pieces(lm: LoadedModel, tokens: _TokenQueue) -> Iterator[str]:
    """The growing answer, from the token ids ``tokens`` receives until it ends."""
    import queue

    new: list[int] = []
    shown, done, woke = "", False, 0.0
    while not done:
        # At most ~50 wake-ups a second: each one takes the GIL from the generating thread, and
        # nobody reads faster; the first piece and the last still come as soon as they exist.
        tokens.ended.wait(max(0.0, woke + STREAM_INTERVAL_S - time.perf_counter()))
        batch = [tokens.ids.get()]
        woke = time.perf_counter()
        while True:  # take everything that arrived meanwhile: one decode for all of it
            try:
                batch.append(tokens.ids.get_nowait())
            except queue.Empty:
                break
        for ids in batch:
            if ids is None:
                done = True
            else:
                new += ids
        text = lm.tokenizer.decode(new, skip_special_tokens=True).strip()  # as generate() gives it
        if text != shown and (done or not text.endswith("\ufffd")):
            shown = text
            yield text


def summarize(lm: LoadedModel, document: str, *, max_new_tokens: int = 64, max_length: int = 1024) -> str:
    """A summary of ``document``: from a seq2seq model directly, from a causal LM through the
    summarization prompt it was trained with (greedy in both cases)."""
    from core.tasks.summarization import generate_summaries

    _require(lm, "seq2seq", "causal")
    return generate_summaries(lm.model, lm.tokenizer, [document], seq2seq=lm.kind == "seq2seq",
                              max_length=max_length, max_new_tokens=max_new_tokens)[0]


def answer(lm: LoadedModel, question: str, context: str, *, max_length: int = 384) -> dict:
    """The answer span to ``question`` in ``context``, from an extractive-QA model.

    Long contexts are read in overlapping windows, as in training. Returns
    ``{"answer": text, "start": char offset, "end": char offset, "score": probability}``;
    an empty answer with start = end = -1 means the model finds no answer in the context.
    """
    import torch

    from core.tasks.qa import best_span, encode

    _require(lm, "qa")
    limit = getattr(lm.model.config, "max_position_embeddings", max_length) or max_length
    inputs, windows = encode([{"question": question, "context": context}], lm.tokenizer,
                             min(max_length, limit), labels=False)
    batch = lm.tokenizer.pad(inputs, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**{k: v.to(lm.model.device) for k, v in batch.items()})
    span = best_span(context, windows, out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())
    return {k: span[k] for k in ("answer", "start", "end", "score")}
