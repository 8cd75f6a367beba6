"""Run ModelForge's benchmark suite and write the results.

    python -m benchmarks.run --quick     # every benchmark, about 10 minutes on 2 CPU cores
    python -m benchmarks.run --full      # more repetitions and steps (tens of minutes)
    python -m benchmarks.run --smoke --out /tmp/bench   # tiny: checks that it all runs (CI)

Writes ``benchmarks/results.json`` (every figure and the raw measurements) and
``docs/benchmarks.md`` (a table per benchmark, with the date, machine and versions, and plots
under ``docs/benchmarks/`` when matplotlib is installed: ``pip install -e '.[bench]'``). With
``--out DIR`` both go to DIR instead. ``--only engine_overhead,generation`` re-runs a subset and
updates those benchmarks in an existing results.json; ``--render`` only rewrites the Markdown.

Each figure is a ratio or a fraction of two things measured side by side in the same run,
alternated over repetitions (medians reported), because a shared machine is noisy. Models and
data are built offline; nothing is downloaded, except that ``peer_llamafactory`` pip-installs
LLaMA-Factory into ``tmp/venv-llamafactory`` on its first ``--quick``/``--full`` run (``--smoke``
skips it; offline it says so in one line). Exit status: 0 when every benchmark ran (whether or
not its target was met), 1 when one failed to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import ROOT, Unavailable, machine, setup_env, versions

ORDER = ("validation_throughput", "cold_start", "generation", "useful_compute", "engine_overhead", "cpu_speed",
         "ui_load", "peer_llamafactory")
RESULTS = ROOT / "benchmarks" / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"
GPU_DOC = ROOT / "benchmarks" / "gpu_check.md"


def _load(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _met(m) -> str:
    return {True: "met", False: "**not met**", None: ""}[m]


def _table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return out


# -- plots ----------------------------------------------------------------------------------------------
def plot(result: dict, folder: Path) -> str | None:
    """A PNG for results whose picture says more than the table; None without matplotlib."""
    spec = result.get("plot")
    if not spec:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    kind = spec["kind"]
    if kind == "strategies":
        xs = range(len(spec["labels"]))
        ax.bar([x - 0.2 for x in xs], spec["fraction"], width=0.4, label="real-token fraction", color="#2563eb")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("real tokens / computed")
        ax2 = ax.twinx()
        ax2.bar([x + 0.2 for x in xs], [s or 0 for s in spec["speed"]], width=0.4, label="real tokens/s vs naive",
                color="#059669")
        ax2.set_ylabel("real tokens/s vs naive padding")
        ax.set_xticks(list(xs), spec["labels"])
        fig.legend(loc="upper left", fontsize=8)
    elif kind == "bars":
        names = list(spec["series"])
        n = max(len(v) for v in spec["series"].values())
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = spec["series"][name]
            ax.bar([r + i * width for r in range(len(vals))], vals, width=width, label=name)
        ax.set_xticks([r + width * (len(names) - 1) / 2 for r in range(n)], [f"rep {r + 1}" for r in range(n)])
        ax.set_ylabel("tokens/s")
        ax.legend(fontsize=8)
    elif kind == "latency":
        xs = range(len(spec["labels"]))
        for off, key, label, color in ((-0.3, "idle_p50", "idle p50", "#93c5fd"), (-0.1, "idle_p95", "idle p95", "#2563eb"),
                                       (0.1, "load_p50", "training p50", "#fca5a5"),
                                       (0.3, "load_p95", "training p95", "#dc2626")):
            ax.bar([x + off for x in xs], [v or 0 for v in spec[key]], width=0.2, label=label, color=color)
        ax.axhline(0.3, color="#6b7280", ls="--", lw=0.8)
        ax.set_xticks(list(xs), spec["labels"])
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    ax.set_title(spec["title"], fontsize=10)
    fig.tight_layout()
    path = folder / f"{result['name']}.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


# -- markdown -------------------------------------------------------------------------------------------
def markdown(doc: dict, images: dict[str, str], image_dir: str) -> str:
    m, v = doc["machine"], doc["versions"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {doc['date']} in `{doc['mode']}` mode ({doc['wall_s']:.0f} s) with "
        f"`python -m benchmarks.run --{doc['mode']}`. Every figure is a ratio or a fraction of two things "
        "measured side by side in the same run, alternated over repetitions (medians), because the machine "
        "is shared and noisy; absolute times are given for the targets that are times.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} logical cores ({m['physical_cores']} physical), {m['ram_gib']} GiB RAM, "
        f"{m['os']}, Python {m['python']}; load average {m['load_avg_1m_at_start']} at the start, "
        f"{doc.get('load_avg_1m_at_end', '?')} at the end (1-minute averages, the suite's own work included).",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- torch intra-op threads in the training and generation benchmarks: {doc['threads'] or 'torch default'} "
        "(`--threads`); the app in the cold-start and UI benchmarks runs with torch's default.",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for name, res in doc["benchmarks"].items():
        if "error" in res:
            rows.append([name, "did not run", "", res["error"].splitlines()[-1][:160]])
            continue
        for f in res["figures"]:
            if f.get("target"):
                rows.append([f["name"], f"{_fmt(f['value'])} {f.get('unit', '')}".strip(), f["target"], _met(f["met"])])
    lines += _table(["figure", "value", "target", ""], rows) + [""]
    notes = doc.get("notes") or []
    if notes:
        lines += ["## What limits the targets not met, and what was tried", ""] + [f"- {n}" for n in notes] + [""]
    for name, res in doc["benchmarks"].items():
        lines += [f"## {res.get('title', name)}", ""]
        if "error" in res:
            lines += ["Did not run:", "", "```", res["error"][-2000:], "```", ""]
            continue
        lines += _method(_load(name).__doc__ or "")
        if res.get("invocation", doc["date"]) != doc["date"]:  # re-run later with --only
            lines += [f"Measured {res['measured_at']} in `{res.get('mode')}` mode (`--only {name}`), load average "
                      f"{res.get('load_avg_1m')} at its start.", ""]
        setup = {k: val for k, val in (res.get("setup") or {}).items() if not isinstance(val, dict)}
        if setup:
            lines += ["Setup: " + "; ".join(f"{k} {_fmt(val)}" for k, val in setup.items()) + ".", ""]
        lines += _table(["figure", "value", "target", "", "note"],
                        [[f["name"], f"{_fmt(f['value'])} {f.get('unit', '')}".strip(), f.get("target", ""),
                          _met(f.get("met")), f.get("note", "")] for f in res["figures"]]) + [""]
        table = res.get("table")
        if table:
            keys = list(table[0])
            lines += _table(keys, [[_cell(r.get(k)) for k in keys] for r in table]) + [""]
        if res.get("notes"):
            lines += [f"- {n}" for n in res["notes"]] + [""]
        if name in images:
            lines += [f"![{res.get('title', name)}]({image_dir}/{images[name]})", ""]
    # The GPU check runs on a lent GPU machine, not in this suite: its write-up is kept beside it.
    if GPU_DOC.is_file():
        lines += [GPU_DOC.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _method(docstring: str) -> list[str]:
    """The module docstring past its title line (how it is measured), as Markdown."""
    out: list[str] = []
    for para in docstring.strip().split("\n\n")[1:]:
        if para.lstrip().startswith("Child protocol"):
            continue
        if para.lstrip().startswith("- "):
            items = [" ".join(item.split()) for item in ("\n" + para.strip()).split("\n- ") if item.strip()]
            out += [f"- {item}" for item in items]
        else:
            out.append(" ".join(para.split()))
        out.append("")
    return [line.replace("``", "`") for line in out]


def _cell(v):
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return v


# -- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="a few minutes (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="more repetitions and steps")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny sizes: checks that everything runs (figures meaningless)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ORDER)}")
    parser.add_argument("--out", default="", help="write results.json and benchmarks.md here instead of the repo")
    parser.add_argument("--work", default="", help="scratch folder (models are built here once and reused)")
    # Default 0: the thread count the app and the CLI train with (torch's default, the physical
    # cores). Precision and compile gains depend on it (bf16 lost on 1 thread, won on 2), so the
    # suite measures what users get; --threads 1 steadies timings on a crowded machine.
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the training/generation children (0, the default: torch's "
                             "default, as the app trains)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown and plots from the existing results.json")
    args = parser.parse_args(argv)
    mode_name = args.mode or "quick"
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    setup_env()
    os.environ["MF_BENCH_THREADS"] = str(args.threads)
    work = Path(args.work or Path(tempfile.gettempdir()) / f"modelforge-bench-{os.getuid()}")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MODELFORGE_HOME", str(work / "home"))
    if args.out:
        out = Path(args.out)
        results_path, doc_path, image_folder = out / "results.json", out / "benchmarks.md", out / "benchmarks"
    else:
        results_path, doc_path, image_folder = RESULTS, DOC, DOC.parent / "benchmarks"
    if args.render:
        doc = json.loads(results_path.read_text(encoding="utf-8"))
        write_docs(doc, doc_path, image_folder)
        return 0
    t0 = time.time()
    invocation = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    doc = {"date": invocation, "mode": mode_name,
           "machine": machine(), "versions": versions(), "threads": args.threads or None, "benchmarks": {}}
    if args.only and results_path.exists():  # a subset re-run updates those benchmarks, keeps the others
        previous = json.loads(results_path.read_text(encoding="utf-8"))
        doc = {**previous, "benchmarks": dict(previous.get("benchmarks", {}))}
    failed = False
    for name in ORDER:
        if name not in names:
            continue
        print(f"[{time.time() - t0:6.0f}s] {name} ...", file=sys.stderr, flush=True)
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        t_bench = time.time()
        try:
            res = _load(name).run(mode_name, work)
        except Unavailable as exc:  # cannot run here (e.g. a peer that cannot be installed): say why in one line
            failed = True
            res = {"name": name, "error": str(exc)}
            print(f"    did not run: {exc}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - one broken benchmark must not lose the others' figures
            failed = True
            res = {"name": name, "error": traceback.format_exc()}
            print(res["error"], file=sys.stderr)
        res.update(measured_at=started, invocation=invocation, mode=mode_name, load_avg_1m=load, wall_s=round(time.time() - t_bench, 1))
        doc["benchmarks"][name] = res
        for f in res.get("figures", []):
            flag = {True: "  [met]", False: "  [NOT MET]", None: ""}[f.get("met")]
            print(f"    {f['name']}: {_fmt(f['value'])} {f.get('unit', '')}{flag}", file=sys.stderr, flush=True)
    if not args.only or "wall_s" not in doc:
        doc["wall_s"] = round(time.time() - t0, 1)
        doc["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    write_docs(doc, doc_path, image_folder)
    print(f"wrote {results_path} and {doc_path} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


def write_docs(doc: dict, doc_path: Path, image_folder: Path) -> None:
    """The Markdown page (and its plots) for a results document."""
    doc["notes"] = [f"{res.get('title', name)}: {res['limits']}" for name, res in doc["benchmarks"].items()
                    if res.get("limits") and any(f.get("met") is False for f in res.get("figures", []))]
    images = {}
    for name, res in doc["benchmarks"].items():
        if "error" not in res:
            img = plot(res, image_folder)
            if img:
                images[name] = img
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(image_folder, doc_path.parent)
    doc_path.write_text(markdown(doc, images, rel), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
