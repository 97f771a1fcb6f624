"""A scripted newsroom model for `FakeOpenAIServer(reply=NewsroomModel())`.

It reads each request the way a real model would, from the rendered prompts,
and answers every role with realistic, schema- and template-valid JSON:

* classifier: an item is relevant when it is about crypto and matches a topic's
  name or keywords (from the system prompt's topic list), or with `beat=` one of
  the beat's topics; newsworthiness grows with the keyword hits;
* writer: an article built from the numbered sources' own sentences, sized by
  the template rules stated in the user prompt (headline, lead, body, insights),
  every paragraph and insight citing the source it came from;
* reviser: the article with each flagged statement replaced by its evidence;
* judge: "supported" quoting the best matching evidence sentence verbatim when
  the claim's words and figures are in it, "contradicted" when the words are but
  a figure differs (with a correction: the claim with the passage's figures),
  else "unverifiable".

`mistake_every=k` makes every k-th article (by story title) misstate one figure,
so the fact-check and revision paths run too. `role_of(body)` tells which role
a request is for, for tests that count or hold requests per role.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from pipeline.text.templates import count_sentences, count_words
from pipeline.text.sentences import split_sentences

_SCHEMA_ROLES = {"BatchResult": "classifier", "JudgeReply": "judge"}
_SYSTEM_ROLES = (
    ("You triage incoming items", "classifier"),
    ("You are a staff writer", "writer"),
    ("You are the copy desk", "reviser"),
    ("You verify claims", "judge"),
)
_CRYPTO = re.compile(
    r"\b(crypto\w*|bitcoin|btc|ether(eum)?|eth|blockchains?|tokens?|stablecoins?|defi|exchanges?|wallets?|"
    r"staking|validators?|mining|miners?|nfts?|layer[- ]2|rollups?|usdc|usdt|on-chain|airdrops?|etfs?)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z0-9$%][A-Za-z0-9$%.,'’\-]*")
_STOP = frozenset(
    "a an the and or but of to in on at by for with from as is are was were be been it its this that these those "
    "he she they has have had not no said says will would could also into over after before about more than".split()
)
_NAME = re.compile(r"\b[A-Z][A-Za-z0-9&\-]+(?:\s+[A-Z][A-Za-z0-9&\-]+)*")


def role_of(body: dict[str, Any]) -> str:
    """The gateway role a chat request is for: from the schema name, else from the system prompt."""
    schema_name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")
    if schema_name in _SCHEMA_ROLES:
        return _SCHEMA_ROLES[schema_name]
    messages = body.get("messages") or []
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    for marker, role in _SYSTEM_ROLES:
        if marker in system:
            return role
    if schema_name.endswith("Article"):
        return "writer"
    return "unknown"


def _message(body: dict[str, Any], role: str) -> str:
    return "\n".join(m.get("content", "") for m in body.get("messages") or [] if m.get("role") == role)


def _user(body: dict[str, Any]) -> str:
    # The first user message is the task; later ones are repair requests.
    return next((m.get("content", "") for m in body.get("messages") or [] if m.get("role") == "user"), "")


def _unfence(text: str) -> str:
    return text.replace("<\\/", "</")


def _terms(text: str) -> set[str]:
    out = set()
    for raw in _WORD.findall(text.lower()):
        word = raw.strip(".,'’-")
        if len(word) > 1 and word not in _STOP:
            out.add(word)
    return out


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


def _sentences(text: str) -> list[str]:
    return [" ".join(s.text.split()) for s in split_sentences(text) if s.text.strip()]


# --- prompt parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    n: int
    title: str
    outlet: str
    url: str
    role: str
    text: str


_SOURCE = re.compile(
    r'<source n="(\d+)" role="(\w+)">\s*\n(?:About: .*?\n)?Title: (.*?)\nOutlet: (.*?)\nPublished: .*?\nURL: (.*?)\nText:\n(.*?)\n</source>',
    re.DOTALL,
)


def parse_sources(prompt: str) -> list[Source]:
    return [
        Source(int(n), _unfence(title).strip(), _unfence(outlet).strip(), _unfence(url).strip(), role, _unfence(text).strip())
        for n, role, title, outlet, url, text in _SOURCE.findall(prompt)
    ]


@dataclass(frozen=True)
class Rules:
    headline_chars: int
    lead_min: int
    lead_max: int
    lead_words: int
    body_min: int
    body_max: int
    para_min_words: int
    para_max_words: int
    min_citations: int
    insights_min: int
    insights_max: int
    insight_words: int


def parse_rules(prompt: str) -> Rules:
    """The template rules as the writer prompt states them (writer.user.j2 'Template rules')."""

    def find(pattern: str) -> tuple[str, ...]:
        match = re.search(pattern, prompt)
        if match is None:
            raise ValueError(f"writer prompt does not state {pattern!r}")
        return match.groups()

    (headline,) = find(r"Headline: at most (\d+) characters")
    lead_min, lead_max, lead_words = find(r"Lead: (\d+)(?:–(\d+))? sentence\(s\), at most (\d+) words")
    body_min, body_max, word_min, word_max, cites = find(r"Body: (\d+)–(\d+) paragraphs of (\d+)–(\d+) words; each cites at least (\d+)")
    ins_min, ins_max, ins_words = find(r"Insights: (\d+)–(\d+), at most (\d+) words each")
    return Rules(
        int(headline), int(lead_min), int(lead_max or lead_min), int(lead_words), int(body_min), int(body_max),
        int(word_min), int(word_max), int(cites), int(ins_min), int(ins_max), int(ins_words),
    )


# --- the roles -------------------------------------------------------------------------------------


class NewsroomModel:
    """A `reply` function for FakeOpenAIServer: one realistic JSON answer per request."""

    def __init__(self, mistake_every: int = 0, beat: tuple[str, ...] | None = None) -> None:
        """`beat`: topic names an item must match to be relevant (default: any topic)."""
        self.mistake_every = mistake_every
        self.beat = set(beat) if beat is not None else None
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        role = role_of(body)
        with self._lock:
            self.counts[role] = self.counts.get(role, 0) + 1
        handler = getattr(self, f"_{role}", None)
        if handler is None:
            raise ValueError(f"NewsroomModel cannot tell which role this request is for: {_message(body, 'system')[:120]!r}")
        return json.dumps(handler(body), ensure_ascii=False)

    # classifier ------------------------------------------------------------------

    def _classifier(self, body: dict[str, Any]) -> dict[str, Any]:
        topics = []
        for name, rest in re.findall(r"^- ([a-z0-9_\-]+): (.*)$", _message(body, "system"), re.MULTILINE):
            keywords = re.search(r"\(e\.g\. (.*)\)\s*$", rest)
            topics.append((name, [name.replace("_", " ")] + ([k.strip() for k in keywords.group(1).split(",")] if keywords else [])))
        results = []
        for item_id, block in re.findall(r'<item id="([^"]+)">\n(.*?)\n</item>', _user(body), re.DOTALL):
            block = _unfence(block)
            title = re.search(r"^Title: (.*)$", block, re.MULTILINE)
            text = block.split("Text:\n", 1)[-1]
            lower = block.lower()
            hits = {name: [k for k in words if re.search(rf"\b{re.escape(k.lower())}\b", lower)] for name, words in topics}
            matched = [name for name, found in hits.items() if found]
            crypto = bool(_CRYPTO.search(block))
            if self.beat is None and crypto and not matched and topics:
                matched = [topics[0][0]]  # on a crypto desk, crypto news fits somewhere
            relevant = crypto and bool(matched) and (self.beat is None or bool(self.beat & set(matched)))
            keyword_count = sum(len(found) for found in hits.values())
            first = _sentences(text)[:1]
            results.append({
                "id": item_id,
                "relevant": relevant,
                "topics": matched if relevant else [],
                "newsworthiness": round(min(0.95, 0.35 + 0.1 * keyword_count), 2) if relevant else 0.0,
                "summary": " ".join((first[0] if first else (title.group(1) if title else "")).split()[:30]),
                "entities": list(dict.fromkeys(_NAME.findall(title.group(1) if title else "")))[:10],
                "reason": f"keywords: {', '.join(k for found in hits.values() for k in found)[:80]}" if relevant else "not about crypto",
            })
        return {"results": results}

    # writer ------------------------------------------------------------------------

    def _writer(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _user(body)
        rules, sources = parse_rules(prompt), parse_sources(prompt)
        if not sources:
            raise ValueError("writer prompt has no <source> blocks")
        story = re.search(r"<story>\nTitle: (.*?)\n", prompt)
        article = write_article(rules, sources)
        title = story.group(1) if story else sources[0].title
        if self.mistake_every and int(hashlib.sha256(title.encode()).hexdigest(), 16) % self.mistake_every == 0:
            article = _misstate_a_figure(article)
        return article

    def _reviser(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _user(body)
        article = json.loads(_unfence(re.search(r"<article>\n(.*?)\n</article>", prompt, re.DOTALL).group(1)))
        for statement, evidence in re.findall(r"Statement: (.*?)\n.*?<evidence>\n(.*?)\n</evidence>", prompt, re.DOTALL):
            statement, evidence = _unfence(statement).strip(), _unfence(evidence).strip()
            if evidence.startswith("(no supporting passage"):
                continue
            # The evidence is the judge's quote: the source sentence the statement misstated.
            for part in [{"text": article["headline"]}, *article["body"], *article["insights"]]:
                if statement in part["text"]:
                    part["text"] = part["text"].replace(statement, evidence)
            article["lead"] = article["lead"].replace(statement, evidence)
        return article

    # fact-checking -------------------------------------------------------------------

    def _judge(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _user(body)
        verdicts, corrections = [], []
        for claim_id, claim in re.findall(r'<claim id="([^"]+)">\n(.*?)\n</claim>', prompt, re.DOTALL):
            claim = _unfence(claim).strip()
            best: tuple[float, int, str] | None = None
            pattern = rf'<evidence claim="{re.escape(claim_id)}" source="(\d+)"[^>]*>\n(.*?)\n</evidence>'
            for n, passage in re.findall(pattern, prompt, re.DOTALL):
                for sentence in _sentences(_unfence(passage)):
                    wanted = _terms(claim)
                    score = len(wanted & _terms(sentence)) / max(1, len(wanted))
                    if best is None or score > best[0]:
                        best = (score, int(n), sentence)
            if best is None or best[0] < 0.6:
                verdicts.append({"claim_id": claim_id, "verdict": "unverifiable", "source_n": None, "quote": ""})
                continue
            score, n, sentence = best
            verdict = "supported" if _numbers(claim) <= _numbers(sentence) else "contradicted"
            verdicts.append({"claim_id": claim_id, "verdict": verdict, "source_n": n, "quote": sentence})
            if verdict == "contradicted":
                corrections.append({"claim_id": claim_id, "text": _corrected(claim, sentence)})
        return {"verdicts": verdicts, "corrections": corrections}


def _corrected(claim: str, passage: str) -> str:
    """The claim with its figures replaced, in order, by the passage's: the minimal edit a judge is asked for. When
    the figures do not pair up, the passage itself."""
    wrong, right = re.findall(r"\d+(?:[.,]\d+)*", claim), re.findall(r"\d+(?:[.,]\d+)*", passage)
    if len(wrong) != len(right):
        return passage
    figures = iter(right)
    return re.sub(r"\d+(?:[.,]\d+)*", lambda _m: next(figures), claim)


# --- building an article from sources ------------------------------------------------------------


def _headline(title: str, limit: int) -> str:
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    return title[: limit + 1].rsplit(" ", 1)[0].rstrip(",;:-")


def write_article(rules: Rules, sources: list[Source]) -> dict[str, Any]:
    """A template-valid article from the sources' own sentences, story sources first.

    Thin material gets fewer insights and shorter paragraphs before the body falls
    short of the template's minimum; what still cannot fit is returned as is (the
    gateway's validation then reports it, as it would for a real model).
    """
    article: dict[str, Any] = {}
    middle = (rules.para_min_words + rules.para_max_words) // 2
    for insight_count in dict.fromkeys((min(rules.insights_max, rules.insights_min + 1), rules.insights_min)):
        for paragraph_words in dict.fromkeys((middle, (middle + rules.para_min_words) // 2, rules.para_min_words)):
            article = _compose(rules, sources, insight_count, paragraph_words)
            if len(article["body"]) >= rules.body_min and len(article["insights"]) >= rules.insights_min:
                return article
    return article


def _compose(rules: Rules, sources: list[Source], insight_count: int, paragraph_words: int) -> dict[str, Any]:
    ordered = sorted(sources, key=lambda s: (s.role != "story", s.n))
    pools = {s.n: [x for x in _sentences(s.text) if count_words(x) >= 4 and count_sentences(x) == 1] for s in ordered}
    main = ordered[0]

    # The lead: the main source's first sentences that fit the lead's word limit.
    lead: list[str] = []
    for sentence in list(pools[main.n]):
        if len(lead) >= rules.lead_min:
            break
        if count_words(" ".join([*lead, sentence])) <= rules.lead_words:
            lead.append(sentence)
            pools[main.n].remove(sentence)

    # Insights take short sentences with figures first, so the body does not repeat them.
    insights: list[dict[str, Any]] = []
    for source in ordered * insight_count:
        if len(insights) >= insight_count:
            break
        short = [x for x in pools[source.n] if count_words(x) <= rules.insight_words]
        pick = next((x for x in short if _NUMBER.search(x)), short[0] if short else None)
        if pick is not None:
            pools[source.n].remove(pick)
            insights.append({"text": pick, "citations": [source.n]})

    # Body: round-robin over the sources, each paragraph a run of one source's sentences.
    for n in pools:
        pools[n] = [x for x in pools[n] if count_words(x) <= rules.para_max_words]
    paragraphs: list[dict[str, Any]] = []
    target = min(rules.body_max, rules.body_min + 1)
    while len(paragraphs) < target and any(pools.values()):
        for source in ordered:
            if len(paragraphs) >= target:
                break
            taken: list[str] = []
            while pools[source.n] and count_words(" ".join([*taken, pools[source.n][0]])) <= rules.para_max_words:
                taken.append(pools[source.n].pop(0))
                if count_words(" ".join(taken)) >= paragraph_words:
                    break
            if taken and count_words(" ".join(taken)) >= rules.para_min_words:
                paragraphs.append({"text": " ".join(taken), "citations": [source.n]})

    cited = sorted({n for part in [*paragraphs, *insights] for n in part["citations"]})
    by_n = {s.n: s for s in sources}
    return {
        "headline": _headline(main.title, rules.headline_chars),
        "lead": " ".join(lead),
        "body": paragraphs,
        "insights": insights,
        "sources": [{"n": n, "title": by_n[n].title, "outlet": by_n[n].outlet, "url": by_n[n].url} for n in cited],
    }


def _misstate_a_figure(article: dict[str, Any]) -> dict[str, Any]:
    """The first figure in the body, one higher: the kind of slip a fact-checker must catch."""
    for paragraph in article["body"]:
        match = re.search(r"\b\d+\b", paragraph["text"])
        if match:
            wrong = str(int(match.group(0)) + 1)
            paragraph["text"] = paragraph["text"][: match.start()] + wrong + paragraph["text"][match.end():]
            break
    return article


__all__ = ["NewsroomModel", "Rules", "Source", "parse_rules", "parse_sources", "role_of", "write_article"]
