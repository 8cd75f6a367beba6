"""Summarization: a seq2seq model (T5, BART) on document -> summary pairs, or a causal LM with a
summarization prompt; both scored by ROUGE-1/2/L on summaries generated for the validation split.

The seq2seq path trains LoRA (``task_type=SEQ_2_SEQ_LM``) with transformers' Seq2SeqTrainer; the
causal path turns each pair into a chat (``SUMMARIZE_PROMPT`` + the summary as the answer) and
trains it like SFT with the loss on the summary only. Both trainers get the same evaluation
hook: after the loss pass, generate a summary for each validation document (greedy, at most
``ROUGE_SAMPLES`` of them: generation dominates evaluation time on a CPU) and add ROUGE and
perplexity to the metrics, so every evaluation, not only the last, is scored.
"""

from __future__ import annotations

from typing import Any

from core.data.converters import SUMMARIZE_PROMPT

SUMMARY_TOKENS = 64      # longest generated summary; XSum-style one-sentence summaries fit
MAX_TARGET_TOKENS = 128  # longest reference summary trained on (seq2seq labels)
ROUGE_SAMPLES = 64       # validation documents summarised per evaluation: more is slower, steadier


TEMPLATE_TOKENS = 32     # room left for the instruction and the chat template's markers (causal path)


def chat_rows(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """document/summary pairs as trl's conversational prompt/completion rows (causal path).

    The document is cut so that instruction + document + summary fit ``max_length``: trl would
    otherwise cut the end of the sequence, which is the summary, the only part trained on.
    """
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for r in rows:
        room = max(max_length - TEMPLATE_TOKENS - len(ids(r["summary"])), 16)
        document = tokenizer.decode(ids(r["document"])[:room])
        out.append({"prompt": [{"role": "user", "content": SUMMARIZE_PROMPT.format(document=document)}],
                    "completion": [{"role": "assistant", "content": r["summary"]}]})
    return out


def generate_summaries(model, tokenizer, documents: list[str], *, seq2seq: bool, max_length: int = 512,
                       max_new_tokens: int = SUMMARY_TOKENS, batch_size: int = 4) -> list[str]:
    """Greedy summaries of ``documents`` (the prompt is cut to ``max_length`` tokens)."""
    import torch

    out: list[str] = []
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"  # a causal LM continues from the right edge
    try:
        for i in range(0, len(documents), batch_size):
            docs = documents[i: i + batch_size]
            if seq2seq:
                enc = tokenizer(docs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            else:
                texts = [tokenizer.apply_chat_template(
                    [{"role": "user", "content": SUMMARIZE_PROMPT.format(document=d)}],
                    tokenize=False, add_generation_prompt=True) for d in docs]
                kept = tokenizer.truncation_side
                tokenizer.truncation_side = "left"  # a long document loses its start, not the instruction's end
                enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                                add_special_tokens=False)
                tokenizer.truncation_side = kept
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if not seq2seq:
                ids = ids[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def rouge_scorer(rows: list[dict], seq2seq: bool, max_length: int):
    """A scorer for :func:`core.strategies.common.with_eval_metrics`: ROUGE-1/2/L (0..100) of
    summaries generated for the first ``ROUGE_SAMPLES`` of ``rows`` (document/summary dicts)."""

    def score(trainer, output, prefix: str) -> dict:
        from core.evaluation import rouge

        sample = rows[:ROUGE_SAMPLES]
        if not sample:
            return {}
        preds = generate_summaries(trainer.model, trainer.processing_class, [r["document"] for r in sample],
                                   seq2seq=seq2seq, max_length=max_length)
        return {k: 100.0 * v for k, v in rouge(preds, [r["summary"] for r in sample]).items()}

    return score


# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_perplexity", "eval_rouge1", "eval_rouge2", "eval_rougeL")


def train_seq2seq(ctx) -> dict:
    """Fine-tune an encoder-decoder (LoRA) on document -> summary; return loss, perplexity, ROUGE."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from core.strategies.common import (dataset, perplexity_scorer, train_save_evaluate, training_kwargs,
                                        with_eval_metrics, with_lora)

    c, tokenizer = ctx.config, ctx.tokenizer
    # 1. adapt: LoRA on the encoder-decoder (the provider loaded AutoModelForSeq2SeqLM)
    model = with_lora(ctx, "SEQ_2_SEQ_LM")
    # 2. data: documents as encoder inputs, summaries as labels (the tokenizer adds its end token)
    def encode(batch: dict[str, list]) -> dict[str, Any]:
        enc = tokenizer(batch["document"], truncation=True, max_length=c.max_length)
        enc["labels"] = tokenizer(text_target=batch["summary"], truncation=True,
                                  max_length=min(MAX_TARGET_TOKENS, c.max_length))["input_ids"]
        return enc

    train_ds = dataset(ctx.train_rows).map(encode, batched=True, remove_columns=["document", "summary"])
    eval_ds = dataset(ctx.eval_rows)
    eval_ds = eval_ds.map(encode, batched=True, remove_columns=["document", "summary"]) if eval_ds else None
    # 3. trainer, with ROUGE on generated summaries at every evaluation
    args = Seq2SeqTrainingArguments(**training_kwargs(ctx))
    scored = with_eval_metrics(Seq2SeqTrainer, rouge_scorer(ctx.eval_rows, True, c.max_length), perplexity_scorer)
    trainer = scored(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=ctx.callbacks)
    # 4-6. train, save, evaluate: loss, perplexity and ROUGE-1/2/L on the validation split
    return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)


def train_causal(ctx) -> dict:
    """SFT of a causal LM on 'Summarize the following text' chats; return loss, perplexity, ROUGE."""
    from trl import SFTConfig, SFTTrainer

    from core.strategies.common import (dataset, peft_for, perplexity_scorer, train_save_evaluate, training_kwargs,
                                        with_eval_metrics)

    c = ctx.config
    # 1. data: each pair as a chat whose answer is the summary
    train_ds = dataset(chat_rows(ctx.train_rows, ctx.tokenizer, c.max_length))
    eval_ds = dataset(chat_rows(ctx.eval_rows, ctx.tokenizer, c.max_length))
    # 2. trainer arguments; the loss falls on the summary only
    args = SFTConfig(**training_kwargs(ctx), max_length=c.max_length, completion_only_loss=True,
                     dataset_num_proc=None)
    # 3. trainer, with LoRA and ROUGE on generated summaries at every evaluation
    scored = with_eval_metrics(SFTTrainer, rouge_scorer(ctx.eval_rows, False, c.max_length), perplexity_scorer)
    trainer = scored(
        model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=ctx.tokenizer,
        peft_config=peft_for(ctx), callbacks=ctx.callbacks)
    # 4-6. train (resuming when asked), save the adapter and tokenizer, evaluate
    return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)
