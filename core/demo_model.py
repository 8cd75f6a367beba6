"""The bundled demo model: a tiny Llama that ModelForge builds itself, offline, deterministically.

Why build rather than download: ModelForge must work on a laptop with no network, and CI has
none. The recipe (a byte-level BPE trained on the bundled example texts, a 2-layer Llama with
random weights from a fixed seed, and a ChatML chat template with ``{% generation %}`` markers
so trl can mask everything but the assistant's words) takes about a second and is cached under
``MODELFORGE_HOME/cache/demo-<version>``.

Sizes: every Linear's ``out_features`` is a multiple of 32 so bitsandbytes' 4-bit kernels work
on the CPU (QLoRA on the demo). ~1.3M parameters: a few hundred steps take a minute or two on
2 CPU cores, and it is big enough to memorise the identity demo.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from core.paths import EXAMPLES, cache_dir

DEMO_NAME = "demo"
# Bump when the recipe changes: a new folder is built and old caches are ignored.
DEMO_VERSION = "1"

VOCAB_SIZE = 2048          # multiple of 32 (lm_head out_features); enough for the bundled texts
HIDDEN = 128
INTERMEDIATE = 384
LAYERS = 2
HEADS = 4
KV_HEADS = 2               # k/v projections: 2 heads * 32 dims = 64 outputs, a multiple of 32
MAX_POSITIONS = 2048

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML. The {% generation %} markers let trl compute the loss on assistant turns only
# (assistant_only_loss); models without them get completion-only loss instead.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_lock = threading.Lock()


def is_demo(name: str) -> bool:
    return name.strip().lower() == DEMO_NAME


def demo_path() -> Path:
    """Return the folder of the demo model, building it first if needed (thread-safe)."""
    target = cache_dir() / f"demo-{DEMO_VERSION}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    with _lock:
        if not (target / "config.json").exists():
            build_demo_model(target)
    return target


def _corpus() -> list[str]:
    """Texts the tokenizer learns its merges from: the bundled examples, deterministic order."""
    texts: list[str] = []
    for path in sorted(EXAMPLES.glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            texts.extend(str(v) for v in row.values() if isinstance(v, str) and v)
    # Role names and words of the chat template, so they become single tokens.
    texts += ["system user assistant tool", "Who are you? I am an AI assistant."] * 50
    return texts


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_demo_model(out_dir: Path) -> Path:
    """Build tokenizer and model into ``out_dir`` (atomically: a half-built folder never shows)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer(tmp)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        # 0.1 rather than the usual 0.02: with random weights a 0.02 lm_head gives near-uniform
        # logits that LoRA (which leaves lm_head alone) cannot sharpen; loss would stall near 6.
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # deterministic weights, whoever builds them
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64, do_sample=False,
    )
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "MODELFORGE_DEMO.txt").write_text(
        f"ModelForge demo model v{DEMO_VERSION}: a randomly initialised 2-layer Llama, built offline.\n"
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir
