"""ModelForge's benchmark suite: each figure a ratio or a fraction measured side by side.

Run everything with ``python -m benchmarks.run --quick`` (a few minutes on 2 CPU cores) or
``--full``; see :mod:`benchmarks.run`. One module per benchmark, each with
``run(mode, work) -> dict`` (mode: "smoke", "quick" or "full"; ``work``: a scratch folder).

This package holds what they share: offline settings, the machine and version notes, small
statistics, and the benchmark models (a ~29M-parameter Llama with a 16k-token BPE vocabulary,
built offline from a config, and the same shape on the demo tokenizer). Nothing heavy is
imported at module level: the cold-start benchmark imports this package too.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONWARNINGS": "ignore",
}

MODES = ("smoke", "quick", "full")


class Unavailable(Exception):
    """A benchmark cannot run on this machine (a peer that cannot be installed, say): its one-line
    message is the result, not a traceback. It counts as not run (benchmarks.run exits 1)."""


def setup_env() -> None:
    """Offline, quiet, and this checkout first on sys.path (set before the HF stack is imported)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def child_env(**extra: str) -> dict:
    """The environment for a benchmark's child process (offline, this checkout importable).

    ``MF_BENCH_THREADS`` (set by ``benchmarks.run --threads``) becomes torch's intra-op thread
    count in the children that train or generate: on a shared 2-core machine two threads
    contending with other processes made step times swing 4-15x, one thread kept them steady.
    Every ratio compares two variants under the same setting.
    """
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    threads = env.get("MF_BENCH_THREADS", "")
    if threads and threads != "0":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    env.update(extra)
    return env


def run_child(args: list[str], timeout: float, **env: str) -> dict:
    """Run ``python -m benchmarks.<args>`` and return the JSON object its last stdout line holds.

    Raises:
        RuntimeError: the child failed (its stderr tail is in the message).
    """
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=child_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def child_main(child, argv: list[str] | None = None) -> int:
    """The ``--child SPEC`` entry point of a benchmark module (the other side of :func:`run_child`):
    ``child(spec)``'s result as one JSON line on stdout."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, help="the measurement's spec, as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- data ---------------------------------------------------------------------------------------------
def alpaca_path() -> Path:
    """../shared/data/alpaca_en_demo.json (999 alpaca rows), else the bundled 20-row sample."""
    shared = SHARED_DATA / "alpaca_en_demo.json"
    return shared if shared.exists() else ROOT / "assets" / "examples" / "alpaca_sample.json"


def alpaca_rows(limit: int | None = None) -> list[dict]:
    rows = json.loads(alpaca_path().read_text(encoding="utf-8"))
    return rows[:limit] if limit else rows


def alpaca_to_trl(row: dict) -> dict:
    """The conversion a hand-written trl script does (same text as ModelForge's alpaca converter)."""
    user = "\n".join(t for t in (row.get("instruction", ""), row.get("input", "")) if t.strip())
    return {"prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": row["output"]}]}


# -- statistics -----------------------------------------------------------------------------------------
def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


def quantile(xs, q: float) -> float:
    """The q-quantile (nearest rank on the sorted values; q in [0, 1])."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    return float(xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))])


def rnd(x, n: int = 3):
    return None if x is None or x != x else round(float(x), n)


def figure(name: str, value, *, unit: str = "", target: str = "", met: bool | None = None, note: str = "") -> dict:
    """One row of a benchmark's table."""
    return {"name": name, "value": value, "unit": unit, "target": target, "met": met, "note": note}


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


# -- machine and versions -----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import psutil

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(),
            "python": platform.python_version(), "load_avg_1m_at_start": round(load[0], 2)}


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "gradio", "gradio_client",
                 "modelforge"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -- benchmark models ---------------------------------------------------------------------------------
# ~29M parameters: 4 layers of width 512 (GQA 8/4 heads) and an untied 16k vocabulary, so a step
# is compute (matmuls and the vocabulary projection), as in a real model, not Python overhead.
BENCH_SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4)
BENCH_VOCAB = 16384


def _corpus_texts() -> list[str]:
    texts: list[str] = []
    for path in sorted(SHARED_DATA.glob("*.json")) + sorted((ROOT / "assets" / "examples").glob("*.json")):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict):
                texts.extend(str(v) for v in row.values() if isinstance(v, str) and v)
    for path in sorted(SHARED_DATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            texts.extend(str(v) for v in row.values() if isinstance(v, str) and v)
    return texts + ["system user assistant tool"] * 50


def build_tokenizer_16k(out_dir: Path):
    """A byte-level BPE with up to 16k tokens learned from the shared data, with the demo's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from core.demo_model import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BENCH_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>"], model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: Path, tokenizer_from: str = "16k", shape: dict | None = None) -> Path:
    """A randomly initialised Llama (fixed seed) with a tokenizer, saved to ``out_dir`` (cached).

    Args:
        tokenizer_from: "16k" (a 16k BPE learned from the shared data: a real-ish vocabulary) or
            "demo" (the demo model's 2k tokenizer).
        shape: LlamaConfig sizes (default BENCH_SHAPE, ~29M parameters with the 16k vocabulary).
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    tmp = out_dir.with_name(out_dir.name + ".building")
    tmp.mkdir(parents=True, exist_ok=True)
    if tokenizer_from == "demo":
        from core.demo_model import demo_path

        tok = AutoTokenizer.from_pretrained(demo_path())
        tok.save_pretrained(tmp)
    else:
        tok = build_tokenizer_16k(tmp)
    vocab = (len(tok) + 63) // 64 * 64
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         initializer_range=0.02, **(shape or BENCH_SHAPE))
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               do_sample=False)
    model.save_pretrained(tmp)
    (tmp / "params.txt").write_text(str(sum(p.numel() for p in model.parameters())))
    if not out_dir.exists():
        tmp.replace(out_dir)
    return out_dir


def n_params(model_dir: Path) -> int:
    try:
        return int((Path(model_dir) / "params.txt").read_text())
    except (OSError, ValueError):
        return 0
