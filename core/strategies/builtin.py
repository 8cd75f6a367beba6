"""The built-in strategies: one line each. A new strategy is a new file plus one line here."""

from core.strategies.registry import PlannedStrategy, register
from core.strategies.sft import SFTStrategy

register("sft", SFTStrategy)
register("qlora", lambda: SFTStrategy(name="qlora", quantization="4bit",
                                      description="SFT with LoRA on a 4-bit NF4 base (bitsandbytes)"))
register("dpo", lambda: PlannedStrategy("dpo", "Direct preference optimisation on chosen/rejected pairs",
                                        data_kinds=("preference",)))
register("orpo", lambda: PlannedStrategy("orpo", "Odds-ratio preference optimisation (no reference model)",
                                         data_kinds=("preference",)))
register("kto", lambda: PlannedStrategy("kto", "Kahneman-Tversky optimisation on good/bad labelled answers",
                                        data_kinds=("kto", "preference")))
register("rlhf", lambda: PlannedStrategy("rlhf", "Reward model, then policy optimisation (GRPO/RLOO)",
                                         data_kinds=("preference",)))
