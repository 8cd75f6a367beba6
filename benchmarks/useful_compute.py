"""Useful compute: how much of what the model computes is real tokens, for four ways to batch SFT data.

On alpaca_en_demo.json with the demo tokenizer (chat template, completion-only loss,
max_length 512), for naive padding (random batches padded to their longest row), length
grouping (trl/transformers' ``group_by_length`` sampler), bfd packing (trl's SFT packing:
several examples per row, padding-free, position ids restarting per example) and padding-free
batching (each batch flattened into one row, no truncation):

- the fraction of computed token positions that are real, over a whole epoch of batches
  (no model needed: it is the collated batches that are counted);
- the tokens the loss falls on, which must not change (completion masks kept by packing);
- steady-state real tokens/s of a LoRA run on a Llama with the demo tokenizer (~14M
  parameters), the strategies alternated over repetitions, as a ratio to naive padding;
- a correctness check: logits of examples packed into one row with restarting position ids
  equal the logits of each example alone (so packed examples do not attend to each other
  with this attention implementation);
- the fraction in ModelForge's default SFT setting (built by core.strategies.sft itself).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

from benchmarks import (alpaca_path, alpaca_rows, alpaca_to_trl, build_model, child_main, figure, median, n_params,
                        rnd, run_child, setup_env)

SIZES = {
    "smoke": dict(reps=1, warmup=1, steps=1, samples=24, fraction_rows=60, batch=4, model="demo"),
    "quick": dict(reps=2, warmup=2, steps=6, samples=400, fraction_rows=None, batch=4, model="demo-tok-14m"),
    "full": dict(reps=4, warmup=5, steps=20, samples=999, fraction_rows=None, batch=4, model="demo-tok-14m"),
}
MAX_LENGTH = 512
STRATEGIES = {
    "naive padding": {},
    "length grouping": {"train_sampling_strategy": "group_by_length"},
    "packing (bfd)": {"packing": True, "packing_strategy": "bfd"},
    "padding-free": {"padding_free": True, "max_length": None},
}


def _trainer(spec: dict, model, tok, rows: list[dict], extra: dict, steps: int = 1, clock=None):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    kw = dict(output_dir=str(Path(spec["work"]) / "out"), max_steps=steps, per_device_train_batch_size=spec["batch"],
              learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
              seed=42, data_seed=42, max_length=MAX_LENGTH, completion_only_loss=True)
    kw.update(extra)
    ds = Dataset.from_list([alpaca_to_trl(r) for r in rows])
    return SFTTrainer(model=model, args=SFTConfig(**kw), train_dataset=ds, processing_class=tok,
                      peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"),
                      callbacks=[clock] if clock else None)


def _count(trainer) -> dict:
    """Real and computed token positions, supervised tokens and batches over one epoch."""
    real = computed = supervised = batches = 0
    for batch in trainer.get_train_dataloader():
        n = batch["input_ids"].numel()
        computed += n
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else n
        supervised += int((batch["labels"] != -100).sum())
        batches += 1
    return {"real_fraction": real / computed, "real": real, "computed": computed, "supervised": supervised,
            "batches": batches}


def _unwrap(trainer):
    model = trainer.model
    return model.unload() if hasattr(model, "unload") else model


def _isolation_check(model, tok) -> dict:
    """Max |logit difference| between examples alone and the same examples packed into one row."""
    import torch

    rows = alpaca_rows(3)
    seqs = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                     {"role": "assistant", "content": r["output"]}], tokenize=True,
                                    return_dict=False)[:120] for r in rows]
    model.eval()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s])).logits[0] for s in seqs]
        flat = torch.tensor([[t for s in seqs for t in s]])
        pos = torch.tensor([[i for s in seqs for i in range(len(s))]])
        packed = model(input_ids=flat, position_ids=pos).logits[0]
        leak = model(input_ids=flat).logits[0]  # no restart: later examples see earlier ones
    off, diff, leak_diff = 0, 0.0, 0.0
    for s, a in zip(seqs, alone):
        diff = max(diff, float((packed[off:off + len(s)] - a).abs().max()))
        leak_diff = max(leak_diff, float((leak[off:off + len(s)] - a).abs().max()))
        off += len(s)
    model.train()
    return {"max_abs_logit_diff": diff, "without_position_restart": leak_diff,
            "attention": getattr(model.config, "_attn_implementation", "?")}


def _default_batching() -> tuple[dict, str]:
    """The SFTConfig batching keywords of ModelForge's default SFT run, and their name here."""
    from core.config import RunConfig
    from core.strategies.sft import batching

    kw = batching(RunConfig())
    for name, extra in STRATEGIES.items():
        if {k: v for k, v in extra.items() if k != "max_length"} == kw:
            return kw, name
    return kw, "custom"


def child(spec: dict) -> dict:
    setup_env()
    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.engine_overhead import StepClock

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    out: dict = {"fractions": {}, "speed": {k: [] for k in STRATEGIES}}
    rows_all = alpaca_rows(spec["fraction_rows"])
    for name, extra in STRATEGIES.items():
        trainer = _trainer(spec, model, tok, rows_all, extra)
        out["fractions"][name] = _count(trainer)
        model = _unwrap(trainer)
    default_kw, default_name = _default_batching()
    trainer = _trainer(spec, model, tok, rows_all, default_kw)
    out["default"] = {"batching": default_kw, "name": default_name, **_count(trainer)}
    model = _unwrap(trainer)
    out["isolation"] = _isolation_check(model, tok)
    rows = alpaca_rows(spec["samples"])
    names = list(STRATEGIES)
    last = spec["warmup"] + spec["steps"]
    for rep in range(spec["reps"]):
        order = names[rep % len(names):] + names[:rep % len(names)]
        if rep % 2:
            order.reverse()
        for name in order:
            clock = StepClock()
            trainer = _trainer(spec, model, tok, rows, STRATEGIES[name], steps=last, clock=clock)
            trainer.train()
            tokens, secs = clock.window(spec["warmup"], last)
            out["speed"][name].append(tokens / secs)
            model = _unwrap(trainer)
            del trainer
            gc.collect()
    return out


def run(mode: str, work: Path) -> dict:
    size = SIZES[mode]
    work = Path(work) / "useful_compute"
    work.mkdir(parents=True, exist_ok=True)
    if size["model"] == "demo":
        setup_env()
        import os

        os.environ.setdefault("MODELFORGE_HOME", str(work / "home"))
        from core.demo_model import demo_path

        model_dir = demo_path()
    else:
        model_dir = build_model(work.parent / "models" / "llama-demo-tokenizer", tokenizer_from="demo")
    spec = {"work": str(work), "model_dir": str(model_dir), **size}
    t0 = time.perf_counter()
    res = run_child(["benchmarks.useful_compute", "--child", json.dumps(spec)],
                    timeout={"smoke": 300, "quick": 1800, "full": 5400}[mode])
    fr, speed = res["fractions"], res["speed"]
    base = speed["naive padding"]
    ratios = {k: median(a / b for a, b in zip(v, base)) for k, v in speed.items()}
    best = max((k for k in STRATEGIES), key=lambda k: ratios[k])
    default = res["default"]
    sup_naive = fr["naive padding"]["supervised"]
    rows = []
    for name in STRATEGIES:
        f = fr[name]
        rows.append({"strategy": name, "real_fraction": rnd(f["real_fraction"], 4), "steps_per_epoch": f["batches"],
                     "supervised_tokens": f["supervised"], "real_tokens": f["real"],
                     "tokens_per_s": rnd(median(speed[name]), 1), "speed_vs_naive": rnd(ratios[name])})
    iso = res["isolation"]
    figures = [
        figure("real-token fraction, ModelForge default SFT setting", rnd(default["real_fraction"], 4),
               target=">= 0.95", met=default["real_fraction"] >= 0.95,
               note=f"default = {default['name']} ({default['batching']}), batch {size['batch']}"),
    ]
    figures += [figure(f"real-token fraction, {r['strategy']}", r["real_fraction"],
                       note=f"real tokens/s x{r['speed_vs_naive']} vs naive") for r in rows]
    figures += [
        figure("fastest strategy (real tokens/s)", best, note=f"x{ratios[best]:.2f} vs naive padding"),
        figure("packing keeps completion masks (same supervised tokens as naive)",
               fr["packing (bfd)"]["supervised"] == sup_naive,
               note=f"{fr['packing (bfd)']['supervised']} vs {sup_naive}; padding-free keeps "
                    f"{fr['padding-free']['supervised']} (trl does not truncate there)"),
        figure("packed examples isolated (max |logit diff| vs alone)", f"{iso['max_abs_logit_diff']:.2e}",
               met=iso["max_abs_logit_diff"] < 1e-3,
               note=f"{iso['attention']} attention; without restarting positions: "
                    f"{iso['without_position_restart']:.2e}"),
    ]
    return {"name": "useful_compute", "title": "Useful compute: real tokens per batching strategy",
            "setup": {"data": alpaca_path().name, "rows (fractions)": size["fraction_rows"] or "all",
                      "rows (speed)": size["samples"], "batch": size["batch"], "max_length": MAX_LENGTH,
                      "model": f"{Path(model_dir).name} ({n_params(model_dir) / 1e6:.1f}M parameters, demo tokenizer)"
                      if n_params(model_dir) else "demo", "pairs": size["reps"], "warmup_steps": size["warmup"],
                      "measured_steps": size["steps"], "wall_s": round(time.perf_counter() - t0, 1)},
            "table": rows, "figures": figures, "raw": res,
            "plot": {"kind": "strategies", "title": "Real-token fraction and speed per batching strategy",
                     "labels": [r["strategy"] for r in rows],
                     "fraction": [r["real_fraction"] for r in rows],
                     "speed": [r["speed_vs_naive"] for r in rows]}}


def main(argv: list[str] | None = None) -> int:
    return child_main(child, argv)


if __name__ == "__main__":
    sys.exit(main())
