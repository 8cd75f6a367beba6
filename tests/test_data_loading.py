"""core.data.loading: every file type reads, every broken file names its file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.data.loading import LoadedData, load_rows
from core.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    p = SHARED / name
    assert p.is_file(), f"shared data file missing: {p} (the tests need /work/shared/data; see its README)"
    return p


def fail(path, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        load_rows(path, **kw)
    err = info.value
    assert err.problems, "every DataError from load_rows carries problems"
    assert all(p.file for p in err.problems if not p.message.startswith("...")), err.problems
    return err


# -- the shared data sets ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, n, unit", [
    ("alpaca_en_demo.json", 999, "row"), ("identity.json", 91, "row"), ("dpo_en_demo.json", 300, "row"),
    ("xsum_sample.jsonl", 10, "line"), ("squad_v2_sample.json", 14, "row"),
])
def test_shared_files_load(name, n, unit):
    data = load_rows(shared(name))
    assert isinstance(data, LoadedData)
    assert len(data.rows) == len(data.lines) == n
    assert data.unit == unit
    assert data.lines[0] == 1 and data.lines[-1] == n
    assert all(isinstance(r, dict) for r in data.rows)


def test_squad_object_with_data_list():
    data = load_rows(shared("squad_v2_sample.json"))
    assert set(data.rows[0]) == {"id", "question", "context", "answers"}
    assert sum(1 for r in data.rows if not r["answers"]["text"]) == 6


def test_max_rows():
    assert len(load_rows(shared("alpaca_en_demo.json"), max_rows=5).rows) == 5
    assert len(load_rows(shared("xsum_sample.jsonl"), max_rows=3).rows) == 3


# -- other shapes that read fine --------------------------------------------------------------------
def test_jsonl_line_numbers_skip_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert load_rows(p).lines == [1, 3]


def test_json_file_holding_json_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    data = load_rows(p)
    assert [r["text"] for r in data.rows] == ["a", "b"] and data.unit == "line"


def test_columnar_json_and_bom(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": ["a", "b", "c"], "x": [1, 2, 3]}).encode())
    assert load_rows(p).rows[2] == {"text": "c", "x": 3}


def test_nested_squad_is_flattened(tmp_path):
    p = tmp_path / "squad.json"
    p.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}))
    row = load_rows(p).rows[0]
    assert row["answers"] == {"text": ["France"], "answer_start": [12]} and row["context"].startswith("Paris")


def test_csv_happy_path(tmp_path):
    pd = pytest.importorskip("pandas")
    p = tmp_path / "d.csv"
    pd.DataFrame({"instruction": ["hi", "two\nlines"], "input": ["", "x"], "output": ["a, b", "c"]}).to_csv(p, index=False)
    data = load_rows(p)
    assert data.rows[0] == {"instruction": "hi", "input": "", "output": "a, b"}
    assert data.rows[1]["instruction"] == "two\nlines"
    assert data.lines == [2, 3] and data.unit == "line"


def test_parquet_happy_path(tmp_path):
    pd = pytest.importorskip("pandas")
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b", "c"]}).to_parquet(p)
    data = load_rows(p)
    assert [r["text"] for r in data.rows] == ["a", "b", "c"] and data.unit == "row" and data.lines == [1, 2, 3]
    assert len(load_rows(p, max_rows=2).rows) == 2


# -- failures ----------------------------------------------------------------------------------------
def test_file_not_found(tmp_path):
    err = fail(tmp_path / "nope.jsonl")
    assert "not found" in err.message and "nope.jsonl" in err.message


def test_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_bytes(b"")
    assert "empty" in fail(p).message


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".csv"])
def test_whitespace_only(tmp_path, ext):
    p = tmp_path / f"w{ext}"
    p.write_text("  \n\n \t\n", encoding="utf-8")
    assert "empty" in fail(p).message


def test_not_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n  {"a": 1},\n  {"a": 2,,}\n]\n', encoding="utf-8")
    err = fail(p)
    assert err.problems[0].line == 3 and "column" in err.message and "bad.json" in err.message


def test_one_broken_line_among_1000(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"row {i}"}) for i in range(1000)]
    lines[636] = '{"text": "oops'
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = fail(p)
    assert [pr.line for pr in err.problems] == [637]
    assert "line 637" in err.message


def test_many_broken_lines_are_capped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join("not json" for _ in range(30)) + "\n", encoding="utf-8")
    err = fail(p)
    assert len(err.problems) == 21 and "10 more" in err.problems[-1].message
    assert "30 line(s)" in err.message


def test_jsonl_line_that_is_a_list(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n["text", "b"]\n', encoding="utf-8")
    err = fail(p)
    assert err.problems[0].line == 2 and "list" in err.problems[0].message


def test_json_top_level_not_a_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"instruction": "a", "output": "b"}', encoding="utf-8")
    assert "not a list" in fail(p).message
    p.write_text("42", encoding="utf-8")
    assert "number" in fail(p).message


def test_json_array_with_a_non_object(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"text": "a"}, "b", {"text": "c"}]', encoding="utf-8")
    err = fail(p)
    assert err.problems[0].line == 2 and "row 2" in err.message


def test_binary_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    assert "binary" in fail(p).message


def test_not_utf8(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    err = fail(p)
    assert err.problems[0].line == 2 and "UTF-8" in err.message and "byte offset 28" in err.message
    assert "save as UTF-8" in err.hint
    q = tmp_path / "d.csv"
    q.write_bytes("text\nok\ncafé\n".encode("latin-1"))
    assert fail(q).problems[0].line == 3


def test_ragged_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("instruction,output\nhi,there\nbad,row,extra\nok,fine\n", encoding="utf-8")
    err = fail(p)
    assert [pr.line for pr in err.problems] == [3] and "field(s)" in err.problems[0].message


def test_unknown_extension(tmp_path):
    p = tmp_path / "d.docx"  # .txt is plain text for continued pre-training (tests/test_chat_data.py)
    p.write_text("hello", encoding="utf-8")
    err = fail(p)
    assert ".docx" in err.message and ".jsonl" in err.hint and ".txt" in err.hint


def test_broken_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_text("not parquet at all", encoding="utf-8")
    assert "parquet" in fail(p).message


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fail("someorg/some-dataset")
    assert "offline" in err.message and "\n" not in err.message


def test_import_is_light():
    code = ("import sys, core.data; heavy = [m for m in ('torch', 'transformers', 'datasets', 'pandas', "
            "'pyarrow') if m in sys.modules]; print(heavy); assert not heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hub_id_online_uses_datasets(monkeypatch):
    import types

    calls = []

    class FakeDataset:
        def to_list(self):
            return [{"text": "a"}, {"text": "b"}]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: calls.append((name, split)) or FakeDataset()
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    data = load_rows("someorg/some-dataset", max_rows=2)
    assert calls == [("someorg/some-dataset", "train[:2]")] and data.unit == "row" and len(data.rows) == 2


def test_json_array_saved_as_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2), encoding="utf-8")
    assert [r["text"] for r in load_rows(p).rows] == ["a", "b"]
