"""Prompt-injection detection: text in a feed or page that addresses an AI rather than a reader.

The classifier isolates and caps such items; the fact-checker never takes an order to a model as evidence.
"""

from __future__ import annotations

import re

# Text that addresses an AI rather than a reader. Such an item is classified alone, so whatever
# it makes the model do cannot touch the other items of a batch.
INSTRUCTIONS = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?"
    r"(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions?|prompts?|rules|directions)"
    r"|\b(?:rank|mark|classify|label|rate|score)\s+this\s+(?:item|story|article|post)\b"
    # Orders for the whole batch, and rule changes announced as such.
    r"|\b(?:classify|mark|label|rate|score)\s+(?:all|every|each)\s+(?:other\s+)?(?:items?|stories|articles|posts)\b"
    r"|\bforget\s+(?:all\s+|your\s+|the\s+|previous\s+|prior\s+)*(?:rules|instructions?|prompts?)\b"
    r"|\bnew\s+instructions?\s*:|\b(?:priority|admin|system)\s+override\b"
    # Text addressed to a model rather than to a reader.
    r"|\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:any\s+|all\s+)?(?:AI|LLMs?|language\s+models?|assistants?|chatbots?)\b"
    r"|\b(?:AI|LLM|language\s+model|assistant|chatbot)s?\s+(?:systems?\s+|models?\s+)?(?:reading|processing|summari[sz]ing|parsing)\s+(?:this|these)\b"
    r"|\bwhen\s+summari[sz]ing\s+this\b"
    # Forged chat turns: the role markers of common chat formats, and a line opening as a role.
    r"|<\|\s*(?:im_start|im_end|system|assistant|user|endoftext)\s*\|>|\[/?(?:SYSTEM|INST)\]|<<\s*/?SYS\s*>>"
    r"|^\s*#{2,}\s*(?:instruction|system|response)\b|^\s*(?:system|assistant)\s*:",
    re.IGNORECASE | re.MULTILINE,
)


def instructs_a_model(text: str) -> bool:
    """Text that addresses an AI rather than a reader ("ignore previous instructions", a forged system turn)."""
    return bool(INSTRUCTIONS.search(text))
