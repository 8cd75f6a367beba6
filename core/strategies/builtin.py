"""The built-in strategies: one line each. A new strategy is a new file plus one line here."""

from core.strategies.dpo import DPOStrategy
from core.strategies.kto import KTOStrategy
from core.strategies.orpo import ORPOStrategy
from core.strategies.registry import register
from core.strategies.rlhf import RLHFStrategy
from core.strategies.sft import SFTStrategy

register("sft", SFTStrategy)
register("qlora", lambda: SFTStrategy(name="qlora", quantization="4bit",
                                      description="SFT with LoRA on a 4-bit NF4 base (bitsandbytes)"))
register("dpo", DPOStrategy)
register("orpo", ORPOStrategy)
register("kto", KTOStrategy)
register("rlhf", RLHFStrategy)
