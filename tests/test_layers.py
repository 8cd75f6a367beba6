"""The layers of ModelForge, checked: every import (at the top and inside functions, not under
TYPE_CHECKING) points down the table below, so no two modules import each other, even through
others (issue 13; /work/shared/ARCHITECTURE.md, "The layers inside core")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module may import from its own layer or below, never above.
LAYERS = [
    ("errors, events", ["core.errors", "core.events", "core.deferred"]),
    ("config, paths, records, data, hardware", ["core.config", "core.paths", "core.records", "core.data",
                                                "core.hardware", "core.memory", "core.demo_model",
                                                "core.evaluation", "core.limits", "core.public_mode",
                                                "core.faults", "core.doctor", "core.trackers", "core.runs_compare",
                                                "core.speed"]),
    ("run: the context, the result, the plugin protocols", ["core.run", "core.plugins", "core.train_more"]),
    ("models: the shared transformers/peft helpers", ["core.models"]),
    ("plugins: providers, strategies (and their tasks), inference",
     ["core.providers", "core.strategies", "core.tasks", "core.inference"]),
    ("registry and checks", ["core.registry", "core.checks", "core.catalog", "core.compare_eval"]),
    ("export and serve: a trained model to GGUF, Ollama, an OpenAI-compatible server", ["core.export", "core.serve"]),
    ("callback, distributed", ["core.callback", "core.distributed"]),
    ("engine", ["core.engine", "core.worker"]),
    ("service", ["core.jobs", "core.service"]),
    ("components", ["components"]),
    ("app", ["app"]),
]


def _layer(module: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("core", "components", "app"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in node.body for n in ast.walk(sub)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def test_every_import_points_down_the_layers():
    modules = _modules()
    up = set()
    for module, path in modules.items():
        here = _layer(module)
        if here is None:
            continue
        for target in _imports(path, module):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            there = _layer(target) if target and target != module else None
            if there is not None and there > here:
                up.add(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert not up, "imports pointing up a layer:\n" + "\n".join(sorted(up))


def test_every_module_has_a_layer():
    packages = {"core", "core.providers", "core.strategies", "core.strategies.examples", "components", "app"}
    assert [m for m in _modules() if _layer(m) is None and m not in packages] == []
