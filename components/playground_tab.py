"""Playground tab: talk to a trained model, side by side with its base model.

Chat streams the fine-tuned model's answer and the base model's answer to the same prompt at
the same time (:func:`core.inference.stream`), with sampling settings. Summarization models get
a document box and extractive-QA models a context and a question, with the answer highlighted
in the context; those call ``core.inference.summarize`` / ``answer`` when this version has them.

Loaded models live in the app's :class:`~components.common.ModelCache`, never in ``gr.State``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from components.common import AppContext, endpoint, guard
from core.errors import ConfigError, ModelForgeError, NotAvailableError, NotFoundError

STREAM_UPDATE_S = 0.05  # the shortest time between two updates of the chats while they stream
MAX_HISTORY = 200       # messages of a chat history a request may carry
# Chats generating at once, over all users (MODELFORGE_CHAT_CONCURRENCY): one long answer must
# not hold the queue for everyone, and a handful of generations still share the CPU fairly.
DEFAULT_CHAT_CONCURRENCY = 4
# The longest one answer may take (MODELFORGE_CHAT_TIME_LIMIT_S): the end of a runaway generation.
DEFAULT_CHAT_TIME_LIMIT_S = 300.0


def _env_number(name: str, default: float) -> float:
    import os

    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 and value == value and value != float("inf") else default


def chat_concurrency() -> int:
    return int(_env_number("MODELFORGE_CHAT_CONCURRENCY", DEFAULT_CHAT_CONCURRENCY))


def sampling(max_new_tokens: Any, temperature: Any, top_p: Any) -> dict:
    """Checked sampling settings: max_new_tokens 1..2048 (None: 64), temperature 0..2, top_p (0, 1].

    Raises:
        ConfigError: naming the setting and its range (not a number, NaN, infinity, out of range).
    """
    from core.limits import MAX_NEW_TOKENS, float_in_range, int_in_range

    n = int_in_range(64 if max_new_tokens is None else max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS)
    t = float_in_range(0.0 if temperature is None else temperature, "temperature", 0.0, 2.0)
    p = float_in_range(0.95 if top_p is None else top_p, "top_p", 0.0, 1.0)
    if p == 0:
        raise ConfigError("top_p must be above 0 (0 keeps no token to sample from)", "use a value in (0, 1]")
    return {"max_new_tokens": n, "temperature": t, "top_p": p}


def client_gone() -> Callable[[], bool]:
    """A check whether the client of the Gradio request being handled has gone (closed the page,
    dropped the connection): Gradio marks its event dead; a plain function must look itself."""
    try:
        from gradio.context import LocalContext

        blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    except Exception:  # noqa: BLE001 - not inside a Gradio request (tests, scripts)
        return lambda: False
    queue = getattr(blocks, "_queue", None)
    if queue is None or not event_id:
        return lambda: False

    def gone() -> bool:
        for jobs in list(getattr(queue, "active_jobs", []) or []):
            for job in jobs or []:
                if getattr(job, "_id", None) == event_id:
                    return not getattr(job, "alive", True)
        return False

    return gone
EXAMPLE_PROMPTS = ["Who are you?", "What is your name?", "Who created you?", "hello"]
EMPTY_TEXT = ("No model to talk to yet: train one on the **Train** tab (the identity demo is preselected), "
              "then pick it here.")


# -- models ---------------------------------------------------------------------------------------
def load_for_chat(ctx: AppContext, rec, base: bool = False):
    """The loaded model of a record (or its base), from the shared cache."""
    from core.inference import load_model

    key = f"base:{rec.task}:{rec.base_model}" if base else rec.id  # 'demo' differs per task
    return ctx.models.get(key, lambda: load_model(rec.path, base_only=base))


def _record(ctx: AppContext, model_id: str | None):
    if not model_id:
        raise NotFoundError("no model chosen", "train one in the Train tab, then pick it in the list")
    return ctx.store.get_model(model_id)


def _text_of(content: Any) -> str:
    """Gradio 6 sends chat contents as a list of parts; the models want plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(c) for c in content)
    return "" if content is None else str(content)


def as_messages(history: list | None) -> list[dict]:
    """A Chatbot value as plain {role, content} messages.

    Raises:
        ConfigError: more than MAX_HISTORY messages, or one longer than the text limit.
    """
    from core.limits import check_text

    if history is not None and not isinstance(history, (list, tuple)):
        raise ConfigError("history must be a list of {role, content} messages")
    if len(history or []) > MAX_HISTORY:
        raise ConfigError(f"history: {len(history):,} messages is over the limit of {MAX_HISTORY}",
                          "start a new chat, or send the last messages only")
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant", "system"):
            out.append({"role": m["role"], "content": check_text(_text_of(m.get("content")), "message")})
    return out


def chat_stream(ctx: AppContext, model_id: str, message: str, tuned_history: list | None,
                base_history: list | None, max_new_tokens: int = 64, temperature: float = 0.0,
                top_p: float = 0.95, system_prompt: str = "", compare: bool = True) -> Iterator[tuple[list, list]]:
    """Yield (tuned chat, base chat) as both answers grow; the base only when ``compare``.

    Raises:
        ModelForgeError: no model, an empty message, or a model that is not a chat model.
    """
    from core.inference import stream
    from core.limits import check_text

    message = check_text((message or "").strip(), "message")
    check_text(system_prompt or "", "system_prompt")
    kw = dict(**sampling(max_new_tokens, temperature, top_p), system_prompt=system_prompt or "")
    rec = _record(ctx, model_id)
    if not message:
        raise ModelForgeError("type a message first")
    if rec.task != "text-generation":
        raise ModelForgeError(f"{rec.name} is a {rec.task} model", "use the box for its task below the chat")
    tuned_hist = as_messages(tuned_history) + [{"role": "user", "content": message}]
    base_hist = as_messages(base_history)
    streams: dict[str, Iterator[str]] = {"tuned": stream(load_for_chat(ctx, rec), list(tuned_hist), **kw)}
    if compare:
        base_hist = base_hist + [{"role": "user", "content": message}]
        streams["base"] = stream(load_for_chat(ctx, rec, base=True), list(base_hist), **kw)
        base_hist.append({"role": "assistant", "content": ""})
    tuned_hist.append({"role": "assistant", "content": ""})
    yield tuned_hist, base_hist
    live = dict(streams)
    shown_at = 0.0
    gone = client_gone()
    try:
        while live:  # alternate: both models generate at once, each in its own thread
            if gone():  # the page or the API client went away: stop generating for nobody
                return
            for name in list(live):
                try:
                    text = next(live[name])
                except StopIteration:
                    del live[name]
                    continue
                (tuned_hist if name == "tuned" else base_hist)[-1]["content"] = text
            # At most ~20 page updates a second (each one re-sends both chats), and always the last.
            if not live or time.monotonic() - shown_at >= STREAM_UPDATE_S:
                shown_at = time.monotonic()
                yield tuned_hist, base_hist
    finally:  # the page went away or the chat was cleared: stop both generations now
        for gen in streams.values():
            gen.close()


def chat_once(ctx: AppContext, model_id: str, message: str, history: list | None = None,
              compare: bool = False, gone: Callable[[], bool] | None = None,
              time_limit_s: float | None = None, **kw) -> dict:
    """The whole answer (and the base model's) to ``message`` after ``history``.

    Args:
        gone: tells whether the client went away; the generation then stops after its next token
            (default: asks Gradio about the current request).
        time_limit_s: the longest the answer may take (default MODELFORGE_CHAT_TIME_LIMIT_S, 300):
            the answer so far is returned, with ``stopped: "time limit"``.
    """
    gone = gone or client_gone()
    limit = time_limit_s or _env_number("MODELFORGE_CHAT_TIME_LIMIT_S", DEFAULT_CHAT_TIME_LIMIT_S)
    deadline = time.monotonic() + limit
    tuned, base, stopped = [], [], None
    chats = chat_stream(ctx, model_id, message, history, history if compare else None, compare=compare, **kw)
    try:
        for tuned, base in chats:
            if gone():
                stopped = "client gone"
                break
            if time.monotonic() > deadline:
                stopped = "time limit"
                break
    finally:
        chats.close()  # stops both generations now (their threads end after the next token)
    if stopped == "client gone":
        raise ModelForgeError("the client went away: generation stopped")
    return {"stopped": stopped,
            "model_id": model_id, "answer": tuned[-1]["content"] if tuned else "",
            "base_answer": base[-1]["content"] if compare and base else None, "history": tuned}


def summarize(ctx: AppContext, model_id: str, document: str, max_new_tokens: int = 128) -> str:
    """Summarize ``document`` with a summarization model (needs core.inference.summarize).

    Raises:
        NotAvailableError: this version of core.inference has no summarize().
    """
    import core.inference as inference

    rec = _record(ctx, model_id)
    if not (document or "").strip():
        raise ModelForgeError("paste a document to summarize first")
    if not hasattr(inference, "summarize"):
        raise NotAvailableError("summarization in the Playground is not available yet in this version",
                                "it arrives with summarization training; chat works for text-generation models")
    from core.limits import MAX_NEW_TOKENS, check_text, int_in_range

    check_text(document, "document")
    n = int_in_range(max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS)
    out = inference.summarize(load_for_chat(ctx, rec), document, max_new_tokens=n)
    return out if isinstance(out, str) else str(out.get("summary", out)) if isinstance(out, dict) else str(out)


def answer(ctx: AppContext, model_id: str, context: str, question: str) -> dict:
    """Answer ``question`` from ``context`` with an extractive-QA model (needs core.inference.answer).

    Returns {answer, start, end, score}; start/end index the answer in ``context`` (-1: not found).

    Raises:
        NotAvailableError: this version of core.inference has no answer().
    """
    import core.inference as inference

    rec = _record(ctx, model_id)
    if not (context or "").strip() or not (question or "").strip():
        raise ModelForgeError("give both a context and a question")
    if not hasattr(inference, "answer"):
        raise NotAvailableError("extractive QA in the Playground is not available yet in this version",
                                "it arrives with extractive-QA training; chat works for text-generation models")
    out = inference.answer(load_for_chat(ctx, rec), question=question, context=context)
    result = out if isinstance(out, dict) else {"answer": str(out)}
    text = str(result.get("answer", ""))
    start = result.get("start")
    if not isinstance(start, int) or start < 0:
        start = context.find(text) if text else -1
    end = result.get("end") if isinstance(result.get("end"), int) else (start + len(text) if start >= 0 else -1)
    return {"answer": text, "start": start, "end": end, "score": result.get("score")}


def highlight(context: str, start: int, end: int) -> list[tuple[str, str | None]]:
    if start is None or start < 0 or end <= start:
        return [(context, None)]
    return [(context[:start], None), (context[start:end], "answer"), (context[end:], None)]


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(f"{m.name} · {m.id}", m.id) for m in ctx.store.list_models()]


# Under the base model's answer when that base is the bundled demo: its noise is not a fault.
DEMO_BASE_NOTE = ("The base here is the untrained demo model: random tokens are expected. The fine-tuned answer "
                  "on the left is what training taught it.")


def base_is_demo(ctx: AppContext, model_id: str | None) -> bool:
    """True when ``model_id``'s base model is the bundled demo model."""
    if not model_id:
        return False
    try:
        return (ctx.store.get_model(model_id).base_model or "").strip() == "demo"
    except ModelForgeError:
        return False


def describe_model(ctx: AppContext, model_id: str | None) -> tuple[str, str]:
    """(markdown about the model, its task) — the task decides which boxes show."""
    if not model_id:
        return (EMPTY_TEXT if not ctx.store.list_models() else "Pick a model."), "text-generation"
    rec = ctx.store.get_model(model_id)
    return (f"**{rec.name}** — fine-tuned from `{rec.base_model}` ({rec.task}, {rec.strategy}). Left: the "
            f"fine-tuned model; right: its base model, same prompt.", rec.task)


# -- widgets --------------------------------------------------------------------------------------
@dataclass
class PlaygroundTab:
    model: gr.Dropdown
    refresh: gr.Button
    about: gr.Markdown


def build(ctx: AppContext) -> PlaygroundTab:
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices=[], label="Model", elem_id="play-model", scale=4, allow_custom_value=True)
        refresh = gr.Button("Refresh", elem_id="btn-play-refresh", scale=1)
    about = gr.Markdown(EMPTY_TEXT, elem_id="play-about")
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            max_new = gr.Slider(8, 512, value=64, step=8, label="Max new tokens", elem_id="play-max-new")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature",
                                    info="0: greedy, the same answer every time", elem_id="play-temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", elem_id="play-top-p")
        with gr.Row():
            system = gr.Textbox(label="System prompt", placeholder="(none)", elem_id="play-system")
            compare = gr.Checkbox(value=True, label="Compare with the base model", elem_id="play-compare")
    # Hidden until a model is picked: before the first model, two empty chat panels said nothing.
    with gr.Group(visible=False) as chat_group:
        with gr.Row():
            tuned = gr.Chatbot(label="Fine-tuned", elem_id="chat-tuned", height=340)
            with gr.Column():
                base = gr.Chatbot(label="Base model", elem_id="chat-base", height=340)
                base_note = gr.Markdown(DEMO_BASE_NOTE, visible=False, elem_id="chat-base-note",
                                        elem_classes=["mf-help"])
        with gr.Row(equal_height=True):
            message = gr.Textbox(placeholder="Ask something, e.g. Who are you?", show_label=False,
                                 elem_id="chat-input", scale=6, submit_btn=False, min_width=260)
            # min widths: on a phone the buttons wrap below a readable message box.
            send = gr.Button("Send", variant="primary", elem_id="btn-send", scale=1, min_width=100)
            clear = gr.Button("Clear", elem_id="btn-clear-chat", scale=1, min_width=100)
        gr.Examples(EXAMPLE_PROMPTS, inputs=message, label="Try")
    with gr.Group(visible=False) as sum_group:
        document = gr.Textbox(label="Document", lines=8, elem_id="play-document")
        summarize_btn = gr.Button("Summarize", variant="primary", elem_id="btn-summarize")
        summary = gr.Textbox(label="Summary", lines=4, interactive=False, elem_id="play-summary")
    with gr.Group(visible=False) as qa_group:
        context = gr.Textbox(label="Context", lines=6, elem_id="play-context")
        question = gr.Textbox(label="Question", elem_id="play-question")
        ask = gr.Button("Answer", variant="primary", elem_id="btn-answer")
        answer_box = gr.HighlightedText(label="Answer in the context", color_map={"answer": "#16a34a"},
                                        elem_id="play-answer")

    def _describe(model_id):
        text, task = describe_model(ctx, model_id)
        return (text, gr.Group(visible=bool(model_id) and task == "text-generation"), gr.Group(visible=task == "summarization"),
                gr.Group(visible=task == "extractive-qa"), [], [], gr.Markdown(visible=base_is_demo(ctx, model_id)))

    def _chat(model_id, msg, t_hist, b_hist, n, temp, p, sys_prompt, cmp):
        for t, b in chat_stream(ctx, model_id, msg, t_hist, b_hist, n, temp, p, sys_prompt, cmp):
            yield t, b, ""

    def _summarize(model_id, doc, n):
        return summarize(ctx, model_id, doc, n)

    def _answer(model_id, ctx_text, q):
        res = answer(ctx, model_id, ctx_text, q)
        return highlight(ctx_text, res["start"], res["end"])

    chat_inputs = [model, message, tuned, base, max_new, temperature, top_p, system, compare]
    model.change(guard(_describe), model, [about, chat_group, sum_group, qa_group, tuned, base, base_note],
                 api_visibility="private")
    pool = dict(concurrency_limit=chat_concurrency(), concurrency_id="generation")  # shared with the API
    send.click(guard(_chat), chat_inputs, [tuned, base, message], api_visibility="private", **pool)
    message.submit(guard(_chat), chat_inputs, [tuned, base, message], api_visibility="private", **pool)
    clear.click(lambda: ([], []), None, [tuned, base], api_visibility="private")
    summarize_btn.click(guard(_summarize), [model, document, max_new], summary, api_visibility="private", **pool)
    ask.click(guard(_answer), [model, context, question], answer_box, api_visibility="private", **pool)
    return PlaygroundTab(model=model, refresh=refresh, about=about)


def refresh_model_list(ctx: AppContext, selected: str | None = None) -> gr.Dropdown:
    """The model dropdown with every record, keeping ``selected`` (else the newest)."""
    choices = model_choices(ctx)
    ids = [c[1] for c in choices]
    value = selected if selected in ids else (ids[0] if ids else None)
    return gr.Dropdown(choices=choices, value=value)


def register_api(ctx: AppContext) -> None:
    def chat(model_id: str, message: str, history: list | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 0.95, system_prompt: str = "",
             compare_base: bool = False) -> dict:
        """Answer `message` with a trained model (id or name) after `history` ([{role, content}]);
        with compare_base, also its base model's answer."""
        return chat_once(ctx, model_id, message, history, compare=compare_base, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, system_prompt=system_prompt)

    def generate(model_id: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                 compare_base: bool = False) -> dict:
        """One answer to `prompt` from a trained model (and its base with compare_base)."""
        return chat_once(ctx, model_id, prompt, None, compare=compare_base, max_new_tokens=max_new_tokens,
                         temperature=temperature)

    def summarize_api(model_id: str, document: str, max_new_tokens: int = 128) -> str:
        """Summarize a document with a summarization model."""
        return summarize(ctx, model_id, document, max_new_tokens)

    def answer_api(model_id: str, context: str, question: str) -> dict:
        """Extractive QA: the answer span of `question` in `context`."""
        return answer(ctx, model_id, context, question)

    # One shared pool of chat_concurrency() slots for every way to ask a model (the page's chat
    # too): a long answer holds one slot, not the queue of every other user.
    shared = dict(concurrency_limit=chat_concurrency(), concurrency_id="generation")
    gr.api(endpoint(chat), api_name="chat", **shared)
    gr.api(endpoint(generate), api_name="generate", **shared)
    gr.api(endpoint(summarize_api), api_name="summarize", **shared)
    gr.api(endpoint(answer_api), api_name="answer", **shared)
