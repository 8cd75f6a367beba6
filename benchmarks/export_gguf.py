"""Export to GGUF, measured: time and size per format, and llama.cpp's generation speed against
transformers' on the same model and prompt.

    python -m benchmarks.export_gguf            # demo + ~29M model, ~5-10 min on 2 cores
    python -m benchmarks.export_gguf --smoke    # demo only, fewer tokens (checks that it runs)

Needs the export extra (``pip install -e '.[export]'``). Writes ``benchmarks/export_gguf.json``
(or ``--out FILE``) and prints a Markdown table.

Models: the identity demo (~0.9M parameters, trained 300 steps) and the suite's ~29M Llama
(benchmarks.build_model: 4 layers, 512 wide, a 16k byte-level BPE), given a LoRA of a few steps
so that it is a ModelForge model record like any other. Every export is the real one
(core.export.export_model: pre-flight, merge, llama.cpp's converter and quantiser, Modelfile,
verification), timed whole.

Speed: greedy decoding of a fixed number of new tokens (end-of-sequence ignored on both sides, so
both produce the same count) from the same chat prompt, with the same thread count; transformers
runs the trained model as the Playground does (adapter on its float32 base), llama.cpp each GGUF.
Alternated over repetitions, medians reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import ROOT, build_model, machine, setup_env, versions

PROMPT = "Give three tips for staying healthy."
FORMATS = [("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_k_m"), ("lora-gguf", "f16"), ("merged", "f16")]


def _train(store, model: str, name: str, steps: int):
    from core.config import load_yaml
    from core.engine import prepare_run, run_training
    from core.events import EventLog
    from core.paths import ASSETS

    config = load_yaml(ASSETS / "presets" / "identity-demo.yaml").replace(name=name, model=model, max_steps=steps,
                                                                          save_steps=max(steps, 1))
    config, run_id, run_dir = prepare_run(config, store)
    t0 = time.time()
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    if result.status != "completed":
        raise RuntimeError(f"training {name} failed: {result.error}")
    return result.model_id, time.time() - t0


def _hf_speed(model_dir: str, new_tokens: int, threads: int) -> float:
    import torch

    from core.inference import load_model

    torch.set_num_threads(threads)
    lm = load_model(model_dir)
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                            add_generation_prompt=True)
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        t0 = time.perf_counter()
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                pad_token_id=lm.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        dt = time.perf_counter() - t0
    assert out.shape[1] - ids.shape[1] == new_tokens
    return new_tokens / dt


def _llama_speed(llm, prompt_text: str, new_tokens: int) -> float:
    prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    n = 0
    t0 = time.perf_counter()
    for _ in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        n += 1
        if n >= new_tokens:
            break
    return n / (time.perf_counter() - t0)


def speed(model_dir: str, ggufs: dict[str, str], new_tokens: int, reps: int, threads: int) -> dict:
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    llms = {q: llama_cpp.Llama(model_path=p, n_ctx=1024, n_threads=threads, verbose=False) for q, p in ggufs.items()}
    runs: dict[str, list[float]] = {"transformers": [], **{f"llama.cpp {q}": [] for q in ggufs}}
    _hf_speed(model_dir, 4, threads)  # warm-up of each
    for llm in llms.values():
        _llama_speed(llm, text, 4)
    for _ in range(reps):  # alternated: the machine's load hits every variant alike
        runs["transformers"].append(_hf_speed(model_dir, new_tokens, threads))
        for q, llm in llms.items():
            runs[f"llama.cpp {q}"].append(_llama_speed(llm, text, new_tokens))
    for llm in llms.values():
        llm.close()
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {"tokens_per_s": med, "raw": runs, "new_tokens": new_tokens, "threads": threads, "reps": reps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="demo model only, few tokens")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "export_gguf.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_env()
    work = Path(tempfile.mkdtemp(prefix="mf-export-bench-"))
    os.environ["MODELFORGE_HOME"] = str(work / "home")
    from core.export import export_model
    from core.paths import database_url
    from core.records import RecordStore

    store = RecordStore(database_url())
    models = [("demo", "demo", 300)]
    if not args.smoke:
        models.append(("29m", str(build_model(work / "m29")), 10))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "models": {}}
    for key, base, steps in models:
        model_id, train_s = _train(store, base, f"bench-{key}", steps)
        entry: dict = {"train_steps": steps, "train_s": round(train_s, 1), "exports": []}
        ggufs = {}
        for fmt, q in FORMATS:
            t0 = time.perf_counter()
            r = export_model(store, model_id, fmt, q)
            v = r.verification
            entry["exports"].append({
                "format": fmt, "quantization": r.quantization, "bytes": r.bytes,
                "seconds": round(time.perf_counter() - t0, 1),
                "same_text": f"{v.get('same_text')}/{v.get('prompts')}",
                "mean_token_agreement": v.get("mean_token_agreement"), "warnings": r.warnings})
            if fmt == "gguf":
                ggufs[q] = r.path
            print(f"{key} {fmt} {r.quantization or ''}: {r.bytes / 2**20:.2f} MiB in {entry['exports'][-1]['seconds']} s,"
                  f" verification {entry['exports'][-1]['same_text']} same, agreement {v.get('mean_token_agreement')}",
                  file=sys.stderr, flush=True)
        model_dir = store.get_model(model_id).path
        entry["speed"] = speed(model_dir, ggufs, 16 if args.smoke else 64, 1 if args.smoke else 3, args.threads)
        print(f"{key} tokens/s: {entry['speed']['tokens_per_s']}", file=sys.stderr, flush=True)
        results["models"][key] = entry
    Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(render(results))
    return 0


def render(results: dict) -> str:
    lines = [f"Export to GGUF, measured {results['date']} ({results['machine'].get('cpu', '')}, "
             f"{results['machine'].get('cores', '')} cores)", "",
             "| model | format | size (MiB) | time (s) | verification: same text | token agreement |",
             "|---|---|---|---|---|---|"]
    for key, e in results["models"].items():
        for x in e["exports"]:
            what = x["format"] + (f" {x['quantization']}" if x["quantization"] else "")
            lines.append(f"| {key} | {what} | {x['bytes'] / 2**20:.2f} | {x['seconds']} | {x['same_text']} | "
                         f"{x['mean_token_agreement']} |")
    lines += ["", "| model | " + " | ".join(next(iter(results["models"].values()))["speed"]["tokens_per_s"]) + " |",
              "|---|" + "---|" * len(next(iter(results["models"].values()))["speed"]["tokens_per_s"])]
    for key, e in results["models"].items():
        lines.append(f"| {key} (tokens/s) | " + " | ".join(str(v) for v in e["speed"]["tokens_per_s"].values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
