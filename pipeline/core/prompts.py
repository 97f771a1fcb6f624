"""Prompt files: Jinja2 templates in `prompts/` that content leads edit without touching code.

Each role has `<role>.system.j2` and `<role>.user.j2`. A prompt's version is
the hash of its files, recorded with every LLM call and every draft, so a
change of wording is always traceable.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound
from pydantic import BaseModel
from pipeline.core.corrections import read_house_rules

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


class PromptError(Exception):
    """A prompt file is missing or cannot be rendered."""


class Prompt(BaseModel):
    name: str                       # the role's prompt name, e.g. "writer"
    version: str                    # short hash of the files that rendered it
    messages: list[dict[str, str]]  # OpenAI chat messages

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "system"), "")

    @property
    def user(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")


# The prompts given the newsroom's house rules (pipeline/core/corrections.py) as `house_rules`.
HOUSE_RULE_PROMPTS = ("writer", "reviser")


class PromptLibrary:
    def __init__(self, directory: Path = PROMPTS_DIR, house_rules: Path | None = None) -> None:
        self.directory = directory
        self.house_rules = house_rules
        self.env = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,  # prompts are plain text for a model, not HTML
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def version(self, name: str) -> str:
        digest = hashlib.sha256()
        for part in ("system", "user"):
            path = self.directory / f"{name}.{part}.j2"
            if path.exists():
                digest.update(path.read_bytes())
        # The rules are part of what the model is told: a changed rule is a new prompt version.
        if name in HOUSE_RULE_PROMPTS and self.house_rules is not None and self.house_rules.is_file():
            digest.update(self.house_rules.read_bytes())
        return digest.hexdigest()[:12]

    def render(self, name: str, **variables) -> Prompt:
        if name in HOUSE_RULE_PROMPTS:
            variables.setdefault("house_rules", read_house_rules(self.house_rules))
        messages = []
        for part in ("system", "user"):
            try:
                template = self.env.get_template(f"{name}.{part}.j2")
            except TemplateNotFound:
                if part == "user":
                    raise PromptError(f"prompt file missing: {self.directory / f'{name}.user.j2'}") from None
                continue
            try:
                text = template.render(**variables).strip()
            except Exception as exc:  # jinja raises many types; the file name is what matters
                raise PromptError(f"cannot render {name}.{part}.j2: {exc}") from None
            messages.append({"role": part, "content": text})
        return Prompt(name=name, version=self.version(name), messages=messages)


@lru_cache(maxsize=4)
def library(directory: str | None = None, house_rules: str | None = None) -> PromptLibrary:
    return PromptLibrary(Path(directory) if directory else PROMPTS_DIR, Path(house_rules) if house_rules else None)
