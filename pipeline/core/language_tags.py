"""Language tags: the BCP 47 shape newsroom.language takes, and the languages the detector knows.

Kept apart from the detector (pipeline.text.language) so that checking config never loads its model and
the core layer imports nothing above it.
"""

from __future__ import annotations

import re

UNDETERMINED = "und"
# BCP 47 in the shape a newsroom writes it: a 2-3 letter language, then optional script,
# region or variant subtags ("en", "en-GB", "zh-Hant-TW", "sr-Latn").
BCP47 = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
# The detector's languages (py3langid 0.4 model), listed here so that checking config does not load the model;
# tests/test_language.py checks the list against the installed model.
DETECTOR_LANGUAGES = frozenset({
    "ace", "af", "am", "an", "ar", "ary", "arz", "as", "az", "ba", "bcl", "be", "bg", "bn", "br", "bs", "ca",
    "crh", "cs", "cy", "da", "de", "dz", "el", "en", "eo", "es", "et", "eu", "ext", "fa", "fi", "fo", "fr",
    "fuv", "fy", "ga", "gcf", "gcr", "gd", "gl", "gom", "grc", "gu", "gug", "guw", "ha", "hbo", "he", "hi",
    "hr", "ht", "hu", "hy", "id", "ig", "is", "it", "ja", "jv", "ka", "kab", "kik", "kk", "km", "kn", "ko",
    "ku", "ky", "la", "lb", "lg", "lij", "ln", "lo", "lt", "ltg", "lv", "mg", "mk", "ml", "mn", "mr", "ms",
    "mt", "my", "ne", "nl", "nn", "no", "nso", "oc", "om", "or", "pa", "pcm", "pl", "ps", "pt", "qu", "ro",
    "ru", "rw", "sa", "sdh", "se", "si", "sk", "sl", "sn", "so", "sq", "sr", "st", "sv", "sw", "ta", "te",
    "tg", "th", "tk", "tl", "tr", "tt", "ug", "uk", "ur", "uz", "uzs", "vec", "vi", "vo", "wa", "wuu", "xh",
    "yo", "yue", "zh", "zu", "zxx",
})


def primary(tag: str | None) -> str:
    """The language subtag of a BCP 47 tag, lower case: 'pt-BR' -> 'pt'."""
    return (tag or UNDETERMINED).split("-", 1)[0].lower()


def known_languages() -> frozenset[str]:
    return DETECTOR_LANGUAGES


def check_tag(tag: str) -> str:
    """A BCP 47 tag whose language the detector knows; ValueError saying what is wrong otherwise."""
    value = tag.strip()
    if not BCP47.match(value):
        raise ValueError(f"must be a BCP 47 language tag such as 'en', 'de' or 'pt-BR', got {tag!r}")
    if primary(value) not in known_languages():
        raise ValueError(
            f"language {primary(value)!r} is not one the language detector knows; "
            f"known: {', '.join(sorted(DETECTOR_LANGUAGES))}"
        )
    return value
