"""Read a data file into a list of row dicts, remembering where each row came from.

Users bring data in whatever shape their tools wrote it, often slightly broken. This module
turns a path into plain ``dict`` rows plus the line (or record) number of each row, and turns
every way a file can be unreadable into one :class:`~core.errors.DataError` that names the
file and the line, so the user can open the file and fix it. It knows nothing about columns
or formats (that is :mod:`core.data.formats`).

JSON Lines files are read line by line, so a big file never needs two copies in memory and
a broken line costs nothing to locate. Heavy libraries (pyarrow, datasets) are imported only
when a parquet file or a hub dataset actually needs them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import DataError, Problem

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".parquet", ".txt")
# A .txt file with no blank lines is one long text: cut into pieces of about this many characters
# (~500 tokens of English), at line or word boundaries. Packing joins short pieces again.
TXT_CHUNK_CHARS = 2000
SUPPORTED_TEXT = ", ".join(SUPPORTED)
MAX_LISTED = 20  # problems of one kind listed before "... and N more"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LIST_KEYS = ("data", "rows", "examples", "train")  # {"data": [...]} and friends


@dataclass
class LoadedData:
    """Rows read from one file.

    Attributes:
        file: the path (or hub id) as given, for messages.
        rows: one dict per example.
        lines: ``lines[i]`` is where ``rows[i]`` came from: a 1-based line number (JSONL, CSV
            with the header on line 1) or a 1-based record number (JSON array, parquet, hub).
        unit: "line" or "row": the word to print before ``lines[i]``.
    """

    file: str
    rows: list[dict]
    lines: list[int]
    unit: str = "line"
    details: dict = field(default_factory=dict)

    def where(self, i: int) -> str:
        """``"line 12"`` / ``"row 12"`` for row index ``i``."""
        return f"{self.unit} {self.lines[i]}"


def load_rows(path: str | Path, max_rows: int | None = None, *, chunk_chars: int = TXT_CHUNK_CHARS) -> LoadedData:
    """Read a .json, .jsonl/.ndjson, .csv, .parquet or .txt file (or a hub dataset id).

    A ``.txt`` file is plain text for continued pre-training: one ``{"text": ...}`` row per
    document, documents separated by blank lines; a text with no blank lines is cut into pieces
    of about ``chunk_chars`` characters at line or word boundaries.

    Args:
        path: a local file, or a Hugging Face dataset id such as ``org/name`` (loaded with
            ``datasets.load_dataset`` unless ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set).
        max_rows: stop after this many rows (``None`` or 0: all). JSONL and CSV stop reading.

    Raises:
        DataError: the file is missing, empty, binary, not UTF-8, not valid JSON/JSONL/CSV/
            parquet, has an unknown extension or no rows; or the hub is offline/unreachable.
            ``problems`` name the file and the line of each fault.
    """
    text = str(path)
    p = Path(text).expanduser()
    max_rows = max_rows or None
    if not p.exists():
        if isinstance(path, str) and _HUB_ID.match(text) and p.suffix.lower() not in SUPPORTED:
            return _load_hub(text, max_rows)
        raise _err("file not found", "check the path (relative paths start in the "
                   "folder you run ModelForge from)", text)
    if p.is_dir():
        raise _err("is a folder, not a data file",
                   f"point to one file ({SUPPORTED_TEXT})", text)
    ext = p.suffix.lower()
    if ext not in SUPPORTED:
        raise _err(f"unsupported file type '{ext or '(no extension)'}'",
                   f"save the data as one of: {SUPPORTED_TEXT}", text)
    if p.stat().st_size == 0:
        raise _err("the file is empty (0 bytes)", "add rows to the file or choose another one", text)
    if ext == ".parquet":
        data = _load_parquet(p, text, max_rows)
    elif ext == ".csv":
        data = _load_csv(p, text, max_rows)
    elif ext == ".json":
        data = _load_json(p, text, max_rows)
    elif ext == ".txt":
        data = _load_txt(p, text, max_rows, chunk_chars)
    else:
        data = _load_jsonl(p, text, max_rows)
    if not data.rows:
        raise _err("the file holds no data rows", "add rows to the file", text)
    return data


# -- helpers ------------------------------------------------------------------------------------
def _err(message: str, hint: str, file: str, line: int | None = None,
         problems: list[Problem] | None = None) -> DataError:
    """``message`` says what is wrong without the file name; the DataError adds it."""
    if problems is None:
        problems = [Problem(message, hint, file=file, line=line)]
    return DataError(f"{file}: {message}", hint, problems=problems)


def _column_text(exc: json.JSONDecodeError) -> str:
    """Where on its line a JSON error is: "column 12", or "column 47, the end of the line"."""
    line_end = exc.doc.find("\n", exc.pos)
    at_end = exc.pos >= len(exc.doc.rstrip()) if line_end < 0 else not exc.doc[exc.pos:line_end].strip()
    return f"column {exc.colno}" + (", the end of the line" if at_end else "")


def _binary_check(head: bytes, file: str) -> None:
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise _err("looks like a binary file (it contains NUL bytes), not text",
                   "give a .json/.jsonl/.csv text file saved as UTF-8 (UTF-16 files also look "
                   "like this: re-save as UTF-8)", file, line)


def _decode(raw: bytes, file: str) -> str:
    """UTF-8 decode, or a DataError naming the line and byte offset of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _decode_error(exc, raw, file) from None


def _decode_error(exc: UnicodeDecodeError, raw: bytes, file: str, first_line: int = 1,
                  offset: int = 0) -> DataError:
    line = first_line + raw[: exc.start].count(b"\n")
    bad = raw[exc.start: exc.start + 1].hex()
    return _err(f"not UTF-8 text: byte 0x{bad} at byte offset {offset + exc.start} "
                f"(line {line}) cannot be decoded",
                "save as UTF-8 (in a text editor: Save As, encoding UTF-8)", file, line)


def _empty_error(file: str) -> DataError:
    return _err("the file is empty (only whitespace)", "add rows to the file or choose another one", file)


# -- JSON / JSONL ----------------------------------------------------------------------------------
def _load_jsonl(p: Path, file: str, max_rows: int | None) -> LoadedData:
    rows: list[dict] = []
    lines: list[int] = []
    broken: list[Problem] = []
    n_broken = 0
    offset = 0
    loads = json.loads
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                _binary_check(raw[:65536], file)
                if raw.startswith(b"\xef\xbb\xbf"):
                    raw, offset = raw[3:], 3
            elif b"\x00" in raw:
                raise _err("looks like a binary file (NUL bytes), not text",
                           "give a text file saved as UTF-8", file, lineno)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _decode_error(exc, raw, file, lineno, offset) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                # Without the line break: an object cut short is reported at its own line's end,
                # not as "column 1" of the next line.
                obj = loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                n_broken += 1
                if n_broken <= MAX_LISTED:
                    broken.append(Problem(f"invalid JSON: {exc.msg} ({_column_text(exc)})",
                                          "fix or delete this line; each line must be one JSON object",
                                          file=file, line=lineno))
                continue
            if not isinstance(obj, dict):
                n_broken += 1
                if n_broken <= MAX_LISTED:
                    broken.append(Problem(f"line is a JSON {_json_type(obj)}, not an object {{...}}",
                                          'each line must be one object such as {"text": "..."}',
                                          file=file, line=lineno))
                continue
            rows.append(obj)
            lines.append(lineno)
            if max_rows and len(rows) >= max_rows:
                break
    if n_broken and not rows:  # maybe a JSON array saved as .jsonl
        try:
            return _load_json(p, file, max_rows)
        except DataError:
            pass
    if n_broken:
        if n_broken > MAX_LISTED:
            broken.append(Problem(f"... and {n_broken - MAX_LISTED} more broken lines", file=file))
        first = broken[0].line
        error = _err(f"{n_broken} line(s) are not JSON objects (first: line {first})",
                     "fix or delete the lines listed", file, problems=broken)
        # The good rows too: validation counts them and detects the format from them, so the
        # report says "90 rows read, line 3 broken" instead of "0 rows, format not detected".
        # Training still refuses the file (this error), so a broken line is never skipped silently.
        error.partial = LoadedData(file, rows, lines, "line")
        raise error
    if not rows:
        raise _empty_error(file)
    return LoadedData(file, rows, lines, "line")


def _read_text(p: Path, file: str) -> str:
    """The whole file as text, for the formats read at once (JSON, CSV): refused when binary, not
    UTF-8 (naming the line) or empty; a byte-order mark is dropped."""
    raw = p.read_bytes()
    _binary_check(raw[:65536], file)
    text = _decode(raw, file)
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise _empty_error(file)
    return text


def _load_json(p: Path, file: str, max_rows: int | None) -> LoadedData:
    text = _read_text(p, file)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if _looks_like_jsonl(text):
            return _load_jsonl(p, file, max_rows)
        raise _err(f"not valid JSON: {exc.msg} ({_column_text(exc)})",
                   "fix the JSON syntax there (a missing comma or quote is the usual cause)",
                   file, exc.lineno) from None
    rows, details = _rows_from_json(obj, file)
    if max_rows:
        rows = rows[:max_rows]
    return LoadedData(file, rows, list(range(1, len(rows) + 1)), "row", details)


def _looks_like_jsonl(text: str) -> bool:
    """A .json file whose first non-blank line is a whole JSON object on its own."""
    for line in text.splitlines():
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return False
    return False


def _rows_from_json(obj, file: str) -> tuple[list[dict], dict]:
    details: dict = {}
    if isinstance(obj, dict):
        listed = [k for k in _LIST_KEYS if isinstance(obj.get(k), list)]
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if listed:
            obj = obj[listed[0]]
            details["list_key"] = listed[0]
        elif lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            keys = list(lists)  # columnar: {"col": [...], "col2": [...]}
            obj = [dict(zip(keys, vals)) for vals in zip(*lists.values())]
            details["columnar"] = True
        elif len(lists) == 1 and all(isinstance(x, dict) for x in next(iter(lists.values()))):
            key = next(iter(lists))
            obj = lists[key]
            details["list_key"] = key
        else:
            raise _err("the top level is a single JSON object, not a list of rows",
                       'wrap the rows in a list: [{"instruction": ..., "output": ...}, ...]', file, 1)
    if not isinstance(obj, list):
        raise _err(f"the top level is a JSON {_json_type(obj)}, not a list of objects",
                   'the file must look like [{"column": "value", ...}, ...]', file, 1)
    bad = [i for i, r in enumerate(obj, 1) if not isinstance(r, dict)]
    if bad:
        problems = [Problem(f"record is a JSON {_json_type(obj[i - 1])}, not an object {{...}}",
                            "every element of the list must be an object", file=file, line=i, unit="row")
                    for i in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            problems.append(Problem(f"... and {len(bad) - MAX_LISTED} more records like this", file=file))
        raise _err(f"{len(bad)} of {len(obj)} records are not JSON objects (first: row {bad[0]})",
                   "every element of the list must be an object", file, problems=problems)
    if obj and "paragraphs" in obj[0]:  # original nested SQuAD layout
        obj = _flatten_squad(obj)
        details["flattened"] = "squad"
    return obj, details


def _flatten_squad(articles: list[dict]) -> list[dict]:
    rows = []
    for art in articles:
        for para in art.get("paragraphs") or []:
            for qa in para.get("qas") or []:
                answers = qa.get("answers") or []
                rows.append({
                    "id": qa.get("id"), "question": qa.get("question"), "context": para.get("context"),
                    "answers": {"text": [a.get("text") for a in answers],
                                "answer_start": [a.get("answer_start") for a in answers]},
                })
    return rows


def _json_type(obj) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false",
            type(None): "null", dict: "object"}.get(type(obj), type(obj).__name__)


# -- plain text ------------------------------------------------------------------------------------
_BLANK = re.compile(r"\n[ \t]*\n")


def _load_txt(p: Path, file: str, max_rows: int | None, chunk_chars: int) -> LoadedData:
    text = _read_text(p, file).replace("\r\n", "\n").replace("\r", "\n")
    rows, lines = [], []
    pos = 0
    pieces = []
    for m in list(_BLANK.finditer(text)) + [None]:
        end = m.start() if m else len(text)
        pieces.append((pos, text[pos:end]))
        pos = m.end() if m else pos
    docs = [(start, doc) for start, doc in pieces if doc.strip()]
    if len(docs) == 1 and chunk_chars and len(docs[0][1]) > chunk_chars:
        docs = _chunks(docs[0][0], docs[0][1], chunk_chars)
    for start, doc in docs:
        lead = len(doc) - len(doc.lstrip())
        rows.append({"text": doc.strip()})
        lines.append(text.count("\n", 0, start + lead) + 1)
        if max_rows and len(rows) >= max_rows:
            break
    return LoadedData(file, rows, lines, "line", {"text_file": "chunks" if len(pieces) == 1 else "documents"})


def _chunks(offset: int, text: str, size: int) -> list[tuple[int, str]]:
    """``text`` cut into pieces of at most ~``size`` characters, at a line break or a space."""
    out, pos = [], 0
    while pos < len(text):
        end = min(pos + size, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", pos + size // 2, end), text.rfind(" ", pos + size // 2, end))
            end = cut + 1 if cut > pos else end
        out.append((offset + pos, text[pos:end]))
        pos = end
    return out


# -- CSV / parquet ---------------------------------------------------------------------------------
def _load_csv(p: Path, file: str, max_rows: int | None) -> LoadedData:
    text = _read_text(p, file)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict] = []
    lines: list[int] = []
    ragged: list[Problem] = []
    n_ragged = 0
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in fields]
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise _err(f"the header repeats column(s) {', '.join(dup)}",
                               "give every column a unique name", file, line)
                continue
            if len(fields) != len(header):
                n_ragged += 1
                if n_ragged <= MAX_LISTED:
                    ragged.append(Problem(f"row has {len(fields)} field(s) but the header has {len(header)}",
                                          "quote values that contain commas or line breaks (\"a, b\"), "
                                          "or fix the number of fields", file=file, line=line))
                continue
            rows.append(dict(zip(header, fields)))
            lines.append(line)
            if max_rows and len(rows) >= max_rows:
                break
    except csv.Error as exc:
        raise _err(f"not valid CSV at line {reader.line_num}: {exc}",
                   "check the quoting on that line", file, reader.line_num) from None
    if n_ragged:
        if n_ragged > MAX_LISTED:
            ragged.append(Problem(f"... and {n_ragged - MAX_LISTED} more rows with the wrong number of fields",
                                  file=file))
        raise _err(f"{n_ragged} row(s) have a different number of fields than the header "
                   f"(first: line {ragged[0].line})", "fix the rows listed", file, problems=ragged)
    return LoadedData(file, rows, lines, "line")


def _load_parquet(p: Path, file: str, max_rows: int | None) -> LoadedData:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
        if max_rows:
            rows: list[dict] = []
            for batch in pf.iter_batches(batch_size=min(max_rows, 65536)):
                rows += batch.to_pylist()
                if len(rows) >= max_rows:
                    break
            rows = rows[:max_rows]
        else:
            rows = pf.read().to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise _err(f"not a readable parquet file: {str(exc).splitlines()[0][:200]}",
                   "re-export it (pandas: df.to_parquet(path)) or use .jsonl/.csv", file) from None
    return LoadedData(file, rows, list(range(1, len(rows) + 1)), "row")


# -- hub ---------------------------------------------------------------------------------------------
def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str, max_rows: int | None) -> LoadedData:
    if _offline():
        raise _err("not a local file, and the Hugging Face Hub is offline "
                   "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1)",
                   f"download the data set and pass a local file ({SUPPORTED_TEXT})", name)
    import datasets  # heavy: only when a hub id is really used

    split = f"train[:{max_rows}]" if max_rows else "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, missing dataset, missing 'train' split...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _err(f"cannot load it from the Hugging Face Hub: {first}",
                   "check the id and your network, or pass a local file", name) from None
    rows = ds.to_list()
    return LoadedData(name, rows, list(range(1, len(rows) + 1)), "row", {"hub": True})
