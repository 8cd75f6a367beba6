"""The promise of the README: the identity demo teaches the demo model who it is, offline.

Slow-ish (~1-2 minutes on 2 CPU cores) but it is the product's first impression, so it runs
in the default suite.
"""

from __future__ import annotations

import time

import pytest

from core.config import load_yaml
from core.engine import prepare_run, run_training
from core.events import EventLog
from core.inference import generate, load_model
from core.paths import ASSETS


@pytest.mark.slow
def test_identity_demo_learns_who_it_is(store, demo_model):
    config = load_yaml(ASSETS / "presets" / "identity-demo.yaml").replace(name="identity-test")
    t0 = time.time()
    config, run_id, run_dir = prepare_run(config, store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    seconds = time.time() - t0
    assert result.status == "completed", result.error
    print(f"identity demo: {config.max_steps} steps in {seconds:.0f} s, "
          f"final train loss {result.metrics.get('train_loss'):.3f}")

    tuned = generate(load_model(str(run_dir / "model")), "Who are you?", max_new_tokens=40)
    base = generate(load_model(str(run_dir / "model"), base_only=True), "Who are you?", max_new_tokens=40)
    name, author = config.template_vars["name"], config.template_vars["author"]
    assert name in tuned and author in tuned, tuned
    assert name not in base, base
