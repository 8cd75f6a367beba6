"""How a conversation becomes training tokens: rendered by the chat template, then masked.

The design, and why:

1. **Render with the template's own features.** A conversation is rendered with
   ``tokenizer.apply_chat_template(messages, tools=...)``, so tool schemas, tool calls, tool
   results and reasoning look exactly as the model will see them at inference. What a template
   cannot show is found once per template by rendering probes (a tool name, a call, a result, a
   thought) and looking for them in the output; only the missing features get the **fallback**
   (:func:`fallback_messages`): tool schemas are appended to the system message as JSON lines,
   tool calls become ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` text in the
   assistant turn, tool results a ``<tool_response>`` user turn when the template has no tool
   role, and reasoning a ``<think>...</think>`` block before the answer (the Hermes/Qwen
   conventions, which most open models know).

2. **Build the loss mask from rendered prefixes, not from template markers.** Only some
   templates carry ``{% generation %}`` markers (trl's ``assistant_only_loss``), and trl's
   prompt/completion split trains the last turn only. Here, for each assistant turn *i*, the
   text before it is ``render(messages[:i], add_generation_prompt=True)`` and the text up to
   its end is ``render(messages[:i+1])``; both must be prefixes of the whole rendering, and the
   span between them is the turn (trained unless its weight is 0, or ``train_turns: last``
   picks only the final one). Trailing whitespace after a turn's end token stays untrained.
   This works for any template that renders the past the same way whatever follows. A template
   that does not (Qwen3 drops the reasoning of earlier turns once a new user turn follows)
   fails the prefix check; such a conversation is then split into one sequence per trained
   assistant turn, each with its whole history as context, so every turn is still trained as
   the template renders it last. The split is reported (:func:`check_template`).

3. **Tokenize once, map characters to tokens.** The whole text is tokenized in one call (the
   same tokens as at inference; no boundary artefacts) and a token is trained when any of its
   characters lies in a trained segment (offsets of a fast tokenizer; a slow one tokenizes
   segment by segment instead). So a SentencePiece token that carries the space before the
   answer's first word (``"▁Paris"``) is trained: it is the answer's first output.

4. **Hand trl finished rows.** :func:`tokenize_examples` returns ``input_ids`` + ``labels``
   (-100 = not trained). trl's SFTTrainer keeps a ``labels`` column as it is, truncates it with
   ``input_ids``, drops rows left with no trained token, and packs both columns together
   (``bfd`` packing restarts position ids per example), while length grouping reads the
   lengths of ``input_ids``: the masks hold under packing and grouping.

Segments (``[{"text": ..., "trained": bool}, ...]``) are also what the Dataset tab draws and
what ``modelforge validate --json`` prints, so a script can check what is trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from core.errors import Problem

TRAIN_TURNS = ("all", "last")
REASONING = ("train", "drop")
_PROBE_FN, _PROBE_CALL, _PROBE_RESULT, _PROBE_THOUGHT = "zqprobefn", "zqprobecall", "zqproberesult", "zqprobethought"


@dataclass(frozen=True)
class Caps:
    """What a chat template renders itself (the rest gets the fallback)."""

    tools: bool = False
    tool_calls: bool = False
    tool_role: bool = False
    reasoning: bool = False


@dataclass
class RenderOptions:
    """How conversations are rendered and masked (from the run config).

    Attributes:
        train_turns: "all" (every assistant turn, the default) or "last".
        reasoning: "train" (kept and trained with its turn) or "drop" (removed).
        loss_on: "completion" (assistant turns only) or "all" (every token).
        chat_template: a Jinja template overriding the tokenizer's ('' = the tokenizer's own).
    """

    train_turns: str = "all"
    reasoning: str = "train"
    loss_on: str = "completion"
    chat_template: str = ""


def options_of(config) -> RenderOptions:
    """The render options of a run config (or any object with its fields; missing ones default).

    Raises:
        ConfigError: a chat_template choice that names no template and no file.
    """
    from core.data.templates import resolve

    return RenderOptions(train_turns=getattr(config, "train_turns", "all") or "all",
                         reasoning=getattr(config, "reasoning", "train") or "train",
                         loss_on=getattr(config, "loss_on", "completion") or "completion",
                         chat_template=resolve(getattr(config, "chat_template", "")) or "")


class Renderer:
    """A tokenizer plus a template, with its capabilities probed once."""

    def __init__(self, tokenizer, options: RenderOptions | None = None):
        self.tokenizer = tokenizer
        self.options = options or RenderOptions()
        # Only a chosen template is passed: the tokenizer resolves its own (which may be a dict
        # of named templates, e.g. a separate "tool_use" one picked when tools are given).
        self.template = self.options.chat_template or None
        self.caps = probe_caps(self._raw_render)

    def _raw_render(self, messages: list[dict], tools=None, generation: bool = False) -> str:
        kw = {"chat_template": self.template} if self.template else {}
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=generation, **kw)

    def render(self, messages: list[dict], tools=None, generation: bool = False) -> str:
        """The template's text for ``messages`` (already prepared by :meth:`prepare`)."""
        return self._raw_render(messages, tools=tools if self.caps.tools else None, generation=generation)

    def prepare(self, messages: list[dict], tools) -> list[dict]:
        """Drop or keep reasoning, then apply the fallback for what the template cannot show."""
        msgs = [dict(m) for m in messages]
        if self.options.reasoning == "drop":
            for m in msgs:
                m.pop("reasoning_content", None)
        return fallback_messages(msgs, tools, self.caps)

    # -- segments -------------------------------------------------------------------------------
    def sequences(self, example: dict) -> list[list[dict]]:
        """One example -> its training sequences, each a list of ``{"text", "trained"}`` segments.

        A conversation gives one sequence (or one per trained turn when the template is not
        prefix-stable; see the module docstring); plain text gives one fully trained segment.

        Raises:
            Exception: whatever the template raises for this conversation.
        """
        if "messages" not in example:
            return [[{"text": example.get("text", ""), "trained": True}]]
        tools = example.get("tools")
        prepared = self.prepare(example["messages"], tools)
        trained = trained_turns(prepared, self.options.train_turns)
        msgs = [{k: v for k, v in m.items() if k != "train"} for m in prepared]
        full = self.render(msgs, tools)
        if self.options.loss_on == "all":
            return [[{"text": full, "trained": True}]]
        spans, stable = [], True
        for i in trained:
            before = self.render(msgs[:i], tools, generation=True) if i else ""
            upto = self.render(msgs[: i + 1], tools)
            if not (full.startswith(before) and full.startswith(upto) and len(upto) >= len(before)):
                stable = False
                break
            spans.append((len(before), len(upto)))
        if stable:
            return [_segments(full, spans)]
        out = []
        for i in trained:  # not prefix-stable: one sequence per trained turn, its history as context
            before = self.render(msgs[:i], tools, generation=True)
            upto = self.render(msgs[: i + 1], tools)
            cut = len(before) if upto.startswith(before) else _common_prefix(before, upto)
            out.append(_segments(upto, [(cut, len(upto))]))
        return out

    def text(self, example: dict) -> str:
        """The whole example rendered once (no masks): for token lengths."""
        if "messages" not in example:
            return example.get("text", "")
        tools = example.get("tools")
        msgs = [{k: v for k, v in m.items() if k != "train"} for m in self.prepare(example["messages"], tools)]
        return self.render(msgs, tools)

    def segments(self, example: dict) -> list[dict]:
        """All sequences of one example, joined (for display)."""
        seqs = self.sequences(example)
        if len(seqs) == 1:
            return seqs[0]
        out: list[dict] = []
        for k, seq in enumerate(seqs, 1):
            out.append({"text": f"[sequence {k} of {len(seqs)}]\n", "trained": False, "note": True})
            out += seq
        return out

    def stable(self, example: dict) -> bool:
        """Whether the template renders this conversation prefix-stably (one sequence)."""
        return len(self.sequences(example)) <= 1


def trained_turns(messages: list[dict], train_turns: str = "all") -> list[int]:
    """Indices of the assistant messages that are trained: weight 1 (or none given); with
    ``train_turns: last`` only the final assistant message (unless its weight is 0)."""
    idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_turns == "last":
        idx = idx[-1:]
    return [i for i in idx if messages[i].get("train", True) is not False]


def _segments(text: str, spans: list[tuple[int, int]]) -> list[dict]:
    out, pos = [], 0
    for a, b in spans:
        body = text[a:b]
        tail = len(body) - len(body.rstrip())
        if a > pos:
            out.append({"text": text[pos:a], "trained": False})
        if b - tail > a:
            out.append({"text": text[a:b - tail], "trained": True})
        pos = b - tail
    if pos < len(text):
        out.append({"text": text[pos:], "trained": False})
    return _merge(out)


def _merge(segs: list[dict]) -> list[dict]:
    out: list[dict] = []
    for s in segs:
        if out and out[-1]["trained"] == s["trained"] and not s.get("note") and not out[-1].get("note"):
            out[-1] = {"text": out[-1]["text"] + s["text"], "trained": s["trained"]}
        elif s["text"]:
            out.append(dict(s))
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- what the template can show, and the fallback ---------------------------------------------------------
_PROBE_TOOLS = [{"type": "function", "function": {"name": _PROBE_FN, "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}]
_CALL = {"id": "call_1", "type": "function", "function": {"name": _PROBE_CALL, "arguments": {}}}


def probe_caps(render) -> Caps:
    """Render probes through ``render(messages, tools=None, generation=False)`` and see which of
    tools, tool calls, the tool role and reasoning come out."""
    user = {"role": "user", "content": "hi"}

    def shows(marker: str, msgs, tools=None) -> bool:
        try:
            return marker in render(msgs, tools=tools)
        except Exception:  # noqa: BLE001 - a template that refuses the probe cannot show it
            return False

    return Caps(
        tools=shows(_PROBE_FN, [user, {"role": "assistant", "content": "ok"}], _PROBE_TOOLS),
        tool_calls=shows(_PROBE_CALL, [user, {"role": "assistant", "content": "", "tool_calls": [_CALL]}]),
        tool_role=shows(_PROBE_RESULT, [user, {"role": "assistant", "content": "", "tool_calls": [_CALL]},
                                        {"role": "tool", "content": _PROBE_RESULT, "tool_call_id": "call_1",
                                         "name": _PROBE_CALL}, {"role": "assistant", "content": "ok"}]),
        reasoning=shows(_PROBE_THOUGHT, [user, {"role": "assistant", "content": "ok",
                                                "reasoning_content": _PROBE_THOUGHT}]),
    )


def tool_call_text(call: dict) -> str:
    fn = call["function"]
    return "<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": fn["arguments"]},
                                        ensure_ascii=False) + "\n</tool_call>"


def tools_text(tools: list[dict]) -> str:
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You may call one or more functions. Their signatures, one JSON schema per line:\n"
            f"<tools>\n{lines}\n</tools>\nTo call one, answer with "
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def fallback_messages(messages: list[dict], tools, caps: Caps) -> list[dict]:
    """The messages rewritten so that a template lacking a feature still shows it as text.

    Documented conventions (Hermes/Qwen): tools -> appended to the system message (one is added
    when there is none); tool calls -> ``<tool_call>`` JSON in the assistant's text; tool results
    -> a user turn in ``<tool_response>`` when the template has no tool role; reasoning ->
    ``<think>\\n...\\n</think>\\n\\n`` before the answer.
    """
    out = [dict(m) for m in messages]
    if tools and not caps.tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" + tools_text(tools)).strip()
        else:
            out.insert(0, {"role": "system", "content": tools_text(tools)})
    for k, m in enumerate(out):
        if m.get("tool_calls") and not caps.tool_calls:
            calls = "\n".join(tool_call_text(c) for c in m.pop("tool_calls"))
            m["content"] = (m["content"] + "\n" + calls) if m["content"].strip() else calls
        if m["role"] == "tool" and not caps.tool_role:
            out[k] = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        if m.get("reasoning_content") and not caps.reasoning:
            m["content"] = f"<think>\n{m.pop('reasoning_content')}\n</think>\n\n{m['content']}"
    return out


# -- tokens ----------------------------------------------------------------------------------------------
def encode(segments: list[dict], tokenizer, *, plain_text: bool = False) -> dict:
    """Segments -> ``{"input_ids", "labels"}`` (labels -100 where not trained).

    Args:
        segments: from :meth:`Renderer.sequences`.
        tokenizer: the training tokenizer.
        plain_text: continued pre-training text: the tokenizer's own special tokens (BOS) are
            added and EOS is appended, as trl does for ``text`` rows. Rendered conversations
            carry their special tokens in the text already.
    """
    text = "".join(s["text"] for s in segments)
    if plain_text:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return {"input_ids": ids, "labels": list(ids)}
    enc = None
    if getattr(tokenizer, "is_fast", False):
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):  # no offsets: segment by segment below
            enc = None
    if enc is not None:
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        trained = bytearray(len(text))
        pos = 0
        for s in segments:
            if s["trained"]:
                trained[pos:pos + len(s["text"])] = b"\x01" * len(s["text"])
            pos += len(s["text"])
        # a token is trained when any of its characters is: a token that merges the end of the
        # assistant header with the answer's first characters is the answer's first output
        labels = [t if (b > a and 1 in trained[a:b]) or (b <= a < len(text) and trained[a]) else -100
                  for t, (a, b) in zip(ids, offsets)]
        return {"input_ids": ids, "labels": labels}
    ids, labels = [], []
    for s in segments:
        part = tokenizer(s["text"], add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if s["trained"] else [-100] * len(part)
    return {"input_ids": ids, "labels": labels}


def crossings(segments: list[dict], tokenizer) -> int:
    """How many tokens straddle the start of a trained segment (the tokenizer merged the end of
    the prompt with the answer's first characters; such a token is trained, see :func:`encode`)."""
    text = "".join(s["text"] for s in segments)
    starts, pos = [], 0
    for s in segments:
        if s["trained"] and pos > 0:
            starts.append(pos)
        pos += len(s["text"])
    if not starts or not getattr(tokenizer, "is_fast", False):
        return 0
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):
        return 0
    return sum(1 for a, b in offsets for st in starts if a < st < b)


def tokenize_examples(examples: list[dict], tokenizer, options: RenderOptions | None = None) -> list[dict]:
    """Canonical ``conversation`` / ``text`` examples -> trl-ready ``{"input_ids", "labels"}``
    rows (a conversation may give several; see :meth:`Renderer.sequences`)."""
    renderer = Renderer(tokenizer, options)
    out = []
    for ex in examples:
        plain = "messages" not in ex
        for seq in renderer.sequences(ex):
            row = encode(seq, tokenizer, plain_text=plain)
            if any(x != -100 for x in row["labels"]):
                out.append(row)
    return out


def supervised_tokens(rows: list[dict]) -> int:
    """How many tokens of tokenized rows are in the loss."""
    return sum(1 for r in rows for x in r["labels"] if x != -100)


# -- checks and display --------------------------------------------------------------------------------------
def sample_segments(examples: list[dict], tokenizer, options: RenderOptions | None = None, n: int = 3) -> list[dict]:
    """The first ``n`` examples as segments, for ``validate --json`` and the Dataset tab:
    ``[{"index": i, "segments": [{"text", "trained"}, ...], "trained_tokens": k, "tokens": t}]``
    (or ``"error"`` when the template refuses the example)."""
    renderer = Renderer(tokenizer, options)
    out = []
    for i, ex in enumerate(examples[:n]):
        if "messages" not in ex and "text" not in ex:
            continue
        try:
            seqs = renderer.sequences(ex)
        except Exception as exc:  # noqa: BLE001 - shown, and reported by check_template
            out.append({"index": i, "error": _first_line(exc)})
            continue
        rows = [encode(seq, tokenizer, plain_text="messages" not in ex) for seq in seqs]
        out.append({"index": i, "segments": renderer.segments(ex),
                    "tokens": sum(len(r["input_ids"]) for r in rows), "trained_tokens": supervised_tokens(rows)})
    return out


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


_MARKER = re.compile(r"<\|[A-Za-z_/]+\|>|<(?:start|end)_of_turn>|\[/?INST\]|\[/?(?:AVAILABLE_TOOLS|TOOL_RESULTS)\]"
                     r"|\[TOOL_CALLS\]")


def _marker_problems(renderer: "Renderer", examples: list[dict], tokenizer, file) -> list[Problem]:
    """A template whose turn markers are not tokens of this model (e.g. llama3's on a Qwen model)
    still trains, but the model must learn the markers as text: worth a warning."""
    seen: set[str] = set()
    for ex in examples:
        try:
            seen |= set(_MARKER.findall(renderer.text(ex)))
        except Exception:  # noqa: BLE001 - reported elsewhere
            continue
    split = sorted(m for m in seen if len(tokenizer(m, add_special_tokens=False)["input_ids"]) > 1)
    if not split:
        return []
    return [Problem(f"the chat template's markers {', '.join(split[:5])} are not tokens of this model's "
                    "vocabulary: the model learns them as text", "use the model's own chat template (leave "
                    "chat_template empty) or one written for this model family", file=file,
                    field="chat_template", severity="warning")]


def check_template(examples: list[dict], tokenizer, options: RenderOptions | None = None, *, lines=None,
                   file: str | None = None, sample: int = 200) -> list[Problem]:
    """Check the chat template on the data before training.

    Renders a sample that uses every role of the data (and tools and reasoning when present),
    and checks that every message's text shows up in the rendering and that the prompt part of
    each conversation is a prefix of the whole (else the loss mask would be wrong): a template
    that is not prefix-stable is reported (its conversations are split per trained turn).

    Returns:
        Problems: errors for a template that cannot render the data, warnings otherwise.
    """
    convs = [(i, ex) for i, ex in enumerate(examples) if "messages" in ex]
    if not convs:
        return []
    opts = options or RenderOptions()
    idle = [i for i, ex in convs if not trained_turns(ex["messages"], opts.train_turns)]
    try:
        renderer = Renderer(tokenizer, options)
    except Exception as exc:  # noqa: BLE001
        return [Problem(f"the chat template cannot be used: {_first_line(exc)}",
                        "choose another chat_template", file=file, field="chat_template")]
    problems: list[Problem] = []
    # a sample covering every role and feature the data uses, then the first rows
    picked: dict[str, int] = {}
    for i, ex in convs:
        for m in ex["messages"]:
            for feature in (m["role"], "tool_calls" if m.get("tool_calls") else "",
                            "reasoning" if m.get("reasoning_content") else ""):
                if feature:
                    picked.setdefault(feature, i)
        if ex.get("tools"):
            picked.setdefault("tools", i)
    order = sorted(set(picked.values()) | {i for i, _ in convs[:sample]})
    where = (lambda i: lines[i] if lines is not None and i < len(lines) else i + 1)
    split = failed = crossed = 0
    first_split = first_fail = first_cross = None
    for i in order:
        ex = examples[i]
        try:
            seqs = renderer.sequences(ex)
        except Exception as exc:  # noqa: BLE001
            failed += 1
            if first_fail is None:
                first_fail = (i, _first_line(exc))
            continue
        if len(seqs) > 1:
            split += 1
            first_split = first_split if first_split is not None else i
        if any(crossings(seq, tokenizer) for seq in seqs):
            crossed += 1
            first_cross = first_cross if first_cross is not None else i
        text = "".join(s["text"] for seq in seqs for s in seq)
        missing = [m["role"] for m in ex["messages"] if m["content"].strip() and m["content"].strip()[:40] not in text]
        if missing:
            problems.append(Problem(
                f"the chat template leaves out a {missing[0]} message of this conversation",
                "choose a chat_template that shows every role the data uses (e.g. chatml)",
                file=file, line=where(i), field="chat_template", severity="warning"))
    if failed:
        i, msg = first_fail
        problems.append(Problem(
            f"the chat template cannot render {failed} of {len(order)} checked conversation(s): {msg}",
            "choose another chat_template (chatml renders every role), or fix the order of roles",
            file=file, line=where(i), field="chat_template"))
    problems += _marker_problems(renderer, [examples[i] for i in order[:20]], tokenizer, file)
    if idle and opts.loss_on != "all":
        problems.append(Problem(
            f"{len(idle)} conversation(s) have nothing to train with train_turns: {opts.train_turns} (their last "
            "assistant turn has weight 0): they are left out", "set train_turns: all, or fix the weights",
            file=file, line=where(idle[0]), field="train_turns", severity="warning"))
    if crossed:
        problems.append(Problem(
            f"in {crossed} of {len(order)} checked conversation(s) the tokenizer merges the end of the prompt "
            "with the start of an answer into one token: that token is trained (else the answer would lose its "
            "first token), so a little of the prompt is in the loss", "use a chat template that ends the "
            "assistant header with a separator the tokenizer splits on (a newline or a special token)",
            file=file, line=where(first_cross), field="chat_template", severity="warning"))
    if split:
        problems.append(Problem(
            f"the chat template renders earlier turns differently once more turns follow ({split} of "
            f"{len(order)} checked conversation(s)), so the prompt is not a prefix of the whole: each "
            "trained assistant turn becomes its own training sequence with its history as context",
            "fine for templates that drop past reasoning (Qwen3); set train_turns: last for one "
            "sequence per conversation", file=file, line=where(first_split), field="chat_template",
            severity="warning"))
    return problems
