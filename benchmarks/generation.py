"""Generation in the Playground: ``core.inference.stream`` against a plain ``model.generate``.

Same model (loaded once with ``core.inference.load_model``), same chat prompt, greedy decoding,
same ``max_new_tokens``, each call made from a fresh worker thread as the app makes it. The
plain call is what a script does: encode with the chat template,
``model.generate`` under ``torch.no_grad``, decode. The stream is the Playground's path: the
same generate in a background thread whose streamer only queues token ids; the reader decodes
what arrived at most 50 times a second and yields the growing answer. (transformers'
``TextIteratorStreamer``, which decodes every token on the generating thread, measured 0.85 of
plain on the demo model; this design 0.97.) Greedy decoding makes both produce the same tokens (checked: the final
texts are equal), so tokens/s compare like for like. Alternated over repetitions, after one
warm-up call of each; the ratio is the median of the pairs. The stream's time to its first
piece is reported too (what a user waits before text appears).

Models: the ~29M Llama (a step of real compute per token) and the demo model (so small that
per-token overheads show most).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from benchmarks import build_model, child_main, figure, median, rnd, run_child, setup_env

SIZES = {
    "smoke": dict(reps=1, new_tokens=8, models=("demo",)),
    "quick": dict(reps=5, new_tokens=64, models=("29m", "demo")),
    "full": dict(reps=9, new_tokens=128, models=("29m", "demo")),
}
PROMPT = "Give three tips for staying healthy."
TARGET = 0.95


def child(spec: dict) -> dict:
    setup_env()
    import os

    os.environ["MODELFORGE_HOME"] = spec["home"]
    import torch
    import transformers

    from core.inference import _gen_kwargs, _inputs, load_model, stream

    transformers.utils.logging.set_verbosity_error()
    lm = load_model(spec["model_dir"])
    n_new = spec["new_tokens"]

    def plain() -> tuple[str, int, float]:
        t0 = time.perf_counter()
        enc = _inputs(lm, PROMPT)
        with torch.no_grad():
            out = lm.model.generate(**enc, **_gen_kwargs(lm, n_new, 0.0, 0.95))
        new = out[0][enc["input_ids"].shape[1]:]
        text = lm.tokenizer.decode(new, skip_special_tokens=True)
        return text, len(new), time.perf_counter() - t0

    def streamed() -> tuple[str, float, float]:
        t0 = time.perf_counter()
        first = None
        text = ""
        for text in stream(lm, PROMPT, max_new_tokens=n_new):
            if first is None:
                first = time.perf_counter() - t0
        return text, time.perf_counter() - t0, first or 0.0

    def in_worker(fn):
        """Run ``fn`` in a fresh thread, as Gradio runs a Playground handler: the plain call and the
        stream then both generate off the main thread (torch's threading differs on the main one)."""
        box = []
        th = threading.Thread(target=lambda: box.append(fn()))
        th.start()
        th.join()
        return box[0]

    in_worker(plain)
    in_worker(streamed)  # warm-up of both paths
    out = {"plain": [], "stream": [], "first_piece_s": [], "same_text": True, "tokens": 0}
    for rep in range(spec["reps"]):
        for how in (("plain", "stream") if rep % 2 == 0 else ("stream", "plain")):
            if how == "plain":
                text_p, n, secs = in_worker(plain)
                out["tokens"] = n
                out["plain"].append(n / secs)
            else:
                text_s, secs, first = in_worker(streamed)
                out["stream"].append(secs)
                out["first_piece_s"].append(first)
        out["same_text"] = out["same_text"] and text_p.strip() == text_s.strip()
    n = out["tokens"]
    out["stream"] = [n / s for s in out["stream"]]
    return out


def run(mode: str, work: Path) -> dict:
    size = SIZES[mode]
    work = Path(work) / "generation"
    work.mkdir(parents=True, exist_ok=True)
    home = str(work / "home")
    figures, raw, series = [], {}, {}
    for kind in size["models"]:
        if kind == "demo":
            setup_env()
            import os

            os.environ.setdefault("MODELFORGE_HOME", home)
            from core.demo_model import demo_path

            model_dir, label = demo_path(), "demo model"
        else:
            model_dir, label = build_model(work.parent / "models" / "llama-29m"), "29M model"
        res = run_child(["benchmarks.generation", "--child", json.dumps(
            {"home": home, "model_dir": str(model_dir), "reps": size["reps"], "new_tokens": size["new_tokens"]})],
            timeout=1800)
        raw[label] = res
        ratios = [s / p for s, p in zip(res["stream"], res["plain"])]
        r = median(ratios)
        primary = kind == size["models"][0]
        figures.append(figure(f"{label}: streamed tokens/s / plain generate tokens/s", rnd(r),
                              target=f">= {TARGET}" if primary else "",
                              met=(r >= TARGET) if primary and mode != "smoke" else None,
                              note=f"{res['tokens']} new tokens; plain {median(res['plain']):.1f} tok/s, "
                                   f"stream {median(res['stream']):.1f} tok/s; pairs "
                                   f"{', '.join(f'{x:.3f}' for x in ratios)}"))
        figures.append(figure(f"{label}: stream's first piece after", rnd(median(res["first_piece_s"]), 3),
                              unit="s"))
        figures.append(figure(f"{label}: same text streamed and generated", res["same_text"]))
        series[label] = ratios
    return {"name": "generation", "title": "Playground generation: streaming vs plain generate",
            "setup": {"prompt": PROMPT, "max_new_tokens": size["new_tokens"], "decoding": "greedy",
                      "pairs": size["reps"]},
            "figures": figures, "raw": raw, "plot": None}


def main(argv: list[str] | None = None) -> int:
    return child_main(child, argv)


if __name__ == "__main__":
    sys.exit(main())
