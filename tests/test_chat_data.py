"""Today's chat data, trained as written: each shape from its public spec, with the exact text
that is trained and the text that is only context.

Shapes: OpenAI's chat fine-tuning format (multi-turn with ``weight``, ``tools`` + ``tool_calls``
+ ``tool`` messages), ShareGPT / LLaMA-Factory function calling (``function_call`` /
``observation`` turns, a ``tools`` column as JSON text), a reasoning trace (``reasoning_content``
and typed ``thinking`` parts), typed parts with the text under ``text`` or ``value``,
preference as conversations, a ``.txt`` file, and multimodal rows (refused). The segments are
rendered by the demo model's ChatML template (which has no tool support: the documented
fallback) and by the built-in ``qwen`` template (tools and reasoning through the template).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.chat import (RenderOptions, Renderer, check_template, supervised_tokens, tokenize_examples)
from core.data.formats import detect_format, normalise
from core.data.loading import load_rows
from core.data.templates import TEMPLATES

IM_END = "<|im_end|>"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location", "format"]}}}

# OpenAI fine-tuning guide: multi-turn with weights (weight 0: not trained)
OPENAI_WEIGHTS = {"messages": [
    {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "Can you be more sarcastic?"},
    {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1}]}

# OpenAI fine-tuning guide: function calling (arguments are JSON text), with the tool's answer
OPENAI_TOOLS = {"messages": [
    {"role": "user", "content": "What is the weather in San Francisco?"},
    {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
        "name": "get_current_weather", "arguments": "{\"location\": \"San Francisco, USA\", \"format\": \"celsius\"}"}}]},
    {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
    {"role": "assistant", "content": "It is 21 C in San Francisco, CA"}],
    "tools": [WEATHER_TOOL]}

# LLaMA-Factory's sharegpt function-calling format (glaive_toolcall): tools as JSON text
SHAREGPT_TOOLS = {"conversations": [
    {"from": "human", "value": "Convert 500 USD to EUR."},
    {"from": "function_call", "value": "{\"name\": \"convert_currency\", \"arguments\": {\"amount\": 500, "
                                       "\"from\": \"USD\", \"to\": \"EUR\"}}"},
    {"from": "observation", "value": "{\"converted_amount\": 425.5}"},
    {"from": "gpt", "value": "500 USD is about 425.50 EUR."}],
    "system": "You are a helpful assistant.",
    "tools": json.dumps([{"name": "convert_currency", "description": "Convert currency",
                          "parameters": {"type": "object", "properties": {"amount": {"type": "number"},
                                                                          "from": {"type": "string"},
                                                                          "to": {"type": "string"}}}}])}


@pytest.fixture(scope="module")
def tok(mf_home):
    from transformers import AutoTokenizer

    from core.demo_model import demo_path

    return AutoTokenizer.from_pretrained(demo_path())


def canon(row: dict, **kw) -> dict:
    (ex,), problems = normalise([row], detect_format([row]), file="t.jsonl", **kw)
    assert not [p for p in problems if p.severity == "error"], problems
    return ex


def segments(ex: dict, tok, template: str = "", **opts) -> list[tuple[str, bool]]:
    r = Renderer(tok, RenderOptions(chat_template=TEMPLATES.get(template, template), **opts))
    return [(s["text"], s["trained"]) for s in r.segments(ex)]


def trained(segs) -> list[str]:
    return [t for t, on in segs if on]


# -- OpenAI ----------------------------------------------------------------------------------------------
def test_openai_weights_train_only_weight_1_turns(tok):
    segs = segments(canon(OPENAI_WEIGHTS), tok)
    assert segs == [
        ("<|im_start|>system\nMarv is a factual chatbot that is also sarcastic.<|im_end|>\n"
         "<|im_start|>user\nWhat's the capital of France?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n"
         "<|im_start|>user\nCan you be more sarcastic?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Paris, as if everyone doesn't know that already.<|im_end|>", True),
        ("\n", False)]


def test_every_assistant_turn_is_trained_by_default_last_on_request(tok):
    row = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
                        {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]}
    ex = canon(row)
    assert trained(segments(ex, tok)) == ["A1" + IM_END, "A2" + IM_END, "A3" + IM_END]
    assert trained(segments(ex, tok, train_turns="last")) == ["A3" + IM_END]
    assert trained(segments(ex, tok, loss_on="all")) == ["".join(t for t, _ in segments(ex, tok))]
    # supervised tokens: every answer and its end token, nothing else
    rows = tokenize_examples([ex], tok)
    per_turn = len(tok("A1" + IM_END, add_special_tokens=False)["input_ids"])
    assert supervised_tokens(rows) == 3 * per_turn
    assert supervised_tokens(tokenize_examples([ex], tok, RenderOptions(train_turns="last"))) == per_turn
    decoded = tok.decode([t for t, lab in zip(rows[0]["input_ids"], rows[0]["labels"]) if lab != -100])
    assert decoded == "A1<|im_end|>A2<|im_end|>A3<|im_end|>"


def test_openai_tools_through_the_template(tok):
    """The qwen template shows tools, calls and results itself: no fallback text."""
    ex = canon(OPENAI_TOOLS)
    assert ex["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"location": "San Francisco, USA",
                                                                         "format": "celsius"}
    segs = segments(ex, tok, "qwen")
    untrained = "".join(t for t, on in segs if not on)
    assert json.dumps(WEATHER_TOOL) in untrained and "# Tools" in untrained
    assert "<|im_start|>user\n<tool_response>\n21.0\n</tool_response><|im_end|>" in untrained
    assert trained(segs) == [
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", '
        '"format": "celsius"}}\n</tool_call><|im_end|>',
        "It is 21 C in San Francisco, CA<|im_end|>"]


def test_openai_tools_fallback_for_a_template_without_tool_support(tok):
    """The demo's ChatML has no tools: schemas go to the system message, calls become
    <tool_call> text, results keep the tool role (the template shows any role)."""
    segs = segments(canon(OPENAI_TOOLS), tok)
    first = segs[0][0]
    assert first.startswith("<|im_start|>system\nYou may call one or more functions.")
    assert json.dumps(WEATHER_TOOL) in first and not segs[0][1]
    assert trained(segs) == [
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", '
        '"format": "celsius"}}\n</tool_call><|im_end|>',
        "It is 21 C in San Francisco, CA<|im_end|>"]
    assert ("\n<|im_start|>tool\n21.0<|im_end|>\n<|im_start|>assistant\n", False) in segs


# -- ShareGPT function calling ---------------------------------------------------------------------------
def test_sharegpt_function_call_and_observation_with_tools_text(tok):
    ex = canon(SHAREGPT_TOOLS)
    assert ex["tools"][0] == {"type": "function", "function": json.loads(SHAREGPT_TOOLS["tools"])[0]}
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    segs = segments(ex, tok, "qwen")
    assert segs[0] == (segs[0][0], False) and segs[0][0].startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert trained(segs) == [
        '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 500, "from": "USD", "to": "EUR"}}'
        "\n</tool_call><|im_end|>",
        "500 USD is about 425.50 EUR.<|im_end|>"]
    assert "<tool_response>\n{\"converted_amount\": 425.5}\n</tool_response>" in "".join(t for t, _ in segs)


# -- reasoning ---------------------------------------------------------------------------------------------
REASONING_ROW = {"messages": [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "reasoning_content": "2 plus 3 is 5.", "content": "5"}]}


def test_reasoning_kept_and_trained_or_dropped(tok):
    ex = canon(REASONING_ROW)
    assert ex["messages"][1]["reasoning_content"] == "2 plus 3 is 5."
    assert trained(segments(ex, tok)) == ["<think>\n2 plus 3 is 5.\n</think>\n\n5<|im_end|>"]  # fallback
    assert trained(segments(ex, tok, "qwen")) == ["<think>\n2 plus 3 is 5.\n</think>\n\n5<|im_end|>"]
    assert trained(segments(ex, tok, reasoning="drop")) == ["5<|im_end|>"]


def test_reasoning_as_typed_thinking_parts_and_thinking_field(tok):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]},
                          {"role": "assistant", "content": [{"type": "thinking", "thinking": "2 plus 3 is 5."},
                                                            {"type": "text", "text": "5"}]}]}
    field = {"messages": [{"role": "user", "content": "What is 2+3?"},
                          {"role": "assistant", "thinking": "2 plus 3 is 5.", "content": "5"}]}
    assert canon(parts)["messages"] == canon(field)["messages"] == canon(REASONING_ROW)["messages"]


def test_template_that_hides_past_reasoning_trains_each_turn_as_its_own_sequence(tok):
    """Qwen3-style: reasoning shows only after the last user turn, so the whole conversation is
    not prefix-stable; each trained turn becomes a sequence with its history, reasoning shown."""
    row = {"messages": [{"role": "user", "content": "Q1"},
                        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                        {"role": "user", "content": "Q2"},
                        {"role": "assistant", "content": "A2", "reasoning_content": "R2"}]}
    ex = canon(row)
    r = Renderer(tok, RenderOptions(chat_template=TEMPLATES["qwen"]))
    seqs = r.sequences(ex)
    assert [[s["text"] for s in q if s["trained"]] for q in seqs] == [
        ["<think>\nR1\n</think>\n\nA1<|im_end|>"], ["<think>\nR2\n</think>\n\nA2<|im_end|>"]]
    assert seqs[1][0] == {"text": "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                                  "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", "trained": False}
    problems = check_template([ex], tok, RenderOptions(chat_template=TEMPLATES["qwen"]))
    assert [p.severity for p in problems] == ["warning"] and "prefix" in problems[0].message
    assert len(tokenize_examples([ex], tok, RenderOptions(chat_template=TEMPLATES["qwen"]))) == 2


# -- typed parts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["text", "value"])
def test_typed_parts_with_text_or_value(tok, key):
    row = {"messages": [{"role": "user", "content": [{"type": "text", key: "Hello"}, {"type": "text", key: "there"}]},
                        {"role": "assistant", "content": [{"type": "text", key: "Hi!"}]}]}
    ex = canon(row)
    assert ex["messages"] == [{"role": "user", "content": "Hello\nthere"}, {"role": "assistant", "content": "Hi!"}]
    assert segments(ex, tok) == [("<|im_start|>user\nHello\nthere<|im_end|>\n<|im_start|>assistant\n", False),
                                 ("Hi!<|im_end|>", True), ("\n", False)]


def test_sharegpt_typed_parts_under_value(tok):
    row = {"conversations": [{"from": "human", "value": [{"type": "text", "value": "Hi"}]},
                             {"from": "gpt", "value": [{"type": "text", "value": "Hello"}]}]}
    assert trained(segments(canon(row), tok)) == ["Hello<|im_end|>"]


# -- multimodal refused ------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, says", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}},
                                                {"type": "text", "text": "What is this?"}]},
                   {"role": "assistant", "content": "A cat."}]}, "image_url part"),
    ({"messages": [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": "A cat."}],
      "images": ["cat.png"]}, "'images'"),
    ({"conversations": [{"from": "human", "value": "<image>What is this?"}, {"from": "gpt", "value": "A cat."}]},
     "<image> placeholder"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "..."}}]},
                   {"role": "assistant", "content": "Hello."}]}, "input_audio part"),
])
def test_multimodal_rows_are_refused_naming_the_row(row, says):
    key = next(iter(row))
    ok = {key: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [ok, row]
    examples, problems = normalise(rows, detect_format(rows), file="mm.jsonl")
    assert len(examples) == 1 and len(problems) == 1, problems
    p = problems[0]
    assert p.severity == "error" and p.line == 2 and says in p.message and "text model" in p.message


# -- tool validation ---------------------------------------------------------------------------------------
def _with(msgs, **kw):
    return {"messages": msgs, "tools": [WEATHER_TOOL], **kw}


USER = {"role": "user", "content": "Weather in Paris?"}
ANSWER = {"role": "assistant", "content": "Sunny."}


@pytest.mark.parametrize("row, code_text", [
    (_with([USER, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_current_weather", "arguments": "{location: Paris}"}}]}, ANSWER]), "not valid JSON"),
    (_with([USER, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_stock_price", "arguments": "{}"}}]}, ANSWER]), "not among the tools"),
    (_with([USER, {"role": "tool", "content": "21"}, ANSWER]), "no tool call comes before it"),
    (_with([USER, {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {
        "name": "get_current_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "b", "content": "21"}, ANSWER]), "no call with that id"),
])
def test_bad_tool_use_is_an_error_naming_the_row(row, code_text):
    examples, problems = normalise([row], "messages", file="t.jsonl")
    assert not examples and len(problems) == 1 and code_text in problems[0].message, problems
    assert problems[0].line == 1 and problems[0].hint


def test_last_turn_only_with_a_weight_0_last_turn_is_reported(tok):
    ex = canon({"messages": [USER, ANSWER, USER, dict(ANSWER, weight=0)]})
    problems = check_template([ex], tok, RenderOptions(train_turns="last"))
    assert [p.field for p in problems] == ["train_turns"] and "left out" in problems[0].message
    assert tokenize_examples([ex], tok, RenderOptions(train_turns="last")) == []
    assert check_template([ex], tok) == []


def test_all_weights_zero_is_an_error():
    row = {"messages": [USER, dict(ANSWER, weight=0)]}
    _, problems = normalise([row], "messages")
    assert "weight 0" in problems[0].message


# -- preference as conversations -------------------------------------------------------------------------------
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
CHOSEN = {"role": "assistant", "content": "Paris."}
REJECTED = {"role": "assistant", "content": "Lyon."}
EXPECTED = {"prompt": PROMPT, "chosen": [CHOSEN], "rejected": [REJECTED]}


@pytest.mark.parametrize("row, fmt", [
    ({"chosen_messages": PROMPT + [CHOSEN], "rejected_messages": PROMPT + [REJECTED]}, "preference-messages"),
    ({"chosen": PROMPT + [CHOSEN], "rejected": PROMPT + [REJECTED]}, "preference"),   # implicit prompt (trl)
    ({"prompt": PROMPT, "chosen": [CHOSEN], "rejected": [REJECTED]}, "preference"),  # trl conversational
    ({"prompt": PROMPT, "chosen": PROMPT + [CHOSEN], "rejected": PROMPT + [REJECTED]}, "preference"),
    ({"prompt": json.dumps(PROMPT), "chosen": json.dumps([CHOSEN]), "rejected": json.dumps([REJECTED])}, "preference"),
])
def test_preference_as_conversations(row, fmt):
    assert detect_format([row]) == fmt
    examples, problems = normalise([row], fmt)
    assert examples == [EXPECTED] and not problems
    kto, _ = normalise([row], fmt, target_kind="kto")
    assert kto == [{"prompt": PROMPT, "completion": [CHOSEN], "label": True},
                   {"prompt": PROMPT, "completion": [REJECTED], "label": False}]


def test_preference_multi_turn_conversations_split_at_the_shared_prompt():
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Capital of France?"}]
    row = {"chosen_messages": turn + [CHOSEN], "rejected_messages": turn + [REJECTED]}
    (ex,), _ = normalise([row], "preference-messages")
    assert ex == {"prompt": turn, "chosen": [CHOSEN], "rejected": [REJECTED]}


# -- plain text files ----------------------------------------------------------------------------------------
def test_txt_documents_split_on_blank_lines(tmp_path, tok):
    path = tmp_path / "notes.txt"
    path.write_text("First document,\nsecond line.\n\n\nSecond document.\n   \nThird one.\n")
    data = load_rows(path)
    assert data.rows == [{"text": "First document,\nsecond line."}, {"text": "Second document."},
                         {"text": "Third one."}]
    assert data.lines == [1, 5, 7]
    assert detect_format(data.rows) == "text"
    assert segments(data.rows[0], tok) == [("First document,\nsecond line.", True)]
    (row,) = tokenize_examples(data.rows[:1], tok)
    assert row["labels"] == row["input_ids"] and row["input_ids"][-1] == tok.eos_token_id


def test_txt_one_long_text_is_cut_into_chunks(tmp_path):
    words = " ".join(f"word{i}" for i in range(1000))  # 7,889 characters, no blank line
    path = tmp_path / "book.txt"
    path.write_text(words)
    data = load_rows(path, chunk_chars=2000)
    assert len(data.rows) == 4 and all(1000 <= len(r["text"]) <= 2000 for r in data.rows)
    assert " ".join(r["text"] for r in data.rows) == words  # cut at spaces, nothing lost


# -- the template check and the choice ------------------------------------------------------------------------
def test_template_check_reports_a_template_that_cannot_render_the_roles(tok):
    ex = canon(OPENAI_TOOLS)
    strict = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
              "{{ raise_exception('only user and assistant') }}{% endif %}{{ m['content'] }}{% endfor %}")
    problems = check_template([ex], tok, RenderOptions(chat_template=strict))
    assert [p.severity for p in problems] == ["error"] and "only user and assistant" in problems[0].message


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_builtin_template_renders_every_role_prefix_stable(tok, name):
    ex = canon(OPENAI_TOOLS)
    ex["messages"].insert(0, {"role": "system", "content": "Be brief."})
    r = Renderer(tok, RenderOptions(chat_template=TEMPLATES[name]))
    (seq,) = r.sequences(ex)
    text = "".join(s["text"] for s in seq)
    assert "get_current_weather" in text and "21.0" in text and "Be brief." in text
    assert [s["text"] for s in seq if s["trained"]][-1].startswith("It is 21 C in San Francisco, CA")
    problems = check_template([ex], tok, RenderOptions(chat_template=TEMPLATES[name]))
    # no errors; the demo's vocabulary has ChatML's markers only: the others are warned about
    assert [p.severity for p in problems] == ([] if name in ("chatml", "qwen") else ["warning"])
    assert all("not tokens of this model" in p.message for p in problems)


def test_custom_jinja_file(tmp_path):
    from core.config import RunConfig, config_problems
    from core.data.templates import resolve

    f = tmp_path / "mine.jinja"
    f.write_text(TEMPLATES["chatml"])
    assert resolve(str(f)) == TEMPLATES["chatml"] and resolve("") is None and resolve("model") is None
    assert not [p for p in config_problems(RunConfig(dataset="x.jsonl", chat_template=str(f)))
                if p.field == "chat_template"]
    bad = config_problems(RunConfig(dataset="x.jsonl", chat_template="vicuna"))
    assert [p.field for p in bad if p.field == "chat_template"] == ["chat_template"]


# -- masks under packing ---------------------------------------------------------------------------------------
def test_masks_hold_under_packing(tok):
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rows = [canon(OPENAI_WEIGHTS), canon(OPENAI_TOOLS), canon(SHAREGPT_TOOLS), canon(REASONING_ROW)] * 3
    tokenized = tokenize_examples(rows, tok)
    longest = max(len(r["input_ids"]) for r in tokenized)
    packed = pack_dataset(Dataset.from_list(tokenized), 2 * longest, "bfd")
    assert len(packed) < len(tokenized)
    assert sum(sum(1 for x in r["labels"] if x != -100) for r in packed) == supervised_tokens(tokenized)
    for r in packed:  # every trained position is still the token it was
        assert all(lab in (-100, tid) for lab, tid in zip(r["labels"], r["input_ids"]))


# -- validate --json shows the segments ----------------------------------------------------------------------
def test_validate_report_has_rendered_segments(tmp_path, tok):
    from core.checks import validate_file

    path = tmp_path / "openai.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (OPENAI_WEIGHTS, OPENAI_TOOLS)))
    report = validate_file(path, tokenizer=tok)
    assert report.ok, report.summary()
    d = report.to_dict()
    first = d["samples"][0]
    assert first["line"] == 1 and first["trained_tokens"] > 0
    assert [s["text"] for s in first["segments"] if s["trained"]] == [
        "Paris, as if everyone doesn't know that already.<|im_end|>"]
    assert "[[Paris, as if everyone" in report.summary()


# -- trl keeps the masks; a training run on each accepted shape ------------------------------------------------
def _variants(row: dict, n: int = 8) -> list[dict]:
    """``n`` rows of the same shape (a number added to every user text), enough for a split."""
    def vary(obj, i):
        if isinstance(obj, dict):
            if obj.get("role") == "user" or obj.get("from") == "human":
                key = "content" if "content" in obj else "value"
                if isinstance(obj[key], str):
                    return {**obj, key: f"{obj[key]} (#{i})"}
            return {k: vary(v, i) for k, v in obj.items()}
        if isinstance(obj, list):
            return [vary(x, i) for x in obj]
        return obj
    return [vary(row, i) for i in range(n)]


@pytest.mark.parametrize("packing", [False, True])
def test_sft_trainer_keeps_every_assistant_turn_in_the_loss(tok, demo_model, packing):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    multi = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                          {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "weight": 0},
                          {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]}
    rows = tokenize_examples([canon(r) for r in _variants(multi, 6)], tok)
    per_turn = len(tok("A1" + IM_END, add_special_tokens=False)["input_ids"])
    assert supervised_tokens(rows) == 6 * 2 * per_turn  # turns 1 and 3 of each row; turn 2 has weight 0
    args = SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, max_length=128, report_to=[],
                     packing=packing, packing_strategy="bfd", dataset_num_proc=None,
                     **({} if packing else {"train_sampling_strategy": "group_by_length"}))
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(demo_model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    ds = trainer.train_dataset
    assert sum(1 for r in ds for x in r["labels"] if x != -100) == supervised_tokens(rows)
    batch = next(iter(trainer.get_train_dataloader()))
    kept = tok.decode([t for t in batch["labels"].flatten().tolist() if t != -100])
    assert "A1<|im_end|>" in kept and "A3<|im_end|>" in kept and "A2" not in kept and "Q1" not in kept


SHAPES = {
    "openai-weights": lambda: _variants(OPENAI_WEIGHTS),
    "openai-tools": lambda: _variants(OPENAI_TOOLS),
    "sharegpt-tools": lambda: _variants(SHAREGPT_TOOLS),
    "reasoning": lambda: _variants({"messages": [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "2 plus 3 is 5."},
                                          {"type": "text", "text": "5"}]}]}),
    "typed-value": lambda: _variants({"conversations": [
        {"from": "human", "value": [{"type": "text", "value": "Hi"}]},
        {"from": "gpt", "value": [{"type": "text", "value": "Hello"}]}]}),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_training_run_on_each_chat_shape(shape, store, tmp_path, demo_model):
    from tests.test_strategies import assert_lora_trained, train_run

    path = tmp_path / f"{shape}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in SHAPES[shape]()))
    result, run_dir = train_run(store, path, max_steps=1, max_length=512)
    assert_lora_trained(run_dir / "model")


def test_txt_chunk_length_comes_from_the_config(tmp_path):
    from core.checks import validate_data
    from core.config import RunConfig

    path = tmp_path / "book.txt"
    path.write_text(" ".join(f"word{i}" for i in range(1000)))
    assert validate_data(RunConfig(dataset=str(path), text_chunk_chars=1000)).usable_rows == 8
    assert validate_data(RunConfig(dataset=str(path))).usable_rows == 4


def test_training_run_on_a_txt_file(store, tmp_path, demo_model):
    from tests.test_strategies import assert_lora_trained, train_run

    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"The forge heats iron number {i} until it glows." for i in range(8)))
    result, run_dir = train_run(store, path, max_steps=1)
    assert_lora_trained(run_dir / "model")


def test_dpo_run_on_preference_conversations(store, tmp_path, demo_model):
    from tests.test_strategies import train_run

    path = tmp_path / "pref.jsonl"
    rows = _variants({"chosen_messages": PROMPT + [CHOSEN], "rejected_messages": PROMPT + [REJECTED]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result, _ = train_run(store, path, strategy="dpo", max_steps=1)
    assert result.status == "completed"


def test_chosen_template_is_checked_and_saved_with_the_model(store, tmp_path, demo_model):
    from core.inference import load_model
    from tests.test_strategies import train_run

    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _variants(OPENAI_TOOLS)))
    result, run_dir = train_run(store, path, max_steps=1, max_length=512, chat_template="qwen", packing=True)
    saved = (run_dir / "model" / "chat_template.jinja").read_text()
    assert saved == TEMPLATES["qwen"]
    assert load_model(str(run_dir / "model")).tokenizer.chat_template == TEMPLATES["qwen"]


def test_anthropic_tool_use_and_tool_result_blocks(tok):
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should call the tool.", "signature": "x"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_current_weather",
             "input": {"location": "San Francisco, USA", "format": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21.0"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is 21 C."}]}],
        "tools": [WEATHER_TOOL]}
    ex = canon(row)
    assert ex["messages"][1] == {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.",
                                 "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
                                     "name": "get_current_weather",
                                     "arguments": {"location": "San Francisco, USA", "format": "celsius"}}}]}
    assert ex["messages"][2] == {"role": "tool", "content": "21.0", "tool_call_id": "toolu_1"}
    assert trained(segments(ex, tok, "qwen"))[-1] == "It is 21 C.<|im_end|>"


def test_hermes_text_tool_calls_are_not_orphan_results():
    """Hermes function-calling data writes calls as <tool_call> text and results as tool turns."""
    row = {"conversations": [
        {"from": "system", "value": "You are a function calling AI model. <tools>[...]</tools>"},
        {"from": "human", "value": "Weather in SF?"},
        {"from": "gpt", "value": "<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>"},
        {"from": "tool", "value": "<tool_response>\n21\n</tool_response>"},
        {"from": "gpt", "value": "It is 21 C."}]}
    examples, problems = normalise([row], "sharegpt")
    assert len(examples) == 1 and not problems


def test_sentencepiece_style_tokenizer_trains_the_whole_answer():
    """A Metaspace (SentencePiece-style) tokenizer merges across the turn boundary
    ("[/INST]Paris" has no space): every character of the answer is still in the loss, and the
    template check says that the merged token brings a little of the prompt into the loss."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    # trained on the rendered text itself, so its merges cross the boundary: "?[/INST]Paris."
    corpus = ["[INST] Capital of France?[/INST]Paris.[INST] and Spain?[/INST]Madrid."] * 50
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert any("]Pa" in t for t in tok.tokenize("[INST] Capital of France?[/INST]Paris."))  # a crossing token
    row = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
                        {"role": "user", "content": "and Spain?"}, {"role": "assistant", "content": "Madrid."}]}
    options = RenderOptions(chat_template=TEMPLATES["mistral"])
    assert trained(segments(canon(row), tok, "mistral")) == ["Paris.</s>", "Madrid.</s>"]
    (enc,) = tokenize_examples([canon(row)], tok, options)
    kept = tok.convert_tokens_to_string(tok.convert_ids_to_tokens([t for t in enc["labels"] if t != -100]))
    assert "Paris.</s>" in kept and "Madrid.</s>" in kept and "Capital" not in kept  # no answer token lost
    # ... and the merge is reported: a little of the prompt ("?[/INST]") is in the loss
    problems = check_template([canon(row)], tok, options)
    assert any("merges the end of the prompt" in p.message for p in problems), problems
