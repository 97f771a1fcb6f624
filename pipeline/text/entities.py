"""Who a sentence is about: named entities by surface form, and the story's own entities.

Shared by the writer (keep background that concerns the story, frame it) and the
checker (flag a claim whose subject belongs to another event). Capitalised
spans are a plain, fast signal that works offline on any English text; words
that are capitalised for other reasons (sentence openers, weekdays, months,
job titles) are not names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections import Counter
from typing import Iterable, Sequence

_SPAN = re.compile(r"\b(?:[A-Z][A-Za-z0-9&\-]*[A-Za-z0-9]|[A-Z]{2,}[0-9]*)(?:['’]s)?(?:\s+(?:of\s+)?(?:[A-Z][A-Za-z0-9&\-]*[A-Za-z0-9]|[A-Z]{2,}[0-9]*)(?:['’]s)?)*")
_NOT_NAMES = frozenset(
    """
    the a an in on at but and as for if when while after before this that these those it its he she they we i you
    his her their our there then also however meanwhile still yet so some many most all no not what who how why where
    according earlier later separately since by from with under over into about during last next one two three
    monday tuesday wednesday thursday friday saturday sunday today yesterday
    january february march april may june july august september october november december
    utc gmt et pt ceo cfo cto coo chief executive officer chair chairman president analyst analysts director head
    mr mrs ms dr prof inc ltd co corp llc plc
    """.split()
)
# Openers that point back to something named earlier: a sentence that starts this way
# cannot open a paragraph, and cannot stand for a story whose subject it never names.
UNRESOLVED_OPENING = re.compile(
    r"^[\"“'‘]?(he|she|it|they|this|that|these|those|its|his|her|their|there|but|however|also|meanwhile|still|yet|"
    r"instead|then|such|both|neither|the same|the (?:firm|company|exchange|regulator|project|platform|agency|move|deal|"
    r"report|statement|bill|fund|token|network|protocol|attacker|bank|group|penalty|judge|court|team|issuer|coin|"
    r"ruling|decision|vote|bridge|pool|lender|startup|miner|hack|breach|attack|sale|sales|fine|plan|proposal|order))\b",
    re.IGNORECASE,
)
_ANAPHORIC_ATTRIBUTION = re.compile(
    r"\b(?:he|she|they)\s+(?:said|says|added|adds|noted|wrote|told|warned|argued|expects|expected)\b|"
    r"\b(?:said|says|added|wrote|told)\s+(?:he|she|they)\b",
    re.IGNORECASE,
)


def _norm(word: str) -> str:
    word = word.strip().lower()
    for suffix in ("'s", "’s"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
    return word


def names(text: str) -> set[str]:
    """Lower-cased names in `text`, each multi-word name also by its distinctive words."""
    out: set[str] = set()
    for match in _SPAN.finditer(text):
        words = [_norm(w) for w in match.group(0).split() if w.lower() != "of"]
        words = [w for w in words if w and w not in _NOT_NAMES]
        if not words:
            continue
        if len(words) > 1:
            out.add(" ".join(words))
        out.update(w for w in words if len(w) > 2 and not w.isdigit())
    return out


def story_entities(titles: Iterable[str], texts: Iterable[str]) -> set[str]:
    """The story's own actors: names in its items' headlines, plus names most of its items share."""
    titles, texts = list(titles), list(texts)
    own = set().union(*(names(t) for t in titles)) if titles else set()
    counts = Counter(n for text in texts for n in names(text[:3000]))
    needed = max(2, (len(texts) + 1) // 2)
    own |= {n for n, c in counts.items() if c >= needed}
    return own


def mentions_any(text: str, entities: set[str]) -> bool:
    return bool(names(text) & entities)


def foreign_names(text: str, entities: set[str]) -> set[str]:
    """Names in `text` that are not the story's."""
    return names(text) - entities


def opens_unresolved(text: str) -> bool:
    """The sentence leans on one before it: a pronoun or definite reference opens it, or it is attributed to "she"."""
    text = text.strip()
    return bool(UNRESOLVED_OPENING.match(text) or _ANAPHORIC_ATTRIBUTION.search(text))


# --- added for the fact-checker's story check ---------------------------------------------------

_LOWER_WORD = re.compile(r"(?<![A-Za-z0-9\-])[a-z][a-z0-9\-]*")


def lowercase_words(texts: Iterable[str]) -> set[str]:
    """Words the texts use in lower case somewhere ("security", "traders", "every", "ether")."""
    out: set[str] = set()
    for text in texts:
        out.update(m.group(0) for m in _LOWER_WORD.finditer(text))
    return out


_OPENER = re.compile(r"(?:^|[.!?][\"”’')]?\s+)[\"“‘'(]?([A-Z][A-Za-z0-9&\-]*)")
_MID_CAPITAL = re.compile(r"(?<=[a-z0-9,;:)%$]\s)[\"“‘'(]?([A-Z][A-Za-z0-9&\-]*[A-Za-z0-9])")


def capitalised_mid_sentence(texts: Iterable[str]) -> set[str]:
    """Lower-cased words the texts capitalise where no sentence starts: names, not sentence openers."""
    out: set[str] = set()
    for text in texts:
        out.update(_norm(m.group(1)) for m in _MID_CAPITAL.finditer(text))
    return out


def standalone_names(texts: Iterable[str]) -> set[str]:
    """Lower-cased single words the texts use as a name on their own ("Korvex said", "Okafor"), not only as part
    of a longer name ("Labs" of "Vantor Labs", "Street" of "Lumen Street Investments")."""
    out: set[str] = set()
    for text in texts:
        for match in _SPAN.finditer(text):
            words = [_norm(w) for w in match.group(0).split() if w.lower() != "of"]
            words = [w for w in words if w and w not in _NOT_NAMES]
            if len(words) == 1:
                out.add(words[0])
    return out


def distinct_names(text: str, common: set[str], mid_capitals: set[str] | None = None) -> set[str]:
    """`names(text)` without single words that only look like names because they open a sentence: words in
    `common` (used in lower case: "Security researchers said", "Traders said") and, when `mid_capitals` is given,
    a sentence's first word that is never capitalised mid-sentence ("Implied volatility rose"). Multi-word names
    stay whole ("halvane security")."""
    found = {n for n in names(text) if " " in n or n not in common}
    if mid_capitals is not None:
        openers = {_norm(m.group(1)) for m in _OPENER.finditer(text)}
        found = {n for n in found if " " in n or n not in openers or n in mid_capitals}
    return found


# --- added for the writer and the draft metrics (issue 13) -------------------------------------------

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_MONTH_ABBR = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_MONTH_NUMBER = {m.lower(): i for i, m in enumerate(_MONTHS.split("|"), 1)}
_MONTH_NUMBER.update({m.lower(): _MONTH_NUMBER[full.lower()] for m, full in zip(
    _MONTH_ABBR.split("|"), "January February March April June July August September September October November December".split())})
_FIG_DATE = re.compile(rf"\b({_MONTHS}|(?:{_MONTH_ABBR})\.?)\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?|\b({_MONTHS})\s+(\d{{4}})\b")
_FIG_MONTH = re.compile(rf"\b(?i:in|since|from|until|by|through|during|last|next|early|late|mid-)\s*({_MONTHS})\b")
_FIG_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_FIG_VERSION = re.compile(r"\b\d+\.\d+\.\d+\b")
_FIG_RATIO = re.compile(r"(?<![\w.,-])(\d{1,3})-(of-)?(\d{1,3})(?![\w.,-]*\d)")
_FIG_NUMBER = re.compile(
    r"(?<![A-Za-z][\-])(?<![A-Za-z0-9.,])([$€£¥]\s?)?(\d+(?:,\d{3})*(?:\.\d+)?)"
    r"(\s?(?:%|percent\b|per cent\b|million\b|billion\b|trillion\b|bn\b|mn\b|[mbk]\b))?"
)
_SCALE = {"million": 1e6, "mn": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9, "b": 1e9, "trillion": 1e12, "k": 1e3}


def key_figures(text: str) -> set[str]:
    """The figures a sentence states, normalised so two wordings of one figure compare equal.

    Amounts ("$48.2 million" == "48.2 million"), percentages, clock times,
    ratios and votes ("2-of-3", "3-2"), dates ("November 18", "Nov. 18", "since September") and
    other multi-digit numbers ("24,000", "14 addresses"). Bare years, single
    digits without a unit, version numbers and "layer-2" style names are not
    figures: they recur without restating a fact.
    """
    out: set[str] = set()
    masked = text

    def mask(match: re.Match) -> str:
        return " " * len(match.group(0))

    for m in _FIG_DATE.finditer(masked):
        if m.group(1):
            month = _MONTH_NUMBER.get(m.group(1).rstrip(".").lower(), 0)
            out.add(f"date:{month:02d}-{int(m.group(2)):02d}")
        else:
            out.add(f"date:{m.group(5)}-{_MONTH_NUMBER[m.group(4).lower()]:02d}")
    masked = _FIG_DATE.sub(mask, masked)
    for m in _FIG_MONTH.finditer(masked):  # "since September", "in October"
        out.add(f"month:{_MONTH_NUMBER[m.group(1).lower()]:02d}")
    for m in _FIG_TIME.finditer(masked):
        out.add(f"time:{int(m.group(1)):02d}:{m.group(2)}")
    masked = _FIG_VERSION.sub(mask, _FIG_TIME.sub(mask, masked))
    for m in _FIG_RATIO.finditer(masked):
        out.add(f"ratio:{m.group(1)}{'-of-' if m.group(2) else '-'}{m.group(3)}")
    masked = _FIG_RATIO.sub(mask, masked)
    for m in _FIG_NUMBER.finditer(masked):
        currency, digits, unit = m.group(1), m.group(2), (m.group(3) or "").strip().lower()
        value = float(digits.replace(",", ""))
        if not currency and not unit:
            if "." not in digits and (value < 10 or (1900 <= value <= 2099 and "," not in digits)):
                continue
        if unit in ("%", "percent", "per cent"):
            out.add(f"pct:{value:g}")
            continue
        value *= _SCALE.get(unit, 1)
        out.add(f"num:{value:.6g}")
    return out


def quotes_balanced(text: str) -> bool:
    """Every quotation that opens in `text` also closes in it (straight and curly double quotes)."""
    return text.count('"') % 2 == 0 and text.count("“") == text.count("”")


_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_SPEECH = re.compile(
    r"\b(?:said|says|say|told|tells|wrote|writes|added|adds|noted|notes|warned|warns|argued|argues|according|asked|"
    r"explained|stated|cautioned|called|calls|described|describes|promised|insisted|replied|continued|posted|tweeted|"
    r"announced|testified|acknowledged|admitted|conceded|predicted|recalled|urged)\b",
    re.IGNORECASE,
)


def quotation_words(text: str) -> int:
    """How many words stand inside quotation marks."""
    return sum(len(q.split()) for q in _QUOTED.findall(text))


def unattributed_quote(text: str) -> bool:
    """A sentence that is a bare quotation: it opens with quote marks and names no speaker outside them."""
    text = text.strip()
    if not text or text[0] not in "\"“":
        return False
    return not _SPEECH.search(_QUOTED.sub(" ", text))


FRAMING = re.compile(
    r"^(?:earlier|separately|previously|for context|in earlier coverage|in a separate development|in separate news)\b,?",
    re.IGNORECASE,
)


def is_framed(text: str) -> bool:
    """The sentence says it is context, not this story's event ("Earlier, …", "Separately, …")."""
    return bool(FRAMING.match(text.strip().lstrip("\"“'‘")))


_LEANS_OPENER = re.compile(
    r"^[\"“'‘]?(?:first|second|third|fourth|finally|next|again|likewise|similarly|otherwise|besides|moreover|"
    r"furthermore|in addition|additionally|as a result|by contrast|in contrast|even so|nonetheless|nevertheless|"
    r"despite (?:this|that|it)|because of (?:this|that|it)|after (?:that|this)|not everyone|not all|others?|"
    r"another|the other|the rest|the latter|the former|here|now|too|so|thus|hence|later|afterwards|"
    # "Several have also sold …", "Many of them …": a quantifier standing for people the reader has not met.
    r"(?:several|many|some|most|few|each|all|both)\s+(?:also|of them|have|has|had|are|were|will|would|said|say|do|did)|"
    r"(?:since|until|before|by) then)\b",
    re.IGNORECASE,
)
# "Critics argue that it moves activity …", "Supporters say it gives …": a pronoun right after an opening
# attribution to an unnamed group, pointing at whatever the sentence before was about ("Korvex said it had …"
# is about Korvex: a named subject is its own antecedent).
_PRONOUN_AFTER_ATTRIBUTION = re.compile(
    r"^[\"“]?(?:some\s+|many\s+|most\s+)?(?:critics|supporters|analysts|opponents|proponents|skeptics|sceptics|observers|"
    r"experts|lawyers|economists|investors|traders|users|regulators|officials|researchers|developers|advocates|"
    r"detractors|others|some|many)\s+(?:say|says|said|argue|argues|argued|note|notes|noted|warn|warns|warned|"
    r"contend|contends|contended|believe|believes|believed)\s+(?:that\s+)?(?:(?:it|this|they|these|those)\s+[a-z]|"
    r"that\s+(?:makes|made|is|was|means|meant|will|would|could|can|has|had|gives|gave|leaves|left|puts|put)\b)",
    re.IGNORECASE,
)
# "Solvers then compete to fill the order": a step in a sequence whose first steps the reader has not seen.
_THEN_STEP = re.compile(r"^[\"“]?[A-Z][\w'’\-]*(?:\s+[a-z][\w\-]*)?\s+then\s+[a-z]")
# "The approved funds …", "The 3-2 vote …", "The Lisbon-based platform …": a definite description
# that points back, unless a defining clause follows at once ("The hacker who took …").
_DEFINITE = re.compile(r"^[\"“'‘]?(?:the|this|that|these|those|such)\s+([\w$][\w\-.,$%']*)", re.IGNORECASE)
_DEFINING = re.compile(r"^(?:\S+\s+){0,4}?(?<!,\s)(?:who|that|which|whose|issued by|run by|known as)\b|^(?:\S+\s+){0,3}?of\s+(?:the\s+)?[A-Z]")
_INTRO = re.compile(
    r"^[\"“]?(?:for|in|on|at|by|after|before|since|once|when|while|as|under|with|until|despite|following|according to|"
    r"within|during|unlike|like|over|across|through|beyond|from|to)\b[^.;:]*?,\s+(.*)$",
    re.IGNORECASE,
)
_PRONOUN_OPENING = re.compile(r"^[\"“'‘]?(?:he|she|it|they|this|that|these|those|its|his|her|their|there)\b", re.IGNORECASE)
_INTRO_PRONOUN = re.compile(r"^[\"“]?(?:by|at|on|in|after|before|since|within|once|when|until)\s[^,]{0,40}?\s(?:it|they|he|she)\s+\w+", re.IGNORECASE)
_POSSESSIVE_IN_INTRO = re.compile(r"^[\"“]?(?:according to|in|on|at|under|with|for)\b[^,]{0,60}?\b(?:its|their|his|her)\b[^,]*,", re.IGNORECASE)
_COMPARATIVE_PREDICATE = re.compile(r"\b(?:was|were|is|are)\s+(?:different|similar|the same|also)\b(?!\s+(?:from|to|than|as)\b)", re.IGNORECASE)
_DEFINITE_ATTRIBUTION = re.compile(
    r"\b(?:the|that|this)\s+(?:judge|company|firm|exchange|regulator|agency|commission|court|analyst|researcher|spokesperson|"
    r"spokesman|spokeswoman|chief executive|ceo|founder|team|foundation|issuer|attacker|hacker|bank|group|official|lawyer)s?\s+"
    r"(?:said|says|wrote|writes|added|adds|noted|told|argued|warned|found|held|ruled)\b",
    re.IGNORECASE,
)
# "one of those keys", "attacks of this kind", "over the same period": a thing named in an earlier sentence.
_DEMONSTRATIVE = re.compile(
    r"\b(?:those|these)\s+(?!who\b|that\b|which\b|of\b|in\b|at\b|on\b|with\b|for\b|from\b)[a-z][a-z\-]*\b(?!\s+(?:who|that|which)\b)"
    r"|\b(?:of|like|in|from|on|with|for|at|by)\s+(?:this|that)\s+(?:kind|type|sort|case|way|period|time|amount|figure|level|"
    r"move|decision|ruling|deal|scale|size)\b"
    # "the same period" points back, unless it says which: "… compared with the same period in October"
    r"|\b(?:the same|that same|this same)\s+(?:period|day|time|week|month|year|hour)\b(?!\s+(?:in|of|last|a year)\b)",
    re.IGNORECASE,
)
_ELLIPTICAL_END = re.compile(r"\b(?:can|will|could|would|did|does|do|has|have|had|may|might|must|should)\.[\"”']?$", re.IGNORECASE)


def _definite_opening(text: str) -> bool:
    m = _DEFINITE.match(text)
    if not m:
        return False
    head = m.group(1)
    descriptor = bool(re.fullmatch(r"[A-Z][a-z]+-[a-z]+", head))  # "Lisbon-based"
    if head[:1].isupper() and not descriptor:
        return False  # "The Federal Digital Markets Commission …": a name, not a reference
    rest = text[m.start(1):]
    return not _DEFINING.match(rest)


def leans_back(text: str) -> bool:
    """The sentence cannot open a paragraph: `opens_unresolved`, plus openers that point back in other ways.

    Connectives and enumerations ("Second, …", "Not everyone …"), definite
    descriptions with no defining clause ("The approved funds …"), a pronoun
    or possessive right after an introductory phrase ("By 04:05 UTC it had …",
    "According to a statement posted to its status page, …"), comparisons with
    nothing to compare to ("… were different, the judge wrote"), attribution to
    "the judge" before anyone is named, a bare quotation with no speaker, and
    elliptical endings ("After Halcyon, anyone can.").
    """
    return bool(lean_reasons(text))


def dangles(text: str, before: str = "") -> bool:
    """`leans_back`, except that a definite description the text before has already introduced is resolved:
    after a lead about "a $12.5 million civil penalty", "The penalty is a fraction of …" can open a paragraph.
    Pronouns, connectives and the rest never are: after a paragraph break they point nowhere."""
    reasons = lean_reasons(text)
    if reasons == {"definite"} and before and _head_resolved(text, before):
        return False
    return bool(reasons)


def lean_reasons(text: str) -> set[str]:
    """Why `text` leans on an earlier sentence: {"definite"} for a definite description only, other labels otherwise."""
    text = text.strip()
    reasons: set[str] = set()
    if not text:
        return reasons
    if text[0] in "\"“" and quotes_balanced(text) and not unattributed_quote(text):
        # An attributed quotation: its own words refer inside the speaker's account ("This was not a bug,"
        # said Dev Okafor); what must resolve is the attribution around it ("…," she said).
        text = _QUOTED.sub('"…"', text)
    base = UNRESOLVED_OPENING.match(text)
    if base:
        reasons.add("definite" if base.group(1).lower().startswith("the ") else "pronoun")
    if _ANAPHORIC_ATTRIBUTION.search(text) or _PRONOUN_AFTER_ATTRIBUTION.match(text):
        reasons.add("pronoun")
    if _LEANS_OPENER.match(text) or _THEN_STEP.match(text):
        reasons.add("connective")
    if _definite_opening(text):
        reasons.add("definite" if re.match(r"^[\"“'‘]?the\s", text, re.IGNORECASE) else "demonstrative")
    if unattributed_quote(text):
        reasons.add("bare quote")
    if _INTRO_PRONOUN.match(text) or _POSSESSIVE_IN_INTRO.match(text):
        reasons.add("pronoun")
    if _INTRO.match(text):  # "For DeFi protocols on Meridian, which …, the upgrade should …"
        for comma in re.finditer(r",\s+", text):
            if len(text[: comma.start()].split()) > 25:
                break
            rest = text[comma.end():]
            if _PRONOUN_OPENING.match(rest) or _ANAPHORIC_ATTRIBUTION.search(rest):
                reasons.add("pronoun")
            elif _definite_opening(rest):
                reasons.add("definite" if re.match(r"^the\s", rest, re.IGNORECASE) else "demonstrative")
    if _COMPARATIVE_PREDICATE.search(text):
        reasons.add("comparison")
    if _ELLIPTICAL_END.search(text):
        reasons.add("ellipsis")
    if _DEMONSTRATIVE.search(_QUOTED.sub(" ", text)):
        reasons.add("demonstrative")
    attribution = _DEFINITE_ATTRIBUTION.search(text)
    if attribution and not names(_QUOTED.sub(" ", text[: attribution.start()]).split(" ", 1)[-1]):
        # "…, the judge wrote" with no one named before it: a definite description, resolved once the judge is.
        reasons.add("definite")
    return reasons


def _singular(word: str) -> str:
    word = word.lower().strip(".,;:'’\"")
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _head_resolved(text: str, before: str) -> bool:
    """The nouns right after the opening (or post-intro) "the" appear in `before` ("The penalty" after "a … penalty")."""
    seen = {_singular(w) for w in re.findall(r"[A-Za-z][A-Za-z\-]+", before)}
    attribution = _DEFINITE_ATTRIBUTION.search(text)
    if attribution and _singular(attribution.group(0).split()[1]) not in seen:
        return False
    if attribution and not re.match(r"^[\"“'‘]?the\s", text, re.IGNORECASE) and not _INTRO.match(text):
        return True
    for m in re.finditer(r"(?:^|,\s+)[\"“'‘]?the\s+((?:[\w$][\w\-$%.]*\s+){0,2}[\w$][\w\-$%.]*)", text, re.IGNORECASE):
        if m.start() > 0 and not _INTRO.match(text):
            continue
        words = [w for w in m.group(1).split() if w[:1].islower() and len(w) > 2]
        if words and any(_singular(w) in seen for w in words):
            return True
    return False


_PERSON = re.compile(r"\b([A-Z][a-z]+(?:-[A-Z][a-z]+)?)\s+([A-Z][a-z]+(?:-[A-Z][a-z]+)?)\b(?!\s+[A-Z])")


def person_names(texts: Iterable[str]) -> dict[str, str]:
    """Surname -> full name ("Okafor" -> "Dev Okafor") for people the texts name in full and then by surname alone.

    A two-word name counts as a person's when its last word also stands alone
    elsewhere and is never written in lower case ("Halvane Security" is not:
    "security" is a common word).
    """
    texts = [t for t in texts if t]
    common = _lowercase_words(texts)
    full: dict[str, str] = {}
    for text in texts:
        for m in _PERSON.finditer(text):
            first, last = m.group(1), m.group(2)
            if first.lower() in _NOT_NAMES or last.lower() in _NOT_NAMES or last.lower() in common or first.lower() in common:
                continue
            full.setdefault(last, f"{first} {last}")
    people: dict[str, str] = {}
    for last, name in full.items():
        first, surname = re.escape(name.split()[0]), re.escape(last)
        alone = re.compile(rf"(?<!{first} )\b{surname}(?:['’]s)?\s+(?:{_ACTS})\b|\b(?:said|says|told|wrote|added)\s+{surname}\b")
        if any(alone.search(text) for text in texts):
            people[last] = name
    return people


def titled_people(texts: Iterable[str]) -> dict[str, str]:
    """Surname -> full name for people the texts name with a title or role: right before the name ("Calloway
    founder Dario Vence", "chief executive Marta Lindqvist") or right after it (", Calloway's founder", ", a
    researcher at …"). Such a name is a person's even when the texts never use the surname alone."""
    texts = [t for t in texts if t]
    common = _lowercase_words(texts)  # "Korvex Labs", "Fernhill Ventures": a common word makes it no person's name
    out: dict[str, str] = {}
    for text in texts:
        for m in _PERSON.finditer(text):
            first, last = m.group(1), m.group(2)
            if any(w.lower() in _NOT_NAMES or w.lower() in common or w.lower() in _ROLE_WORDS for w in (first, last)):
                continue
            before = (text[: m.start()].split()[-1:] or [""])[0].lower()
            after = text[m.end():]
            titled = before in _PERSON_ROLES or before in _HONORIFICS
            # ", Calloway's founder", ", a senior analyst", ", the foundation's lead researcher": an article or an
            # owner, at most two describing words, then the role (never ", said its banking partner").
            described = re.match(r",\s+(?:(?:a|an|the)\s+)?(?:[A-Z][\w]*['’]s\s+|[a-z]+['’]s\s+)?"
                                 r"(?:(?!said|says|its|his|her|their|whose|which|who|that)[a-z\-]+\s+){0,2}?"
                                 r"(?:" + "|".join(sorted(_PERSON_ROLES)) + r")\b", after)
            if titled or described:
                out.setdefault(last, f"{first} {last}")
    return out


def person_titles(texts: Iterable[str], people: dict[str, str]) -> dict[str, str]:
    """Full name -> the title or role the texts put right before it most often ("Robert Aldine" -> "Commissioner",
    "Ravi Tandon" -> "Pellucid chief executive"), for the `people` (surname -> full name) given."""
    seen: dict[str, Counter] = {}
    for text in texts:
        for name in people.values():
            for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text or ""):
                start = _role_start(text, m.start())
                title = " ".join(text[start:m.start()].split())
                if title and not title.lower().startswith("the "):
                    if title.split()[0].lower() in _LOWER_CASE_ROLES:  # "Chief executive …" opened a sentence
                        title = title[0].lower() + title[1:]
                    seen.setdefault(name, Counter())[title] += 1
    return {name: titles.most_common(1)[0][0] for name, titles in seen.items()}


def first_title(text: str, titles: dict[str, str], introduced: str, nearby: str) -> str:
    """A person's first mention carries their title when the text gives none: '"…," Robert Aldine wrote' ->
    '"…," Commissioner Robert Aldine wrote'. A role said right after the name (", Calloway's founder") counts.
    Only a title the source gives within a sentence or two (`nearby`), where the fact-checker's evidence is."""
    for name, title in titles.items():
        if name in introduced or f"{title} {name}".lower() not in " ".join(nearby.split()).lower():
            continue
        m = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
        if m is None or _role_start(text, m.start()) != m.start() or re.match(r",\s+(?:a|an|the|[A-Z][\w]*['’]s)\b", text[m.end():]):
            continue
        if re.search(r",\s*$", text[: m.start()]):  # "The startup's chief executive, Jules Amrani, said": said around it
            continue
        at_start = m.start() == 0 or bool(re.search(r"(?:^|[.!?][\"”’]?)\s*[\"“]?$", text[: m.start()]))
        shown = title[0].upper() + title[1:] if at_start else title
        text = f"{text[:m.start()]}{shown} {text[m.start():]}"
    return text


# Nouns that name what a person is: "…, Calloway's founder", "…, a senior analyst at …".
_PERSON_ROLES = frozenset(
    """founder co-founder cofounder chief ceo cfo cto coo president chair chairman chairwoman director analyst researcher
    spokesperson spokesman spokeswoman partner economist strategist trader lawyer professor judge commissioner minister
    governor head executive officer developer engineer contributor manager editor""".split()
)
# Roles written in lower case before a name ("chief executive Marta Lindqvist"), unlike formal titles ("Commissioner").
_LOWER_CASE_ROLES = frozenset(
    """chief executive analyst researcher founder co-founder cofounder head partner spokesperson spokesman spokeswoman
    director developer engineer contributor economist strategist trader lawyer senior lead managing deputy""".split()
)
_HONORIFICS = frozenset("sen. rep. dr. mr. ms. mrs. prof. senator representative".split())


_ORGANISATION = re.compile(r"\b([A-Z][a-z]+[A-Za-z]*)\s+([A-Z][a-z]+)\b(?!\s+[A-Z])")


def organisation_names(texts: Iterable[str]) -> dict[str, str]:
    """Short name -> full name ("Halvane" -> "Halvane Security") for organisations the texts name in full and then
    by their first word alone, as the subject of what they did ("Halvane said"). The second word of the full name is
    a common word ("security" is written in lower case somewhere), which tells an organisation from a person."""
    texts = [t for t in texts if t]
    common = _lowercase_words(texts)
    candidates: dict[str, Counter] = {}
    for text in texts:
        for m in _ORGANISATION.finditer(text):
            first, second = m.group(1), m.group(2)
            if first.lower() in _NOT_NAMES or first.lower() in common or second.lower() not in common:
                continue
            candidates.setdefault(first, Counter())[f"{first} {second}"] += 1
    out: dict[str, str] = {}
    for short, fulls in candidates.items():
        if len(fulls) != 1:  # "Meridian Foundation" and "Meridian Network": which one a bare "Meridian" is, is unclear
            continue
        alone = re.compile(rf"(?<![\w-]){re.escape(short)}(?:['’]s)?\s+(?:{_ACTS})\b")
        if any(alone.search(text) for text in texts):
            out[short] = next(iter(fulls))
    return out


def first_reference(text: str, organisations: dict[str, str], introduced: str) -> str:
    """An organisation the article has not named in full yet gets its full name where the text first calls it by
    its short one ("Halvane said" -> "Halvane Security said")."""
    for short, full in organisations.items():
        if full in introduced or full in text:
            continue
        text = re.sub(rf"(?<![\w-]){re.escape(short)}(?![\w-])", full, text, count=1)
    return text


# What people do in news copy, right after their surname ("Okafor said", "Coleman agreed").
_ACTS = (
    "said|says|told|tells|wrote|writes|added|adds|noted|notes|expects|expected|agreed|held|found|imposed|argued|warned|"
    "promised|called|described|cautioned|drew|ordered|ruled|sought|declined|denied|confirmed|announced|joined|left|"
    "sued|voted|testified|estimated|predicted|urged|acknowledged|insisted|advised|recommended|explained|stressed|"
    "emphasised|emphasized|suggested|believes|believed|conceded|admitted|replied|responded|maintained|claimed"
)


def bare_surnames(text: str, people: dict[str, str], introduced: str) -> list[str]:
    """Surnames `text` uses alone for people whose full name `introduced` (the article so far) and `text` never give."""
    out = []
    for last, name in people.items():
        if name in introduced or name in text:
            continue
        if re.search(rf"\b{re.escape(last)}\b", text):
            out.append(last)
    return out


# Words of a title or role written before a name ("U.S. District Judge", "chief executive", "agency spokesperson").
_ROLE_WORDS = frozenset(
    """u.s. us federal district circuit appeals bankruptcy magistrate judge justice commissioner commission chair
    chairman chairwoman chairperson president vice ceo cfo coo cto cio chief executive officer financial operating
    technology investment senator sen. rep. representative governor gov. director managing lead senior principal head
    spokesperson spokesman spokeswoman founder co-founder cofounder minister secretary attorney general prosecutor
    economist strategist partner trader professor prof. dr. mr. ms. mrs. analyst researcher agency company exchange
    firm foundation""".split()
)
_TOKEN = re.compile(r"\S+")


def second_reference(text: str, people: dict[str, str], introduced: str) -> str:
    """A person the article has already named in full is called by surname after that, without the title or role
    that came with the full name: "U.S. District Judge Harriet Coleman said" -> "Coleman said" once the lead has
    named her. Only people the sources themselves call by surname alone (`person_names`)."""
    for last, name in people.items():
        if name not in introduced:
            continue
        for m in reversed(list(re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text))):
            start = _role_start(text, m.start())
            text = text[:start] + last + text[m.end():]
    return text


def _role_start(text: str, name_start: int) -> int:
    """Where the title or role right before a name begins (`name_start` when there is none): role words, then the
    organisation they belong to ("Vantor Labs chief executive", "Lattice's chief executive", "the FDMC Chair")."""
    tokens = [(m.start(), m.group(0)) for m in _TOKEN.finditer(text[:name_start])]
    start, roles = name_start, 0
    while tokens and tokens[-1][1].lower() in _ROLE_WORDS:
        start = tokens.pop()[0]
        roles += 1
    if not roles:
        return name_start
    organisation = 0
    while tokens and organisation < 2:
        word = tokens[-1][1]
        bare = word.removesuffix("'s").removesuffix("’s")
        if not bare[:1].isupper() or not bare.replace("-", "").replace(".", "").isalnum() or bare.lower() in _NOT_NAMES \
                or bare.lower() in _CALENDAR_WORDS:
            break
        start = tokens.pop()[0]
        organisation += 1
        if bare != word:  # a possessive is the organisation's first word as read backwards: nothing before it belongs
            break
    if tokens and tokens[-1][1].lower() == "the":
        start = tokens.pop()[0]
    return start


_CALENDAR_WORDS = frozenset(
    "january february march april may june july august september october november december monday tuesday wednesday "
    "thursday friday saturday sunday".split()
)


def _lowercase_words(texts: Iterable[str]) -> set[str]:
    return {m.group(0) for text in texts for m in re.finditer(r"(?<![A-Za-z0-9\-])[a-z][a-z0-9\-]*", text)}


def salient_names(text: str, common: set[str]) -> set[str]:
    """`names(text)` that are names: multi-word names, and single words never written in lower case in `common`'s texts."""
    return {n for n in names(text) if " " in n or (n not in common and len(n) > 2)}


_PLAIN_OPENERS = frozenset(
    """because although though unless whether despite during until once whereas since after before while when what why
    how where who which if as so yet but and or then thus still also even only just here there today now some many most
    few several each every all both either neither other another such more less much first second third finally instead
    meanwhile however moreover therefore indeed perhaps""".split()
)
_SENTENCE_OPENER = re.compile(r"(?:^|(?<=[.!?:;])\s+|\n)[\"“'‘(]?([A-Z][a-z]+)\b")


def passage_names(text: str, common: set[str]) -> set[str]:
    """`salient_names` of a passage without capitalised sentence openers that are plain words ("Because their
    keys …", "Moves like this …", "Analysts said …"): function words, and -ing, -ed, -ly and -s forms."""
    openers = {m.group(1) for m in _SENTENCE_OPENER.finditer(text)}
    plain = {w for w in openers if w.lower() in _PLAIN_OPENERS or re.search(r"(?:ing|ed|ly|s)$", w.lower())}
    masked = text
    for word in plain:
        masked = re.sub(rf"\b{word}\b", word.lower(), masked)
    return salient_names(masked, common | _lowercase_words([masked]))


def story_profile(titles: Iterable[str], texts: Iterable[str]) -> tuple[set[str], set[str], set[str]]:
    """(core, own, common) for a story from its own items.

    core: the salient names in the story's headlines (who the story is about);
    own: `story_entities` kept to salient names; common: the words its texts use
    in lower case, for telling a name from a capitalised sentence opener.
    """
    titles, texts = list(titles), list(texts)
    common = _lowercase_words([*titles, *texts])
    own = {n for n in story_entities(titles, texts) if " " in n or (n not in common and len(n) > 2)}
    core = set().union(*(salient_names(t, common) for t in titles)) if titles else set()
    core -= {"nov", "dec", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct"}
    return core, own | core, common


def concerns_story(text: str, core: set[str], own: set[str], common: set[str]) -> bool:
    """Whether a passage is about the story's own actors rather than another event that shares a word with it.

    It must name one of the story's headline actors (`core`), or share at
    least two of its entities while naming no more other actors than shared ones.
    """
    found = salient_names(text, common | _lowercase_words([text]))
    if found & core:
        return True
    actors = _maximal(passage_names(text, common))  # "Quarry Labs" is one actor, not three names
    shared = {n for n in actors if n in own or set(n.split()) <= own}
    return len(shared) >= 2 and len(actors - shared) <= len(shared)


def _maximal(found: set[str]) -> set[str]:
    """The names not contained in a longer one ("quarry labs" keeps, "quarry" and "labs" go)."""
    return {n for n in found if not any(n != m and f" {n} " in f" {m} " for m in found)}


@dataclass(frozen=True)
class StoryProfile:
    """Who and what a story is about, from its own items: for telling related background from another event."""

    core: set[str]        # the story's subject: salient names a majority of its headlines share
    entities: set[str]    # the story's own entities (headline names, names most items share)
    common: set[str]      # words its texts use in lower case (not names)
    terms: set[str]       # lower-case content words of its headlines ("hot", "wallet", "breach")

    @classmethod
    def of(cls, titles: Sequence[str], texts: Sequence[str]) -> StoryProfile:
        """The story's subject is who a majority of its headlines name (all of them for a one-item story):
        background must name the subject, not only a party to it (the regulator in a lawsuit)."""
        core, entities, common = story_profile(titles, texts)
        per_title = [salient_names(t, common) & core for t in titles]
        needed = len(titles) // 2 + 1  # a majority: both of two, two of three
        subject = {n for n in core if sum(n in found for found in per_title) >= needed} or core
        terms = {w for t in titles for w in _words(t) if len(w) > 3 and w not in _PLAIN}
        return cls(subject, entities, common, terms)


_PLAIN = frozenset("after before about from with into over what when where which that this these those their there "
                   "says said will would could should have has been being than then them they your more most".split())


def _words(text: str) -> set[str]:
    """The words of `text`, lower-cased."""
    return {w.strip("'’-") for w in re.findall(r"[a-z][a-z'’\-]*", text.lower())}


def about_story(title: str, text: str, profile: StoryProfile) -> bool:
    """Whether a background passage concerns the story or explains it.

    It concerns the story when it names the story's subject (who most headlines name), or
    shares several of its entities while naming few others
    (`concerns_story`). It explains the story when it names no
    other actor at all and uses at least two of the story's headline words
    (an explainer such as "What is a hot wallet?"). A story whose headlines
    name no one leaves nothing out.
    """
    if not profile.core and not profile.entities:
        return True
    passage = f"{title}. {text}"
    if concerns_story(passage, profile.core, profile.entities, profile.common):
        return True
    found = passage_names(passage, profile.common)
    return not (found - profile.entities) and len(_words(passage) & profile.terms) >= 2
