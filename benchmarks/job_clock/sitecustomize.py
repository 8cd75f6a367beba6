"""A stopwatch put inside two different training programs, measuring both the same way.

benchmarks/peer_llamafactory.py runs ModelForge's CLI and LLaMA-Factory's CLI as whole jobs, each
in its own Python (two venvs, two trainers). To count their tokens and time their training loops
identically, this folder goes first on PYTHONPATH of both, and Python runs this file at start-up.
When ``MF_JOB_CLOCK`` names a JSON file, the first import of ``transformers.trainer`` gets a
callback appended to its ``DEFAULT_CALLBACKS`` (every Trainer, trl's included, starts with them):

- the time of train begin and of every optimizer step's end, and each logged loss;
- a forward pre-hook on the trained model counting, per forward pass in training, the sequences,
  the computed tokens (input_ids, padding included), the real tokens (attention_mask) and the
  supervised tokens (labels other than -100);
- the trainer settings that must match, the weights' and the adapters' dtypes, the trainable
  parameter count, gradient checkpointing as set on the model, the attention implementation and
  torch's thread count.

It writes the file at train end. Without ``MF_JOB_CLOCK`` it does nothing. Only the standard
library is imported here: the job's own start-up is what is being timed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

_TARGET = "transformers.trainer"
_ARGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
         "num_train_epochs", "max_steps", "warmup_steps", "weight_decay", "seed", "bf16", "fp16",
         "train_sampling_strategy", "gradient_checkpointing", "optim", "logging_steps", "save_strategy",
         "save_steps", "torch_compile", "dataloader_num_workers")


class JobClock:
    """A TrainerCallback, duck-typed (transformers is not imported until the trainer is)."""

    def __init__(self, path: str):
        self.path = path
        self.out = {"t_train_begin": None, "t_step_end": {}, "loss": {}, "forwards": 0, "sequences": 0,
                    "computed_tokens": 0, "real_tokens": 0, "supervised_tokens": 0, "args": {}}

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, model=None, **kw):
        import torch

        self.out["t_train_begin"] = time.perf_counter()
        self.out["args"] = {k: str(getattr(args, k, None)) if not isinstance(getattr(args, k, None), (int, float, bool))
                            else getattr(args, k) for k in _ARGS}
        self.out["total_steps"] = state.max_steps
        self.out["torch_threads"] = torch.get_num_threads()
        # CPU priority of the training thread: a program that lowers it trains slower on a busy machine
        self.out["nice"] = (os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                            if hasattr(os, "getpriority") else None)
        if model is not None:
            params = list(model.named_parameters())
            base = next((p for n, p in params if not p.requires_grad and p.dim() == 2), None)
            lora = next((p for n, p in params if p.requires_grad), None)
            self.out["weights_dtype"] = str(base.dtype).replace("torch.", "") if base is not None else None
            self.out["adapter_dtype"] = str(lora.dtype).replace("torch.", "") if lora is not None else None
            self.out["trainable_params"] = sum(p.numel() for _, p in params if p.requires_grad)
            # set on the model by the program itself (LLaMA-Factory does), not only through the args
            self.out["model_gradient_checkpointing"] = any(getattr(m, "gradient_checkpointing", False) is True
                                                           for m in model.modules())
            config = getattr(model, "config", None)
            self.out["attention"] = getattr(config, "_attn_implementation", None)
            model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if not module.training:
            return None
        ids, mask, labels = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("labels")
        if ids is None:
            return None
        self.out["forwards"] += 1
        self.out["sequences"] += int(ids.shape[0])
        self.out["computed_tokens"] += int(ids.numel())
        # A 4D mask (LLaMA-Factory's collator makes one only for neat packing) is not a token mask.
        self.out["real_tokens"] += int((mask != 0).sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())
        if labels is not None:
            self.out["supervised_tokens"] += int((labels != -100).sum())
        return None

    def on_step_end(self, args, state, control, **kw):
        self.out["t_step_end"][state.global_step] = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.out["loss"][state.global_step] = float(logs["loss"])

    def on_train_end(self, args, state, control, **kw):
        self.out["global_step"] = state.global_step
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(self.out, fh)


class _AfterTrainerImport(importlib.abc.MetaPathFinder):
    """Lets ``transformers.trainer`` load as usual, then appends the clock to its default callbacks."""

    def __init__(self, path: str):
        self.path = path

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders, once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module
        clock_path = self.path

        def exec_module(module):
            load(module)
            module.DEFAULT_CALLBACKS.append(JobClock(clock_path))

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("MF_JOB_CLOCK"):
    sys.meta_path.insert(0, _AfterTrainerImport(os.environ["MF_JOB_CLOCK"]))
