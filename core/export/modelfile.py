"""The Ollama ``Modelfile`` written beside every GGUF export.

Ollama does not run the model's Jinja chat template: it renders its own Go ``text/template``
(the ``TEMPLATE`` of the Modelfile). The most common complaint about exported models, a model
that talks gibberish or never stops, comes from a TEMPLATE that differs from the chat template
the model was trained with, or from a missing stop token. So the TEMPLATE is not written by hand
per model family: it is *derived* from the model's own chat template, by rendering that template
with marker contents and cutting the result into

    preamble, then per message: prefix[role] + content + suffix[role], then the generation prompt

and it is then *checked*: :func:`render_go_template` renders the TEMPLATE for several multi-turn
conversations (with and without a system message) and each must equal the Jinja rendering to
the character. A template that cannot be cut this way (e.g. one that folds the system message
into the first user turn) is reported, not silently written as if it were right.

``PARAMETER stop`` lists every end-of-turn token (what follows the content of an assistant turn,
when it is a special token, plus the model's end-of-sequence tokens); ``SYSTEM`` is the run's
system prompt when it had one; sampling is the Playground's default (greedy, top-p 0.95, 64 new
tokens), so ``ollama run`` answers like the Playground did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The Playground's default sampling (components/playground_tab.py sliders): greedy, top-p 0.95,
# 64 new tokens. Greedy in Ollama is temperature 0.
PLAYGROUND_DEFAULTS = {"temperature": 0.0, "top_p": 0.95, "num_predict": 64}

ROLES = ("system", "user", "assistant")
_X, _Y = "\ue000MFX\ue000", "\ue000MFY\ue000"  # marker contents: private-use characters


@dataclass
class ChatShape:
    """A chat template cut into the pieces a Go template can reproduce."""

    preamble: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    problems: list[str] = field(default_factory=list)


def _render(tokenizer, messages, gen=False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    except Exception as exc:  # noqa: BLE001 - a template may refuse a conversation shape
        raise ValueError(f"the chat template cannot render a {'/'.join(m['role'] for m in messages)} "
                         f"conversation: {exc}") from None


def derive_shape(tokenizer) -> ChatShape:
    """Cut the tokenizer's chat template into preamble / per-role prefix and suffix / generation prompt.

    Raises:
        ValueError: the template cannot be cut this way (says why).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    single = _render(tokenizer, [{"role": "user", "content": _X}])
    if single.count(_X) != 1:
        raise ValueError("the chat template does not render a user message's content exactly once")
    head_u, tail_u = single.split(_X)
    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {"user": tail_u}
    for role in ("user", "assistant"):
        two = _render(tokenizer, [{"role": "user", "content": _X}, {"role": role, "content": _Y}])
        start = head_u + _X + tail_u
        if not two.startswith(start) or two.count(_Y) != 1:
            raise ValueError(f"a {role} turn after a user turn does not simply follow it in the chat template")
        pre, post = two[len(start):].split(_Y)
        prefix[role] = pre
        if role == "assistant":
            suffix[role] = post
        elif post != tail_u:
            raise ValueError("the user turn ends differently depending on its position")
    if not head_u.endswith(prefix["user"]):
        raise ValueError("the first user turn starts differently from the others")
    preamble = head_u[: len(head_u) - len(prefix["user"])]
    with_sys = _render(tokenizer, [{"role": "system", "content": _Y}, {"role": "user", "content": _X}])
    tail = prefix["user"] + _X + tail_u
    if not (with_sys.startswith(preamble) and with_sys.endswith(tail) and with_sys.count(_Y) == 1):
        raise ValueError("the system message is not a turn of its own in the chat template")
    pre_s, post_s = with_sys[len(preamble): len(with_sys) - len(tail)].split(_Y)
    prefix["system"], suffix["system"] = pre_s, post_s
    generation = _render(tokenizer, [{"role": "user", "content": _X}], gen=True)
    if not generation.startswith(single):
        raise ValueError("the generation prompt is not appended after the conversation")
    return ChatShape(preamble, prefix, suffix, generation[len(single):])


def _lit(text: str) -> str:
    """Literal text inside a Go template ('{{' must not start an action)."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(shape: ChatShape) -> str:
    """The Ollama TEMPLATE for ``shape``. No whitespace-trimming actions ({{- / -}}): every
    newline in the literals is the chat template's own."""
    parts = [_lit(shape.preamble), "{{ range .Messages }}"]
    for i, role in enumerate(ROLES):
        parts.append(("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}')
        parts.append(_lit(shape.prefix[role]) + "{{ .Content }}" + _lit(shape.suffix[role]))
    parts.append("{{ end }}{{ end }}")
    parts.append(_lit(shape.generation))
    return "".join(parts)


# -- a renderer for the subset of Go's text/template that go_template() writes --------------------
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go_template(template: str, messages: list[dict]) -> str:
    """Render ``template`` the way Ollama's Go text/template does, for the constructs that
    :func:`go_template` emits: ``range .Messages``, ``if/else if eq .Role "r"``, ``end``,
    ``.Content``, ``.Role``, string literals and the ``{{-``/``-}}`` trim markers.

    Raises:
        ValueError: a construct outside that subset.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip(" \t\r\n")
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        tail = tail.lstrip(" \t\r\n")
    tokens.append(("text", tail))

    def parse(i: int, stop: tuple[str, ...]):
        nodes = []
        while i < len(tokens):
            kind, val = tokens[i]
            if kind == "text":
                nodes.append(("text", val))
                i += 1
                continue
            word = val.split(" ", 1)[0]
            if word in stop or val.startswith("else"):
                return nodes, i
            if val == "range .Messages":
                body, i = parse(i + 1, ("end",))
                nodes.append(("range", body))
                i += 1
            elif word == "if":
                branches = []
                cond = val[3:].strip()
                while True:
                    body, i = parse(i + 1, ("end",))
                    branches.append((cond, body))
                    kind, val = tokens[i]
                    if val == "end":
                        break
                    cond = val[len("else"):].strip()
                    cond = cond[3:].strip() if cond.startswith("if ") else None
                nodes.append(("if", branches))
                i += 1
            elif val in (".Content", ".Role") or (val.startswith('"') and val.endswith('"')):
                nodes.append(("expr", val))
                i += 1
            else:
                raise ValueError(f"unsupported template action: {{{{ {val} }}}}")
        return nodes, i

    def cond_true(cond: str | None, msg: dict) -> bool:
        if cond is None:
            return True
        m = re.fullmatch(r'eq \.Role "([^"]*)"', cond)
        if not m:
            raise ValueError(f"unsupported condition: {cond}")
        return msg.get("role") == m.group(1)

    def run(nodes, msg: dict | None) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                val = node[1]
                if val.startswith('"'):
                    out.append(val[1:-1])
                else:
                    if msg is None:
                        raise ValueError(f"{val} outside range .Messages")
                    out.append(str(msg["content" if val == ".Content" else "role"]))
            elif node[0] == "range":
                for m in messages:
                    out.append(run(node[1], m))
            elif node[0] == "if":
                for cond, body in node[1]:
                    if msg is None:
                        raise ValueError("if outside range .Messages")
                    if cond_true(cond, msg):
                        out.append(run(body, msg))
                        break
        return "".join(out)

    nodes, _ = parse(0, ())
    return run(nodes, None)


SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "What is your name?\nAnd who made you?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c {{ not a template }}"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


def check_template(tokenizer, template: str) -> list[str]:
    """Differences between the Go TEMPLATE and the Jinja chat template on SAMPLE_CONVERSATIONS
    (with the generation prompt, as Ollama's chat uses it); empty: identical."""
    problems = []
    for conv in SAMPLE_CONVERSATIONS:
        try:
            want = _render(tokenizer, conv, gen=True)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        got = render_go_template(template, conv)
        if got != want:
            problems.append(f"{len(conv)}-message conversation: TEMPLATE gives {got!r}, chat template {want!r}")
    return problems


def stop_tokens(tokenizer, shape: ChatShape | None, eos_ids: list[int]) -> list[str]:
    """Every end-of-turn token: the special tokens that end an assistant turn, and the EOS tokens."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                 if getattr(t, "special", False)}
    stops: list[str] = []
    if shape is not None:
        end = shape.suffix["assistant"]
        for tok in sorted(specials, key=len, reverse=True):
            if tok and tok in end and tok not in stops:
                stops.append(tok)
    for i in eos_ids:
        tok = tokenizer.convert_ids_to_tokens(int(i))
        if tok and tok not in stops:
            stops.append(tok)
    return stops


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('the text contains """, which a Modelfile cannot quote')
    return '"""' + text + '"""'


def build_modelfile(gguf_name: str, tokenizer, *, eos_ids: list[int], system_prompt: str = "",
                    adapter_name: str | None = None, sampling: dict | None = None) -> tuple[str, dict]:
    """The Modelfile text and a report ``{"template_ok", "template_problems", "stop"}``.

    ``gguf_name`` (and ``adapter_name`` for a LoRA GGUF) are file names beside the Modelfile.
    """
    report: dict = {"template_ok": False, "template_problems": [], "stop": []}
    shape = None
    try:
        shape = derive_shape(tokenizer)
        template = go_template(shape)
        report["template_problems"] = check_template(tokenizer, template)
        report["template_ok"] = not report["template_problems"]
    except ValueError as exc:
        template = None
        report["template_problems"] = [str(exc)]
    stops = stop_tokens(tokenizer, shape, eos_ids)
    report["stop"] = stops
    lines = ["# Ollama Modelfile written by ModelForge: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    if template is not None:
        if not report["template_ok"]:
            lines.append("# WARNING: this TEMPLATE does not render exactly like the model's chat template:")
            lines += [f"#   {p[:200]}" for p in report["template_problems"]]
        lines.append(f"TEMPLATE {_quote(template)}")
    else:
        lines.append("# No TEMPLATE: " + "; ".join(report["template_problems"])
                     + " (Ollama falls back to the chat template stored in the GGUF, if it can read it)")
    if system_prompt:
        lines.append(f"SYSTEM {_quote(system_prompt)}")
    for tok in stops:
        needs_quotes = any(c in tok for c in ' "\t\n')
        lines.append(f"PARAMETER stop {_quote(tok) if needs_quotes else tok}")
    for key, value in (sampling or PLAYGROUND_DEFAULTS).items():
        lines.append(f"PARAMETER {key} {value:g}" if isinstance(value, float) else f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n", report
