"""core.data.formats: detection and conversion to the canonical kinds, bad rows as problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.formats import apply_column_map, data_kind, detect_format, kind_of, normalise
from core.data.loading import load_rows
from core.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str):
    p = SHARED / name
    assert p.is_file(), f"shared data file missing: {p} (the tests need /work/shared/data; see its README)"
    return load_rows(p)


def norm(rows, fmt=None, **kw):
    fmt = fmt or detect_format(rows)
    return normalise(rows, fmt, lines=list(range(1, len(rows) + 1)), file="t.jsonl", unit="line", **kw)


def one_problem(rows, fmt=None, **kw):
    examples, problems = norm(rows, fmt, **kw)
    assert not examples and len(problems) == 1, problems
    p = problems[0]
    assert p.file == "t.jsonl" and p.line == 1 and p.hint
    return p


# -- detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt", [
    ("alpaca_en_demo.json", "alpaca"), ("identity.json", "alpaca"),
    ("dpo_en_demo.json", "sharegpt-preference"), ("xsum_sample.jsonl", "summarization"),
    ("squad_v2_sample.json", "squad"),
])
def test_shared_files_detected(name, fmt):
    data = shared(name)
    assert detect_format(data.rows) == fmt
    examples, problems = normalise(data.rows, fmt, lines=data.lines, file=data.file, unit=data.unit,
                                   template_vars={"name": "Ada", "author": "Me"})
    assert len(examples) == len(data.rows)
    assert not [p for p in problems if p.severity == "error"], problems


@pytest.mark.parametrize("row, fmt, kind", [
    ({"instruction": "a", "input": "", "output": "b"}, "alpaca", "conversation"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, "sharegpt", "conversation"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages", "conversation"),
    ({"prompt": "a", "completion": "b"}, "prompt-completion", "conversation"),
    ({"text": "a"}, "text", "text"),
    ({"input": "a", "output": "b"}, "input-output", "conversation"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference", "preference"),
    ({"article": "a", "highlights": "b"}, "summarization", "summarization"),
    ({"context": "abc", "question": "q", "answers": {"text": ["b"], "answer_start": [1]}}, "squad", "qa"),
])
def test_detect_each_format(row, fmt, kind):
    assert detect_format([row]) == fmt
    assert kind_of(fmt) == kind
    examples, problems = norm([row])
    assert len(examples) == 1 and not problems, problems


def test_detect_failure_names_columns_and_accepted_sets():
    with pytest.raises(DataError) as info:
        detect_format([{"foo": 1, "bar": 2}])
    assert "foo, bar" in info.value.message
    assert "instruction, output" in info.value.hint and "conversations, chosen, rejected" in info.value.hint


def test_column_map():
    rows = [{"question": "What?", "answer": "That."}]
    assert detect_format(rows, {"question": "instruction", "answer": "output"}) == "alpaca"
    mapped = apply_column_map(rows, {"question": "instruction", "answer": "output"})
    assert mapped == [{"instruction": "What?", "output": "That."}] and rows[0]["question"] == "What?"
    examples, _ = norm(mapped)
    assert examples[0]["messages"][-1] == {"role": "assistant", "content": "That."}


def test_label_makes_kto():
    rows = [{"prompt": "a", "completion": "b", "label": True}]
    assert data_kind("prompt-completion", rows) == "kto"
    examples, problems = norm(rows)
    assert examples == [{"prompt": [{"role": "user", "content": "a"}],
                         "completion": [{"role": "assistant", "content": "b"}], "label": True}]
    msgs = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": "no"}]
    examples, _ = norm(msgs)
    assert examples[0]["label"] is False and examples[0]["completion"][0]["content"] == "b"


# -- conversions ------------------------------------------------------------------------------------
def test_identity_placeholders_substituted():
    data = shared("identity.json")
    examples, problems = normalise(data.rows, "alpaca", lines=data.lines, file=data.file, unit=data.unit,
                                   template_vars={"name": "Ada", "author": "Acme"})
    text = json.dumps(examples)
    assert "{{" not in text and "Ada" in text and "Acme" in text and not problems
    _, problems = normalise(data.rows, "alpaca", lines=data.lines, file=data.file, unit=data.unit)
    assert {p.severity for p in problems} == {"warning"} and any("{{name}}" in p.message for p in problems)


def test_alpaca_system_history_and_system_prompt():
    row = {"instruction": "Q2", "input": "ctx", "output": "A2", "system": "Be nice.", "history": [["Q1", "A1"]]}
    (ex,), _ = norm([row], system_prompt="ignored: has one")
    assert ex == {"messages": [
        {"role": "system", "content": "Be nice."}, {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2\nctx"},
        {"role": "assistant", "content": "A2"}]}
    (ex,), _ = norm([{"instruction": "Q", "output": "A"}], system_prompt="You are {{name}}.",
                    template_vars={"name": "Ada"})
    assert ex["messages"][0] == {"role": "system", "content": "You are Ada."}


def test_messages_with_content_parts():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                     {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]}]}
    (ex,), problems = norm([row])
    assert ex["messages"] == [{"role": "user", "content": "Hello\nthere"}, {"role": "assistant", "content": "Hi!"}]
    # an image part is refused, naming the row (a text model would train on the words around it)
    row["messages"][0]["content"].insert(1, {"type": "image_url", "image_url": {"url": "x"}})
    p = one_problem([row])
    assert "image_url part" in p.message and "text model" in p.message


def test_sharegpt_function_call_and_observation():
    row = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 degrees."}], "system": "Use tools."}
    (ex,), problems = norm([row])
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex["messages"][2]["tool_calls"] == [{"type": "function", "function": {"name": "weather",
                                                                              "arguments": {"city": "Paris"}}}]
    assert [p.field for p in problems] == ["tools"] and problems[0].severity == "warning"  # no tools column


def test_sharegpt_with_role_content():
    row = {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    (ex,), _ = norm([row])
    assert ex["messages"][1] == {"role": "assistant", "content": "b"}


def test_preference_to_kto_doubles_rows():
    data = shared("dpo_en_demo.json")
    examples, problems = normalise(data.rows, "sharegpt-preference", lines=data.lines, file=data.file,
                                   unit=data.unit, target_kind="kto")
    assert len(examples) == 2 * len(data.rows)
    assert [e["label"] for e in examples[:2]] == [True, False]
    assert examples[0]["prompt"] == examples[1]["prompt"] and examples[0]["prompt"][-1]["role"] == "user"
    assert examples[0]["completion"][0]["role"] == "assistant"


def test_preference_shapes():
    row = {"prompt": "Q", "chosen": "good", "rejected": "bad"}
    (ex,), _ = norm([row])
    assert ex == {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
                  "rejected": [{"role": "assistant", "content": "bad"}]}
    implicit = {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]}
    assert norm([implicit])[0] == [ex]


def test_summarization_conversions():
    (ex,), _ = norm([{"document": "Long text.", "summary": "Short."}], target_kind="conversation")
    assert ex["messages"][0]["content"].startswith("Summarize the following text:") and "Long text." in ex["messages"][0]["content"]
    assert ex["messages"][1] == {"role": "assistant", "content": "Short."}
    (ex,), _ = norm([{"input": "Long text.", "output": "Short."}], target_kind="summarization")
    assert ex == {"document": "Long text.", "summary": "Short."}
    with pytest.raises(DataError):
        norm([{"text": "a"}], target_kind="preference")


def test_squad_unanswerable_and_bad_answer_start():
    data = shared("squad_v2_sample.json")
    examples, problems = normalise(data.rows, "squad", lines=data.lines, file=data.file, unit=data.unit)
    assert sum(1 for e in examples if not e["answers"]["text"]) == 6 and not problems
    row = {"id": 7, "context": "Paris is in France.", "question": "Where?",
           "answers": {"text": ["France"], "answer_start": [3]}}
    (ex,), (p,) = norm([row])
    assert ex["id"] == "7" and p.severity == "warning" and p.field == "answers" and "12" in p.hint


def test_csv_json_encoded_messages(tmp_path):
    row = {"messages": json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])}
    (ex,), problems = norm([row])
    assert ex["messages"][1]["content"] == "b" and not problems


# -- bad rows -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, words", [
    ({"instruction": "a", "input": ""}, "missing"),
    ({"instruction": "a", "input": "", "output": None}, "null"),
    ({"instruction": "a", "input": "", "output": 42}, "number"),
    ({"instruction": "a", "input": "", "output": ["x", "y"]}, "list"),
    ({"instruction": "a", "input": "", "output": "   "}, "empty"),
])
def test_bad_output_field(row, words):
    p = one_problem([row], "alpaca")
    assert p.field == "output" and words in p.message and p.severity == "error"


def test_unknown_role():
    row = {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}
    p = one_problem([row])
    assert "'robot'" in p.message and "assistant" in p.hint and p.field == "conversations"


def test_conversation_must_end_with_assistant():
    row = {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}
    assert "assistant turn" in one_problem([row]).message


def test_preference_missing_rejected():
    p = one_problem([{"prompt": "q", "chosen": "a"}], "preference")
    assert p.field == "rejected" and "rejected" in p.message


def test_bad_label():
    p = one_problem([{"prompt": "q", "completion": "a", "label": "maybe"}])
    assert p.field == "label"


def test_problems_are_capped_per_kind():
    rows = [{"instruction": "a", "output": None} for _ in range(50)] + [{"instruction": "a", "output": "b"}]
    examples, problems = norm(rows)
    assert len(examples) == 1 and len(problems) == 21
    assert "30 more rows" in problems[-1].message
