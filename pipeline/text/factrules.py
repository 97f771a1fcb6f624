"""Deterministic claim checking: the part of fact-checking that needs no model.

One claim (a sentence of a draft) is checked against the story's sources:

- every number, date, direct quotation and named person/organisation in the
  claim must appear in some source (numbers and dates compared as values, so
  "1.2 million" == "1,200,000", "3 March 2024" == "2024-03-03");
- the claim is aligned token by token with its best evidence passage; where the
  claim is a near-copy of that passage, a slot whose value changed (a number,
  a date, a name) or a negation that was added or dropped is a contradiction;
- when the evidence holds at least half the claim's content words, what the two
  say is compared (see "meaning" below): direction (rose/fell, beat/missed,
  approved/rejected, more/fewer, with negation scope), order and time
  (before/after, last year/next year, first/second), roles (CEO/CFO; who did
  what to whom around the main verb, active or passive) and magnitude (the same
  digits at another scale, in another unit or currency, percent vs percentage
  points);
- a claim with no rule failure is `supported` only when nearly all its content
  words occur in the evidence window (a word the evidence says in other words,
  "climbed" for "rose", counts): content that no source has (an "unsupported
  addition") leaves it `unverifiable`.

Verdict policy (documented choices):
- negation added/removed against a near-copy source sentence -> contradicted;
- number/date/entity that differs from the value in the same slot of a near-copy
  source sentence -> contradicted (the source says otherwise);
- a direction, order/time, role or magnitude that the evidence states the other
  way -> contradicted, with both sides in the reason ("source 2 says “fell”,
  draft says “rose”"). These reuse the existing failure types: direction ->
  "negation", order/time -> "date", titles and roles -> "entity", magnitude ->
  "number";
- any other failure (value absent from every source, quote not verbatim) ->
  unverifiable: the sources do not say it, but nothing says the opposite.

A cue that opens a claim to frame it as background ("Separately,", "Earlier,", "In a separate case,") is not
checked against the sources: it says which event a fact belongs to, and the story check (below, used by
agents/fact_checker.py) judges that.

Approximation: a claim number must equal a source value exactly, except
(a) a number written with a scale word ("1.2 million", "$5bn") is accepted when
the source value rounds to it at the precision of its last written digit
(1,187,000 -> "1.2 million"; $48.2 million -> "$48 million", but not "$50
million", whose last digit is the zero), because that is how such figures are
conventionally written; and
(b) when the claim signals approximation ("about", "nearly", "more than", "some",
"~", ...), a source value less than one rounding unit of the claim away and
within 10% is accepted ("about 1,200" for 1,187; "more than 15,000" for 15,432).
A precise-looking figure gets no slack even with a marker: "more than 15,001"
against 15,000 fails, and so does "1.3 million" against 1,187,000.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Callable, Iterable, Literal, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict

from pipeline.core.models import RuleFailure, SupportVerdict
from pipeline.text.sentences import Sentence, normalize_for_match, split_sentences, windows

SemanticScorer = Callable[[str, list[str]], list[float]]

WINDOW_SIZE = 3
# A claim whose aligned tokens cover at least this share of it is a "near-copy"
# of the evidence: a changed slot there is a contradiction, not a paraphrase.
NEAR_COPY = 0.6
# `supported` needs this share of the claim's content words in the evidence
# window and no more than MAX_UNCOVERED content words missing from it.
MIN_COVERAGE = 0.8
MAX_UNCOVERED = 2
# Alignment edits longer than this (on either side) are trimming or rewriting,
# not a swapped value.
MAX_SLOT = 6
APPROX_TOLERANCE = 0.10


class Source(NamedTuple):
    id: str
    text: str


class OfflineVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: SupportVerdict
    source_id: str | None = None
    evidence: str = ""                 # verbatim slice of the cited source
    evidence_start: int | None = None  # offsets of `evidence` in that source's text
    evidence_end: int | None = None
    failures: list[RuleFailure] = []
    coverage: float = 0.0              # share of the claim's content words found in the evidence window
    unsupported_terms: list[str] = []  # claim content words the evidence window lacks


# --------------------------------------------------------------------------- tokens

STOPWORDS = frozenset(
    """a an the and or but nor so yet for of to in on at by with from into onto upon about above
    below over under after before since until while during between among through across against
    within without toward towards than then as if that this these those there here it its it's
    he him his she her hers they them their theirs we us our ours you your yours i me my mine
    who whom whose which what when where why how all any both each few more most other some such
    only own same too very just also even still again ever once is am are was were be been being
    have has had having do does did doing will would shall should can could may might must
    said says say told according per via s t one said, up out off down new""".split()
)

# Words that often open a sentence capitalised without being a name.
COMMON_OPENERS = STOPWORDS | frozenset(
    """however meanwhile although though because despite instead moreover furthermore
    earlier later last next now today yesterday tomorrow tonight recently currently
    many several most some no not never none nobody nothing after before since during
    while when if as in on at by for from with without under over among
    according officials authorities experts analysts critics sources police prosecutors
    residents investors traders users people others another""".split()
)

NEGATION_CUES = frozenset(
    "not no never none nobody nothing neither nor cannot without failed fail fails unable n't".split()
)
# Optional polarity flips treated like a negation when they replace each other.
POLARITY_PAIRS = {
    frozenset(p)
    for p in [
        ("confirmed", "denied"), ("confirm", "deny"), ("confirms", "denies"),
        ("approved", "rejected"), ("accepted", "rejected"), ("won", "lost"),
        ("increased", "decreased"), ("rose", "fell"), ("rise", "fall"), ("gained", "lost"),
        ("allowed", "banned"), ("supports", "opposes"), ("supported", "opposed"),
    ]
}

_TOKEN_RE = re.compile(
    r"[A-Za-z](?:\.[A-Za-z])+\.?"        # U.S. / e.g.
    r"|\d+(?:[.,:/]\d+)*"                # 1,200.5  10:30  3/4
    r"|\w+(?:['’]\w+)*"                  # words, don't, O'Brien
    r"|[$€£¥₹₦%]"
)


class Token(NamedTuple):
    text: str
    start: int
    end: int
    low: str


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(0), m.start(), m.end(), _fold(m.group(0))) for m in _TOKEN_RE.finditer(text)]


def _fold(word: str) -> str:
    return unicodedata.normalize("NFKC", word).replace("’", "'").lower()


def _stem(word: str) -> str:
    """Crude suffix stripping so 'raises'/'raised'/'raise' meet. Same on both sides."""
    w = word
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) >= 5 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) >= 5 and re.search(r"(?:[sxz]|ch|sh)es$", w):
        return w[:-2]
    if len(w) >= 4 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    if len(w) >= 6 and w.endswith("ing"):
        return w[:-3]
    if len(w) >= 5 and w.endswith("ed"):
        return w[:-2]
    return w


def _is_content(t: Token) -> bool:
    return t.low not in STOPWORDS and t.low[0].isalnum() and not (len(t.low) == 1 and t.low.isalpha())


def content_terms(tokens: Iterable[Token]) -> list[str]:
    return [_stem(t.low) for t in tokens if _is_content(t)]


def _is_negation(tok: str) -> bool:
    return tok in NEGATION_CUES or tok.endswith("n't")


# --------------------------------------------------------------------------- dates

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
    "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}
_WEEKDAYS = {
    "monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5, "sunday": 6,
}
_MONTH_RE = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|JANUARY|FEBRUARY|MARCH|APRIL|MAY|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|NOVEMBER|DECEMBER"
    r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[6-9]\d\d|20\d\d|2100)"
_DATE_PATTERNS = [
    ("iso", re.compile(r"\b(?P<y>" + _YEAR + r")-(?P<m>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12]\d|3[01])\b")),
    ("dmy", re.compile(r"\b(?P<d>" + _DAY + r")\s+(?:of\s+)?(?P<mn>" + _MONTH_RE + r")(?:,?\s+(?P<y>" + _YEAR + r"))?(?![\w])")),
    ("mdy", re.compile(r"\b(?P<mn>" + _MONTH_RE + r")\s+(?P<d>" + _DAY + r")(?![\d,]\d)(?![\w])(?:,?\s+(?P<y>" + _YEAR + r")(?![\d]))?")),
    ("my", re.compile(r"\b(?P<mn>" + _MONTH_RE + r")\s+(?:of\s+)?(?P<y>" + _YEAR + r")\b")),
    ("m", re.compile(r"\b(?P<mn>January|February|April|June|July|August|September|October|November|December)\b")),
    ("m_ctx", re.compile(r"\b(?:in|since|until|by|of|early|late|mid|last|next|this|from|through|till)[ -](?P<mn>March|May)\b")),
    ("wd", re.compile(r"\b(?P<wd>Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)s?\b")),
    ("y", re.compile(r"(?<![\d$€£,.])\b(?P<y>" + _YEAR + r")\b(?![,.]?\d)(?!s\b)")),
]


@dataclass(frozen=True)
class DateMention:
    raw: str
    start: int
    end: int
    year: int | None = None
    month: int | None = None
    day: int | None = None
    weekday: int | None = None


def extract_dates(text: str) -> list[DateMention]:
    """Dates, months, weekdays and years, longest patterns first; spans never overlap."""
    taken: list[tuple[int, int]] = []
    found: list[DateMention] = []
    for name, pat in _DATE_PATTERNS:
        for m in pat.finditer(text):
            a, b = m.span("mn") if name == "m_ctx" else m.span()
            if any(a < e and s < b for s, e in taken):
                continue
            g = m.groupdict()
            month = _MONTHS[g["mn"].lower().rstrip(".")] if g.get("mn") else (int(g["m"]) if g.get("m") else None)
            day = int(re.match(r"\d+", g["d"]).group(0)) if g.get("d") else None
            year = int(g["y"]) if g.get("y") else None
            weekday = _WEEKDAYS[g["wd"].lower()] if g.get("wd") else None
            taken.append((a, b))
            found.append(DateMention(text[a:b], a, b, year, month, day, weekday))
    found.sort(key=lambda d: d.start)
    return found


def _date_fields_agree(c: DateMention, s: DateMention) -> bool:
    pairs = [(c.year, s.year), (c.month, s.month), (c.day, s.day), (c.weekday, s.weekday)]
    if not any(x is not None and y is not None for x, y in pairs):
        return False
    return all(x is None or y is None or x == y for x, y in pairs)


# --------------------------------------------------------------------------- numbers

_WORD_UNITS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "dozen": 12,
}
_WORD_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20,
}
_SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12,
           "k": 1e3, "m": 1e6, "mn": 1e6, "mln": 1e6, "b": 1e9, "bn": 1e9, "tn": 1e12, "trn": 1e12}
_CURRENCY_CANON = {"$": "$", "us$": "$", "usd": "$", "dollar": "$", "dollars": "$",
                   "€": "€", "eur": "€", "euro": "€", "euros": "€",
                   "£": "£", "gbp": "£", "pound": "£", "pounds": "£",
                   "¥": "¥", "yen": "¥", "jpy": "¥", "₹": "₹", "rupees": "₹", "inr": "₹", "₦": "₦", "naira": "₦",
                   "yuan": "yuan", "renminbi": "yuan", "cny": "yuan", "rmb": "yuan", "francs": "CHF", "chf": "CHF",
                   "pesos": "peso", "rubles": "₽", "roubles": "₽", "₽": "₽", "lira": "lira", "rand": "rand"}
# "¥" is written for the yen and for the yuan.
_CURRENCY_ALIKE = {frozenset(("¥", "yuan"))}

# Units a figure may carry ("10 minutes", "a 3-mile stretch", "5 GW"): dimension and size in a base unit, so
# "10 hours" is not "10 minutes" and "1 year" is "12 months".
_MEASURES: dict[str, tuple[str, float]] = {}
for _names, _dim, _size in [
    ("second seconds secs", "time", 1), ("minute minutes mins", "time", 60), ("hour hours hrs", "time", 3600),
    ("day days", "time", 86400), ("week weeks", "time", 604800), ("month months", "time", 2629800),
    ("year years yrs", "time", 31557600), ("decade decades", "time", 315576000), ("century centuries", "time", 3155760000),
    ("km kilometre kilometres kilometer kilometers", "length", 1000), ("mile miles", "length", 1609.344),
    ("metre metres meter meters", "length", 1), ("foot feet ft", "length", 0.3048), ("inch inches", "length", 0.0254),
    ("cm centimetres centimeters", "length", 0.01), ("mm millimetres millimeters", "length", 0.001),
    ("yard yards", "length", 0.9144),
    ("kg kilogram kilograms kilos", "mass", 1), ("gram grams", "mass", 0.001), ("tonne tonnes ton tons", "mass", 1000),
    ("lb lbs", "mass", 0.45359), ("ounce ounces oz", "mass", 0.02835),
    ("acre acres", "area", 4046.86), ("hectare hectares", "area", 10000),
    ("kw kilowatts", "power", 1e3), ("mw megawatts", "power", 1e6), ("gw gigawatts", "power", 1e9),
    ("kwh", "energy", 3.6e6), ("mwh", "energy", 3.6e9), ("gwh", "energy", 3.6e12), ("twh", "energy", 3.6e15),
    ("kb", "data", 1e3), ("mb megabytes", "data", 1e6), ("gb gigabytes", "data", 1e9), ("tb terabytes", "data", 1e12),
    ("mph", "speed", 0.44704), ("kph", "speed", 0.27778),
    ("barrel barrels", "volume", 158.987), ("litre litres liter liters", "volume", 1), ("gallon gallons", "volume", 3.785),
]:
    for _n in _names.split():
        _MEASURES[_n] = (_dim, _size)
_MEASURE_RE = re.compile(r"[\s-]?(?P<u>" + "|".join(sorted(_MEASURES, key=len, reverse=True)) + r")\b", re.I)
_APPROX_RE = re.compile(
    r"(?:about|around|roughly|nearly|almost|approximately|approx\.?|some|over|under|more than|less than|"
    r"fewer than|up to|close to|estimated|at least|upwards of|just over|just under|~|circa|c\.)\s*$",
    re.I,
)

_NUM_CORE = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(
    r"(?<![\w.,])(?<![A-Za-z]-)"
    r"(?P<cur>US\$|A\$|C\$|HK\$|S\$|[$€£¥₹₦₽]|\b(?:USD|EUR|GBP|JPY|CNY|RMB|INR|CHF)\s?)?\s?"
    r"(?P<num>" + _NUM_CORE + r")"
    r"(?:(?P<ord>st|nd|rd|th)\b"
    r"|\s?-?(?P<scale>thousand|million|billion|trillion)\b"
    r"|(?P<suf>bn|mn|mln|tn|trn|m|b|k)\b)?"
    r"(?:\s?(?P<pct>%|percent\b|per cent\b|pc\b|pct\b)|\s(?P<pts>percentage[ -]points?\b|basis[ -]points?\b|bps\b))?"
    r"(?:\s(?P<curword>dollars|euros|pounds|naira|yen|rupees|yuan|renminbi|francs|pesos|rubles|roubles|lira|rand)\b)?",
    re.I,
)
_WORDNUM_RE = re.compile(
    r"\b(?P<w>(?:" + "|".join(_WORD_TENS) + r")(?:[- ](?:" + "|".join(k for k in _WORD_UNITS if _WORD_UNITS[k] < 10) + r"))?"
    r"|" + "|".join(_WORD_UNITS) + r"|one|a)"
    r"(?:\s(?P<scale>hundred|thousand|million|billion|trillion))?"
    r"(?:\s?(?P<pct>percent\b|per cent\b)|\s(?P<pts>percentage[ -]points?\b|basis[ -]points?\b))?\b",
    re.I,
)
_ORDWORD_RE = re.compile(r"\b(?P<w>" + "|".join(_ORDINAL_WORDS) + r")\b", re.I)


@dataclass(frozen=True)
class Quantity:
    raw: str
    start: int
    end: int
    value: float
    kind: Literal["number", "percent", "points", "ordinal"] = "number"   # points: percentage points
    currency: str | None = None
    approx: bool = False
    unit: float = 1.0      # rounding unit as written: "1.2 million" -> 100,000; "15,000" -> 1,000
    scaled: bool = False   # written with a scale word or suffix
    measure: str | None = None  # unit after the figure, lower case ("minutes", "km"): see _MEASURES
    last_digit: float | None = None  # the place of the last digit written, zeros too: "$50 million" -> 1,000,000

    @property
    def rounding(self) -> float:
        """What a figure stated plainly may round off: up to half its last written digit. A trailing zero counts:
        "$50 million" is not how a reporter writes $48 million, nor "$10 million" $12 million (they hedge:
        "nearly $50 million", which `approx` allows)."""
        return self.last_digit if self.last_digit is not None else self.unit


def _word_value(w: str) -> float | None:
    w = w.lower()
    if w in _WORD_UNITS:
        return _WORD_UNITS[w]
    parts = re.split(r"[- ]", w)
    if parts[0] in _WORD_TENS:
        return _WORD_TENS[parts[0]] + (_WORD_UNITS.get(parts[1], 0) if len(parts) > 1 else 0)
    if w in ("one", "a"):
        return 1
    return None


def extract_numbers(text: str, skip: Sequence[tuple[int, int]] = ()) -> list[Quantity]:
    """Numbers as values; spans in `skip` (dates) are ignored."""
    out: list[Quantity] = []

    def free(a: int, b: int) -> bool:
        return not any(a < e and s < b for s, e in skip) and not any(a < q.end and q.start < b for q in out)

    def approx_before(a: int) -> bool:
        return bool(_APPROX_RE.search(text[max(0, a - 20):a]))

    for m in _NUMBER_RE.finditer(text):
        a, b = m.start("num"), m.end()
        if m.group("cur"):
            a = m.start()
        while b > a and text[b - 1].isspace():
            b -= 1
        if not free(a, b):
            continue
        g = m.groupdict()
        num = g["num"]
        value = float(num.replace(",", ""))
        decimals = len(num.split(".")[1]) if "." in num else 0
        currency = None
        if g["cur"]:
            currency = _CURRENCY_CANON.get(g["cur"].strip().lower(), "$" if "$" in g["cur"] else g["cur"].strip())
        if g["curword"]:
            currency = _CURRENCY_CANON[g["curword"].lower()]
        if g["ord"]:
            out.append(Quantity(m.group(0).strip(), a, b, value, "ordinal"))
            continue
        scale = 1.0
        scale_word = (g["scale"] or g["suf"] or "").lower()
        if scale_word in ("m", "b", "k") and not currency:
            scale_word = ""  # "5m" without a currency is as likely metres as millions
            b = m.start("suf") if g["suf"] else b
        if scale_word:
            scale = _SCALES[scale_word]
            value *= scale
        digits = num.replace(",", "").split(".")[0]
        zeros = 0 if decimals else len(digits) - len(digits.rstrip("0")) if digits.strip("0") else 0
        unit = scale * 10.0 ** (zeros - decimals)
        last_digit = scale * 10.0 ** -decimals
        kind = "percent" if g["pct"] else "points" if g["pts"] else "number"
        if g["pts"] and g["pts"].lower().startswith(("basis", "bps")):
            # 50 basis points = 0.5 percentage points
            value, unit, last_digit = value / 100, unit / 100, last_digit / 100
        out.append(Quantity(text[a:b], a, b, value, kind, currency, approx_before(a), unit, bool(scale_word),
                            last_digit=last_digit))

    for m in _WORDNUM_RE.finditer(text):
        a, b = m.span()
        w = m.group("w")
        if w.lower() in ("one", "a") and not m.group("scale"):
            continue  # "one of", "a man": not a figure
        if not free(a, b):
            continue
        value = _word_value(w)
        if value is None:
            continue
        scale = {"hundred": 100, **_SCALES}[m.group("scale").lower()] if m.group("scale") else 1.0
        kind = "percent" if m.group("pct") else "points" if m.group("pts") else "number"
        value = float(value) * scale
        if m.group("pts") and m.group("pts").lower().startswith("basis"):
            value /= 100
        out.append(Quantity(m.group(0), a, b, value, kind, None, approx_before(a), scale, bool(m.group("scale"))))

    for m in _ORDWORD_RE.finditer(text):
        a, b = m.span()
        w = m.group("w").lower()
        if w == "second" and re.search(r"\b(?:a|per|one|split|every)\s+$", text[max(0, a - 8):a], re.I):
            continue
        if free(a, b):
            out.append(Quantity(m.group(0), a, b, float(_ORDINAL_WORDS[w]), "ordinal"))
    out.sort(key=lambda q: q.start)
    return [_with_measure(q, text) for q in out]


def _with_measure(q: Quantity, text: str) -> Quantity:
    """The unit written right after a plain figure ("10 minutes", "3-mile", "5 GW"), if any."""
    if q.kind != "number" or q.currency:
        return q
    m = _MEASURE_RE.match(text, q.end)
    if not m:
        return q
    unit = m.group("u").lower()
    if unit in ("mb", "gb", "tb", "kb", "mw", "gw", "kw") and not m.group("u")[-1].isupper():
        return q   # "5 mb" in running text is too often something else; units of data and power are capitalised
    return Quantity(q.raw, q.start, q.end, q.value, q.kind, q.currency, q.approx, q.unit, q.scaled, unit, q.last_digit)


def numbers_match(claim: Quantity, source: Quantity) -> bool:
    if claim.kind != source.kind:
        return False
    if claim.currency and source.currency and claim.currency != source.currency and \
            frozenset((claim.currency, source.currency)) not in _CURRENCY_ALIKE:
        return False
    c_value, s_value, rounding = claim.value, source.value, claim.unit
    if claim.measure and source.measure and claim.measure != source.measure:
        (c_dim, c_size), (s_dim, s_size) = _MEASURES[claim.measure], _MEASURES[source.measure]
        if c_dim != s_dim:
            return False
        # The same length in another unit ("3 miles" for "5 km") is the same figure, to within rounding.
        c_value, s_value, rounding = c_value * c_size, s_value * s_size, max(rounding * c_size, 0.02 * abs(s_value * s_size))
        if c_size == s_size:
            return math.isclose(c_value, s_value, rel_tol=1e-9)
        return abs(c_value - s_value) <= rounding / 2 or (claim.approx and abs(c_value - s_value) <= APPROX_TOLERANCE * abs(s_value))
    if math.isclose(claim.value, source.value, rel_tol=1e-9, abs_tol=1e-9):
        return True
    diff = abs(claim.value - source.value)
    if claim.scaled and diff <= claim.rounding / 2 * (1 + 1e-9):
        return True
    if claim.approx and diff < claim.unit and diff <= APPROX_TOLERANCE * abs(source.value):
        return True
    return False


def unmatched_numbers(claim: Sequence[Quantity], source: Sequence[Quantity]) -> tuple[list[Quantity], list[Quantity]]:
    """Pair claim and source figures one to one: (claim figures left over, source figures left over)."""
    free = list(source)
    left: list[Quantity] = []
    for q in claim:
        hit = next((s for s in free if numbers_match(q, s)), None)
        if hit is None:
            left.append(q)
        else:
            free.remove(hit)
    return left, free


def _year_as_quantity(d: DateMention) -> Quantity | None:
    if d.year is None or d.month is not None or d.weekday is not None:
        return None
    return Quantity(d.raw, d.start, d.end, float(d.year))


# --------------------------------------------------------------------------- quotes

_QUOTE_PATTERNS = [
    re.compile(r"“([^“”]+)”"),
    re.compile(r"«\s*([^«»]+?)\s*»"),
    re.compile(r"(?<![\w])‘([^‘’]+?)’(?![\w])"),
    re.compile(r'"([^"]+)"'),
]
_ELLIPSIS = re.compile(r"\s*(?:\.\s?\.\s?\.|…|\[\s*(?:\.\.\.|…)\s*\])\s*")


def extract_quotes(text: str) -> list[str]:
    """Direct quotations in a claim, including one left open by sentence splitting."""
    quotes: list[str] = []
    spans: list[tuple[int, int]] = []
    for pat in _QUOTE_PATTERNS:
        for m in pat.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in spans):
                continue
            spans.append(m.span())
            quotes.append(m.group(1))
    rest = text
    for s, e in sorted(spans, reverse=True):
        rest = rest[:s] + " " * (e - s) + rest[e:]
    # An unpaired mark: a quotation that began or ends in a neighbouring sentence.
    for m in re.finditer(r'[“”"]', rest):
        i = m.start()
        after = rest[i + 1:]
        opens = m.group(0) == "“" or (m.group(0) == '"' and (i == 0 or rest[i - 1].isspace()) and after[:1].strip())
        piece = text[i + 1:] if opens else text[:i]
        if len(piece.split()) >= 3:
            quotes.append(piece)
    return [q for q in (q.strip() for q in quotes) if re.search(r"\w", q)]


def _quote_key(s: str) -> str:
    s = normalize_for_match(s).casefold()
    s = re.sub(r"\s+(?=[,.;:!?)\]'\"%])", "", s)
    s = re.sub(r"(?<=[(\[$])\s+", "", s)
    return s


@lru_cache(maxsize=64)
def _source_key(source_text: str) -> str:
    return _quote_key(source_text)


def quote_appears_verbatim(quote: str, source_text: str) -> bool:
    """True when `quote` occurs in `source_text` word for word.

    Whitespace, quote-mark and dash styles, letter case and the punctuation that
    style guides move inside a closing quote are ignored; an ellipsis splits the
    quote into pieces that must each appear, in order. Anything else (a changed,
    added or dropped word) is not verbatim.
    """
    if not isinstance(quote, str) or not isinstance(source_text, str):
        raise TypeError("quote_appears_verbatim expects two strings")
    key = _source_key(source_text)
    pos = 0
    pieces = [p.strip(" ,.;:!?'\"-") for p in _ELLIPSIS.split(_quote_key(quote))]
    pieces = [p for p in pieces if re.search(r"\w", p)]
    if not pieces:
        return False
    for piece in pieces:
        m = re.compile(r"(?<!\w)" + re.escape(piece) + r"(?!\w)").search(key, pos)
        if not m:
            return False
        pos = m.end()
    return True


# --------------------------------------------------------------------------- entities

_TITLE_WORDS = frozenset(
    """mr mrs ms dr prof professor sir dame lord lady president vice senator sen rep representative
    gov governor minister prime chief ceo cfo cto chairman chairwoman chair director judge justice
    rt hon honourable honorable general gen col colonel capt captain lt sgt pope king queen prince
    princess secretary speaker leader mayor deputy commissioner ambassador attorney officer
    spokesman spokeswoman spokesperson founder executive analyst the""".split()
)
_CONNECTORS = frozenset("of de del della da di van von der den bin al le la du & y".split())


@dataclass(frozen=True)
class Entity:
    raw: str
    start: int
    end: int
    tokens: tuple[str, ...]   # match keys: possessive dropped, acronym dots removed
    initial: bool             # starts at the beginning of a sentence


def _entity_key(tok: str) -> str:
    t = unicodedata.normalize("NFKC", tok).replace("’", "'")
    if t.endswith("'s") or t.endswith("'S"):
        t = t[:-2]
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]?\.?", t):
        t = t.replace(".", "")
    return t


def _is_acronym(tok: str) -> bool:
    return len(tok) >= 2 and tok.replace(".", "").isupper() and tok.replace(".", "").isalpha()


def _is_cap(tok: str) -> bool:
    return tok[:1].isupper() or (tok[:1].isdigit() and any(c.isupper() for c in tok))


def _sentence_initial(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\"'“‘([«")
    return not before or before[-1] in ".!?:;\n—–-"


def extract_entities(text: str, is_name: Callable[[str], bool] | None = None) -> list[Entity]:
    """Capitalised runs ("Bukola Saraki", "Bank of England") and acronyms ("NASA", "U.S.").

    Month and weekday names are dates, not entities. A capitalised word that opens
    a sentence is dropped when it is a common opener, or when `is_name` (which
    knows the sources) says it is an ordinary word.
    """
    toks = tokenize(text)
    runs: list[list[Token]] = []
    cur: list[Token] = []
    for i, t in enumerate(toks):
        gap = text[cur[-1].end:t.start] if cur else ""
        contiguous = not cur or (gap.strip() == "" and "\n" not in gap) or gap.strip() == "&"
        word = t.text
        is_date_word = word.lower().rstrip(".") in _MONTHS or word.lower() in _WEEKDAYS
        if _is_cap(word) and not is_date_word and contiguous:
            cur.append(t)
            continue
        if (
            cur and contiguous and word.lower() in _CONNECTORS
            and i + 1 < len(toks) and _is_cap(toks[i + 1].text)
            and text[t.end:toks[i + 1].start].strip() == ""
        ):
            cur.append(t)
            continue
        if cur:
            runs.append(cur)
        cur = [t] if _is_cap(word) and not is_date_word else []
    if cur:
        runs.append(cur)

    out: list[Entity] = []
    for run in runs:
        initial = _sentence_initial(text, run[0].start)
        if initial:
            first = run[0].text
            if first.lower() in COMMON_OPENERS or first.lower() in _LEXICON or (is_name is not None and not is_name(first)):
                run = run[1:]
                initial = False
        while run and run[-1].text.lower() in _CONNECTORS:
            run = run[:-1]
        if not run:
            continue
        if len(run) == 1 and run[0].text.lower() in STOPWORDS and not _is_acronym(run[0].text):
            continue  # "I", "A" inside titles
        keys = tuple(k for k in (_entity_key(t.text) for t in run) if k)
        if keys:
            out.append(Entity(text[run[0].start:run[-1].end], run[0].start, run[-1].end, keys, initial))
    return out


# --------------------------------------------------------------------------- source index


@dataclass
class _Window:
    source: int
    start: int
    end: int
    first: int
    last: int
    tokens: list[Token]
    sent_of: list[int]   # sentence index of each token
    terms: Counter


@dataclass
class _SourceDoc:
    id: str
    text: str
    sentences: list[Sentence]
    tokens: list[Token]
    quantities: list[Quantity]
    dates: list[DateMention]
    entity_string: str           # " key key key " for contiguous-name lookups
    cap_words: set[str]          # capitalised tokens seen mid-sentence
    lower_words: set[str]        # tokens seen in lower case


@dataclass
class SourceIndex:
    """Sources prepared once so many claims can be checked against them cheaply."""

    docs: list[_SourceDoc]
    windows: list[_Window]
    df: Counter = field(default_factory=Counter)
    avg_len: float = 1.0

    @classmethod
    def build(cls, sources: Iterable, window_size: int = WINDOW_SIZE) -> "SourceIndex":
        docs: list[_SourceDoc] = []
        wins: list[_Window] = []
        for n, src in enumerate(_coerce_sources(sources)):
            sents = split_sentences(src.text)
            toks = tokenize(src.text)
            dates = extract_dates(src.text)
            qty = extract_numbers(src.text, [(d.start, d.end) for d in dates])
            qty += [q for q in (_year_as_quantity(d) for d in dates) if q]
            cap_words = {
                _entity_key(t.text) for t in toks if _is_cap(t.text) and not _sentence_initial(src.text, t.start)
            }
            lower_words = {t.low for t in toks if t.text[:1].islower()}
            ent_string = " " + " ".join(_entity_key(t.text) for t in toks) + " "
            doc = _SourceDoc(src.id, src.text, sents, toks, qty, dates, ent_string, cap_words, lower_words)
            docs.append(doc)
            ti = 0
            sent_tokens: list[list[Token]] = []
            for s in sents:
                while ti < len(toks) and toks[ti].start < s.start:
                    ti += 1
                tj = ti
                while tj < len(toks) and toks[tj].end <= s.end:
                    tj += 1
                sent_tokens.append(toks[ti:tj])
                ti = tj
            for w in windows(sents, size=window_size, stride=1):
                wt = [t for st in sent_tokens[w.first:w.last + 1] for t in st]
                sent_of = [k for k in range(w.first, w.last + 1) for _ in sent_tokens[k]]
                wins.append(_Window(n, w.start, w.end, w.first, w.last, wt, sent_of, Counter(content_terms(wt))))
        idx = cls(docs, wins)
        for w in wins:
            idx.df.update(set(w.terms))
        idx.avg_len = (sum(sum(w.terms.values()) for w in wins) / len(wins)) if wins else 1.0
        return idx

    def is_name(self, word: str) -> bool:
        """A sentence-initial capitalised word is a name if sources use it capitalised mid-sentence
        or never in lower case."""
        key = _entity_key(word)
        return any(key in d.cap_words for d in self.docs) or not any(word.lower() in d.lower_words for d in self.docs)

    def bm25(self, terms: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
        n = len(self.windows)
        q = Counter(terms)
        scores = []
        for w in self.windows:
            length = sum(w.terms.values())
            s = 0.0
            for term in q:
                tf = w.terms.get(term, 0)
                if not tf:
                    continue
                idf = math.log(1 + (n - self.df[term] + 0.5) / (self.df[term] + 0.5))
                s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / self.avg_len))
            scores.append(s)
        return scores


def _coerce_sources(sources: Iterable) -> list[Source]:
    out: list[Source] = []
    for i, src in enumerate(sources):
        if isinstance(src, Source):
            out.append(src)
        elif isinstance(src, dict) and "text" in src:
            out.append(Source(str(src.get("id", i)), src["text"]))
        elif isinstance(src, (tuple, list)) and len(src) == 2:
            out.append(Source(str(src[0]), src[1]))
        elif hasattr(src, "text") and hasattr(src, "id"):
            out.append(Source(str(src.id), src.text))
        else:
            raise ValueError(f"source #{i} must be (source_id, text) or have id/text, got {type(src).__name__}")
        if not isinstance(out[-1].text, str):
            raise ValueError(f"source {out[-1].id!r}: text must be a string, got {type(out[-1].text).__name__}")
    return out


# --------------------------------------------------------------------------- analysis


@dataclass
class _ClaimParts:
    text: str
    tokens: list[Token]
    dates: list[DateMention]
    quantities: list[Quantity]
    quotes: list[str]
    entities: list[Entity]
    terms: list[str]         # for retrieval
    cover_terms: list[str]   # for the coverage test: figures and dates are checked by their own rules
    surface: dict[str, str]  # stem -> the word as the claim wrote it, for messages


def _parse_claim(claim: str, index: SourceIndex) -> _ClaimParts:
    dates = extract_dates(claim)
    qty = extract_numbers(claim, [(d.start, d.end) for d in dates])
    tokens = tokenize(claim)
    valued = [(x.start, x.end) for x in (*dates, *qty)]
    plain = [t for t in tokens if not any(a <= t.start and t.end <= b for a, b in valued)]
    return _ClaimParts(
        claim, tokens, dates, qty, extract_quotes(claim),
        extract_entities(claim, index.is_name), content_terms(tokens), content_terms(plain),
        {_stem(t.low): t.text for t in reversed(plain) if _is_content(t)},
    )


@dataclass
class _Alignment:
    window: _Window
    score: float
    matched: int                    # claim tokens aligned to the region
    region: tuple[int, int]         # token range in window.tokens
    opcodes: list[tuple[str, int, int, int, int]]


def _region_alignment(claim_tokens: list[Token], win: _Window, score: float) -> _Alignment:
    """Align the claim with the sentences of `win` it really sits on.

    The region holds the sentences the longest matching block touches, plus any
    other sentence of the window that supplies a good share of the claim's
    content words: a name or two borrowed from the next sentence does not make
    that sentence evidence. Whole sentences are kept, so a negation dropped at
    the start of a sentence still shows up as an edit rather than as trimming.
    """
    a = [t.low for t in claim_tokens]
    b = [t.low for t in win.tokens]
    blocks = [blk for blk in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks() if blk.size]
    if not blocks:
        return _Alignment(win, score, 0, (0, 0), [])
    main = max(blocks, key=lambda blk: blk.size)
    included = {win.sent_of[main.b], win.sent_of[main.b + main.size - 1]}
    contrib: Counter = Counter()
    for blk in blocks:
        for k in range(blk.size):
            if a[blk.a + k] not in STOPWORDS:
                contrib[win.sent_of[blk.b + k]] += 1
    n_content = sum(1 for w in a if w not in STOPWORDS and w[:1].isalnum())
    threshold = max(3, 0.3 * n_content)
    included |= {sid for sid, c in contrib.items() if c >= threshold}
    lo_sent, hi_sent = min(included), max(included)
    idx = [i for i, sid in enumerate(win.sent_of) if lo_sent <= sid <= hi_sent]
    lo, hi = idx[0], idx[-1] + 1
    sm = SequenceMatcher(None, a, b[lo:hi], autojunk=False)
    ops = [(tag, i1, i2, j1 + lo, j2 + lo) for tag, i1, i2, j1, j2 in sm.get_opcodes()]
    matched = sum(blk.size for blk in sm.get_matching_blocks())
    return _Alignment(win, score, matched, (lo, hi), ops)


def _span(tokens: list[Token], i: int, j: int, text: str, pad: int = 2) -> str:
    i, j = max(0, i - pad), min(len(tokens), j + pad)
    if i >= j:
        return ""
    return text[tokens[i].start:tokens[j - 1].end]


def _slot_failures(
    claim: _ClaimParts, al: _Alignment, doc: _SourceDoc, index: SourceIndex
) -> list[RuleFailure]:
    """Edits between a near-copy claim and its evidence that change a value or the polarity."""
    out: list[RuleFailure] = []
    negations: list[tuple[int, RuleFailure]] = []  # (+1 added / -1 dropped, failure)
    ctoks, stoks = claim.tokens, al.window.tokens
    ops = al.opcodes
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            continue
        edge = n == 0 or n == len(ops) - 1
        c_len, s_len = i2 - i1, j2 - j1
        c_words = [t.low for t in ctoks[i1:i2]]
        s_words = [t.low for t in stoks[j1:j2]]
        # Negation: a cue added or dropped in a short edit (at an edge only when the
        # edit is nothing but the cue: a trimmed clause is longer).
        c_neg = sum(_is_negation(w) for w in c_words)
        s_neg = sum(_is_negation(w) for w in s_words)
        short = c_len <= MAX_SLOT and s_len <= MAX_SLOT
        if c_neg != s_neg and short and _reworded_polarity(ctoks[i1:i2], claim.text, stoks[j1:j2], doc.text):
            continue   # "did not rise" where the source says "fell": the same direction in other words
        if c_neg != s_neg and short and (not edge or max(c_len, s_len) <= 2):
            added = c_neg > s_neg
            cue = " ".join(c_words if added else s_words)
            negations.append((c_neg - s_neg, RuleFailure(
                type="negation",
                detail=(f"claim adds a negation ({cue!r}) to what {doc.id} says" if added
                        else f"claim drops the negation {cue!r} that {doc.id} has"),
                value=cue,
            )))
            continue
        if tag == "replace" and short and any(
            frozenset((x, y)) in POLARITY_PAIRS for x in c_words for y in s_words
        ):
            out.append(RuleFailure(type="negation", detail=f"claim says {' '.join(c_words)!r} where {doc.id} says {' '.join(s_words)!r}", value=" ".join(c_words)))
            continue
        if tag != "replace" or not short:
            continue
        c_text = _span(ctoks, i1, i2, claim.text)
        s_text = _span(stoks, j1, j2, doc.text)
        c_exact = claim.text[ctoks[i1].start:ctoks[i2 - 1].end]
        s_exact = doc.text[stoks[j1].start:stoks[j2 - 1].end]
        # Dates first: a changed year must not also count as a changed number.
        c_dates, s_dates = extract_dates(c_text), extract_dates(s_text)
        bad = [d for d in c_dates if not any(_date_fields_agree(d, s) for s in s_dates)]
        if bad and s_dates:
            out.append(RuleFailure(type="date", detail=f"claim has {bad[0].raw!r} where {doc.id} has {s_dates[0].raw!r}", value=bad[0].raw))
            continue
        # A bare year on one side may face a plain figure on the other ("2000" for "200").
        c_q = extract_numbers(c_text, [(d.start, d.end) for d in c_dates]) + [
            q for q in map(_year_as_quantity, c_dates) if q]
        s_q = extract_numbers(s_text, [(d.start, d.end) for d in s_dates]) + [
            q for q in map(_year_as_quantity, s_dates) if q]
        bad_q, orphan = unmatched_numbers(c_q, s_q)
        if bad_q and orphan:
            out.append(RuleFailure(type="number", detail=f"claim has {bad_q[0].raw!r} where {doc.id} has {orphan[0].raw!r}", value=bad_q[0].raw))
            continue
        c_caps = [t for t in ctoks[i1:i2] if _is_name_token(t)]
        s_caps = [t for t in stoks[j1:j2] if _is_name_token(t)]
        if c_caps and s_caps:
            c_first_initial = i1 == 0 or _sentence_initial(claim.text, ctoks[i1].start)
            if c_first_initial and len(c_caps) == 1 and c_caps[0] is ctoks[i1] and (
                    not index.is_name(c_caps[0].text) or c_caps[0].low in COMMON_OPENERS or c_caps[0].low in _LEXICON):
                continue   # an opening word reworded ("Following" for "After", "Authorities" for "Officials")
            c_keys = {_entity_key(t.text).lower() for t in c_caps}
            s_keys = {_entity_key(t.text).lower() for t in s_caps}
            if c_keys - s_keys:
                out.append(RuleFailure(type="entity", detail=f"claim names {c_exact!r} where {doc.id} names {s_exact!r}", value=c_exact))
    # A cue dropped in one place and added in another was moved, not flipped
    # ("no room" -> "room no" is a garbled quote, not a reversal).
    if negations and sum(sign for sign, _ in negations) != 0:
        out = [f for _, f in negations] + out
    return out


def _reworded_polarity(c_toks: list[Token], c_text: str, s_toks: list[Token], s_text: str) -> bool:
    """Both sides of an edit say the same direction, one with a negation and the opposite word."""
    c_cues = [c for c in _cues(c_toks, c_text, _clauses(c_toks, c_text)) if c.signed]
    s_cues = [c for c in _cues(s_toks, s_text, _clauses(s_toks, s_text)) if c.signed]
    return any(c.axis == s.axis and c.value != s.value and c.effective() == s.effective() for c in c_cues for s in s_cues)


def _is_name_token(t: Token) -> bool:
    if not _is_cap(t.text):
        return False
    if _is_acronym(t.text):
        return True
    return t.low not in STOPWORDS and t.low.rstrip(".") not in _MONTHS and t.low not in _WEEKDAYS


def _presence_failures(claim: _ClaimParts, index: SourceIndex) -> list[RuleFailure]:
    """Values in the claim that no source has at all."""
    out: list[RuleFailure] = []
    all_q = [q for d in index.docs for q in d.quantities]
    for q in claim.quantities:
        if not any(numbers_match(q, s) for s in all_q):
            out.append(RuleFailure(type="number", detail=f"no source has the figure {q.raw!r}", value=q.raw))
    for d in claim.dates:
        if not _date_in_sources(d, index):
            out.append(RuleFailure(type="date", detail=f"no source has the date {d.raw!r}", value=d.raw))
    for quote in claim.quotes:
        if not any(quote_appears_verbatim(quote, doc.text) for doc in index.docs):
            out.append(RuleFailure(type="quote", detail="quotation does not appear verbatim in any source", value=quote))
    for ent in claim.entities:
        if not _entity_in_sources(ent, index):
            out.append(RuleFailure(type="entity", detail=f"no source names {ent.raw!r}", value=ent.raw))
    return out


def _date_in_sources(d: DateMention, index: SourceIndex) -> bool:
    for doc in index.docs:
        if d.month is not None and d.day is not None:
            ok = any(s.month == d.month and s.day == d.day for s in doc.dates)
        elif d.month is not None:
            ok = any(s.month == d.month for s in doc.dates)
        else:
            ok = True
        if d.weekday is not None:
            ok = ok and any(s.weekday == d.weekday for s in doc.dates)
        if d.year is not None:
            ok = ok and (any(s.year == d.year for s in doc.dates) or any(
                q.kind == "number" and q.value == d.year for q in doc.quantities))
        if ok:
            return True
    return False


def _entity_in_sources(ent: Entity, index: SourceIndex) -> bool:
    return _entity_in(ent, [d.entity_string for d in index.docs]) or any(
        _acronym_of_name_in(ent.raw, d.text) for d in index.docs)


def _entity_in(ent: Entity, haystacks: list[str]) -> bool:
    """Is the name in one of these " key key " strings? Leading titles may be dropped."""
    keys = list(ent.tokens)
    lowered = [h.lower() for h in haystacks] if ent.initial else None

    def found(ks: list[str]) -> bool:
        needle = " " + " ".join(ks) + " "
        if any(needle in h for h in haystacks):
            return True
        # Only the opening word of a sentence may differ in case ("The Senate" vs "the Senate").
        return bool(lowered) and any(needle.lower() in h for h in lowered)

    if found(keys):
        return True
    while len(keys) > 1 and keys[0].lower().rstrip(".") in _TITLE_WORDS:
        keys = keys[1:]
        if found(keys):
            return True
    # A title inside the run ("Norvik CEO Maria Gonzalez"): each name around it must be there; the title itself is
    # compared with the evidence's by the role check.
    parts: list[list[str]] = [[]]
    for k in keys:
        if k.lower().rstrip(".") in _TITLE_WORDS:
            parts.append([])
        else:
            parts[-1].append(k)
    parts = [p for p in parts if p]
    return len(parts) > 1 and all(found(p) for p in parts)


# --------------------------------------------------------------------------- meaning
#
# A paraphrase can keep every name and figure and still say the opposite. After the claim is aligned to its
# evidence sentence(s), what the two say is compared, not only which tokens they share:
#
# - direction: words that say which way something went or came out (rose/fell, beat/missed, approved/rejected,
#   more/fewer, above/below, profit/loss), each with the negation in its scope ("did not rise" is not "rose");
# - order and time: before/after, earlier/later, since/until, last year/next year, ago/from now, first/second,
#   former/incoming, earliest/latest;
# - roles: titles (CEO/CFO, president/vice president, buyer/seller), and who did what to whom: the two names
#   around the main verb, active or passive ("B was bought by A" is "A bought B"; "B bought A" is not);
# - magnitude: a figure the sources do not have whose digits the evidence has with another scale word, unit,
#   currency, or percent where the evidence has percentage points (5 percentage points is not 5%).
#
# Each word of the claim that carries such a meaning is paired with the evidence word of the same kind that
# sits in the same place: aligned to it, or with the most words around it in common (same clause, a few words
# either side). Only a pair that disagrees, with no agreeing word as well placed, is a contradiction. So the
# lexicons only have to know which way a word points, and a word the claim shares with the evidence never
# counts. Nothing here needs a model or a parser: a dependency parse (spaCy) would find subjects and objects in
# harder sentences, but no English model is published on PyPI by its authors, and the heuristic below covers
# the name-verb-name sentences in which news states who did what to whom.

# Share of the claim's content words its evidence must hold before the two are taken to state the same fact.
SAME_FACT = 0.5
# Words either side of a cue that make up its context, within its clause.
CUE_CONTEXT = 6

# axis -> [(value, words)]. "v:" expands a verb's regular forms ("v:rise/rose/risen" adds the irregular ones).
_LEXICON_SPEC: dict[str, list[tuple[object, str]]] = {
    "level": [
        (1, "v:rise/rose/risen v:increase v:climb v:jump v:grow/grew/grown v:surge v:soar v:rally/rallied v:advance "
            "v:expand v:boost v:raise v:lift v:rebound v:spike v:swell/swollen v:double v:triple v:accelerate v:gain "
            "v:upgrade v:hike v:widen v:strengthen v:outpace v:climb v:leap/leapt v:skyrocket v:balloon "
            "growth upturn uptick recovery expansion higher upward upwards more greater larger bigger above increased "
            "up over"),
        (-1, "v:fall/fell/fallen v:drop/dropped/dropping v:decline v:decrease v:shrink/shrank/shrunk v:plunge v:plummet "
             "v:tumble v:slump v:slide/slid v:sink/sank/sunk v:slip/slipped/slipping v:dip/dipped/dipping v:contract "
             "v:cut/cutting v:reduce v:lower v:ease v:lose/lost/losing v:shed/shedding v:halve v:crash v:collapse "
             "v:retreat v:weaken v:slow v:downgrade v:narrow v:trim/trimmed/trimming v:slash v:erode "
             "reduction downturn slowdown contraction downward downwards fewer less smaller below reduced "
             "down under"),
    ],
    "extreme": [
        (1, "most largest biggest highest greatest maximum"),
        (-1, "least fewest smallest lowest minimum"),
    ],
    "quality": [
        (1, "better best v:improve strong stronger strongest robust upbeat"),
        (-1, "worse worst v:worsen v:deteriorate weak weaker weakest poor poorer"),
    ],
    "outcome": [
        (1, "v:beat/beaten/beating v:win/won/winning v:exceed v:surpass v:top/topped/topping v:outperform v:defeat "
            "v:succeed victory"),
        (-1, "v:miss v:lose/lost/losing v:trail v:underperform v:lag/lagged/lagging"),
    ],
    "assent": [
        (1, "v:approve v:accept v:endorse v:uphold v:confirm v:allow v:permit v:authorize v:authorise v:legalize "
            "v:legalise v:support v:favor v:favour v:agree backed backing greenlit"),
        (-1, "v:reject v:refuse v:deny/denied v:oppose v:block v:veto/vetoes/vetoed v:overturn v:dismiss "
             "v:ban/banned/banning v:prohibit v:bar/barred/barring v:forbid/forbade/forbidden v:outlaw"),
    ],
    "valence": [
        (1, "positive bullish optimistic favorable favourable"),
        (-1, "negative bearish pessimistic unfavorable unfavourable"),
    ],
    "balance": [
        (1, "profit profits profitable surplus surpluses inflow inflows"),
        (-1, "loss losses deficit deficits unprofitable outflow outflows"),
    ],
    "sequence": [
        (-1, "before previously beforehand earlier preceding preceded until till"),
        (1, "after following later subsequently afterwards afterward since followed"),
    ],
    "reltime": [
        (-1, "previous past yesterday ago former formerly"),
        (1, "next coming upcoming future tomorrow incoming"),
    ],
    "latest": [(-1, "earliest"), (1, "latest")],
    "ordinal": [(1, "first"), (2, "second"), (3, "third"), (4, "fourth"), (5, "fifth"), ("last", "final last")],
}
# Several words that read as one cue (longest first when matched): (axis, value) or None for "not a cue".
_PHRASES: dict[tuple[str, ...], tuple[str, object] | None] = {
    ("fell", "short"): ("outcome", -1), ("fall", "short"): ("outcome", -1), ("falls", "short"): ("outcome", -1),
    ("falling", "short"): ("outcome", -1), ("turned", "down"): ("assent", -1), ("turn", "down"): ("assent", -1),
    ("voted", "down"): ("assent", -1), ("struck", "down"): ("assent", -1), ("strike", "down"): ("assent", -1),
    ("signed", "off"): ("assent", 1), ("prior", "to"): ("sequence", -1), ("ahead", "of"): ("sequence", -1),
    ("in", "advance", "of"): ("sequence", -1), ("from", "now"): ("reltime", 1), ("in", "the", "past"): ("reltime", -1),
    ("last", "but", "not", "least"): None, ("at", "least"): None, ("at", "most"): None, ("more", "or", "less"): None,
    ("once", "more"): None, ("no", "more"): None, ("any", "more"): None, ("at", "first"): None, ("first", "of", "all"): None,
    ("most", "recently"): None, ("set", "up"): None, ("up", "to"): None, ("down", "to"): None, ("next", "to"): None,
    ("over", "the"): None, ("after", "all"): None, ("the", "following"): None, ("better", "known"): None,
    ("best", "known"): None, ("up", "and", "down"): None, ("ups", "and", "downs"): None,
}
# Time nouns: "last" before one is a relative date ("last year"), otherwise the last of a series.
_TIME_NOUNS = frozenset(
    """week weeks month months year years quarter quarters season seasons night weekend summer winter spring autumn
    fall decade century day days term session cycle time election monday tuesday wednesday thursday friday saturday
    sunday january february march april may june july august september october november december""".split()
)
# Titles and the roles of the two sides of a deal or a case. A rank word makes another role (vice president is
# not president); a domain word narrows one (the finance minister is a minister, not the foreign minister).
_TITLE_HEADS = {
    "ceo": "ceo", "cfo": "cfo", "coo": "coo", "cto": "cto", "cmo": "cmo", "cio": "cio",
    "chairman": "chair", "chairwoman": "chair", "chairperson": "chair", "president": "president",
    "founder": "founder", "director": "director", "minister": "minister", "governor": "governor",
    "senator": "senator", "representative": "representative", "congressman": "representative",
    "congresswoman": "representative", "mayor": "mayor", "coach": "coach", "manager": "manager", "captain": "captain",
    "editor": "editor", "publisher": "publisher", "spokesman": "spokesperson", "spokeswoman": "spokesperson",
    "spokesperson": "spokesperson", "secretary": "secretary", "chancellor": "chancellor", "treasurer": "treasurer",
    "judge": "judge", "prosecutor": "prosecutor", "sheriff": "sheriff", "commissioner": "commissioner",
    "ambassador": "ambassador", "plaintiff": "plaintiff", "defendant": "defendant", "buyer": "buyer",
    "seller": "seller", "lender": "lender", "borrower": "borrower", "employer": "employer", "employee": "employee",
    "landlord": "landlord", "tenant": "tenant", "winner": "winner", "loser": "loser", "owner": "owner",
    "chief": "chief",
}
_TITLE_PHRASES = {
    ("chief", "executive", "officer"): "ceo", ("chief", "executive"): "ceo", ("chief", "financial", "officer"): "cfo",
    ("finance", "chief"): "cfo", ("chief", "operating", "officer"): "coo", ("chief", "technology", "officer"): "cto",
    ("chief", "marketing", "officer"): "cmo", ("chief", "information", "officer"): "cio", ("runner", "up"): "runner-up",
}
_TITLE_RANKS = frozenset("vice deputy assistant lieutenant associate co under".split())
_TITLE_DOMAINS = frozenset(
    """prime finance foreign defence defense health interior home justice education trade economy energy transport
    culture agriculture labour labor environment press state treasury""".split()
)
# Wording of the same kind for the coverage test: a reporting verb stands for another.
_REPORTING = frozenset(
    "said says stated states noted notes told tells added adds explained explains announced reported wrote "
    "according confirmed commented remarked".split()
)


def _verb_forms(spec: str) -> list[str]:
    base, *irregular = spec.split("/")
    forms = [base, *irregular]
    if base.endswith("e"):
        forms += [base + "s", base + "d", base[:-1] + "ing"]
    elif base.endswith("y") and base[-2:-1] not in ("a", "e", "o", "u"):
        forms += [base[:-1] + "ies", base[:-1] + "ied", base + "ing"]
    elif re.search(r"(?:s|x|z|ch|sh)$", base):
        forms += [base + "es", base + "ed", base + "ing"]
    else:
        forms += [base + "s", base + "ed", base + "ing"]
    return forms


def _build_lexicon() -> dict[str, list[tuple[str, object]]]:
    lex: dict[str, list[tuple[str, object]]] = {}
    for axis, groups in _LEXICON_SPEC.items():
        for value, words in groups:
            for w in words.split():
                for form in (_verb_forms(w[2:]) if w.startswith("v:") else [w]):
                    entry = (axis, value)
                    if entry not in lex.setdefault(form, []):
                        lex[form].append(entry)
    return lex


_LEXICON = _build_lexicon()
del _LEXICON["hiking"]   # a walk far more often than a rise
_MAX_PHRASE = max(len(p) for p in _PHRASES)
_BE_FORMS = frozenset("is was were are been being be am 's get gets got".split())
_TIME_AUX = frozenset("is was were are been has have had closed ended finished trading traded opened".split())


@dataclass(frozen=True)
class _Cue:
    axis: str
    value: object
    start: int          # token range of the cue word(s)
    end: int
    negated: bool
    phrase: str         # as written, with its negation ("did not rise")

    @property
    def signed(self) -> bool:
        return isinstance(self.value, int) and self.axis != "ordinal"

    def effective(self) -> object:
        if self.signed and self.negated:
            return -self.value   # type: ignore[operator]
        return self.value


def _clauses(tokens: Sequence[Token], text: str) -> list[int]:
    """A clause number per token: punctuation and the words that join clauses start a new one."""
    out, cid = [], 0
    for k, t in enumerate(tokens):
        if k and (re.search(r"[,;:()\[\]—–\"“”]", text[tokens[k - 1].end:t.start]) or
                  t.low in ("but", "while", "whereas", "although", "though", "and", "which", "who", "that")):
            cid += 1
        out.append(cid)
    return out


_AUXILIARIES = frozenset("do does did is are was were has have had will would could can should may might must be been".split())


def _negated_at(tokens: Sequence[Token], clause: Sequence[int], k: int) -> int | None:
    """Where the negation whose scope covers token k starts ("did not rise", "failed to beat", "no increase")."""
    for back in range(1, 5):
        i = k - back
        if i < 0 or clause[i] != clause[k]:
            break
        w = tokens[i].low
        if _is_negation(w) or w in ("failed", "fails", "fail", "unable"):
            return i - 1 if i and tokens[i - 1].low in _AUXILIARIES and clause[i - 1] == clause[k] else i
        if w in _LEXICON and back > 1:
            break   # "not only rose but ..." scopes the nearer word
    return None


def _title_at(low: Sequence[str], k: int) -> tuple[tuple[str, str, str], int, int] | None:
    """A title starting at word k (lower case words): ((rank, head, domain), start, end)."""
    for phrase, head in _TITLE_PHRASES.items():
        n = len(phrase)
        if tuple(low[k:k + n]) == phrase:
            rank = low[k - 1] if k and low[k - 1] in _TITLE_RANKS else ""
            return (rank, head, ""), k - (1 if rank else 0), k + n
    head = _TITLE_HEADS.get(low[k])
    if head is None:
        return None
    start, rank, domain = k, "", ""
    j = k - 1
    while j >= 0 and j >= k - 2 and (low[j] in _TITLE_RANKS or low[j] in _TITLE_DOMAINS):
        if low[j] in _TITLE_RANKS:
            rank = rank or low[j]
        else:
            domain = domain or low[j]
        start = j
        j -= 1
    return (rank, head, domain), start, k + 1


def _cues(tokens: Sequence[Token], text: str, clause: Sequence[int]) -> list[_Cue]:
    """Every word (or phrase) of a passage that says a direction, an order or time, or a title."""
    out: list[_Cue] = []
    k, n = 0, len(tokens)
    low = [t.low[:-2] if t.low.endswith("'s") else t.low for t in tokens]   # "the president's office"
    while k < n:
        hit = None
        for size in range(min(_MAX_PHRASE, n - k), 1, -1):
            key = tuple(low[k:k + size])
            if key in _PHRASES:
                hit = (size, _PHRASES[key])
                break
        if hit is not None:
            size, entry = hit
            if entry is not None:
                neg = _negated_at(tokens, clause, k)
                first = k if neg is None else neg
                out.append(_Cue(entry[0], entry[1], k, k + size, neg is not None,
                                text[tokens[first].start:tokens[k + size - 1].end]))
            k += size
            continue
        title = _title_at(low, k)
        if title is not None:
            value, start, end = title
            if not out or out[-1].end <= start:
                out.append(_Cue("title", value, start, end, False, text[tokens[start].start:tokens[end - 1].end]))
            k = end
            continue
        w = low[k]
        entries = _LEXICON.get(w)
        if entries and tokens[k].text[:1].isupper() and k and not _sentence_initial(text, tokens[k].start):
            entries = None   # part of a name: "Sioux Falls", "Best Buy", "Morning Rise"
        if entries:
            nxt = low[k + 1] if k + 1 < n else ""
            prev = low[k - 1] if k else ""
            number_next = bool(re.match(r"\d", nxt)) or nxt in _CURRENCY_CANON
            if w in ("up", "down", "over", "under") and not (
                    number_next or (w in ("up", "down") and (prev in _TIME_AUX or nxt in ("by", "from")))):
                entries = None   # "set up", "over the weekend", "under pressure"
            elif w == "last":
                # "last week" is the one before this; "the last week (of the season)" is the final one.
                entries = [("reltime", -1)] if nxt in _TIME_NOUNS and prev not in _DETS | {"that", "this", "our", "my", "your"} \
                    else [("ordinal", "last")]
            elif w in ("following", "preceding", "prior", "previous") and (nxt in _TIME_NOUNS or prev in _DETS):
                entries = [("reltime", 1 if w == "following" else -1)]   # "the following year", "his previous physical"
            elif w == "next" and nxt not in _TIME_NOUNS and nxt not in ("the", "a"):
                entries = None if nxt in ("to",) else entries
            elif w == "past" and (nxt in _DETS or nxt in ("him", "her", "them", "it", "that", "this")):
                entries = None   # "past the deadline": a preposition
            elif w == "second" and prev in ("a", "per", "one", "split", "every", "each"):
                entries = None
            elif w in ("declined", "decline", "declines", "declining") and nxt == "to" and k + 2 < n and not re.match(r"\d", low[k + 2]):
                entries = [("assent", -1)]   # "declined to comment"
        if entries:
            neg = _negated_at(tokens, clause, k)
            for axis, value in entries:
                negated = neg is not None and axis not in ("ordinal", "title")
                first = neg if negated else k
                out.append(_Cue(axis, value, k, k + 1, negated, text[tokens[first].start:tokens[k].end]))
        k += 1
    return out


def _context(tokens: Sequence[Token], clause: Sequence[int], cue: _Cue, cue_tokens: set[int]) -> set[str]:
    """Content words near a cue, in its clause (a few words either side when the clause has none)."""
    def grab(same_clause: bool, width: int) -> set[str]:
        got = set()
        for i in range(max(0, cue.start - width), min(len(tokens), cue.end + width)):
            if cue.start <= i < cue.end or i in cue_tokens:
                continue
            if same_clause and clause[i] != clause[cue.start]:
                continue
            if _is_content(tokens[i]) and not _is_negation(tokens[i].low):
                got.add(_stem(tokens[i].low))
        return got
    return grab(True, CUE_CONTEXT) or grab(False, 3)


def _aligned_to(opcodes: Sequence[tuple[str, int, int, int, int]], i: int) -> tuple[int, int] | None:
    """Window token range the claim token i was aligned to (an equal or a replaced stretch)."""
    for tag, i1, i2, j1, j2 in opcodes:
        if i1 <= i < i2:
            if tag == "equal":
                return j1 + (i - i1), j1 + (i - i1) + 1
            if tag == "replace":
                return j1, j2
            return None
    return None


def _compare_cues(
    c_cues: list[_Cue], c_ctx: list[set[str]], e_cues: list[_Cue], e_ctx: list[set[str]],
    opcodes: Sequence[tuple[str, int, int, int, int]], offset: int,
    c_tokens: Sequence[Token], e_tokens: Sequence[Token],
) -> list[tuple[_Cue, _Cue]]:
    """Claim cues whose best-placed evidence cue of the same kind says otherwise: (claim cue, evidence cue)."""
    scores: list[list[tuple[int, _Cue]]] = []
    for cue, ctx in zip(c_cues, c_ctx):
        aligned = _aligned_to(opcodes, cue.start)
        scored = []
        for e, x in zip(e_cues, e_ctx):
            if e.axis != cue.axis:
                continue
            score = len(ctx & x)
            if aligned is not None and aligned[0] - 1 <= e.start + offset < aligned[1] + 1:
                score += 2
            scored.append((score, e))
        scores.append(scored)
    # Each claim cue's counterpart: its best-placed evidence cue, an agreeing one first on a tie.
    partner: list[_Cue | None] = []
    for cue, scored in zip(c_cues, scores):
        ranked = sorted(scored, key=lambda p: (p[0], _agrees(cue, p[1])), reverse=True)
        partner.append(ranked[0][1] if ranked and ranked[0][0] >= 1 and _agrees(cue, ranked[0][1]) else None)
    out = []
    for n, (cue, scored) in enumerate(zip(c_cues, scores)):
        if not scored:
            continue
        best = max(s for s, _ in scored)
        if best < 1 or any(_agrees(cue, e) for s, e in scored if s >= best):
            continue
        # An evidence word that is another claim word's counterpart ("dropped on Monday before recovering later"
        # where the source has only "later"; "editor" beside "deputy chief") is not this one's.
        free = [e for s, e in scored if s == best and not any(p is e for m, p in enumerate(partner) if m != n)]
        if not free:
            continue
        other = free[0]
        # "B lost to A" for "A beat B", "the hearing ended before the vote" for "the vote came after the hearing
        # ended": the opposite word with the two sides swapped says the same.
        if _relational(cue, c_tokens) and _sides_swapped(c_tokens, cue, e_tokens, other):
            continue
        out.append((cue, other))
    return out


_RELATIONAL_ORDER = frozenset("before after earlier later prior ahead following preceding preceded followed".split())


def _relational(cue: _Cue, tokens: Sequence[Token]) -> bool:
    """A cue that relates two sides (A beat B; A before B; A higher than B), whose order a paraphrase may swap."""
    if cue.axis == "outcome":
        return True
    if cue.axis == "sequence":
        return tokens[cue.start].low in _RELATIONAL_ORDER
    if cue.axis in ("level", "extreme", "quality"):
        return any(t.low == "than" for t in tokens[cue.end:cue.end + 3])
    return False


def _sides(tokens: Sequence[Token], cue: _Cue, k: int = 3) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The k nearest content words before and after a cue, as (key, weight): a name weighs two."""
    def key(t: Token) -> tuple[str, int]:
        return _verb_key(t.low.rstrip("'s") if t.low.endswith("'s") else t.low), 2 if _is_name_token(t) else 1
    def side_word(t: Token) -> bool:   # figures ("two days", "3-1") qualify a side, they do not name it
        return _is_content(t) and not t.low[0].isdigit() and _word_value(t.low) is None
    before = [key(t) for t in reversed(tokens[:cue.start]) if side_word(t)][:k]
    after = [key(t) for t in tokens[cue.end:] if side_word(t)][:k]
    return before, after


def _sides_swapped(c_tokens: Sequence[Token], c: _Cue, e_tokens: Sequence[Token], e: _Cue) -> bool:
    cb, ca = _sides(c_tokens, c)
    eb, ea = _sides(e_tokens, e)

    def overlap(x: list[tuple[str, int]], y: list[tuple[str, int]]) -> int:
        ys = {k for k, _ in y}
        return sum(w for k, w in dict(x).items() if k in ys)
    straight = overlap(cb, eb) + overlap(ca, ea)
    swapped = overlap(cb, ea) + overlap(ca, eb)
    return swapped >= 2 and swapped > straight


def _agrees(c: _Cue, e: _Cue) -> bool:
    if c.axis == "title":
        (cr, ch, cd), (er, eh, ed) = c.value, e.value  # type: ignore[misc]
        return cr == er and ch == eh and (not cd or not ed or cd == ed)
    return c.effective() == e.effective()


_AXIS_KIND = {
    "level": "negation", "extreme": "negation", "quality": "negation", "outcome": "negation", "assent": "negation",
    "valence": "negation", "balance": "negation",
    "sequence": "date", "reltime": "date", "latest": "date", "ordinal": "date", "title": "entity",
}
_AXIS_WORDS = {
    "level": "the direction", "extreme": "which end", "quality": "better or worse", "outcome": "the outcome",
    "assent": "yes or no", "valence": "positive or negative", "balance": "profit or loss", "sequence": "the order",
    "reltime": "the time", "latest": "the order", "ordinal": "the order", "title": "the role",
}


# --- roles: who did what to whom

_VERB_IRREGULAR = {
    "bought": "buy", "sold": "sell", "beaten": "beat", "won": "win", "led": "lead", "paid": "pay", "told": "tell",
    "took": "take", "taken": "take", "overtook": "overtake", "overtaken": "overtake", "lent": "lend", "left": "leave",
    "hit": "hit", "struck": "strike", "chose": "choose", "chosen": "choose", "gave": "give", "given": "give",
    "owes": "owe", "sent": "send", "lost": "lose", "met": "meet", "caught": "catch", "fought": "fight", "held": "hold", "kept": "keep",
}
_VERB_CLASS = {"buy": "acquire", "purchas": "acquire", "acquir": "acquire", "defeat": "beat", "edg": "beat",
               "hir": "hire", "recruit": "hire", "employ": "hire", "criticiz": "criticis", "sue": "su"}
# Verbs whose two sides can swap without changing the fact.
_SYMMETRIC = frozenset("meet merg partner marri marry ti draw play fac talk speak negotiat compet collaborat team clash "
                       "fight battl debat trad swap shar join-forc link tie met".split())
_DETS = frozenset("the a an its their his her rival fellow former new to".split())
_NOT_VERBS = STOPWORDS - {"said", "says", "told"} | frozenset("vs versus between against".split())


def _verb_key(word: str) -> str:
    w = _VERB_IRREGULAR.get(word, word)
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    w = w[:-1] if w.endswith("e") and len(w) > 3 else w
    if len(w) > 4 and w[-1] == w[-2] and w[-1] not in "aeiousl":
        w = w[:-1]   # "dropp", "topp"
    return _VERB_CLASS.get(w, w)


@dataclass(frozen=True)
class _Frame:
    verb: str           # verb key ("acquire")
    agent: str          # name keys: last word of the name, lower case
    patient: str
    text: str           # "Google acquired Fitbit" as the passage words it


def _name_key(e: Entity) -> str:
    return e.tokens[-1].lower()


def _frames(text: str) -> list[_Frame]:
    """Name - verb - name in one clause: "A acquired B", "A has agreed to buy B", "B was bought by A"."""
    ents = extract_entities(text)
    out = []
    for a, b in zip(ents, ents[1:]):
        gap = text[a.end:b.start]
        if re.search(r"[,;:()\"“”—–]|['’]s\b", gap):
            continue
        words = [t.low for t in tokenize(gap)]
        if not 1 <= len(words) <= 6:
            continue
        passive = False
        if "by" in words[-2:] and all(w in _DETS for w in words[words.index("by", len(words) - 2) + 1:]):
            k = len(words) - 1 - words[::-1].index("by")
            if k < 2 or not any(w in _BE_FORMS for w in words[:k - 1]):
                continue
            verb, passive = words[k - 1], True
        else:
            ws = list(words)
            while ws and ws[-1] in _DETS:
                ws.pop()
            if not ws:
                continue
            verb = ws[-1]
            if any(w in ("and", "or", "of", "in", "on", "at", "for", "with", "from", "than", "as", "vs", "versus",
                         "between", "against", "like") for w in ws):
                continue
        if verb in _NOT_VERBS or verb in _BE_FORMS or verb.endswith("ly") or not verb.isalpha():
            continue
        key = _verb_key(verb)
        if key in _SYMMETRIC:
            continue
        agent, patient = (b, a) if passive else (a, b)
        out.append(_Frame(key, _name_key(agent), _name_key(patient), text[a.start:b.end]))
    return out


def _role_failures(claim: str, evidence: str, source_id: str) -> list[RuleFailure]:
    out = []
    e_frames = _frames(evidence)
    for f in _frames(claim):
        if f.agent == f.patient:
            continue
        same = [e for e in e_frames if e.verb == f.verb and {e.agent, e.patient} == {f.agent, f.patient}]
        if same and not any(e.agent == f.agent for e in same):
            out.append(RuleFailure(
                type="entity",
                detail=f"source {source_id} says “{same[0].text}”, draft says “{f.text}”: who did what to whom is reversed",
                value=f.text,
            ))
    return out


# --- magnitude: the same digits with another scale, unit, currency, or percent for percentage points

def _mantissa(q: Quantity) -> float | None:
    m = re.search(r"\d[\d,]*(?:\.\d+)?", q.raw)
    if m:
        return float(m.group(0).replace(",", ""))
    w = re.match(r"[A-Za-z]+(?:[- ][A-Za-z]+)?", q.raw)
    return float(_word_value(w.group(0))) if w and _word_value(w.group(0)) is not None else None


def _with_unit(q: Quantity, text: str) -> str:
    if q.measure:
        m = _MEASURE_RE.match(text, q.end)
        if m:
            return text[q.start:m.end()].strip()
    return q.raw


def _magnitude_failures(parts: "_ClaimParts", region_q: list[Quantity], all_q: list[Quantity], doc_text: str,
                        source_id: str) -> tuple[list[RuleFailure], set[str]]:
    """Figures no source has whose digits the evidence has at another scale or in another unit, currency or kind."""
    out, explained = [], set()
    for q in parts.quantities:
        if q.kind == "ordinal" or any(numbers_match(q, s) for s in all_q):
            continue
        mant = _mantissa(q)
        why = None
        for s in region_q:
            if s.kind == "ordinal":
                continue
            same_value = math.isclose(q.value, s.value, rel_tol=1e-9)
            if same_value and {q.kind, s.kind} == {"percent", "points"}:
                why = "percent and percentage points are not the same"
            elif same_value and q.currency and s.currency and q.currency != s.currency:
                why = "another currency"
            elif (same_value or mant == _mantissa(s)) and q.measure and s.measure and q.measure != s.measure:
                why = "another unit"
            elif mant is not None and mant == _mantissa(s) and q.kind == s.kind and not same_value and \
                    (q.scaled or s.scaled) and (not q.currency or not s.currency or q.currency == s.currency):
                ratio = q.value / s.value if s.value else 0
                why = (f"{ratio:,.0f} times larger" if ratio > 1 else f"{1 / ratio:,.0f} times smaller") if ratio else "another scale"
            if why:
                claim_shown = _with_unit(q, parts.text)
                out.append(RuleFailure(type="number", detail=f"source {source_id} says {_with_unit(s, doc_text)}, "
                                       f"draft says {claim_shown} ({why})", value=q.raw))
                explained.add(q.raw)
                break
    return out, explained


def _meaning_failures(parts: "_ClaimParts", al: "_Alignment", doc: "_SourceDoc", index: "SourceIndex",
                      ev_start: int, ev_end: int) -> tuple[list[RuleFailure], set[str]]:
    """What the claim says against what its evidence says: (contradictions, claim figures they explain)."""
    lo, hi = al.region
    e_tokens = al.window.tokens[lo:hi]
    c_tokens = parts.tokens
    c_clause, e_clause = _clauses(c_tokens, parts.text), _clauses(e_tokens, doc.text)
    c_cues, e_cues = _cues(c_tokens, parts.text, c_clause), _cues(e_tokens, doc.text, e_clause)
    out: list[RuleFailure] = []
    if c_cues and e_cues:
        c_taken = {i for c in c_cues for i in range(c.start, c.end)}
        e_taken = {i for c in e_cues for i in range(c.start, c.end)}
        c_ctx = [_context(c_tokens, c_clause, c, c_taken) for c in c_cues]
        e_ctx = [_context(e_tokens, e_clause, c, e_taken) for c in e_cues]
        seen = set()
        for c, e in _compare_cues(c_cues, c_ctx, e_cues, e_ctx, al.opcodes, lo, c_tokens, e_tokens):
            if (c.start, c.axis) in seen:
                continue
            seen.add((c.start, c.axis))
            out.append(RuleFailure(
                type=_AXIS_KIND[c.axis],  # type: ignore[arg-type]
                detail=f"source {doc.id} says “{e.phrase}”, draft says “{c.phrase}” ({_AXIS_WORDS[c.axis]} is reversed)"
                if c.signed else f"source {doc.id} says “{e.phrase}”, draft says “{c.phrase}” ({_AXIS_WORDS[c.axis]} differs)",
                value=c.phrase,
            ))
    out += _role_failures(parts.text, doc.text[ev_start:ev_end], doc.id)
    region_q = [q for q in doc.quantities if ev_start <= q.start < ev_end]
    all_q = [q for d in index.docs for q in d.quantities]
    mag, explained = _magnitude_failures(parts, region_q, all_q, doc.text, doc.id)
    return out + mag, explained


def _covered_by_meaning(parts: "_ClaimParts", al: "_Alignment", doc: "_SourceDoc") -> set[str]:
    """Claim words the evidence says in other words: a cue whose kind and value the evidence also has
    ("climbed" for "rose", "prior to" for "before"), a reporting verb for another."""
    lo, hi = al.region
    e_tokens = al.window.tokens[lo:hi]
    e_cues = _cues(e_tokens, doc.text, _clauses(e_tokens, doc.text))
    family = {"reltime": "sequence"}   # "several weeks ago" and "several weeks earlier" both look back
    have = {(family.get(c.axis, c.axis), repr(c.effective())) for c in e_cues}
    covered = set()
    for c in _cues(parts.tokens, parts.text, _clauses(parts.tokens, parts.text)):
        if (family.get(c.axis, c.axis), repr(c.effective())) in have or (
                c.axis == "title" and any(e.axis == "title" and _agrees(c, e) for e in e_cues)):
            covered |= {_stem(t.low) for t in parts.tokens[c.start:c.end]}
    if any(t.low in _REPORTING for t in e_tokens):
        covered |= {_stem(t.low) for t in parts.tokens if t.low in _REPORTING}
    return covered


# --------------------------------------------------------------------------- verdict


def _rank_windows(
    claim: _ClaimParts, index: SourceIndex, semantic_scorer: SemanticScorer | None
) -> list[tuple[float, int]]:
    if not index.windows:
        return []
    bm = index.bm25(claim.terms)
    top = max(bm) or 1.0
    scores = [s / top for s in bm]
    exact = [q.raw for q in claim.quantities] + [d.raw for d in claim.dates] + [e.raw for e in claim.entities]
    if exact:
        for i, w in enumerate(index.windows):
            text = index.docs[w.source].text[w.start:w.end]
            scores[i] += 0.3 * sum(1 for x in exact if x in text) / len(exact)
    if semantic_scorer is not None:
        texts = [index.docs[w.source].text[w.start:w.end] for w in index.windows]
        sem = list(semantic_scorer(claim.text, texts))
        if len(sem) != len(texts):
            raise ValueError(f"semantic scorer returned {len(sem)} scores for {len(texts)} windows")
        scores = [s + 0.5 * float(x) for s, x in zip(scores, sem)]
    return sorted(((s, i) for i, s in enumerate(scores)), reverse=True)


def verify_offline(
    claim: str,
    sources: Iterable | SourceIndex,
    *,
    semantic_scorer: SemanticScorer | None = None,
    candidates: int = 5,
) -> OfflineVerdict:
    """Check one claim against sources with rules only. See the module docstring for the policy."""
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a string, got {type(claim).__name__}")
    index = sources if isinstance(sources, SourceIndex) else SourceIndex.build(sources)
    if not claim.strip():
        raise ValueError("claim is empty")
    claim = without_background_opener(claim)
    parts = _parse_claim(claim, index)
    ranked = _rank_windows(parts, index, semantic_scorer)[:candidates]
    best: _Alignment | None = None
    for score, wi in ranked:
        w = index.windows[wi]
        al = _region_alignment(parts.tokens, w, score)
        if best is None or (al.matched, al.score) > (best.matched, best.score):
            best = al

    failures = _presence_failures(parts, index)
    contradicted = False
    near_copy = best is not None and parts.tokens and best.matched / len(parts.tokens) >= NEAR_COPY
    if best is not None and near_copy:
        slot = _slot_failures(parts, best, index.docs[best.window.source], index)
        if slot:
            contradicted = True
            # A slot failure explains the same value a presence failure may also report.
            seen = {(f.type, f.value) for f in slot}
            failures = slot + [f for f in failures if (f.type, f.value) not in seen]

    if best is None:
        return OfflineVerdict(verdict="unverifiable", failures=failures)
    doc = index.docs[best.window.source]
    lo, hi = best.region
    toks = best.window.tokens
    if hi > lo:
        first, last = best.window.sent_of[lo], best.window.sent_of[hi - 1]
        ev_start, ev_end = doc.sentences[first].start, doc.sentences[last].end
        region = toks[lo:hi]
    else:
        ev_start, ev_end = best.window.start, best.window.end
        region = toks
    win_terms = set(content_terms(region))
    missing = [t for t in dict.fromkeys(parts.cover_terms) if t not in win_terms]
    if missing and hi > lo:
        covered = _covered_by_meaning(parts, best, doc)
        missing = [t for t in missing if t not in covered]
    coverage = 1.0 - len(missing) / max(1, len(set(parts.cover_terms)))
    if hi > lo and coverage >= SAME_FACT:
        meaning, explained = _meaning_failures(parts, best, doc, index, ev_start, ev_end)
        if meaning:
            contradicted = True
            # The comparison says what a changed word or figure means; the same edit reported by the slot rule
            # ("claim says 'rose' where ... says 'fell'") or as a figure no source has would only repeat it.
            failures = meaning + [
                f for f in failures
                if not (f.type == "number" and f.value in explained)
                and not (f.type == "negation" and f.detail.startswith("claim says ") and any(m.type == "negation" for m in meaning))
            ]
    # A name the evidence passage lacks is unsupported even if the rest is there:
    # "..., with backing from the FBI" borrows a real name for a claim no source makes.
    region_names = " " + " ".join(_entity_key(t.text) for t in region) + " "
    region_text = doc.text[ev_start:ev_end]
    missing_names = [e.raw for e in parts.entities
                     if not _named_in(e, region_names, doc) and not _acronym_of_name_in(e.raw, region_text)]

    if any(f.type == "negation" for f in failures) or contradicted:
        verdict: SupportVerdict = "contradicted"
    elif failures:
        verdict = "unverifiable"
    elif coverage >= MIN_COVERAGE and len(missing) <= MAX_UNCOVERED and not missing_names:
        verdict = "supported"
    else:
        verdict = "unverifiable"
    return OfflineVerdict(
        verdict=verdict,
        source_id=doc.id,
        evidence=doc.text[ev_start:ev_end],
        evidence_start=ev_start,
        evidence_end=ev_end,
        failures=failures,
        coverage=round(coverage, 3),
        unsupported_terms=missing_names + [
            parts.surface.get(t, t) for t in missing
            if not any(parts.surface.get(t, t) in name.split() for name in missing_names)
        ],
    )


_ACRONYM_SKIP = frozenset({"of", "and", "the", "for", "&"})


def _acronym_of_name_in(raw: str, text: str) -> bool:
    """An acronym whose words the passage writes out: "FDMC" for "Federal Digital Markets Commission", "ETF" for
    "exchange-traded fund". Only a run of capitalised words, or one with a hyphenated compound, counts."""
    if not re.fullmatch(r"[A-Z]{2,6}s?", raw):
        return False
    letters = raw.rstrip("s").lower() if raw.endswith("s") and len(raw) > 2 else raw.lower()
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'’]*(?:-[A-Za-z]+)*", text) if w.lower() not in _ACRONYM_SKIP]
    for i in range(len(words)):
        run, initials = [], ""
        for word in words[i:]:
            parts = word.split("-")
            initials += "".join(part[0].lower() for part in parts)
            run.append(word)
            if len(initials) >= len(letters):
                break
        if initials == letters and (all(w[0].isupper() for w in run) or any("-" in w for w in run)):
            return True
    return False


def _named_in(ent: Entity, region_names: str, doc: "_SourceDoc") -> bool:
    """The passage names `ent`: in full, a person by surname ("Coleman" for "Harriet Coleman"), or an organisation
    by its first word ("Halvane" for "Halvane Security") when the same source names it in full elsewhere."""
    if _entity_in(ent, [region_names]):
        return True
    if len(ent.tokens) < 2:
        return False
    last = Entity(ent.tokens[-1], ent.start, ent.end, ent.tokens[-1:], False)
    first = Entity(ent.tokens[0], ent.start, ent.end, ent.tokens[:1], False)
    return _entity_in(last, [region_names]) or (_entity_in(first, [region_names]) and _entity_in(ent, [doc.entity_string]))


# --------------------------------------------------------------------------- story rules
#
# Supported by a source is not the same as true of this story. These rules look at what a draft sentence is
# about, not at whether a source says it: whether it is framed as background, and whether the reference it
# opens with ("It", "The penalty", "she said") points back to something the draft has already named.
# agents/fact_checker.py applies them with the story's own names (pipeline.text.entities).

# A sentence that announces itself as background: "Earlier, ...", "Separately, ...", "In a separate case, ...".
BACKGROUND_OPENER = re.compile(
    r"^[\"“'‘(]?\s*(?:"
    r"earlier|separately|previously|elsewhere|unrelatedly|by comparison|for comparison|in comparison|"
    r"earlier (?:this|that|in the) (?:week|month|year|quarter|day)|"
    r"last (?:week|month|year)|a (?:day|week|month|year) (?:earlier|before)|"
    r"in (?:a|an|another) (?:separate|unrelated|similar|earlier|previous|prior|different|other)?\s*"
    r"(?:case|incident|attack|exploit|hack|breach|development|matter|ruling|decision|move|deal|episode|event|lawsuit|filing|report)s?"
    r")\b",
    re.IGNORECASE,
)
# The same cue anywhere, for a sentence that also names its own subject: "Arcspan, hacked earlier this month, ...".
BACKGROUND_CUE = re.compile(
    r"\b(?:separately|(?<!week )(?<!month )(?<!year )(?<!day )(?<!hour )(?<!quarter )(?<!weeks )(?<!months )(?<!years )(?<!days )earlier|"
    r"previously|in (?:a|an) (?:separate|unrelated) \w+|unrelated|a separate \w+)\b",
    re.IGNORECASE,
)


def without_background_opener(text: str) -> str:
    """The sentence without the cue that frames it as background ("Separately, Arcspan said ..." -> "Arcspan said
    ..."): the cue tells the reader which event a fact belongs to, it is not a fact a source must state (the story
    check judges the framing). Unchanged when no cue opens it or too little would be left."""
    m = BACKGROUND_OPENER.match(text.strip())
    if not m:
        return text
    rest = text.strip()[m.end():].lstrip(" ,;:—–-")
    if len(rest.split()) < 4:
        return text
    return rest[:1].upper() + rest[1:]


_REPORTING_VERB = re.compile(r"\b(?:said|says|told|added|announced|reported|wrote|noted|confirmed|according)\b", re.IGNORECASE)
# A cue frames the sentence only near its subject: "Arcspan, drained earlier this month, said ...", not "... as orders
# placed earlier in the year arrive" or "... from 47% a week earlier".
CUE_MAX_WORDS_BEFORE = 10


def framed_as_background(text: str, names_own_subject: bool) -> bool:
    """The sentence tells the reader it is about another event: it opens with a background cue, or it names its
    own subject and carries a "separately"/"earlier"/"previously" cue in its subject part (within the first
    CUE_MAX_WORDS_BEFORE words, before the reporting verb or right after it: "Arcspan said separately ...")."""
    text = text.strip()
    if BACKGROUND_OPENER.match(text):
        return True
    if not names_own_subject:
        return False
    for m in BACKGROUND_CUE.finditer(text):
        head = text[: m.start()].rstrip()
        if len(head.split()) > CUE_MAX_WORDS_BEFORE:
            break
        verbs = list(_REPORTING_VERB.finditer(head))
        if not verbs or (len(verbs) == 1 and verbs[0].end() == len(head)):
            return True
    return False


# Words that open a sentence without referring to anything: connectives, and framing cues. Stripped before the
# opening reference is read ("However, it said ..." opens with "it").
_LEADING_CONNECTIVE = re.compile(
    r"^(?:(?:but|however|also|meanwhile|still|yet|instead|then|and|so|now|indeed|moreover|further|furthermore|"
    r"separately|earlier|previously|elsewhere|in (?:a|an|another) (?:separate|unrelated|similar|different)? ?\w+)\b,?\s+)+",
    re.IGNORECASE,
)
_OPENING_QUOTE = re.compile(r"^[\"“'‘(\s]+")
_PRONOUN = re.compile(r"^(he|she|it|they|his|her|its|their|him|them)\b", re.IGNORECASE)
_DEMONSTRATIVE = re.compile(r"^(this|that|these|those|such|both|neither|the same)\b(?!\s+(?:week|month|year|morning|afternoon|"
                            r"evening|night|quarter|day|days|time|season|weekend|summer|winter|spring|autumn|fall)\b)",
                            re.IGNORECASE)
# "It is unclear whether ...", "It was not immediately clear ...": a dummy subject, not a reference.
_EXPLETIVE_IT = re.compile(
    r"^it\s+(?:is|was|remains|remained|has been|had been|'s|’s|would be|will be|may be|could be|seems|seemed|appears|appeared)\s+"
    r"(?:not\s+)?(?:yet\s+)?(?:immediately\s+|still\s+)?(?:unclear|clear|known|unknown|possible|impossible|likely|unlikely|"
    r"too early|expected|understood|estimated|thought|believed|worth|hard|difficult|easy|uncertain)\b",
    re.IGNORECASE,
)
# Organisations a definite noun can stand for: resolved by the last actor the draft named, as a pronoun is.
_ACTOR_NOUNS = frozenset(
    "firm company exchange regulator project platform agency bank group team issuer lender startup miner foundation "
    "developer developers operator operators authority commission".split()
)
# Things and events: resolved only when an earlier sentence mentions them (or a word of the same family).
# A deal, an order, a sale, a round: one family of transactions ("agreed to buy 24,000 rigs ... The order is ...").
_TRANSACTION = r"deal|agree|acqui|merg|purchas|bought|buy|order|sale|sold|sell|round|rais|funding|financ|invest|series|contract"
# A proposal, a vote, a plan: one family of decisions put to a vote.
_GOVERNANCE = r"propos|vot(?:e|ed|es|ing)\b|motion|plan|measure|referend|ballot"
_THING_NOUNS = {
    "move": r"", "deal": _TRANSACTION, "report": r"report",
    "statement": r"statement|said|says|announc", "bill": r"bill|legislat|law", "fund": r"fund|etf",
    "token": r"token|coin", "coin": r"coin|token|stablecoin", "network": r"network|chain|layer|mainnet|testnet",
    "protocol": r"protocol", "attacker": r"attack|hack|exploit|thie|stole|stolen|drain|breach",
    "hack": r"hack|attack|exploit|breach|drain|stole|stolen|theft", "breach": r"hack|attack|exploit|breach|drain|stole|stolen|theft",
    "attack": r"hack|attack|exploit|breach|drain|stole|stolen|theft", "exploit": r"hack|attack|exploit|breach|drain|stole|stolen|theft",
    "penalty": r"penalt|fine[ds]?\b", "fine": r"fine[ds]?\b|penalt", "judge": r"judge|court|ruling|ruled",
    "court": r"court|judge", "ruling": r"rul(?:ing|ed|es)\b|decision|decided|opinion|judgment|verdict",
    "decision": r"decision|decided|decide|rul(?:ing|ed)\b|approv|vote|voted", "vote": _GOVERNANCE,
    "bridge": r"bridge", "pool": r"pool", "sale": _TRANSACTION, "sales": _TRANSACTION, "plan": _GOVERNANCE,
    "proposal": _GOVERNANCE, "order": _TRANSACTION + r"|rul(?:ing|ed)\b|judge|court", "purchase": _TRANSACTION,
    "acquisition": _TRANSACTION, "investment": _TRANSACTION, "round": _TRANSACTION, "upgrade": r"upgrade", "fee": r"fee", "fees": r"fee",
    "approval": r"approv", "lawsuit": r"lawsuit|sue|sued|suit|case", "case": r"case|lawsuit|sue|sued|suit",
    "funds": r"fund|stolen|stole|drain", "money": r"fund|money|\$|million|billion", "loss": r"los[st]|stole|drain",
    "theft": r"theft|stole|stolen|hack|attack|exploit|drain", "audit": r"audit", "recall": r"recall",
    "outage": r"outage|halt|stall|down", "price": r"price|\$", "wallet": r"wallet", "wallets": r"wallet",
}
_DEFINITE = re.compile(
    r"^the\s+(?:[a-z][a-z\-]*\s+)?(" + "|".join(sorted(set(_ACTOR_NOUNS) | set(_THING_NOUNS), key=len, reverse=True)) + r")\b"
)
# "Pools like this ...", "Attacks like these ...": a thing the previous sentence must have shown.
_LIKE_THIS = re.compile(r"^([a-z][a-z\-]+)\s+(?:like|such as)\s+(?:this|that|these|those|it|them)\b")
_ATTRIBUTION = re.compile(
    r"\b(?:he|she|they)\s+(?:said|says|added|adds|noted|wrote|told|warned|argued|expects|expected)\b|"
    r"\b(?:said|says|added|wrote|told)\s+(?:he|she|they)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class OpeningReference:
    """What a sentence leans on: "It", "The penalty", "she said"."""

    phrase: str                                   # as written in the sentence
    kind: Literal["actor", "thing", "attribution"]
    noun: str = ""                                # the noun of a definite reference ("penalty"), "" otherwise
    offset: int = 0                               # where the phrase starts in the sentence


def opening_reference(text: str) -> OpeningReference | None:
    """The pronoun or definite reference a sentence opens with, or an attribution to "she"/"they"; None when the
    sentence opens with a name, a plain noun, "There ...", a time ("This week ..."), or a dummy "It is unclear".

    Connectives and background cues before it are skipped: "However, it said ..." opens with "it". Which openings
    count follows pipeline.text.entities.UNRESOLVED_OPENING, except connectives (a "But" refers to no one) and
    "there"."""
    stripped = _OPENING_QUOTE.sub("", text)
    lead = len(text) - len(stripped)
    rest = _LEADING_CONNECTIVE.sub("", stripped)
    lead += len(stripped) - len(rest)
    lowered = rest.lower()
    m = _PRONOUN.match(rest)
    if m and not _EXPLETIVE_IT.match(rest):
        return OpeningReference(m.group(0), "actor", offset=lead)
    m = _DEMONSTRATIVE.match(rest)
    if m:
        return OpeningReference(m.group(0), "actor", offset=lead)
    m = _DEFINITE.match(lowered)
    if m:
        noun = m.group(1)
        return OpeningReference(rest[: m.end()], "actor" if noun in _ACTOR_NOUNS else "thing", noun, lead)
    m = _LIKE_THIS.match(lowered)
    if m:
        return OpeningReference(rest[: m.end()], "thing", m.group(1), lead)
    m = _ATTRIBUTION.search(text)
    if m:
        return OpeningReference(m.group(0), "attribution", offset=m.start())
    return None


def mentions_noun(noun: str, texts: Iterable[str]) -> bool:
    """An earlier text mentions the thing a definite reference names: the noun itself or a word of its family."""
    family = _THING_NOUNS.get(noun, "")
    stem = noun[:-1] if noun.endswith(("s", "y")) and len(noun) > 4 else noun
    pattern = re.compile(r"(?:\b" + re.escape(stem) + (r"|(?:\b|(?<=\$))(?:" + family + ")" if family else "") + r")", re.IGNORECASE)
    return any(pattern.search(t) for t in texts)


def resolve_reference(
    ref: OpeningReference,
    sentence: str,
    earlier: Sequence[str],
    names_of: Callable[[str], set[str]],
    is_story_name: Callable[[str], bool],
) -> str | None:
    """None when an earlier sentence resolves the reference, else why not (in words an editor reads).

    - a thing ("the penalty", "the deal"): some earlier sentence mentions it (pipeline's word families);
      "the move" is resolved by any earlier sentence;
    - an actor ("It", "They", "This", "the company", "the exchange"): the nearest earlier sentence that names
      anyone names one of the story's actors. After a paragraph about another company, "It" reads as that company;
    - an attribution ("..., she said"): the sentence itself names the story's person before it, or the nearest
      earlier naming sentence does.
    """
    phrase = ref.phrase.strip()
    if ref.kind == "thing":
        if ref.noun == "move":
            return None if earlier else f"opens with “{phrase}”, but nothing before it says what moved"
        if mentions_noun(ref.noun, earlier):
            return None
        return f"opens with “{phrase}”, but no earlier sentence mentions the {ref.noun} or anything it could stand for"
    if ref.kind == "actor" and ref.noun and mentions_noun(ref.noun, earlier[-3:]):
        return None  # "the exchange" right after a sentence about an exchange
    candidates = list(earlier)
    if ref.kind == "attribution":
        own = names_of(sentence[: ref.offset])
        if any(is_story_name(n) for n in own):
            return None
        if own:
            return f"attributes to “{phrase}”, which reads as {_shown(own, sentence)}, not one of the story's actors"
    for text in reversed(candidates):
        named = names_of(text)
        if not named:
            continue
        if any(is_story_name(n) for n in named):
            return None
        return (f"opens with “{phrase}”, which no earlier sentence resolves to this story: the last sentence before it "
                f"that names anyone is about {_shown(named, text)}")
    return f"opens with “{phrase}”, but no earlier sentence names who or what that is"


def _shown(found: set[str], text: str) -> str:
    """Up to three of the names, longest first, as `text` writes them."""
    kept: list[str] = []
    for n in sorted(found, key=lambda n: (-len(n.split()), n)):
        if not any(n in k for k in kept):
            kept.append(n)
    shown = []
    for n in kept[:3]:
        i = text.lower().find(n)
        shown.append(text[i:i + len(n)] if i >= 0 else n.title())
    return ", ".join(shown)
