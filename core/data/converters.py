"""Per-format row converters: one raw row in, canonical examples (or a RowError) out.

Split from :mod:`core.data.formats` so that the table of formats and the normalise loop stay
short; each converter is small and reads top to bottom. A converter raises :class:`RowError`
for a row that cannot be used (the loop turns it into a Problem naming line and field) and
calls ``ctx.warn`` for something worth reporting in a row that is still used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROLE_ALIASES = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant",
    "gpt": "assistant", "model": "assistant", "function_call": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool",
}
ROLES_TEXT = "system, user (human), assistant (gpt, model, function_call), tool (observation, function)"
SUMMARIZE_PROMPT = "Summarize the following text:\n\n{document}"


class RowError(Exception):
    """A row (or one of its fields) that cannot be converted."""

    def __init__(self, code: str, message: str, field: str | None = None, hint: str = ""):
        super().__init__(message)
        self.code, self.message, self.field, self.hint = code, message, field, hint


@dataclass
class RowContext:
    """What a converter needs besides the row: the target kind, system prompt, line, warnings."""

    target: str
    system: str
    line: int | None = None
    out: object = None  # a formats._Collector

    def warn(self, code: str, message: str, field: str | None = None, hint: str = "") -> None:
        self.out.add(code, message, line=self.line, field=field, hint=hint, severity="warning")


def _type_name(v) -> str:
    if isinstance(v, bool):
        return "true/false"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _text(row: dict, key: str, required: bool = True) -> str:
    v = row.get(key)
    if v is None:
        if not required:
            return ""
        what = "is missing" if key not in row else "is null"
        raise RowError("missing", f"'{key}' {what}", key, f"give every row a '{key}' text, or delete the row")
    if not isinstance(v, str):
        raise RowError("type", f"'{key}' is {_type_name(v)}, expected text", key,
                        f"make '{key}' a string (in quotes)")
    if required and not v.strip():
        raise RowError("empty", f"'{key}' is empty", key, f"fill in '{key}' or delete the row")
    return v


def _maybe_json(v):
    """CSV cells hold lists/objects as JSON text: decode those."""
    if isinstance(v, str) and v.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _content(c, m: dict, key: str, i: int) -> str:
    if c is None and (m.get("tool_calls") or m.get("function_call")):
        return json.dumps(m.get("tool_calls") or m.get("function_call"), ensure_ascii=False)
    if isinstance(c, list):  # OpenAI content parts: keep the text ones
        parts = [p if isinstance(p, str) else p.get("text") for p in c
                 if isinstance(p, str) or (isinstance(p, dict) and p.get("type", "text") == "text")]
        if all(isinstance(p, str) for p in parts):
            return "\n".join(parts)
    if c is None:
        return ""
    if not isinstance(c, str):
        raise RowError("msg-type", f"message {i} of '{key}' has content that is {_type_name(c)}, expected text",
                        key, 'use {"role": ..., "content": "text"}')
    return c


def _messages(value, key: str) -> list[dict]:
    value = _maybe_json(value)
    if value is None:
        raise RowError("missing", f"'{key}' is missing or null", key, f"give every row '{key}'")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError("type", f"'{key}' is {_type_name(value)}, expected a list of messages", key,
                        'use [{"role": "user", "content": "..."}, ...]')
    msgs = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise RowError("msg-type", f"message {i} of '{key}' is {_type_name(m)}, not an object", key,
                            'use {"role": ..., "content": ...} or {"from": ..., "value": ...}')
        raw = m.get("role", m.get("from"))
        role = ROLE_ALIASES.get(raw.strip().lower()) if isinstance(raw, str) else None
        if role is None:
            raise RowError("role", f"unknown role {raw!r} in message {i} of '{key}'", key,
                            f"accepted roles: {ROLES_TEXT}")
        content = _content(m["content"] if "content" in m else m.get("value"), m, key, i)
        if not content.strip():
            if role == "system":
                continue
            raise RowError("msg-empty", f"message {i} ({role}) of '{key}' is empty", key,
                            "fill in the message or delete the row")
        msgs.append({"role": role, "content": content})
    if not msgs:
        raise RowError("empty", f"'{key}' has no messages", key, "add the conversation or delete the row")
    return msgs


def _turns(row: dict, key: str, role: str) -> list[dict]:
    """A string (one message of ``role``), a message or a list of messages."""
    v = _maybe_json(row.get(key))
    if isinstance(v, dict) or (isinstance(v, list) and (not isinstance(row.get(key), str)
                                                        or all(isinstance(m, dict) for m in v))):
        return _messages(v, key)
    return [{"role": role, "content": _text(row, key)}]


def _with_system(msgs: list[dict], system: str) -> list[dict]:
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + msgs
    return msgs


def _system_column(row: dict, msgs: list[dict]) -> list[dict]:
    s = row.get("system")
    return _with_system(msgs, s) if isinstance(s, str) and s.strip() else msgs


def _conversation(msgs: list[dict], key: str, ctx: RowContext) -> dict:
    if msgs[-1]["role"] != "assistant":
        raise RowError("end", f"conversation does not end with an assistant turn (last: {msgs[-1]['role']})",
                        key, "add the assistant's answer at the end, or delete the row")
    if not any(m["role"] == "user" for m in msgs):
        raise RowError("no-user", "conversation has no user turn", key, "add the user's message")
    return {"messages": _with_system(msgs, ctx.system)}


def _label(row: dict) -> bool:
    v = row.get("label")
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise RowError("label", f"'label' is {v!r}, expected true or false", "label",
                    "label each row true (good answer) or false (bad answer)")


def _kto(prompt: list[dict], completion: list[dict], label: bool, key: str, ctx: RowContext) -> dict:
    if not completion or completion[-1]["role"] != "assistant":
        raise RowError("end", "the completion is not an assistant message", key,
                        "end each row with the assistant's answer")
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("prompt-end", "the prompt does not end with a user turn", key,
                        "the message before the answer must be the user's")
    return {"prompt": _with_system(prompt, ctx.system), "completion": completion, "label": label}


# -- converters: (row, ctx) -> list of canonical examples ------------------------------------------------
def _alpaca(row: dict, ctx: RowContext) -> list[dict]:
    instruction = _text(row, "instruction", required=False)
    extra = _text(row, "input", required=False)
    if not instruction.strip() and not extra.strip():
        _text(row, "instruction")  # raises with the right message
    user = "\n".join(t for t in (instruction, extra) if t.strip())
    msgs: list[dict] = []
    history = _maybe_json(row.get("history")) or []
    if not isinstance(history, list):
        raise RowError("type", f"'history' is {_type_name(history)}, expected a list of [user, assistant] pairs",
                        "history", 'use [["question", "answer"], ...]')
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowError("history", "'history' must hold [user, assistant] pairs of text", "history",
                            'use [["question", "answer"], ...]')
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
    return [_conversation(_system_column(row, msgs), "output", ctx)]


def _sharegpt(row: dict, ctx: RowContext) -> list[dict]:
    msgs = _messages(row.get("conversations"), "conversations")
    return [_conversation(_system_column(row, msgs), "conversations", ctx)]


def _messages_fmt(row: dict, ctx: RowContext) -> list[dict]:
    msgs = _messages(row.get("messages"), "messages")
    if "label" in row:
        return [_kto(msgs[:-1], msgs[-1:], _label(row), "messages", ctx)]
    return [_conversation(msgs, "messages", ctx)]


def _prompt_completion(row: dict, ctx: RowContext) -> list[dict]:
    prompt = _turns(row, "prompt", "user")
    completion = _turns(row, "completion", "assistant")
    if "label" in row:
        return [_kto(prompt, completion, _label(row), "completion", ctx)]
    return [_conversation(prompt + completion, "completion", ctx)]


def _text_fmt(row: dict, ctx: RowContext) -> list[dict]:
    return [{"text": _text(row, "text")}]


def _input_output(row: dict, ctx: RowContext) -> list[dict]:
    source, target = _text(row, "input"), _text(row, "output")
    if ctx.target == "summarization":
        return [{"document": source, "summary": target}]
    msgs = [{"role": "user", "content": source}, {"role": "assistant", "content": target}]
    return [_conversation(msgs, "output", ctx)]


def _answer(row: dict, key: str, prompt: list[dict]) -> list[dict]:
    if row.get(key) is None:
        what = "has no" if key not in row else "has a null"
        raise RowError("missing", f"preference row {what} '{key}' answer", key,
                        f"add the {key} answer or delete the row")
    msgs = _turns(row, key, "assistant")
    if len(msgs) > len(prompt) and msgs[: len(prompt)] == prompt:
        msgs = msgs[len(prompt):]  # the answer repeats the prompt
    if msgs[-1]["role"] != "assistant":
        raise RowError("end", f"'{key}' does not end with an assistant message", key,
                        "chosen/rejected must be the assistant's answer")
    return msgs


def _preference_rows(prompt: list[dict], row: dict, key: str, ctx: RowContext) -> list[dict]:
    if prompt[-1]["role"] != "user":
        raise RowError("prompt-end", f"the prompt does not end with a user turn (last: {prompt[-1]['role']})",
                        key, "the last prompt message must be the user's")
    chosen, rejected = _answer(row, "chosen", prompt), _answer(row, "rejected", prompt)
    if chosen == rejected:
        ctx.warn("same", "chosen and rejected are identical (nothing to learn from this pair)", "rejected",
                 "make the rejected answer differ, or delete the row")
    prompt = _with_system(prompt, ctx.system)
    if ctx.target == "kto":
        return [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def _preference(row: dict, ctx: RowContext) -> list[dict]:
    if "prompt" in row:
        prompt = _turns(row, "prompt", "user")
    elif row.get("instruction") is not None:
        text = "\n".join(t for t in (_text(row, "instruction"), _text(row, "input", False)) if t.strip())
        prompt = [{"role": "user", "content": text}]
    else:  # implicit prompt: chosen/rejected are whole conversations sharing it
        chosen = _maybe_json(row.get("chosen"))
        if not isinstance(chosen, list) or len(chosen) < 2:
            raise RowError("missing", "preference row has no 'prompt'", "prompt",
                            "add a 'prompt' column (or make chosen/rejected full conversations)")
        prompt = _messages(chosen, "chosen")[:-1]
    return _preference_rows(_system_column(row, prompt), row, "prompt", ctx)


def _sharegpt_preference(row: dict, ctx: RowContext) -> list[dict]:
    prompt = _system_column(row, _messages(row.get("conversations"), "conversations"))
    return _preference_rows(prompt, row, "conversations", ctx)


def _summarization(row: dict, ctx: RowContext) -> list[dict]:
    doc_key = next((k for k in ("document", "article", "dialogue") if k in row), "document")
    sum_key = next((k for k in ("summary", "highlights") if k in row), "summary")
    document, summary = _text(row, doc_key), _text(row, sum_key)
    if ctx.target == "conversation":
        msgs = [{"role": "user", "content": SUMMARIZE_PROMPT.format(document=document)},
                {"role": "assistant", "content": summary}]
        return [_conversation(msgs, sum_key, ctx)]
    return [{"document": document, "summary": summary}]


def _squad(row: dict, ctx: RowContext) -> list[dict]:
    context, question = _text(row, "context"), _text(row, "question")
    answers = _maybe_json(row.get("answers"))
    if isinstance(answers, list):  # [{"text": ..., "answer_start": ...}, ...]
        if not all(isinstance(a, dict) for a in answers):
            raise RowError("answers", "'answers' must be {text: [...], answer_start: [...]}", "answers",
                            'use {"text": ["..."], "answer_start": [12]} ({"text": [], ...} if unanswerable)')
        answers = {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        raise RowError("answers", "'answers' must be {text: [...], answer_start: [...]}", "answers",
                        'use {"text": ["..."], "answer_start": [12]} ({"text": [], ...} if unanswerable)')
    texts, starts = answers["text"], answers["answer_start"]
    if len(texts) != len(starts):
        raise RowError("answers", f"'answers' has {len(texts)} texts but {len(starts)} answer_start values",
                        "answers", "give one answer_start per answer text")
    if not all(isinstance(t, str) for t in texts) or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        raise RowError("answers", "answer texts must be text and answer_start whole numbers", "answers",
                        'use {"text": ["..."], "answer_start": [12]}')
    for t, s in zip(texts, starts):
        if context[s: s + len(t)] != t:
            found = context.find(t)
            where = f"it occurs at {found}" if found >= 0 else "it does not occur in the context"
            ctx.warn("answer-start", f"answer_start {s} does not point at the answer {t[:40]!r}",
                     "answers", f"fix answer_start ({where})")
    rid = row.get("id")
    rid = str(rid) if rid not in (None, "") else f"{ctx.line}"
    return [{"id": rid, "question": question, "context": context,
             "answers": {"text": list(texts), "answer_start": list(starts)}}]


CONVERTERS = {
    "alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages_fmt,
    "prompt-completion": _prompt_completion, "text": _text_fmt, "input-output": _input_output,
    "preference": _preference, "sharegpt-preference": _sharegpt_preference,
    "summarization": _summarization, "squad": _squad,
}
