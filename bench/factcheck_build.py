"""Build a labelled fact-checking set from the article-extraction ground truth.

Each case is one claim checked against one source, the article it came from:
faithful sentences (verbatim or with a leading/trailing clause dropped) are
`supported`; injected errors are `contradicted` (a changed number, date or name,
an added or dropped negation) or `unverifiable` (a fabricated or altered
quotation, an unsupported addition). Articles are split into dev and heldout
halves by a hash of their key, so tuning on dev never sees a heldout article.

The injections use their own simple heuristics, not the checker's extractors,
so the benchmark does not grade the checker against itself.

    python bench/factcheck_build.py --data ../shared/data/article-extraction --out /tmp/factcheck.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.text.sentences import split_sentences  # noqa: E402

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
MONTH_ABBR = ["Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec."]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
COMMON_CAPS = set(
    """The A An This That These Those It He She They We I In On At For But And Or If When While
    After Before Since As Also However His Her Their Its Our Your You There Here What Who How Why
    Mr Mrs Ms Dr According Some Many Most All One Two No Not So Yet Then Now""".split()
) | set(MONTHS) | set(WEEKDAYS) | {m.rstrip(".") for m in MONTH_ABBR} | {"Sep", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}

ADDITION_TEMPLATES = [
    ", a move that critics said would cost taxpayers dearly",
    ", prompting an immediate investigation by federal regulators",
    ", according to people familiar with the internal deliberations",
    ", which analysts expect to double within the next decade",
    ", after weeks of secret negotiations with foreign investors",
    ", despite a formal objection from the company's largest shareholder",
    ", a decision that was later overturned on appeal",
    ", sparking protests outside the headquarters that lasted several days",
    ", and the plan was quietly approved by a parliamentary committee",
    ", the first such case recorded since the early 1990s",
    ", though several board members privately threatened to resign over it",
    ", in what officials described as a historic shift in policy",
]
ADDITION_WITH_ENTITY = [
    ", a claim that {e} has publicly disputed",
    ", after {e} warned of severe consequences for the region",
    ", which {e} described as long overdue",
    ", with backing from {e}",
]
FABRICATED_QUOTE_LEADS = ["{name} said: “{q}”", "“{q},” {name} said.", '{name} told reporters: "{q}"', '"{q}," {name} added.']


@dataclass
class Article:
    key: str
    url: str
    title: str
    text: str
    split: str
    sentences: list[str]  # usable claim sentences, verbatim


def split_of(keys: list[str]) -> dict[str, str]:
    """Halves by a hash of each article key: the first half in hash order is dev."""
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"split:{k}".encode()).hexdigest())
    return {k: ("dev" if i < len(ranked) // 2 else "heldout") for i, k in enumerate(ranked)}


def page_title(html_dir: Path, key: str) -> str:
    path = html_dir / f"{key}.html.gz"
    if not path.exists():
        return ""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        head = fh.read(300_000)
    m = re.search(r"<title[^>]*>(.*?)</title>", head, re.I | re.S)
    return re.sub(r"\s+", " ", html.unescape(m.group(1))).strip() if m else ""


def usable(sentence: str) -> bool:
    words = sentence.split()
    if not 8 <= len(words) <= 60:
        return False
    if re.search(r"https?://|www\.|@|©|\|", sentence) or sentence.startswith(("—", "-", "•")):
        return False
    if not re.search(r"[.!?][\"”’)]?$", sentence):
        return False
    return sum(c.islower() for c in sentence) > 0.5 * sum(c.isalpha() for c in sentence)


def load_articles(data: Path) -> list[Article]:
    truth_path = data / "ground-truth.json"
    if not truth_path.exists():
        raise SystemExit(f"error: {truth_path} not found: --data must be the article-extraction folder")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    splits = split_of(sorted(truth))
    out = []
    for key in sorted(truth):
        body = truth[key].get("articleBody") or ""
        sents = [s.text for s in split_sentences(body)]
        counts: dict[str, int] = {}
        for s in sents:
            counts[s] = counts.get(s, 0) + 1
        good = [s for s in sents if usable(s) and counts[s] == 1]
        if len(good) < 3:
            continue
        out.append(Article(key, truth[key].get("url", ""), page_title(data / "html", key), body, splits[key], good))
    return out


# --------------------------------------------------------------------------- faithful


def trimmed(sentence: str) -> str | None:
    """Drop a short leading clause ("After the vote, ...") or a trailing attribution."""
    m = re.match(r"^([^,\"“”]{3,70}),\s+(?P<rest>[a-zA-Z].+)$", sentence)
    if m and len(m.group("rest").split()) >= 6:
        rest = m.group("rest")
        return rest[0].upper() + rest[1:]
    m = re.match(r"^(?P<head>[^\"“”]+?),\s+(?:according to [^,]+|(?:he|she|they|officials|police) said)\.$", sentence)
    if m and len(m.group("head").split()) >= 6:
        return m.group("head") + "."
    return None


_WORD_DIGITS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}
_MONTH_SHORT = {"January": "Jan.", "February": "Feb.", "August": "Aug.", "September": "Sept.",
                "October": "Oct.", "November": "Nov.", "December": "Dec."}


def _scaled(n: int) -> str | None:
    for value, word in ((10**12, "trillion"), (10**9, "billion"), (10**6, "million")):
        if n >= value and n % (value // 10) == 0:
            return f"{n / value:g} {word}"
    return None


def reformatted(sentence: str, rng: random.Random) -> str | None:
    """The same facts in another house style: number formats, quote marks, spacing, month names."""
    edits: list[tuple[int, int, str]] = []
    for m in re.finditer(r"(?<![\d.,])(\d{1,3}(?:,\d{3}){2,})(?![\d,.]\d)", sentence):
        new = _scaled(int(m.group(1).replace(",", "")))
        if new:
            edits.append((m.start(), m.end(), new))
    for m in re.finditer(r"([$€£])(\d+(?:\.\d+)?) (million|billion)\b", sentence):
        edits.append((m.start(), m.end(), f"{m.group(1)}{m.group(2)}{'m' if m.group(3) == 'million' else 'bn'}"))
    for m in re.finditer(r"(\d)(%| percent\b| per cent\b)", sentence):
        edits.append((m.end(1), m.end(), " percent" if m.group(2) == "%" else "%"))
    for m in re.finditer(r"\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve) (?=[a-z])", sentence):
        edits.append((m.start(1), m.end(1), _WORD_DIGITS[m.group(1)]))
    for m in re.finditer(r"\b(" + "|".join(_MONTH_SHORT) + r") (?=\d)", sentence):
        edits.append((m.start(1), m.end(1), _MONTH_SHORT[m.group(1)]))
    for m in re.finditer(r"\"([^\"]+)\"", sentence):
        edits.append((m.start(), m.end(), f"“{m.group(1)}”"))
    for m in re.finditer(r"“([^“”]+)”", sentence):
        edits.append((m.start(), m.end(), f'"{m.group(1)}"'))
    for m in re.finditer(r" (?=[,.;:’']|['’]s\b)", sentence):
        edits.append((m.start(), m.end(), ""))
    # Words inside a quotation stay as spoken: only the quote marks themselves may change.
    quoted = [m.span(1) for m in re.finditer(r"\"([^\"]+)\"|“([^“”]+)”", sentence)] + [
        m.span(2) for m in re.finditer(r"\"([^\"]+)\"|“([^“”]+)”", sentence) if m.group(2)]
    edits = [e for e in edits if not any(a <= e[0] < b and e[1] - e[0] < b - a for a, b in quoted if a >= 0)]
    if not edits:
        return None
    rng.shuffle(edits)
    chosen: list[tuple[int, int, str]] = []
    for e in edits:
        if len(chosen) < 2 and all(e[1] <= c[0] or c[1] <= e[0] for c in chosen):
            chosen.append(e)
    out = sentence
    for a, b, new in sorted(chosen, reverse=True):
        out = out[:a] + new + out[b:]
    return out if out != sentence else None


# --------------------------------------------------------------------------- injections

_NUM = re.compile(r"(?<![\w.,:/$-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w:/]|[.,]\d)")


def change_number(sentence: str, rng: random.Random) -> str | None:
    spots = []
    for m in _NUM.finditer(sentence):
        whole = int(m.group(1).replace(",", ""))
        if m.group(2) is None and 1900 <= whole <= 2100 and "," not in m.group(1):
            continue  # a year: that is a date change
        months = r"(?:" + "|".join(MONTHS) + r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\b"
        if re.search(r"\b" + months + r"\.? $", sentence[: m.start()]) or re.match(r"(?:st|nd|rd|th)? (?:of )?" + months, sentence[m.end():]):
            continue  # the day of a date: that is a date change too
        spots.append(m)
    word_spots = list(re.finditer(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", sentence))
    if not spots and not word_spots:
        return None
    if spots and (not word_spots or rng.random() < 0.85):
        m = rng.choice(spots)
        if m.group(2):  # decimal: change the last digit
            frac = m.group(2)
            last = int(frac[-1])
            new_frac = frac[:-1] + str((last + rng.choice([1, 2, 3, 7, 8, 9])) % 10)
            new = m.group(1) + new_frac
        else:
            whole = int(m.group(1).replace(",", ""))
            choices = [whole + d for d in (-3, -2, -1, 1, 2, 3, 5, 10) if whole + d >= 0] + [whole * 2, whole * 10]
            value = rng.choice([c for c in choices if c != whole])
            new = f"{value:,}" if "," in m.group(1) else str(value)
        return sentence[: m.start()] + new + sentence[m.end():]
    m = rng.choice(word_spots)
    word = m.group(1)
    new = rng.choice([w for w in NUMBER_WORDS if w != word.lower()])
    if word[0].isupper():
        new = new.capitalize()
    return sentence[: m.start()] + new + sentence[m.end():]


def shift_date(sentence: str, rng: random.Random) -> str | None:
    options: list[tuple[int, int, str]] = []
    for m in re.finditer(r"\b(" + "|".join(WEEKDAYS) + r")\b", sentence):
        options.append((m.start(), m.end(), rng.choice([w for w in WEEKDAYS if w != m.group(1)])))
    for m in re.finditer(r"\b(" + "|".join(MONTHS) + r")\b(?=,? \d)", sentence):
        options.append((m.start(), m.end(), rng.choice([x for x in MONTHS if x != m.group(1)])))
    for m in re.finditer(r"\b(?:Jan|Feb|Aug|Sept|Oct|Nov|Dec)\.(?= \d)", sentence):
        options.append((m.start(), m.end(), rng.choice([x for x in MONTH_ABBR if x != m.group(0)])))
    month_names = "|".join(MONTHS + ["Jan\\.", "Feb\\.", "Aug\\.", "Sept\\.", "Oct\\.", "Nov\\.", "Dec\\."])
    for m in re.finditer(r"\b(?:" + month_names + r") ([1-9]|[12]\d|3[01])\b(?!,\d)", sentence):
        day = int(m.group(1))
        step = rng.choice([-3, -2, -1, 1, 2, 3]) if 4 <= day <= 25 else rng.choice([1, 2]) if day < 4 else -rng.choice([1, 2])
        options.append((m.start(1), m.end(1), str(day + step)))
    for m in re.finditer(r"(?<![\d,.$])\b(19[5-9]\d|20[0-3]\d)\b(?![,.]?\d)", sentence):
        options.append((m.start(), m.end(), str(int(m.group(1)) + rng.choice([-3, -2, -1, 1, 2]))))
    if not options:
        return None
    a, b, new = rng.choice(options)
    return sentence[:a] + new + sentence[b:]


_CAP_RUN = re.compile(r"(?<=[a-z,;] )((?:[A-Z][\w’'-]*[a-z][\w’'-]*|[A-Z]{2,})(?: (?:[A-Z][\w’'-]*[a-z][\w’'-]*|[A-Z]{2,})){0,2})")


def article_entities(article: Article) -> tuple[list[str], list[str]]:
    """(multi-word names, single-word names) seen mid-sentence in the article."""
    counts: dict[str, int] = {}
    for m in _CAP_RUN.finditer(article.text):
        name = re.sub(r"['’]s$", "", m.group(1))
        words = [w for w in name.split() if w not in COMMON_CAPS]
        if not words or words != name.split():
            continue
        counts[name] = counts.get(name, 0) + 1
    multi = sorted(n for n in counts if " " in n)
    single = sorted(n for n, c in counts.items() if " " not in n and (c >= 2 or n.isupper()) and len(n) > 2)
    return multi, single


def swap_entity(sentence: str, article: Article, rng: random.Random) -> str | None:
    multi, single = article_entities(article)
    present = [n for n in multi + single if re.search(r"(?<![\w])" + re.escape(n) + r"(?![\w])", sentence)]
    rng.shuffle(present)
    for name in present:
        pool = multi if " " in name else single
        others = [o for o in pool if o != name and o not in sentence and name not in o and o not in name]
        if not others:
            continue
        new = rng.choice(others)
        m = re.search(r"(?<![\w])" + re.escape(name) + r"(?![\w])", sentence)
        return sentence[: m.start()] + new + sentence[m.end():]
    return None


_AUX = r"is|was|are|were|has|have|had|will|would|can|could|should|may|might|must|does|did|do"
_NT = {"can't": "can", "won't": "will", "cannot": "can", "shan't": "shall"}


def flip_negation(sentence: str, rng: random.Random) -> str | None:
    removals = []
    for m in re.finditer(r"\b(not|never|no longer)\s+", sentence):
        removals.append((m.start(), m.end(), ""))
    for m in re.finditer(r"\b(\w+)(n['’]t|not)\b", sentence, re.I):
        word = m.group(0).lower().replace("’", "'")
        if word in _NT:
            removals.append((m.start(), m.end(), _NT[word]))
        elif m.group(2).lower().startswith("n") and m.group(1).lower() in _AUX.split("|") + ["does", "is", "are"]:
            removals.append((m.start(), m.end(), m.group(1)))
    additions = []
    for m in re.finditer(r"\b(" + _AUX + r")\s+(?!not\b|never\b|n't)(?=[a-z]{3,})", sentence):
        additions.append((m.end(1), m.end(1), " not"))
    pool = removals if removals and (not additions or rng.random() < 0.5) else additions
    if not pool:
        return None
    a, b, new = rng.choice(pool)
    if new == "":  # removing "not " inside
        return sentence[:a] + sentence[b:]
    return sentence[:a] + new + sentence[b:]


def alter_quote(sentence: str, vocab: list[str], rng: random.Random) -> str | None:
    for m in re.finditer(r"“([^”]{20,})”|\"([^\"]{20,})\"", sentence):
        inner = m.group(1) or m.group(2)
        words = inner.split(" ")
        if len(words) < 5:
            continue
        i = rng.randrange(1, len(words) - 1)
        kind = rng.choice(["drop", "replace", "swap"])
        if kind == "drop":
            new_words = words[:i] + words[i + 1:]
        elif kind == "swap" and words[i] != words[i + 1]:
            new_words = words[:i] + [words[i + 1], words[i]] + words[i + 2:]
        else:
            new_words = words[:i] + [rng.choice(vocab)] + words[i + 1:]
        new_inner = " ".join(new_words)
        if new_inner == inner:
            continue
        start = m.start(1) if m.group(1) is not None else m.start(2)
        return sentence[:start] + new_inner + sentence[start + len(inner):]
    return None


def fabricate_quote(article: Article, others: list[Article], rng: random.Random) -> str | None:
    multi, _ = article_entities(article)
    people = [n for n in multi if len(n.split()) == 2 and not n.isupper()]
    if not people:
        return None
    donor = rng.choice(others)
    lines = [s for s in donor.sentences if 6 <= len(s.split()) <= 25 and not re.search(r"[\"“”]", s)]
    if not lines:
        return None
    q = rng.choice(lines).rstrip(".!?")
    name = rng.choice(people)
    return rng.choice(FABRICATED_QUOTE_LEADS).format(name=name, q=q)


def add_content(sentence: str, article: Article, others: list[Article], rng: random.Random) -> str | None:
    if not sentence.endswith(".") or sentence.endswith("..") or re.search(r"[\"”]\.?$", sentence):
        return None
    body = sentence[:-1]
    roll = rng.random()
    if roll < 0.4:
        clause = rng.choice(ADDITION_TEMPLATES)
    elif roll < 0.7:
        multi, single = article_entities(article)
        names = [n for n in multi + single if n not in sentence]
        if not names:
            clause = rng.choice(ADDITION_TEMPLATES)
        else:
            clause = rng.choice(ADDITION_WITH_ENTITY).format(e=rng.choice(names))
    else:
        donor = rng.choice(others)
        lines = [s for s in donor.sentences if 6 <= len(s.split()) <= 18 and s.endswith(".") and not re.search(r"[\"“”]", s)]
        if not lines:
            return None
        line = rng.choice(lines)[:-1]
        first = line.split(" ", 1)[0]
        if first.isalpha() and first not in ("I",) and not first.isupper() and first in COMMON_CAPS:
            line = line[0].lower() + line[1:]
        clause = ", and " + line
    return body + clause + "."


# --------------------------------------------------------------------------- paraphrase errors
#
# The errors a language model makes when it paraphrases a source sentence (issue 15): the claim is
# reworded (a synonym or two, a leading clause dropped, active turned passive), and on top of that one
# fact is turned around. Four kinds: direction reversed, order/time changed, roles swapped, scale or
# unit changed. Each comes with a faithful twin: the same rewording without the error, labelled
# `supported`, so false alarms on paraphrases are measured too. The lexicons below are the builder's
# own (what a paraphrase would plausibly say), not the checker's.

# Reworded but faithful: words a model swaps for a synonym when it paraphrases.
PARAPHRASE_SYNONYMS = {
    "said": ["stated", "noted"], "says": ["states", "notes"], "company": ["firm"], "companies": ["firms"],
    "bought": ["purchased"], "buy": ["purchase"], "helped": ["assisted"], "help": ["assist"],
    "showed": ["indicated"], "shows": ["indicates"], "started": ["began"], "big": ["large"],
    "expected": ["anticipated"], "plans": ["intends"], "tried": ["attempted"], "try": ["attempt"],
    "needs": ["requires"], "enough": ["sufficient"], "nearly": ["almost"], "roughly": ["about"],
    "approximately": ["about"], "around": ["about"], "officials": ["authorities"], "because": ["as"],
    "However,": ["But"], "also": [""], "currently": ["now"], "received": ["got"], "announced": ["said"],
    "told": ["informed"], "several": ["a number of"], "many": ["numerous"], "quickly": ["rapidly"],
    "main": ["primary"], "biggest": ["largest"], "whole": ["entire"],
}

# Direction: each inflected word with (its opposites, its faithful synonyms).
DIRECTION_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "rose": (["fell", "declined", "dropped"], ["climbed", "increased", "advanced"]),
    "rise": (["fall", "decline", "drop"], ["climb", "increase"]),
    "rises": (["falls", "declines", "drops"], ["climbs", "increases"]),
    "rising": (["falling", "declining"], ["climbing", "increasing"]),
    "risen": (["fallen", "declined"], ["climbed", "increased"]),
    "fell": (["rose", "climbed", "increased"], ["dropped", "declined", "slipped"]),
    "falls": (["rises", "climbs"], ["drops", "declines"]),
    "falling": (["rising", "climbing"], ["dropping", "declining"]),
    "fallen": (["risen", "climbed"], ["dropped", "declined"]),
    "increased": (["decreased", "fell", "declined"], ["rose", "grew", "climbed"]),
    "increase": (["decrease", "decline", "drop"], ["rise", "growth"]),
    "increases": (["decreases", "declines"], ["rises", "grows"]),
    "increasing": (["decreasing", "declining"], ["rising", "growing"]),
    "decreased": (["increased", "rose", "grew"], ["fell", "declined", "dropped"]),
    "decrease": (["increase", "rise"], ["decline", "drop"]),
    "declined": (["rose", "increased", "climbed"], ["fell", "dropped", "decreased"]),
    "decline": (["rise", "increase", "gain"], ["drop", "fall"]),
    "gained": (["lost", "shed", "fell"], ["rose", "added", "climbed"]),
    "gains": (["losses", "declines"], ["increases", "advances"]),
    "lost": (["gained", "added"], ["shed"]),
    "losses": (["gains", "profits"], []),
    "jumped": (["dropped", "fell", "slumped"], ["surged", "soared", "leapt"]),
    "dropped": (["rose", "climbed", "jumped"], ["fell", "declined"]),
    "climbed": (["fell", "dropped", "declined"], ["rose", "increased"]),
    "grew": (["shrank", "fell", "declined"], ["expanded", "increased", "rose"]),
    "growing": (["shrinking", "declining"], ["expanding", "increasing"]),
    "growth": (["decline", "contraction"], ["expansion"]),
    "surged": (["plunged", "slumped", "tumbled"], ["soared", "jumped"]),
    "soared": (["plummeted", "plunged"], ["surged", "jumped"]),
    "plunged": (["surged", "soared"], ["plummeted", "tumbled"]),
    "tumbled": (["surged", "jumped"], ["plunged", "slumped"]),
    "slumped": (["surged", "jumped"], ["plunged", "tumbled"]),
    "expanded": (["contracted", "shrank"], ["grew"]),
    "raised": (["cut", "lowered", "reduced"], ["increased", "lifted"]),
    "reduced": (["increased", "raised"], ["cut", "lowered"]),
    "lowered": (["raised", "increased"], ["cut", "reduced"]),
    "boosted": (["reduced", "cut", "weakened"], ["increased", "lifted"]),
    "above": (["below", "under"], ["over"]),
    "below": (["above", "over"], ["under"]),
    "higher": (["lower"], ["greater"]),
    "lower": (["higher"], []),
    "more": (["fewer", "less"], []),
    "fewer": (["more"], []),
    "less": (["more"], []),
    "most": (["fewest", "least"], []),
    "least": (["most"], []),
    "larger": (["smaller"], ["bigger"]),
    "bigger": (["smaller"], ["larger"]),
    "largest": (["smallest"], ["biggest"]),
    "biggest": (["smallest"], ["largest"]),
    "smaller": (["larger", "bigger"], []),
    "smallest": (["largest", "biggest"], []),
    "greater": (["smaller", "lower"], ["higher", "larger"]),
    "highest": (["lowest"], ["top"]),
    "lowest": (["highest"], []),
    "better": (["worse"], []),
    "worse": (["better"], []),
    "best": (["worst"], ["top"]),
    "worst": (["best"], []),
    "strong": (["weak"], ["robust", "solid"]),
    "stronger": (["weaker"], []),
    "weak": (["strong"], ["soft"]),
    "weaker": (["stronger"], []),
    "improved": (["worsened", "deteriorated"], []),
    "beat": (["missed", "fell short of"], ["topped", "exceeded", "surpassed"]),
    "exceeded": (["missed", "fell short of"], ["topped", "surpassed", "beat"]),
    "missed": (["beat", "exceeded"], ["fell short of"]),
    "approved": (["rejected", "blocked"], ["endorsed", "backed"]),
    "rejected": (["approved", "accepted"], ["turned down", "dismissed"]),
    "accepted": (["rejected", "refused"], ["agreed to"]),
    "won": (["lost"], ["secured"]),
    "win": (["lose"], ["secure"]),
    "supported": (["opposed"], ["backed"]),
    "supports": (["opposes"], ["backs"]),
    "opposed": (["supported", "backed"], ["objected to"]),
    "allowed": (["banned", "barred"], ["permitted"]),
    "allow": (["ban", "bar"], ["permit"]),
    "banned": (["allowed", "permitted"], ["barred", "prohibited"]),
    "confirmed": (["denied"], []),
    "denied": (["confirmed"], ["rejected"]),
    "upheld": (["overturned", "struck down"], ["affirmed"]),
    "overturned": (["upheld"], ["reversed"]),
    "positive": (["negative"], []),
    "negative": (["positive"], []),
    "profit": (["loss"], []),
    "surplus": (["deficit"], []),
    "deficit": (["surplus"], []),
    "up": (["down"], []),
    "down": (["up"], []),
}
# Words whose neighbours make them something else ("fell ill", "cut ties", "set up", "more or less").
DIRECTION_SKIP = re.compile(
    r"\b(?:fell (?:ill|victim|asleep|silent|apart|in love|short|into|through|off|out|back|under)|"
    r"declined to|cut (?:ties|off|out|short|down)|lost (?:his|her|their|its|my|our|your) (?:life|lives|way|temper)|"
    r"\w+ (?:up|down)\b(?! \d)|up to|ups and downs|more or less|once more|no more|any ?more|more and more|"
    r"at least|at most|least of|the most|most of|most recently|better known|best known|for the (?:better|worse)|"
    r"last but not least)",
    re.I,
)


def _case_like(word: str, new: str) -> str:
    return new[:1].upper() + new[1:] if word[:1].isupper() else new


def quoted_spans(sentence: str) -> list[tuple[int, int]]:
    """Quotations, including one left open or closed by a neighbouring sentence: words in them stay verbatim."""
    spans = [m.span() for m in re.finditer(r"“[^“”]*”|\"[^\"]*\"", sentence)]
    rest = "".join(" " if any(a <= i < b for a, b in spans) else ch for i, ch in enumerate(sentence))
    for m in re.finditer(r"[“”\"]", rest):
        opens = m.group(0) == "“" or (m.group(0) == '"' and (m.start() == 0 or rest[m.start() - 1].isspace()))
        spans.append((m.start(), len(sentence)) if opens else (0, m.end()))
    return spans


def _word_spots(sentence: str, table: dict) -> list[re.Match]:
    pattern = re.compile(r"(?<![\w’'-])(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")(?![\w’'-])", re.I)
    quoted = quoted_spans(sentence)
    spots = []
    for m in pattern.finditer(sentence):
        if any(a <= m.start() < b for a, b in quoted):
            continue  # a quotation is quoted verbatim, never paraphrased
        if m.group(1)[:1].isupper() and (sentence[:m.start()].strip() or re.match(r"\s+[A-Z]", sentence[m.end():])):
            continue  # capitalised mid-sentence or before another capital: part of a name ("Sioux Falls", "Big Machine")
        spots.append(m)
    return spots


def paraphrase(sentence: str, rng: random.Random, keep: tuple[int, int] | None = None, edits: int | None = None) -> str:
    """A faithful rewording: one or two synonyms swapped and, sometimes, a leading clause dropped.

    `keep` is a span that must stay as it is (where the error was injected)."""
    spots = [m for m in _word_spots(sentence, {k.lower(): v for k, v in PARAPHRASE_SYNONYMS.items()})
             if m.group(1) in PARAPHRASE_SYNONYMS or m.group(1).lower() in PARAPHRASE_SYNONYMS]
    spots = [m for m in spots if keep is None or m.end() <= keep[0] or m.start() >= keep[1]]
    rng.shuffle(spots)
    n = edits if edits is not None else rng.choice([1, 1, 2])
    out = sentence
    for m in sorted(spots[:n], key=lambda m: m.start(), reverse=True):
        word = m.group(1)
        options = PARAPHRASE_SYNONYMS.get(word) or PARAPHRASE_SYNONYMS[word.lower()]
        new = _case_like(word, rng.choice(options))
        a, b = m.span()
        if new == "":
            b = b + 1 if out[b:b + 1] == " " else b
        out = out[:a] + new + out[b:]
    if rng.random() < 0.3:
        shorter = trimmed(out)
        if shorter and (keep is None or sentence[keep[0]:keep[1]] in shorter):
            out = shorter
    return out


def _replace_word(sentence: str, table: dict[str, tuple[list[str], list[str]]], rng: random.Random,
                  which: int, skip: re.Pattern | None = None) -> tuple[str, tuple[int, int]] | None:
    """Swap one lexicon word for one of its opposites (which=0) or synonyms (which=1); the new span."""
    blocked = [m.span() for m in skip.finditer(sentence)] if skip is not None else []
    spots = [m for m in _word_spots(sentence, table)
             if table[m.group(1).lower()][which] and not any(a < m.end() and m.start() < b for a, b in blocked)]
    if not spots:
        return None
    m = rng.choice(spots)
    new = _case_like(m.group(1), rng.choice(table[m.group(1).lower()][which]))
    return sentence[:m.start()] + new + sentence[m.end():], (m.start(), m.start() + len(new))


def reverse_direction(sentence: str, rng: random.Random, faithful: bool = False) -> str | None:
    """rose -> fell, beat -> missed, above -> below (or, faithful, rose -> climbed), then reworded."""
    got = _replace_word(sentence, DIRECTION_WORDS, rng, 1 if faithful else 0, DIRECTION_SKIP)
    if got is None:
        return None
    return paraphrase(got[0], rng, keep=got[1])


# Order and time: (opposites, faithful rewordings).
ORDER_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "before": (["after"], ["prior to", "ahead of"]),
    "after": (["before"], ["following"]),
    "earlier": (["later"], []),
    "later": (["earlier"], ["subsequently"]),
    "previously": (["subsequently", "later"], ["earlier", "formerly"]),
    "prior to": (["after", "following"], ["before"]),
    "following": (["before", "prior to"], ["after"]),
    "ahead of": (["after"], ["before"]),
    "since": (["until"], []),
    "until": (["since"], []),
    "first": (["second", "last"], []),
    "last year": (["next year"], ["a year ago"]),
    "last week": (["next week"], ["a week ago"]),
    "last month": (["next month"], ["a month ago"]),
    "next year": (["last year"], []),
    "next week": (["last week"], []),
    "next month": (["last month"], []),
    "yesterday": (["tomorrow"], []),
    "tomorrow": (["yesterday"], []),
    "earliest": (["latest"], []),
    "latest": (["earliest"], ["most recent"]),
    "previous": (["next", "following"], ["prior"]),
    "former": (["future", "incoming"], []),
    "past": (["coming", "next"], []),
    "ago": (["from now"], ["earlier"]),
    "preceded": (["followed"], []),
    "followed": (["preceded"], ["came after"]),
}
ORDER_SKIP = re.compile(
    r"\b(?:the following|following (?:is|are|a|an|the|his|her|their|its|reports?|news)\b|first of all|at first|"
    r"first (?:time|half|quarter|place)|since (?:then|the|it|he|she|they|we)\b|past (?:the|him|her|them|it)\b|"
    r"in the past\b|latest (?:news|version)|last year's|after all)",
    re.I,
)


def change_order(sentence: str, rng: random.Random, faithful: bool = False) -> str | None:
    """before -> after, last year -> next year, first -> second (or, faithful, before -> prior to), reworded."""
    got = _replace_word(sentence, ORDER_WORDS, rng, 1 if faithful else 0, ORDER_SKIP)
    if got is None:
        return None
    out, span = got
    if not faithful and out[span[0]:span[1]].lower() == "from now" and re.search(r"\b(?:was|were|had|did)\b", out):
        return None  # "two years from now" in a past-tense sentence reads as a typo, not a paraphrase
    return paraphrase(out, rng, keep=span)


# Roles: a verb that is not symmetric (A acquired B is not B acquired A); past participle for the passive.
ROLE_VERBS = {
    "acquired": "acquired", "bought": "bought", "sold": "sold", "sued": "sued", "beat": "beaten",
    "defeated": "defeated", "hired": "hired", "fired": "fired", "appointed": "appointed", "replaced": "replaced",
    "succeeded": "succeeded", "criticised": "criticised", "criticized": "criticized", "accused": "accused",
    "attacked": "attacked", "paid": "paid", "funded": "funded", "backed": "backed", "endorsed": "endorsed",
    "overtook": "overtaken", "outsold": "outsold", "outperformed": "outperformed", "led": "led", "hosted": "hosted",
    "invited": "invited", "arrested": "arrested", "charged": "charged", "fined": "fined", "sanctioned": "sanctioned",
    "banned": "banned", "blocked": "blocked", "warned": "warned", "thanked": "thanked", "praised": "praised",
    "blamed": "blamed", "hacked": "hacked", "targeted": "targeted", "owns": None, "owned": "owned",
    "controls": None, "employs": None, "employed": "employed", "advised": "advised", "coached": "coached",
    "interviewed": "interviewed", "killed": "killed", "elected": "elected", "nominated": "nominated",
    "pardoned": "pardoned", "rescued": "rescued", "investigated": "investigated", "asked": "asked", "told": "told",
    "urged": "urged", "called": "called", "visited": "visited", "eliminated": "eliminated", "topped": "topped",
    "trailed": "trailed", "signed": "signed", "dropped": "dropped", "released": "released", "named": "named",
    "joined": "joined", "left": "left", "leads": None, "beats": None, "supports": None, "supported": "supported",
    "rejected": "rejected", "approved": "approved", "acquire": None, "buys": None, "sells": None, "sues": None,
    "defended": "defended", "challenged": "challenged", "congratulated": "congratulated", "thanks": None,
    "replaces": None, "succeeds": None, "represents": None, "represented": "represented", "trails": None,
    "followed": "followed", "overtakes": None, "purchased": "purchased", "recruited": "recruited",
    "signed with": None, "sponsored": "sponsored", "invested in": None, "lent": "lent", "owes": None, "owed": "owed",
    "buy": None, "sell": None, "sue": None, "hire": None, "replace": None, "succeed": None, "defeat": None,
    "acquiring": None, "buying": None, "suing": None, "replacing": None, "beating": None, "defeating": None,
}
# A name as the builder sees one: one to three capitalised words, or an acronym; "the" may lead.
_NAME = r"(?:[A-Z][\w’'.-]*[a-z][\w’'-]*|[A-Z]{2,}[\w]*)(?: (?:[A-Z][\w’'.-]*[a-z][\w’'-]*|[A-Z]{2,}|of|de|van|von)){0,3}"
_ROLE_RE = re.compile(
    r"(?<![\w’'-])(?P<a>" + _NAME + r") (?P<adv>(?:has |have |had |also |reportedly |recently |then |later |"
    r"allegedly |previously |formally |officially |will |would |to |agreed to |plans to |is set to |is to )*)(?P<v>" + "|".join(sorted(ROLE_VERBS, key=len, reverse=True)) +
    r") (?P<det>the |its |rival |former |fellow )?(?P<b>" + _NAME + r")(?![\w’'-])"
)
TITLES = {
    "CEO": ["CFO", "COO", "CTO", "chairman"], "CFO": ["CEO", "COO"], "COO": ["CEO", "CFO"], "CTO": ["CEO", "CFO"],
    "chief executive": ["chief financial officer", "chief operating officer", "chairman"],
    "chief financial officer": ["chief executive", "chief operating officer"],
    "chief operating officer": ["chief executive", "chief financial officer"],
    "chairman": ["chief executive", "vice chairman"], "chairwoman": ["chief executive"],
    "president": ["vice president", "chairman"], "vice president": ["president"],
    "founder": ["chief financial officer", "chairman"], "co-founder": ["chief financial officer"],
    "director": ["deputy director"], "deputy director": ["director"],
    "prime minister": ["finance minister", "president"], "minister": ["deputy minister"],
    "governor": ["lieutenant governor"], "senator": ["representative"],
    "coach": ["assistant coach"], "head coach": ["assistant coach"], "manager": ["assistant manager"],
    "editor": ["publisher"], "spokesman": ["chief executive"], "spokeswoman": ["chief executive"],
    "plaintiff": ["defendant"], "defendant": ["plaintiff"], "buyer": ["seller"], "seller": ["buyer"],
    "lender": ["borrower"], "borrower": ["lender"], "employer": ["employee"], "landlord": ["tenant"],
    "winner": ["runner-up"], "captain": ["vice-captain"], "chief": ["deputy chief"],
}
GENERIC_CAPS = set("""Sources Officials Police Analysts Investors Researchers Experts Critics Residents Authorities
    Prosecutors Scientists Doctors Lawmakers Democrats Republicans Voters Users Fans Players Customers""".split())


def _plain_name(name: str) -> bool:
    words = name.split()
    return not any(w in COMMON_CAPS or w in GENERIC_CAPS or w.rstrip(".") in MONTHS for w in words)


def swap_roles(sentence: str, rng: random.Random, faithful: bool = False) -> str | None:
    """A acquired B -> B acquired A, or the same fact turned passive (B was acquired by A) with the roles
    swapped in the error (A was acquired by B); or a title changed (CEO -> CFO). Faithful: the correct passive."""
    options = []
    quoted = quoted_spans(sentence)
    for m in _ROLE_RE.finditer(sentence):
        a, b = m.group("a"), m.group("b")
        if a == b or a in b or b in a or not _plain_name(a) or not _plain_name(b):
            continue
        if any(x < m.end() and m.start() < y for x, y in quoted):
            continue
        options.append(("swap", m))
    if not faithful:
        titles = re.compile(r"(?<![\w-])(?:" + "|".join(sorted(map(re.escape, TITLES), key=len, reverse=True)) + r")(?![\w-])")
        for m in titles.finditer(sentence):
            if re.search(r"\b(?:vice|deputy|assistant|lieutenant|associate|senior|co)[ -]$", sentence[:m.start()], re.I):
                continue  # "assistant coach" is a title of its own
            if not any(x <= m.start() < y for x, y in quoted):
                options.append(("title", m))
    if not options:
        return None
    kind, m = rng.choice(options)
    if kind == "title":
        title = m.group(0)
        new = rng.choice(TITLES[title])
        out = sentence[:m.start()] + new + sentence[m.end():]
        return paraphrase(out, rng, keep=(m.start(), m.start() + len(new)))
    a, b, verb = m.group("a"), m.group("b"), m.group("v")
    participle = ROLE_VERBS[verb]
    det = m.group("det") or ""
    passive = participle is not None and not m.group("adv") and rng.random() < (1.0 if faithful else 0.5)
    if faithful and not passive:
        return None
    if passive:
        aux = "was"
        head, tail = (b, a) if faithful else (a, b)
        first, second = (det + head, tail) if faithful else (head, det + tail)
        first = first[:1].upper() + first[1:] if m.start() == 0 else first
        new = f"{first} {aux} {participle} by {second}"
    else:
        new = f"{b} {m.group('adv')}{verb} {det}{a}"
    out = sentence[:m.start()] + new + sentence[m.end():]
    return paraphrase(out, rng, keep=(m.start(), m.start() + len(new)))


# Scale and unit: a scale word, a unit, a currency or percent / percentage points changed, digits kept.
SCALE_SWAPS = {
    "thousand": ["million"], "million": ["billion", "thousand"], "billion": ["million", "trillion"], "trillion": ["billion"],
    "m": ["bn"], "bn": ["m"], "mn": ["bn"],
    "percent": ["percentage points"], "per cent": ["percentage points"], "%": [" percentage points"],
    "percentage points": ["percent", "%"], "percentage point": ["percent"], "basis points": ["percentage points"],
    "dollars": ["euros", "pounds"], "euros": ["dollars", "pounds"], "pounds": ["dollars", "euros"],
    "yen": ["yuan", "dollars"], "yuan": ["yen", "dollars"], "rupees": ["dollars"], "naira": ["dollars"],
    "km": ["miles"], "kilometres": ["miles"], "kilometers": ["miles"], "miles": ["kilometres"],
    "kg": ["pounds"], "kilograms": ["pounds"], "tonnes": ["kilograms"], "tons": ["kilograms"],
    "metres": ["feet"], "meters": ["feet"], "feet": ["metres"], "acres": ["hectares"], "hectares": ["acres"],
    "MW": ["GW"], "GW": ["MW"], "GB": ["TB", "MB"], "TB": ["GB"], "MB": ["GB"],
    "minutes": ["hours"], "hours": ["minutes", "days"], "days": ["weeks", "months"], "weeks": ["months", "days"],
    "months": ["years", "weeks"], "years": ["months", "decades"],
}
CURRENCY_SWAPS = {"$": ["€", "£"], "€": ["$", "£"], "£": ["$", "€"], "US$": ["€"], "USD": ["EUR"], "EUR": ["USD"], "GBP": ["USD"]}


def change_scale(sentence: str, rng: random.Random, faithful: bool = False) -> str | None:
    """5 million -> 5 billion, 5% -> 5 percentage points, $5 -> €5, 3 months -> 3 years (the digits stay),
    reworded. Faithful: a scaled figure written out ("1.2 million" -> "1,200,000") or the reverse."""
    quoted = quoted_spans(sentence)
    options: list[tuple[int, int, str]] = []
    num = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    if faithful:
        for m in re.finditer(r"(?<![\w.,])(\d+(?:\.\d+)?) (million|billion)\b", sentence):
            value = round(float(m.group(1)) * (10**6 if m.group(2) == "million" else 10**9))
            options.append((m.start(), m.end(), f"{value:,}"))
        for m in re.finditer(r"(?<![\w.,])(\d{1,3}(?:,\d{3}){2,})(?![\d,.]\d)", sentence):
            n = int(m.group(1).replace(",", ""))
            for value, word in ((10**9, "billion"), (10**6, "million")):
                if n >= value and n % (value // 100) == 0:
                    options.append((m.start(), m.end(), f"{n / value:g} {word}"))
                    break
        for m in re.finditer(r"(\d) ?(?:percent|per cent)\b", sentence):
            options.append((m.end(1), m.end(), "%"))
        for m in re.finditer(r"(\d)%", sentence):
            options.append((m.end(1), m.end(), " percent"))
    else:
        for m in re.finditer(r"(?<![\w.,])" + num + r"(?P<sp> ?-?)(?P<u>" + "|".join(
                sorted(map(re.escape, SCALE_SWAPS), key=len, reverse=True)) + r")(?![\w])", sentence):
            unit = m.group("u")
            start = m.start("u")
            if unit in ("m", "bn", "mn") and (m.group("sp") or sentence[max(0, m.start() - 1):m.start()] not in "$€£"
                                              or m.start() == 0):
                continue  # "5m" is a sum only after a currency sign
            new = rng.choice(SCALE_SWAPS[unit])
            if unit == "%":
                new = new.strip() if m.group("sp") else new
            if new == "%" and m.group("sp"):
                start = m.end() - len(unit) - len(m.group("sp"))
            options.append((start, m.end(), new))
        for m in re.finditer(r"(US\$|[$€£]|\b(?:USD|EUR|GBP) ?)(?=" + num + ")", sentence):
            cur = m.group(1).strip()
            new = rng.choice(CURRENCY_SWAPS[cur])
            options.append((m.start(), m.start() + len(cur), new))
    options = [o for o in options if not any(a <= o[0] < b for a, b in quoted)]
    if not options:
        return None
    a, b, new = rng.choice(options)
    out = sentence[:a] + new + sentence[b:]
    return paraphrase(out, rng, keep=(a, a + len(new)))


PARAPHRASE_ERRORS = {"direction": reverse_direction, "order": change_order, "role": swap_roles, "scale": change_scale}


# --------------------------------------------------------------------------- assembly


def build(articles: list[Article], seed: int) -> list[dict]:
    cases: list[dict] = []
    for art in articles:
        rng = random.Random(f"{seed}:{art.key}")
        others = [a for a in articles if a.key != art.key]
        vocab = sorted({w for w in re.findall(r"\b[a-z]{4,}\b", art.text)})
        source = {"id": art.key[:12], "title": art.title, "url": art.url, "text": art.text}
        rounds = 2 if len(art.sentences) >= 30 else 1
        used: set[str] = set()
        n = 0

        def add(claim: str | None, label: str, error_type: str | None, variant: str | None = None) -> bool:
            nonlocal n
            if not claim or claim in used:
                return False
            if error_type and claim in art.text:
                return False  # the "error" happens to be true somewhere in the article
            if variant and claim in art.text:
                return False  # a "paraphrase" that changed nothing
            used.add(claim)
            n += 1
            case = {
                "id": f"{art.key[:12]}-{n:02d}", "claim": claim, "sources": [source],
                "label": label, "error_type": error_type, "split": art.split,
            }
            if variant:
                case["variant"] = variant
            cases.append(case)
            return True

        def attempt(make, label: str, error_type: str | None, variant: str | None = None, r: random.Random | None = None) -> None:
            order = art.sentences[:]
            (r or rng).shuffle(order)
            for sentence in order:
                if add(make(sentence), label, error_type, variant):
                    return

        for _ in range(rounds):
            for s in rng.sample(art.sentences, min(2, len(art.sentences))):
                add(s, "supported", None)
            attempt(trimmed, "supported", None)
            attempt(lambda s: reformatted(s, rng), "supported", None)
            attempt(lambda s: change_number(s, rng), "contradicted", "number")
            attempt(lambda s: shift_date(s, rng), "contradicted", "date")
            attempt(lambda s: swap_entity(s, art, rng), "contradicted", "entity")
            attempt(lambda s: flip_negation(s, rng), "contradicted", "negation")
            if rng.random() < 0.5:
                attempt(lambda s: alter_quote(s, vocab, rng), "unverifiable", "quote")
            else:
                add(fabricate_quote(art, others, rng), "unverifiable", "quote")
            attempt(lambda s: add_content(s, art, others, rng), "unverifiable", "addition")
        # Paraphrase errors (issue 15) draw from their own generator, after the cases above, so those stay
        # exactly as they were. Each error kind has a faithful twin (variant "<kind>-faithful").
        prng = random.Random(f"{seed}:paraphrase:{art.key}")
        for _ in range(rounds + 1):
            for kind, make in PARAPHRASE_ERRORS.items():
                attempt(lambda s, make=make: make(s, prng), "contradicted", kind, "paraphrase", prng)
                attempt(lambda s, make=make: make(s, prng, faithful=True), "supported", None, f"{kind}-faithful", prng)
            attempt(lambda s: paraphrase(s, prng, edits=2), "supported", None, "paraphrase", prng)
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="article-extraction folder (ground-truth.json, html/)")
    ap.add_argument("--out", required=True, type=Path, help="JSONL file to write")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    articles = load_articles(args.data)
    if not articles:
        raise SystemExit(f"error: no usable articles in {args.data}")
    cases = build(articles, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for case in cases:
            fh.write(json.dumps(case, ensure_ascii=False) + "\n")
    tally: dict[tuple[str, str], int] = {}
    for c in cases:
        k = (c["split"], c["error_type"] or "faithful")
        tally[k] = tally.get(k, 0) + 1
    print(f"{len(cases)} cases from {len(articles)} articles -> {args.out}")
    for split in ("dev", "heldout"):
        parts = ", ".join(f"{t} {n}" for (s, t), n in sorted(tally.items()) if s == split)
        print(f"  {split}: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
