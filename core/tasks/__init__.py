"""Task-specific training and evaluation: summarization (seq2seq or causal) and extractive QA.

Text generation is the SFT strategy itself (core/strategies/sft.py); the modules here hold what
differs per task: how rows become model inputs, which head trains, and how outputs are scored
(ROUGE on generated summaries; exact match and F1 on predicted spans).
"""
