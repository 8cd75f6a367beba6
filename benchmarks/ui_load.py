"""UI under load: the app's latency while a run trains, against the same app idle.

The app runs in its own process (``python -m benchmarks.ui_load --serve``, the way
``modelforge ui`` serves it, with torch's default threads); this process measures it from
outside, as users and scripts do:

- an unrelated UI action: ``/list_models`` and ``/hardware`` through ``gradio_client``, one
  after the other, idle and then while a run trains (p50/p95, and loaded/idle);
- status polling: 20 ``gradio_client`` clients, each calling ``/training_status`` once a second
  (the Train tab's rate) from 4 processes (one process driving 20 clients spends ~55 ms of CPU
  per call under one GIL and would measure itself); and the app's own CPU per status call;
- step-to-plot: the Train tab open in headless Chromium; a MutationObserver stamps each step
  number the status line above the plots shows (the plots are redrawn in the same update);
  the delay is that stamp minus the step event's own timestamp in the run's ``events.jsonl``.
  The same is measured through the API: a client polling ``/training_status`` once a second,
  like the tab's timer.

The run: SFT + LoRA on the ~29M Llama (the demo model in smoke mode) on alpaca data, logging
every step, stopped when the measurement ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import ROOT, alpaca_path, build_model, child_env, figure, free_port, median, quantile, rnd, setup_env

SIZES = {
    "smoke": dict(action_calls=2, pollers=2, poll_s=1.5, browser_s=0.0, model="demo", max_samples=48),
    "quick": dict(action_calls=20, pollers=20, poll_s=10.0, browser_s=25.0, model="29m"),
    "full": dict(action_calls=60, pollers=20, poll_s=30.0, browser_s=60.0, model="29m"),
}
TARGET_ACTION_P95_S = 0.300
TARGET_STEP_TO_PLOT_S = 1.5
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# -- the server process ----------------------------------------------------------------------------
def serve(spec: dict) -> None:
    setup_env()
    os.environ["MODELFORGE_HOME"] = spec["home"]
    from app.services import build_services
    from app.ui import launch

    services = build_services(f"sqlite:///{Path(spec['home']) / 'records.db'}")
    running = launch(host="127.0.0.1", port=spec["port"], block=False, services=services)
    print(json.dumps({"url": running.url}), flush=True)
    try:
        sys.stdin.read()  # until the measuring process closes the pipe
    finally:
        cur = services.jobs.current
        if cur:
            services.jobs.stop(cur)
        running.close()


def _start_server(home: Path, **extra_env: str) -> tuple[subprocess.Popen, str]:
    spec = {"home": str(home), "port": free_port()}
    env = child_env(**extra_env)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(k, None)  # the app as users run it: torch's default threads
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.ui_load", "--serve", json.dumps(spec)], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("{"):
        proc.kill()
        raise RuntimeError("the app did not start")
    return proc, json.loads(line)["url"]


# -- measurements ------------------------------------------------------------------------------------
def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def _timed(client, api: str, **kw) -> float:
    t0 = time.perf_counter()
    client.predict(api_name=api, **kw)
    return time.perf_counter() - t0


def ui_actions(client, calls: int) -> dict:
    out = {"/list_models": [], "/hardware": []}
    for i in range(calls):
        for api in (out if i % 2 == 0 else reversed(list(out))):
            out[api].append(_timed(client, api))
    return out


def polling(url: str, clients: int, seconds: float, processes: int = 4) -> list[float]:
    """``clients`` gradio_client clients, each calling /training_status once a second (the Train
    tab's rate), spread over ``processes`` processes: one Python process driving 20 clients spends
    ~55 ms of its own CPU per call under one GIL and would measure itself, not the app."""
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.ui_load", "--poll",
                               json.dumps({"url": url, "clients": n, "seconds": seconds})],
                              cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for n in per if n]
    lat: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        lat += json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    return lat


def _poll_child(spec: dict) -> None:
    """One polling process: its clients connect first, then all poll at 1 Hz for the given seconds."""
    clients = [_client(spec["url"]) for _ in range(spec["clients"])]
    lat: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.5
    stop = start + spec["seconds"]

    def loop(i, c):
        tick = start + i / max(len(clients), 1)  # spread the clients over the second
        while tick < stop:
            time.sleep(max(0.0, tick - time.perf_counter()))
            d = _timed(c, "/training_status")
            with lock:
                lat.append(d)
            tick += 1.0

    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    print(json.dumps(lat), flush=True)


def server_cpu_per_call(client, pid: int, calls: int) -> float:
    """Milliseconds of the app process's CPU per /training_status call (measured idle)."""
    import psutil

    proc = psutil.Process(pid)
    t0 = sum(proc.cpu_times()[:2])
    for _ in range(calls):
        client.predict(api_name="/training_status")
    return (sum(proc.cpu_times()[:2]) - t0) / calls * 1000


def api_step_delays(client, events_file: Path, seconds: float) -> tuple[list[float], list[dict]]:
    """A client polling /training_status once a second (the Train tab's timer): for each step it
    sees first, now minus that step's event time (not for the step already there at the first poll).
    Also returns every poll (for the raw data)."""
    seen: dict[int, float] = {}
    polls = []
    stop = time.time() + seconds
    while time.time() < stop:
        t_ask = time.time()
        status = client.predict(api_name="/training_status")
        now = time.time()
        step = int(status.get("step") or 0)
        polls.append({"asked": t_ask, "answered": now, "step": step})
        if step and step not in seen:
            seen[step] = now
        time.sleep(max(0.0, 1.0 - (now - t_ask)))
    times = _step_times(events_file)
    for p in polls:
        p["step_event_time"] = times.get(p["step"])
    already = polls[0]["step"] if polls else None  # shown before the first poll: its delay is not ours
    return [seen[s] - times[s] for s in seen if s in times and s != already], polls


def _step_times(events_file: Path) -> dict[int, float]:
    out = {}
    for line in events_file.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") == "step":
            out.setdefault(int(ev["step"]), float(ev["time"]))
    return out


OBSERVER_JS = """
() => {
  window.__mf = [];
  const el = document.querySelector('#train-status');
  const note = () => { const m = el.innerText.match(/step\\s+(\\d+)\\s*\\//); if (m) window.__mf.push([Date.now(), +m[1]]); };
  new MutationObserver(note).observe(el, {subtree: true, childList: true, characterData: true});
  note();
}
"""


def browser_step_delays(url: str, events_file: Path, seconds: float) -> dict:
    """Step number first shown in the Train tab's status (beside the plots) minus its event time."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#tab-train-button", timeout=60_000)
        page.click("#tab-train-button")
        page.wait_for_selector("#train-status", state="visible", timeout=30_000)
        page.evaluate(OBSERVER_JS)
        time.sleep(seconds)
        log = page.evaluate("window.__mf")
        browser.close()
    first: dict[int, float] = {}
    for ms, step in log:
        first.setdefault(int(step), ms / 1000.0)
    times = _step_times(events_file)
    start = min(first.values()) if first else 0
    # The first value is the page catching up on a step shown before the observer started: skip it.
    return {"delays": [first[s] - times[s] for s in first if s in times and first[s] > start + 0.01],
            "steps_seen": len(first)}


def _stats(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_s": rnd(quantile(xs, 0.5)), "p95_s": rnd(quantile(xs, 0.95)),
            "max_s": rnd(max(xs) if xs else float("nan"))}


def _stop_server(proc: subprocess.Popen) -> None:
    proc.stdin.close()  # the server stops the run and closes
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()  # the stopped run's checkpoint is not needed
        proc.wait()


def actions_while_training(home: Path, config: dict, calls: int, **extra_env: str) -> dict:
    """The UI actions' latencies while a run trains, in an app started with ``extra_env``."""
    home.mkdir(parents=True, exist_ok=True)
    proc, url = _start_server(home, **extra_env)
    try:
        client = _client(url)
        started = client.predict(config=config, preset="", api_name="/start_training")
        _wait_for_steps(client, 2, timeout=900)
        out = ui_actions(client, calls)
        client.predict(run_id=started["run_id"], api_name="/stop_training")
        client.close()
        return out
    finally:
        _stop_server(proc)


def _wait_for_steps(client, n: int, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(api_name="/training_status")
        if status.get("status") in ("failed", "completed", "cancelled"):
            raise RuntimeError(f"the run ended before the measurement: {status.get('status')} {status.get('error')}")
        if int(status.get("step") or 0) >= n:
            return status
        time.sleep(0.5)
    raise RuntimeError("the run did not reach its first steps in time")


def run(mode: str, work: Path) -> dict:
    size = SIZES[mode]
    work = Path(work) / "ui_load"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    home = work / "home"
    home.mkdir()
    setup_env()
    if size["model"] == "demo":
        model = "demo"
    else:
        model = str(build_model(work.parent / "models" / "llama-29m"))
    phases = {}
    t_phase = time.perf_counter()

    def phase(name):
        nonlocal t_phase
        phases[name] = round(time.perf_counter() - t_phase, 2)
        t_phase = time.perf_counter()

    proc, url = _start_server(home)
    phase("server start")
    try:
        main = _client(url)
        phase("clients")
        idle_actions = ui_actions(main, size["action_calls"])
        idle_poll = polling(url, size["pollers"], size["poll_s"])
        cpu_ms = server_cpu_per_call(main, proc.pid, size["action_calls"] * 2)
        config = {"model": model, "dataset": str(alpaca_path()), "max_steps": 100_000, "logging_steps": 1,
                  "save_steps": 100_000, "validation_split": 0.0, "batch_size": 4, "max_length": 512,
                  "max_samples": size.get("max_samples", 0), "name": "bench-ui-load"}
        phase("idle phase")
        started = main.predict(config=config, preset="", api_name="/start_training")
        status = _wait_for_steps(main, 2, timeout=900)
        phase("run start to step 2")
        run = [r for r in main.predict(api_name="/list_runs") if r["id"] == started["run_id"]][0]
        events_file = Path(run["output_dir"]) / "events.jsonl"
        load_actions = ui_actions(main, size["action_calls"])
        load_poll = polling(url, size["pollers"], size["poll_s"])
        api_delays, api_polls = api_step_delays(main, events_file, max(size["poll_s"], 2.0))
        browser = {"delays": [], "steps_seen": 0, "skipped": "smoke mode"}
        if size["browser_s"]:
            if Path(CHROMIUM).exists():
                browser = browser_step_delays(url, events_file, size["browser_s"])
            else:
                browser["skipped"] = "chromium not installed"
        steps = _step_times(events_file)
        step_s = median([b - a for a, b in zip(sorted(steps.values()), sorted(steps.values())[1:])])
        phase("training phase")
        main.predict(run_id=started["run_id"], api_name="/stop_training")
        main.close()
    finally:
        _stop_server(proc)
        phase("server stop")
    same_priority = None
    if mode != "smoke":  # the same, with the trainer at the app's CPU priority (what the default nice buys)
        same_priority = actions_while_training(work / "home-nice0", config, size["action_calls"],
                                               MODELFORGE_TRAINER_NICE="0")
        phase("trainer at the app's priority")
    act_idle = idle_actions["/list_models"] + idle_actions["/hardware"]
    act_load = load_actions["/list_models"] + load_actions["/hardware"]
    p95_load = quantile(act_load, 0.95)
    delays = browser["delays"] or api_delays
    where = "browser" if browser["delays"] else "API poll"
    s2p = quantile(delays, 0.95)
    scored = mode != "smoke"
    figures = [
        figure("UI action p95 while training (/list_models, /hardware)", rnd(p95_load), unit="s",
               target=f"< {TARGET_ACTION_P95_S:g} s", met=p95_load < TARGET_ACTION_P95_S if scored else None,
               note=f"idle p95 {quantile(act_idle, 0.95):.3f} s; loaded/idle p95 "
                    f"{p95_load / max(quantile(act_idle, 0.95), 1e-9):.2f}"),
        *([figure("UI action p95 while training, trainer at the app's CPU priority (MODELFORGE_TRAINER_NICE=0)",
                  rnd(quantile(same_priority["/list_models"] + same_priority["/hardware"], 0.95)), unit="s",
                  note="the default runs the trainer thread 10 nice levels below the app's; ratio to the default "
                       f"{quantile(same_priority['/list_models'] + same_priority['/hardware'], 0.95) / max(p95_load, 1e-9):.2f}")]
          if same_priority else []),
        figure("UI action p95 while training, /list_models", rnd(quantile(load_actions["/list_models"], 0.95)),
               unit="s"),
        figure("UI action p95 while training, /hardware", rnd(quantile(load_actions["/hardware"], 0.95)), unit="s"),
        figure(f"/training_status p95, {size['pollers']} gradio_client clients polling once a second, while training",
               rnd(quantile(load_poll, 0.95)), unit="s",
               note=f"{len(load_poll)} calls in {size['poll_s']:g} s from {min(4, size['pollers'])} processes; "
                    f"idle p95 {quantile(idle_poll, 0.95):.3f} s"),
        figure("app CPU per /training_status call (idle)", rnd(cpu_ms, 1), unit="ms",
               note="the handler itself is ~2 ms; the rest is Gradio's queue (join + event stream)"),
        figure(f"step-to-plot delay p95 ({where})", rnd(s2p), unit="s", target=f"< {TARGET_STEP_TO_PLOT_S:g} s",
               met=s2p < TARGET_STEP_TO_PLOT_S if scored and delays else None,
               note=f"p50 {quantile(delays, 0.5):.3f} s over {len(delays)} steps; a step every {step_s:.2f} s; "
                    "the Train tab polls once a second"),
        figure("step-to-status delay p95 (API poll once a second)", rnd(quantile(api_delays, 0.95)), unit="s",
               note=f"p50 {quantile(api_delays, 0.5):.3f} s over {len(api_delays)} steps"),
    ]
    table = [
        {"what": "UI action (/list_models + /hardware)", "idle": _stats(act_idle), "training": _stats(act_load)},
        {"what": f"/training_status x{size['pollers']} clients", "idle": _stats(idle_poll),
         "training": _stats(load_poll)},
        {"what": "step-to-plot (browser)", "idle": None, "training": _stats(browser["delays"])},
        {"what": "step-to-status (API, 1 Hz poll)", "idle": None, "training": _stats(api_delays)},
    ]
    limits = (f"CPU contention, not the handlers: idle, the same actions answer with p95 "
              f"{quantile(act_idle, 0.95):.3f} s; while training, torch keeps both cores busy. The trainer "
              "thread (and the OpenMP workers it starts) runs 10 nice levels below the app "
              "(core.jobs.lower_thread_priority, MODELFORGE_TRAINER_NICE), so a request is served first; the "
              "figure with the trainer at the app's priority shows what that buys. The handlers are cheap "
              "(/list_models is one SQL query, /training_status ~2 ms); a gradio_client round trip (queue join + "
              "event stream, ~13 ms of the app's CPU) is most of the rest.")
    return {"name": "ui_load", "title": "UI under load: latency while a run trains", "limits": limits,
            "setup": {"model": Path(model).name if model != "demo" else "demo", "batch": 4, "logging_steps": 1,
                      "clients polling": size["pollers"], "seconds per phase": size["poll_s"],
                      "browser seconds": size["browser_s"], "steps seen in the browser": browser["steps_seen"]},
            "figures": figures, "table": table,
            "raw": {"idle_actions": idle_actions, "load_actions": load_actions, "same_priority_actions": same_priority, "api_delays": api_delays,
                    "api_polls": api_polls, "phases_s": phases, "idle_poll": idle_poll, "load_poll": load_poll,
                    "browser": browser, "status_at_start": {k: status.get(k) for k in ("step", "total_steps")}},
            "plot": {"kind": "latency", "title": "UI latency, idle vs while training (p50 / p95)",
                     "labels": ["UI action", f"status x{size['pollers']}", "step-to-plot"],
                     "idle_p50": [quantile(act_idle, .5), quantile(idle_poll, .5), None],
                     "idle_p95": [quantile(act_idle, .95), quantile(idle_poll, .95), None],
                     "load_p50": [quantile(act_load, .5), quantile(load_poll, .5), quantile(delays, .5)],
                     "load_p95": [p95_load, quantile(load_poll, .95), s2p]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", help="run the app (JSON spec: home, port)")
    parser.add_argument("--poll", help="run polling clients (JSON spec: url, clients, seconds)")
    args = parser.parse_args(argv)
    if args.poll:
        _poll_child(json.loads(args.poll))
    else:
        serve(json.loads(args.serve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
