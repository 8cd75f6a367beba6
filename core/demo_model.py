"""The bundled demo model: a tiny Llama that ModelForge builds itself, offline, deterministically.

Why build rather than download: ModelForge must work on a laptop with no network, and CI has
none. The recipe (a byte-level BPE trained on the bundled example texts, a 2-layer Llama with
random weights from a fixed seed, and a ChatML chat template with ``{% generation %}`` markers
so trl can mask everything but the assistant's words) takes about a second and is cached under
``MODELFORGE_HOME/cache/demo-<version>``.

Sizes: every Linear's ``out_features`` is a multiple of 32 so bitsandbytes' 4-bit kernels work
on the CPU (QLoRA on the demo). ~0.9M parameters: a few hundred steps take a minute or two on
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
    # GPT-2's byte-level split exactly (no normalizer, GPT-2's regex, no prefix space): the GGUF
    # export converts it as llama.cpp's "gpt-2" pre-tokenizer (core/export/_llamacpp_main.py).
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


# -- the demo set for the other tasks ----------------------------------------------------------------
# The same tokenizer recipe (byte-level BPE on the bundled texts) wrapped for each architecture:
# a tiny T5 for summarization and a tiny BERT with a span head for extractive QA. Each has its
# own version and cache folder, so changing one never rebuilds the others.
DEMO_SEQ2SEQ_VERSION = "1"
DEMO_QA_VERSION = "1"
# Explicit names, for when the task alone does not say which demo is meant (e.g. a causal LM
# trained for summarization with a prompt: --task summarization --model demo-causal).
DEMO_ALIASES = {"demo-causal": "text-generation", "demo-seq2seq": "summarization", "demo-qa": "extractive-qa"}


def demo_for(name: str, task: str = "text-generation") -> Path | None:
    """The demo folder that ``name`` means for ``task`` (built on first use); None if not a demo.

    'demo' follows the task: text-generation -> the causal Llama, summarization -> the T5,
    extractive-qa -> the BERT QA model. 'demo-causal', 'demo-seq2seq', 'demo-qa' name one.
    """
    key = name.strip().lower()
    if key in DEMO_ALIASES:
        task = DEMO_ALIASES[key]
    elif key != DEMO_NAME:
        return None
    if task == "summarization":
        return _cached(f"demo-seq2seq-{DEMO_SEQ2SEQ_VERSION}", build_demo_seq2seq)
    if task == "extractive-qa":
        return _cached(f"demo-qa-{DEMO_QA_VERSION}", build_demo_qa)
    return demo_path()


def _cached(folder: str, build) -> Path:
    target = cache_dir() / folder
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    with _lock:
        if not (target / "config.json").exists():
            build(target)
    return target


def _staging(out_dir: Path) -> Path:
    tmp = Path(out_dir).with_name(Path(out_dir).name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out_dir: Path, note: str) -> Path:
    (tmp / "MODELFORGE_DEMO.txt").write_text(note + "\n")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir


def _seeded(make):
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # deterministic weights, whoever builds them
    try:
        return make()
    finally:
        torch.random.set_rng_state(state)


def build_demo_seq2seq(out_dir: Path) -> Path:
    """A 2+2-layer T5 (~0.9M parameters) whose tokenizer appends the end token, as T5's does."""
    from tokenizers import processors
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tmp = _staging(out_dir)
    tokenizer = build_tokenizer(tmp)
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.eos_token_id)])
    tokenizer.chat_template = None  # a seq2seq model reads plain text, not a chat
    (tmp / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(tmp)
    config = T5Config(
        vocab_size=VOCAB_SIZE, d_model=HIDDEN, d_kv=32, d_ff=256, num_layers=LAYERS,
        num_decoder_layers=LAYERS, num_heads=HEADS,  # q/k/v/o: 4 heads * 32 = 128 outputs
        relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="relu",
        # 0.1 rather than T5's 1.0: at 1.0 the untrained model starts at a loss of ~70; at 0.1 near
        # ln(vocab) ~ 7.6, like the causal demo. (transformers 5 always ties T5's output layer to
        # its embeddings.)
        initializer_factor=0.1,
        is_encoder_decoder=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from the pad token
    )
    model = _seeded(lambda: T5ForConditionalGeneration(config))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, max_new_tokens=48, do_sample=False,
        # T5 ties its output layer to the embeddings, so an untrained one mostly repeats its input:
        # the start token, i.e. pad, and the summary comes out empty. Pad is never a real output.
        suppress_tokens=[tokenizer.pad_token_id])
    model.save_pretrained(tmp, safe_serialization=True)
    return _publish(tmp, out_dir,
                    f"ModelForge seq2seq demo v{DEMO_SEQ2SEQ_VERSION}: a random 2-layer T5, built offline.")


def build_demo_qa(out_dir: Path) -> Path:
    """A 2-layer BERT with a span head (~0.6M parameters); its tokenizer frames a pair as
    <cls> question <sep> context <sep>, with segment ids and character offsets."""
    from tokenizers import processors
    from transformers import BertConfig, BertForQuestionAnswering, PreTrainedTokenizerFast

    tmp = _staging(out_dir)
    tokenizer = build_tokenizer(tmp)
    cls, sep = "<|im_start|>", tokenizer.eos_token
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(cls), tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        # Offsets without the leading space that byte-level tokens carry: spans map to the words.
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                                      special_tokens=[(cls, cls_id), (sep, sep_id)]),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, cls_token=cls, sep_token=sep, pad_token=tokenizer.pad_token,
        eos_token=sep, model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # BERT's segment ids
    (tmp / "chat_template.jinja").unlink(missing_ok=True)  # an encoder reads pairs, not chats
    tokenizer.save_pretrained(tmp)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=256, max_position_embeddings=512, type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = _seeded(lambda: BertForQuestionAnswering(config))
    model.save_pretrained(tmp, safe_serialization=True)
    return _publish(tmp, out_dir, f"ModelForge QA demo v{DEMO_QA_VERSION}: a random 2-layer BERT with a span head, "
                                  "built offline.")
