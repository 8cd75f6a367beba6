"""Chat messages as people write them in 2026, read into one canonical message shape.

The shapes read (each as its authors document it):

- OpenAI chat (and its fine-tuning format): ``{"role", "content"}`` where content is text or a
  list of typed parts; assistant ``tool_calls`` (``[{"id", "type": "function", "function":
  {"name", "arguments": "<JSON text>"}}]``) and the older ``function_call``; ``tool`` messages
  with ``tool_call_id`` (and ``name``); ``"weight": 0|1`` on assistant messages.
- ShareGPT / LLaMA-Factory: ``{"from", "value"}`` with ``human``/``gpt``/``function_call``/
  ``observation`` turns (a ``function_call`` turn's value is ``{"name", "arguments"}`` as JSON);
  typed parts with the text under ``value``; a ``tools`` column of JSON function schemas.
- Reasoning: an assistant ``reasoning_content`` / ``thinking`` / ``reasoning`` field, or typed
  parts of type ``reasoning`` / ``thinking``.
- Per-message loss weights: ``weight`` (0 or 1, OpenAI), ``loss_weight`` (a number; 0 means
  not trained), ``train`` / ``training`` (true/false, as axolotl writes it).

The canonical message (what the rest of ModelForge sees)::

    {"role": "system"|"user"|"assistant"|"tool", "content": str,
     "tool_calls": [{"id"?: str, "type": "function",
                     "function": {"name": str, "arguments": dict}}],   # assistant, optional
     "tool_call_id": str, "name": str,                                 # tool, optional
     "reasoning_content": str,                                         # assistant, optional
     "train": bool}                                                    # assistant, when a weight says so

Tool-call arguments become a JSON object (a dict), the form Hugging Face chat templates expect
(``tool_call.function.arguments | tojson``). Text parts are joined with newlines. Image, audio,
video and file parts, ``images``/``videos``/``audios`` columns and ``<image>``-style
placeholders are refused: a text model would train on the placeholder without ever seeing the
picture, which is worse than refusing the row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

ROLE_ALIASES = {
    "system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
    "gpt": "assistant", "model": "assistant", "bot": "assistant", "function_call": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool", "tool_response": "tool",
}
ROLES_TEXT = ("system (developer), user (human), assistant (gpt, model, function_call), "
              "tool (observation, function, ipython)")
TEXT_PARTS = ("text", "input_text", "output_text", "refusal")
REASONING_PARTS = ("reasoning", "thinking", "reasoning_text")
MEDIA_PARTS = ("image", "image_url", "input_image", "audio", "input_audio", "audio_url", "video",
               "video_url", "input_video", "file", "input_file", "image_file")
MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
TEXT_CALL_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function=", "<functioncall>")
_PLACEHOLDER = re.compile(r"<(image|video|audio)>")


class RowError(Exception):
    """A row (or one of its fields) that cannot be converted."""

    def __init__(self, code: str, message: str, field: str | None = None, hint: str = ""):
        super().__init__(message)
        self.code, self.message, self.field, self.hint = code, message, field, hint


def type_name(v) -> str:
    if isinstance(v, bool):
        return "true/false"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def maybe_json(v):
    """CSV cells hold lists/objects as JSON text: decode those."""
    if isinstance(v, str) and v.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def refuse_media_columns(row: dict) -> None:
    """Raise for a row that carries images/videos/audio: a text model cannot use them."""
    for col in MEDIA_COLUMNS:
        v = row.get(col)
        if v not in (None, "", [], {}):
            raise RowError("multimodal", f"the row has {col!r} ({_count(v)}): a text model does not use "
                           "images, video or audio, and would train on the text around them alone", col,
                           "remove the media column (and the <image> placeholders), or train a "
                           "vision/audio model with another tool")


def _count(v) -> str:
    return f"{len(v)} item(s)" if isinstance(v, list) else "a value"


# -- content --------------------------------------------------------------------------------------
@dataclass
class _Content:
    text: str = ""
    thought: str = ""
    calls: list = field(default_factory=list)     # Anthropic tool_use parts, as OpenAI tool calls
    results: list = field(default_factory=list)   # Anthropic tool_result parts, as tool messages


def _parts(c: list, key: str, i: int) -> _Content:
    """Typed parts -> text, reasoning, and (Anthropic's shape) tool_use / tool_result blocks."""
    texts, thoughts, out = [], [], _Content()
    for j, p in enumerate(c, 1):
        if isinstance(p, str):
            texts.append(p)
            continue
        if not isinstance(p, dict):
            raise RowError("msg-type", f"part {j} of message {i} of '{key}' is {type_name(p)}, expected "
                           "text or {\"type\": \"text\", \"text\": ...}", key,
                           'use {"type": "text", "text": "..."} (or "value")')
        kind = str(p.get("type", "text")).lower()
        body = p.get("text", p.get("value", p.get("content", p.get(kind))))
        if kind in MEDIA_PARTS:
            raise RowError("multimodal", f"message {i} of '{key}' has a {kind} part: a text model does not see "
                           "it and would train on the text around it alone", key,
                           "remove image/audio/video parts from the data, or train a multimodal model with "
                           "another tool")
        if kind in REASONING_PARTS:
            body = body if body is not None else p.get("reasoning", p.get("thinking", p.get("summary")))
            if isinstance(body, list):  # e.g. a summary given as parts
                body = "\n".join(x.get("text", "") if isinstance(x, dict) else str(x) for x in body)
            if isinstance(body, str):
                thoughts.append(body)
                continue
        if kind == "redacted_thinking":
            continue  # encrypted: nothing a model can learn from
        if kind == "tool_use":
            out.calls.append({"id": p.get("id"), "type": "function",
                              "function": {"name": p.get("name"), "arguments": p.get("input")}})
            continue
        if kind == "tool_result":
            inner = p.get("content")
            inner = _parts(inner, key, i).text if isinstance(inner, list) else inner
            out.results.append({"role": "tool", "content": inner if isinstance(inner, str) else json.dumps(inner),
                                "tool_call_id": p.get("tool_use_id")})
            continue
        if kind in TEXT_PARTS and isinstance(body, str):
            texts.append(body)
            continue
        raise RowError("msg-type", f"part {j} of message {i} of '{key}' is of type {kind!r}, which a text "
                       "model cannot use", key, "use parts of type text (its text under 'text' or 'value')")
    out.text, out.thought = "\n".join(texts), "\n".join(thoughts)
    return out


def _content(c, key: str, i: int) -> _Content:
    c = maybe_json(c) if isinstance(c, str) and c.lstrip().startswith("[{") else c
    if isinstance(c, dict) and "type" in c:
        c = [c]
    if isinstance(c, list):
        return _parts(c, key, i)
    if c is None:
        return _Content()
    if not isinstance(c, str):
        raise RowError("msg-type", f"message {i} of '{key}' has content that is {type_name(c)}, expected text",
                       key, 'use {"role": ..., "content": "text"} or typed parts [{"type": "text", "text": ...}]')
    return _Content(text=c)


# -- tool calls -----------------------------------------------------------------------------------------
def _arguments(args, name: str, key: str, i: int) -> dict:
    if args is None or args == "":
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as exc:
            raise RowError("tool-json", f"the arguments of the call to {name!r} in message {i} of '{key}' are "
                           f"not valid JSON ({exc.msg} at column {exc.colno}): {args[:80]!r}", key,
                           'write arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}"') from None
    if not isinstance(args, dict):
        raise RowError("tool-json", f"the arguments of the call to {name!r} in message {i} of '{key}' are "
                       f"{type_name(args)}, expected a JSON object", key, 'use {"arg": value, ...}')
    return args


def _one_call(call, key: str, i: int) -> dict:
    if not isinstance(call, dict):
        raise RowError("tool-call", f"a tool call in message {i} of '{key}' is {type_name(call)}, not an object",
                       key, '{"type": "function", "function": {"name": ..., "arguments": ...}}')
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RowError("tool-call", f"a tool call in message {i} of '{key}' has no function name", key,
                       'give each call {"function": {"name": "...", "arguments": {...}}}')
    out = {"type": "function", "function": {"name": name, "arguments": _arguments(
        fn.get("arguments", fn.get("parameters")), name, key, i)}}
    if call.get("id") not in (None, ""):
        out["id"] = str(call["id"])
    return out


def _tool_calls(m: dict, raw_role: str, text: str, key: str, i: int, part_calls=()) -> tuple[list[dict], str]:
    """(tool_calls, remaining text) of an assistant message."""
    calls = maybe_json(m.get("tool_calls"))
    if calls in (None, "", []) and part_calls:
        calls = list(part_calls)
    if calls in (None, "", []) and isinstance(m.get("function_call"), (dict, str)):  # legacy OpenAI field
        calls = [maybe_json(m["function_call"])]
    if raw_role == "function_call":  # ShareGPT: the value is the call (or a list of calls) as JSON
        try:
            calls = json.loads(text) if text.strip() else None
        except ValueError as exc:
            raise RowError("tool-json", f"message {i} of '{key}' (function_call) is not valid JSON "
                           f"({exc.msg} at column {exc.colno}): {text[:80]!r}", key,
                           'write it as {"name": "...", "arguments": {...}}') from None
        text = ""
    if calls in (None, "", []):
        return [], text
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise RowError("tool-call", f"'tool_calls' of message {i} of '{key}' is {type_name(calls)}, expected a "
                       "list", key, '[{"type": "function", "function": {"name": ..., "arguments": ...}}]')
    return [_one_call(c, key, i) for c in calls], text


def _train_flag(m: dict, key: str, i: int, warn) -> bool | None:
    for name in ("weight", "loss_weight", "train", "training"):
        if name not in m or m[name] is None:
            continue
        v = m[name]
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            if v not in (0, 1) and warn is not None:
                warn("weight", f"message {i} of '{key}' has {name} {v}: only 0 (not trained) or 1 (trained) "
                     "is supported; it is trained", key, "use 0 or 1")
            return v > 0
        if isinstance(v, str) and v.strip().lower() in ("0", "1", "true", "false"):
            return v.strip().lower() in ("1", "true")
        raise RowError("weight", f"message {i} of '{key}' has {name} {v!r}, expected 0 or 1", key,
                       "use 0 (context only, not trained) or 1 (trained)")
    return None


def parse_messages(value, key: str, *, warn=None) -> list[dict]:
    """A list of messages in any of the shapes above -> canonical messages.

    Args:
        value: the column's value (a list, one message, or their JSON text).
        key: the column name, for messages.
        warn: ``warn(code, message, field, hint)`` for things worth reporting in a usable row.

    Raises:
        RowError: naming the message and what to fix.
    """
    value = maybe_json(value)
    if value is None:
        raise RowError("missing", f"'{key}' is missing or null", key, f"give every row '{key}'")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError("type", f"'{key}' is {type_name(value)}, expected a list of messages", key,
                       'use [{"role": "user", "content": "..."}, ...]')
    msgs = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise RowError("msg-type", f"message {i} of '{key}' is {type_name(m)}, not an object", key,
                           'use {"role": ..., "content": ...} or {"from": ..., "value": ...}')
        raw = m.get("role", m.get("from"))
        raw = raw.strip().lower() if isinstance(raw, str) else raw
        role = ROLE_ALIASES.get(raw) if isinstance(raw, str) else None
        if role is None:
            raise RowError("role", f"unknown role {raw!r} in message {i} of '{key}'", key,
                           f"accepted roles: {ROLES_TEXT}")
        got = _content(m["content"] if "content" in m else m.get("value"), key, i)
        text, thought = got.text, got.thought
        if got.results:  # Anthropic: tool results are blocks of a user message
            for r in got.results:
                msgs.append({k: v for k, v in r.items() if v is not None})
            if not text.strip():
                continue
        if _PLACEHOLDER.search(text):
            tag = _PLACEHOLDER.search(text).group(0)
            raise RowError("multimodal", f"message {i} of '{key}' has a {tag} placeholder: a text model "
                           "would train on the placeholder without the media", key,
                           "remove the placeholders and media, or train a multimodal model with another tool")
        msg: dict = {"role": role, "content": text}
        if role == "assistant":
            calls, text = _tool_calls(m, raw, text, key, i, got.calls)
            msg["content"] = text
            if calls:
                msg["tool_calls"] = calls
            for f in REASONING_FIELDS:
                if isinstance(m.get(f), str) and m[f].strip():
                    thought = "\n".join(t for t in (m[f], thought) if t)
                    break
            if thought.strip():
                msg["reasoning_content"] = thought.strip()
            flag = _train_flag(m, key, i, warn)
            if flag is not None:
                msg["train"] = flag
        elif role == "tool":
            for f in ("tool_call_id", "name"):
                if m.get(f) not in (None, ""):
                    msg[f] = str(m[f])
        if not msg["content"].strip() and not msg.get("tool_calls") and not msg.get("reasoning_content"):
            if role == "system":
                continue
            raise RowError("msg-empty", f"message {i} ({role}) of '{key}' is empty", key,
                           "fill in the message or delete the row")
        msgs.append(msg)
    if not msgs:
        raise RowError("empty", f"'{key}' has no messages", key, "add the conversation or delete the row")
    return msgs


# -- tools ------------------------------------------------------------------------------------------------
def parse_tools(value) -> list[dict] | None:
    """A ``tools`` column (a list of JSON function schemas, or its JSON text) -> the list in the
    OpenAI shape ``{"type": "function", "function": {"name", "description", "parameters"}}``
    (what ``apply_chat_template(tools=...)`` takes), or None when there is none."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise RowError("tools", f"'tools' is not valid JSON ({exc.msg} at column {exc.colno})", "tools",
                           "give a JSON list of function schemas") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError("tools", f"'tools' is {type_name(value)}, expected a list of function schemas", "tools",
                       '[{"type": "function", "function": {"name": ..., "parameters": {...}}}]')
    out = []
    for j, t in enumerate(value, 1):
        t = maybe_json(t)
        fn = t.get("function") if isinstance(t, dict) and isinstance(t.get("function"), dict) else t
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise RowError("tools", f"tool {j} in 'tools' has no function name", "tools",
                           '{"type": "function", "function": {"name": ..., "parameters": {...}}}')
        out.append({"type": "function", "function": fn})
    return out or None


def check_tool_use(msgs: list[dict], tools: list[dict] | None, key: str, warn=None) -> None:
    """Calls name a function in ``tools``; every tool result answers a call made before it.

    Raises:
        RowError: a call to an unknown function, or a tool result with no call before it.
    """
    names = {t["function"]["name"] for t in tools} if tools else None
    pending_ids: set[str] = set()
    calls_made = structured = 0
    for i, m in enumerate(msgs, 1):
        if m["role"] == "assistant" and any(tag in m["content"] for tag in TEXT_CALL_TAGS):
            calls_made += 1  # a call written as text (Hermes <tool_call>, Mistral, Llama's python tag)
        for call in m.get("tool_calls", ()):
            name = call["function"]["name"]
            if names is not None and name not in names:
                raise RowError("tool-unknown", f"message {i} of '{key}' calls {name!r}, which is not among the "
                               f"tools of this row ({', '.join(sorted(names))})", key,
                               "add its schema to 'tools', or fix the function name")
            calls_made += 1
            structured += 1
            if "id" in call:
                pending_ids.add(call["id"])
        if m["role"] == "tool":
            if calls_made == 0:
                raise RowError("tool-orphan", f"message {i} of '{key}' is a tool result, but no tool call comes "
                               "before it", key, "add the assistant's tool_calls before the result, or make it a "
                               "user message")
            cid = m.get("tool_call_id")
            if cid and pending_ids and cid not in pending_ids:
                raise RowError("tool-orphan", f"message {i} of '{key}' answers tool call {cid!r}, but no call "
                               "with that id comes before it", key, "fix tool_call_id to the id of the call")
    if names is None and structured and warn is not None:
        warn("tools-missing", f"'{key}' has tool calls but the row has no 'tools' column: the model will not "
             "see the function schemas", "tools", "add a 'tools' column with the JSON schemas of the functions")
