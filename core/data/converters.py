"""Per-format row converters: one raw row in, canonical examples (or a RowError) out.

Split from :mod:`core.data.formats` so that the table of formats and the normalise loop stay
short; each converter is small and reads top to bottom. A converter raises :class:`RowError`
for a row that cannot be used (the loop turns it into a Problem naming line and field) and
calls ``ctx.warn`` for something worth reporting in a row that is still used.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.data.messages import (ROLE_ALIASES, ROLES_TEXT, RowError, check_tool_use,  # noqa: F401 (re-exported)
                                maybe_json, parse_messages, parse_tools, refuse_media_columns)
from core.data.messages import type_name as _type_name

SUMMARIZE_PROMPT = "Summarize the following text:\n\n{document}"


@dataclass
class RowContext:
    """What a converter needs besides the row: the target kind, system prompt, line, warnings."""

    target: str
    system: str
    line: int | None = None
    out: object = None  # a formats._Collector

    def warn(self, code: str, message: str, field: str | None = None, hint: str = "") -> None:
        self.out.add(code, message, line=self.line, field=field, hint=hint, severity="warning")


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


def _turns(row: dict, key: str, role: str) -> list[dict]:
    """A string (one message of ``role``), a message or a list of messages."""
    v = maybe_json(row.get(key))
    if isinstance(v, dict) or (isinstance(v, list) and (not isinstance(row.get(key), str)
                                                        or all(isinstance(m, dict) for m in v))):
        return parse_messages(v, key)
    return [{"role": role, "content": _text(row, key)}]


def _with_system(msgs: list[dict], system: str) -> list[dict]:
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + msgs
    return msgs


def _system_column(row: dict, msgs: list[dict]) -> list[dict]:
    s = row.get("system")
    return _with_system(msgs, s) if isinstance(s, str) and s.strip() else msgs


def _conversation(msgs: list[dict], key: str, ctx: RowContext, row: dict | None = None) -> dict:
    """A canonical conversation (with the row's ``tools``), checked: ends with an assistant turn,
    has a user turn, at least one trained assistant turn, and tool calls that fit the tools."""
    if msgs[-1]["role"] != "assistant":
        raise RowError("end", f"conversation does not end with an assistant turn (last: {msgs[-1]['role']})",
                        key, "add the assistant's answer at the end, or delete the row")
    if not any(m["role"] == "user" for m in msgs):
        raise RowError("no-user", "conversation has no user turn", key, "add the user's message")
    if all(m.get("train") is False for m in msgs if m["role"] == "assistant"):
        raise RowError("no-trained", "every assistant turn has weight 0: nothing of this row is trained", key,
                        "give at least one assistant message weight 1, or delete the row")
    tools = parse_tools(row.get("tools")) if row is not None else None
    check_tool_use(msgs, tools, key, ctx.warn if ctx.out is not None else None)
    out = {"messages": _with_system(msgs, ctx.system)}
    if tools:
        out["tools"] = tools
    return out


def _start(row: dict) -> None:
    """Checks every conversation row gets first: no images, audio or video."""
    refuse_media_columns(row)


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
    history = maybe_json(row.get("history")) or []
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
    _start(row)
    msgs = parse_messages(row.get("conversations"), "conversations", warn=ctx.warn)
    return [_conversation(_system_column(row, msgs), "conversations", ctx, row)]


def _messages_fmt(row: dict, ctx: RowContext) -> list[dict]:
    _start(row)
    msgs = parse_messages(row.get("messages"), "messages", warn=ctx.warn)
    if "label" in row:
        return [_kto(_plain(msgs[:-1]), _plain(msgs[-1:]), _label(row), "messages", ctx)]
    return [_conversation(msgs, "messages", ctx, row)]


def _prompt_completion(row: dict, ctx: RowContext) -> list[dict]:
    _start(row)
    prompt = _turns(row, "prompt", "user")
    completion = _turns(row, "completion", "assistant")
    if "label" in row:
        return [_kto(_plain(prompt), _plain(completion), _label(row), "completion", ctx)]
    return [_conversation(prompt + completion, "completion", ctx, row)]


def _text_fmt(row: dict, ctx: RowContext) -> list[dict]:
    return [{"text": _text(row, "text")}]


def _input_output(row: dict, ctx: RowContext) -> list[dict]:
    source, target = _text(row, "input"), _text(row, "output")
    if ctx.target == "summarization":
        return [{"document": source, "summary": target}]
    msgs = [{"role": "user", "content": source}, {"role": "assistant", "content": target}]
    return [_conversation(msgs, "output", ctx)]


def _plain(msgs: list[dict]) -> list[dict]:
    """Messages for trl's preference trainers: no per-message training flag (they train the answer)."""
    return [{k: v for k, v in m.items() if k != "train"} for m in msgs]


def _common_prefix(a: list[dict], b: list[dict]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def _answer(row: dict, key: str, prompt: list[dict]) -> list[dict]:
    if row.get(key) is None:
        what = "has no" if key not in row else "has a null"
        raise RowError("missing", f"preference row {what} '{key}' answer", key,
                        f"add the {key} answer or delete the row")
    msgs = _turns(row, key, "assistant")
    if len(msgs) > len(prompt) and _plain(msgs[: len(prompt)]) == _plain(prompt):
        msgs = msgs[len(prompt):]  # the answer repeats the prompt
    if msgs[-1]["role"] != "assistant":
        raise RowError("end", f"'{key}' does not end with an assistant message", key,
                        "chosen/rejected must be the assistant's answer")
    return msgs


def _preference_rows(prompt: list[dict], row: dict, key: str, ctx: RowContext,
                     answers: tuple[list[dict], list[dict]] | None = None) -> list[dict]:
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        last = prompt[-1]["role"] if prompt else "nothing"
        raise RowError("prompt-end", f"the prompt does not end with a user turn (last: {last})",
                        key, "the last prompt message must be the user's")
    chosen, rejected = answers or (_answer(row, "chosen", prompt), _answer(row, "rejected", prompt))
    chosen, rejected, prompt = _plain(chosen), _plain(rejected), _plain(prompt)
    if chosen == rejected:
        ctx.warn("same", "chosen and rejected are identical (nothing to learn from this pair)", "rejected",
                 "make the rejected answer differ, or delete the row")
    prompt = _with_system(prompt, ctx.system)
    if ctx.target == "kto":
        return [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def _split_pair(chosen: list[dict], rejected: list[dict], key: str) -> tuple[list, list, list]:
    """Two whole conversations -> (shared prompt, chosen answer, rejected answer)."""
    n = _common_prefix(chosen, rejected)
    if n == 0:
        raise RowError("missing", f"the two conversations of '{key}' share no prompt", key,
                        "start chosen and rejected with the same prompt messages, or add a 'prompt' column")
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant":
            raise RowError("end", f"the {side} conversation does not end with an assistant message", key,
                            "end each conversation with the assistant's answer")
    return chosen[:n], chosen[n:], rejected[n:]


def _preference(row: dict, ctx: RowContext) -> list[dict]:
    _start(row)
    if "prompt" in row:
        prompt = _turns(row, "prompt", "user")
    elif row.get("instruction") is not None:
        text = "\n".join(t for t in (_text(row, "instruction"), _text(row, "input", False)) if t.strip())
        prompt = [{"role": "user", "content": text}]
    else:  # implicit prompt: chosen/rejected are whole conversations sharing it
        chosen, rejected = maybe_json(row.get("chosen")), maybe_json(row.get("rejected"))
        if not isinstance(chosen, list) or len(chosen) < 2 or not isinstance(rejected, list):
            raise RowError("missing", "preference row has no 'prompt'", "prompt",
                            "add a 'prompt' column (or make chosen/rejected full conversations)")
        prompt, c, r = _split_pair(parse_messages(chosen, "chosen"), parse_messages(rejected, "rejected"), "chosen")
        return _preference_rows(_system_column(row, prompt), row, "chosen", ctx, (c, r))
    return _preference_rows(_system_column(row, prompt), row, "prompt", ctx)


def _preference_messages(row: dict, ctx: RowContext) -> list[dict]:
    """``chosen_messages`` / ``rejected_messages``: two whole conversations (with an optional
    ``prompt`` column when they hold the answers only)."""
    _start(row)
    chosen = parse_messages(row.get("chosen_messages"), "chosen_messages")
    rejected = parse_messages(row.get("rejected_messages"), "rejected_messages")
    if row.get("prompt") not in (None, "", []):
        prompt = _turns(row, "prompt", "user")
        strip = (lambda m: m[len(prompt):] if len(m) > len(prompt) and _plain(m[:len(prompt)]) == _plain(prompt)
                 else m)
        answers = (strip(chosen), strip(rejected))
    else:
        prompt, *answers = _split_pair(chosen, rejected, "chosen_messages")
    return _preference_rows(_system_column(row, prompt), row, "chosen_messages", ctx, tuple(answers))


def _sharegpt_preference(row: dict, ctx: RowContext) -> list[dict]:
    _start(row)
    prompt = _system_column(row, parse_messages(row.get("conversations"), "conversations"))
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
    answers = maybe_json(row.get("answers"))
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
    "preference-messages": _preference_messages,
    "summarization": _summarization, "squad": _squad,
}
