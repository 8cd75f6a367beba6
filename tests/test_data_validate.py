"""core.data.validate: reports for real and broken files, token lengths, the train/eval split."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from core.checks import data_requirement as requirements
from core.checks import validate_file, validate_rows
from core.data import split_train_eval

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    p = SHARED / name
    assert p.is_file(), f"shared data file missing: {p} (the tests need /work/shared/data; see its README)"
    return p


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE tokenizer with a chat template, built offline in a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello, I am an assistant.",
                 "Describe a process of making crepes.", "Summarize the following text."]
    tok.train_from_iterator(sentences * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eos|>\n"
                          "{% endfor %}")
    return fast


# -- the shared data sets ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, task, strategy, fmt, kind", [
    ("alpaca_en_demo.json", "text-generation", "sft", "alpaca", "conversation"),
    ("identity.json", "text-generation", "qlora", "alpaca", "conversation"),
    ("dpo_en_demo.json", "text-generation", "dpo", "sharegpt-preference", "preference"),
    ("xsum_sample.jsonl", "summarization", "sft", "summarization", "summarization"),
    ("squad_v2_sample.json", "extractive-qa", "sft", "squad", "qa"),
])
def test_shared_files_validate(name, task, strategy, fmt, kind):
    r = validate_file(shared(name), task=task, strategy=strategy,
                      template_vars={"name": "Ada", "author": "Me"})
    assert r.ok, r.summary()
    assert (r.format, r.kind) == (fmt, kind)
    assert r.usable_rows == r.rows == len(r.examples) > 0
    assert not r.errors


def test_squad_reports_unanswerable():
    r = validate_file(shared("squad_v2_sample.json"), task="extractive-qa")
    assert r.details["unanswerable"] == 6 and "Unanswerable questions: 6" in r.summary()


def test_alpaca_rejected_for_dpo():
    r = validate_file(shared("alpaca_en_demo.json"), strategy="dpo")
    assert not r.ok and len(r.errors) == 1
    msg = r.errors[0].message
    assert "dpo" in msg and "alpaca" in msg and "chosen" in msg and "rejected" in msg
    assert "preference" in r.errors[0].hint


def test_kto_from_preference_doubles_rows():
    r = validate_file(shared("dpo_en_demo.json"), strategy="kto")
    assert r.ok and r.kind == "kto" and r.usable_rows == 2 * r.rows
    assert "preference -> kto" in r.summary()


def test_summarization_as_text_generation_is_converted():
    r = validate_file(shared("xsum_sample.jsonl"))
    assert r.ok and r.kind == "conversation"


def test_requirements():
    assert requirements("text-generation", "sft").kinds == ("conversation", "text")
    assert requirements("text-generation", "orpo").kinds == ("preference",)
    req = requirements("text-generation", "kto")
    assert req.kinds == ("kto",) and req.target_for("sharegpt-preference", "preference") == "kto"
    assert requirements("summarization", "sft").target_for("input-output", "conversation") == "summarization"
    assert requirements("extractive-qa", "sft").kinds == ("qa",)
    assert "chosen, rejected" in requirements("text-generation", "dpo").description
    assert "messages (messages, label)" in req.description
    sft = requirements("text-generation", "sft").description
    assert sft.index("alpaca (instruction, output)") < sft.index("summarization (document, summary")


def test_messages_without_label_for_kto(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(3)]
    p = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    r = validate_file(p, strategy="kto")
    assert not r.ok and "missing column(s) label" in r.errors[0].message
    p = write(tmp_path, "k.jsonl", "\n".join(json.dumps({**r, "label": i % 2 == 0}) for i, r in enumerate(rows)))
    r = validate_file(p, strategy="kto")
    assert r.ok and r.kind == "kto" and r.usable_rows == 3


# -- broken files: a problem naming file and line/field, never an exception ----------------------------
def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


def bad_lines(n, bad_at, bad_line):
    rows = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(n)]
    rows[bad_at - 1] = bad_line
    return "\n".join(rows) + "\n"


CASES = [
    ("empty.jsonl", b"", None, None, "empty"),
    ("ws.json", "  \n \n", None, None, "empty"),
    ("notjson.json", '[{"a": 1},\n {"a": }]', 2, None, "not valid JSON"),
    ("broken.jsonl", bad_lines(1000, 613, '{"instruction": "x", "output": '), 613, None, "JSON"),
    ("list.jsonl", bad_lines(5, 4, '["a", "b"]'), 4, None, "list"),
    ("missing.jsonl", bad_lines(5, 3, '{"instruction": "x"}'), 3, "output", "missing"),
    ("null.jsonl", bad_lines(5, 2, '{"instruction": "x", "output": null}'), 2, "output", "null"),
    ("number.jsonl", bad_lines(5, 5, '{"instruction": "x", "output": 42}'), 5, "output", "number"),
    ("binary.jsonl", b"\x00\x01\x02\x03binary\x00", 1, None, "binary"),
    ("latin1.jsonl", '{"instruction": "q", "output": "a"}\n{"instruction": "é", "output": "b"}\n'.encode("latin-1"),
     2, None, "UTF-8"),
    ("ragged.csv", "instruction,output\na,b\nc,d\ne,f,g\n", 4, None, "field(s)"),
    ("role.jsonl", "\n".join(json.dumps({"conversations": [{"from": "human", "value": "q"},
                                                            {"from": role, "value": "a"}]})
                              for role in ("gpt", "wizard", "assistant")), 2, "conversations", "wizard"),
    ("data.xlsx", "x", None, None, "unsupported"),
]


@pytest.mark.parametrize("name, content, line, field, words", CASES, ids=[c[0] for c in CASES])
def test_broken_files_report_a_problem(tmp_path, name, content, line, field, words):
    p = write(tmp_path, name, content)
    r = validate_file(p)
    assert not r.ok
    hits = [e for e in r.errors if words in e.message]
    assert hits, r.summary()
    e = hits[0]
    assert e.file and Path(e.file).name == name and e.hint
    if line is not None:
        assert e.line == line, r.summary()
    if field is not None:
        assert e.field == field
    json.dumps(r.to_dict())


def test_preference_row_missing_rejected(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(3)]
    del rows[1]["rejected"]
    p = write(tmp_path, "pref.jsonl", "\n".join(json.dumps(r) for r in rows))
    r = validate_file(p, strategy="dpo")
    (e,) = r.errors
    assert e.line == 2 and e.field == "rejected" and r.usable_rows == 2


def test_explicit_format_missing_columns(tmp_path):
    p = write(tmp_path, "d.jsonl", json.dumps({"instruction": "a", "output": "b"}))
    r = validate_file(p, dataset_format="sharegpt")
    assert not r.ok and "conversations" in r.errors[0].message


def test_too_few_rows_and_duplicates(tmp_path):
    p = write(tmp_path, "one.jsonl", json.dumps({"text": "a"}))
    r = validate_file(p)
    assert not r.ok and "at least 2" in r.errors[0].message
    p = write(tmp_path, "dup.jsonl", "\n".join(json.dumps({"text": t}) for t in "abab"))
    r = validate_file(p)
    assert r.ok and len(r.warnings) == 1 and "line 3 repeats line 1" in r.warnings[0].message


def test_column_map_in_validate(tmp_path):
    p = write(tmp_path, "qa.jsonl", "\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(3)))
    r = validate_file(p, column_map={"question": "instruction", "answer": "output"})
    assert r.ok and r.format == "alpaca"
    r = validate_file(p, column_map={"query": "instruction", "question": "instruction", "answer": "output"})
    assert r.ok and any(w.field == "query" for w in r.warnings)


def test_csv_and_parquet_validate(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"instruction": ["a", "b", "c"], "input": ["", "", ""], "output": ["x", "y", ""]})
    df.to_csv(tmp_path / "d.csv", index=False)
    r = validate_file(tmp_path / "d.csv")
    assert r.usable_rows == 2 and r.errors[0].line == 4 and "empty" in r.errors[0].message
    df.to_parquet(tmp_path / "d.parquet")
    r = validate_file(tmp_path / "d.parquet")
    assert r.unit == "row" and r.errors[0].line == 3


# -- token lengths -------------------------------------------------------------------------------------
def test_token_lengths(tokenizer):
    r = validate_file(shared("alpaca_en_demo.json"), tokenizer=tokenizer, max_length=64)
    L = r.lengths
    assert L["count"] == 999 and not L["sampled"]
    assert 0 < L["min"] <= L["p50"] <= L["p95"] <= L["max"]
    assert L["truncated_share"] > 0 and L["over_max_length"] > 0
    w = [p for p in r.warnings if "truncated" in p.message]
    assert w and w[0].hint == "raise max_length or shorten examples" and w[0].line
    assert "Tokens:" in r.summary()
    big = validate_file(shared("alpaca_en_demo.json"), tokenizer=tokenizer, max_length=100_000)
    assert big.lengths["truncated_share"] == 0 and not [p for p in big.warnings if "truncated" in p.message]


def test_token_lengths_other_kinds_and_no_template(tokenizer):
    r = validate_file(shared("dpo_en_demo.json"), strategy="dpo", tokenizer=tokenizer, max_length=512)
    assert r.lengths["count"] == 300
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    assert not getattr(plain, "chat_template", None)
    r = validate_file(shared("xsum_sample.jsonl"), task="summarization", tokenizer=plain)
    assert r.lengths["count"] == 10 and r.lengths["max"] > 100


def test_token_lengths_are_sampled(tokenizer):
    rows = [{"text": "word " * random.Random(i).randint(1, 30)} for i in range(2500)]
    r = validate_rows(rows, tokenizer=tokenizer, max_length=16)
    assert r.lengths["sampled"] and r.lengths["count"] == 2000 and r.lengths["total"] == 2500
    assert validate_rows(rows, tokenizer=tokenizer, max_length=16).lengths == r.lengths  # seeded


# -- report and split ----------------------------------------------------------------------------------
def test_report_dict_and_summary(tmp_path):
    r = validate_file(tmp_path / "nope.jsonl")
    assert not r.ok and r.rows == 0 and "not found" in r.summary()
    d = validate_file(shared("identity.json")).to_dict()
    assert "examples" not in d and json.loads(json.dumps(d))["rows"] == 91
    assert d["warnings"] == 2  # {{name}} and {{author}} without template_vars


def test_split_train_eval():
    ex = list(range(100))
    train, ev = split_train_eval(ex, 0.1, seed=1)
    assert len(ev) == 10 and len(train) == 90 and sorted(train + ev) == ex
    assert split_train_eval(ex, 0.1, seed=1) == (train, ev)
    assert split_train_eval(ex, 0.1, seed=2) != (train, ev)
    assert split_train_eval(ex, 0, seed=1)[1] == []
    assert [len(x) for x in split_train_eval([1, 2], 0.01, seed=0)] == [1, 1]
    assert [len(x) for x in split_train_eval([1, 2], 0.5, seed=0)] == [1, 1]
    assert [len(x) for x in split_train_eval([1, 2, 3], 0.5, seed=0)] == [1, 2]  # round(1.5) == 2
    assert split_train_eval([1], 0.5, seed=0) == ([1], [])
    assert split_train_eval([], 0.5, seed=0) == ([], [])


def test_100k_rows_validate(tmp_path):
    p = tmp_path / "big.jsonl"
    rnd = random.Random(0)
    with open(p, "w", encoding="utf-8") as fh:
        for i in range(100_000):
            fh.write(json.dumps({"instruction": f"Question {i}?", "input": "" if i % 3 else f"ctx {i}",
                                 "output": f"Answer {i} " + "word " * rnd.randint(5, 60)}) + "\n")
    start = time.perf_counter()
    r = validate_file(p)
    print(f"\n100,000-row JSONL: load + detect + validate in {time.perf_counter() - start:.2f} s")
    assert r.ok and r.usable_rows == 100_000


def test_alpaca_for_summarization_suggests_input_output():
    r = validate_file(shared("alpaca_en_demo.json"), task="summarization")
    assert not r.ok and "input-output" in r.errors[0].hint
    r = validate_file(shared("alpaca_en_demo.json"), task="summarization", dataset_format="input-output",
                      max_rows=50)
    assert r.kind == "summarization" and r.usable_rows > 0
