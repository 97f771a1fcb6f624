"""What a claim says against what its evidence says (issue 15): direction, order and time, roles, magnitude.

Each error type has cases that must come out `contradicted` with a reason an editor can read, and faithful
paraphrases that must not be flagged. The sentences are written for these tests, not taken from the benchmark.
"""

from __future__ import annotations

import pytest

from pipeline.text.factrules import extract_numbers, numbers_match, verify_offline

MARKETS = (
    "Shares of Norvik Energy rose 5% on Tuesday after the company reported a quarterly profit of $1.2 million. "
    "Revenue in Asia fell 3% while sales in Europe climbed 8%. "
    "The board approved the merger plan, and regulators did not block it. "
    "Norvik's results beat analysts' forecasts for the third quarter. "
    "Unemployment in the region rose by 0.5 percentage points to 4.1%. "
    "The central bank raised its main rate by 50 basis points. "
    "The company paid €40 million for the Dunmore plant. "
    "The outage at the Dunmore plant lasted 40 minutes. "
    "The regulator did not approve the listing of Corvane shares."
)
DEALS = (
    "Halvorsen Group acquired Brightwater Labs in March for $300 million. "
    "Tessaro sued Ardent Bank over the failed loan. "
    "Maria Gonzalez, Norvik's chief executive, said the deal closed before the holiday. "
    "The vote on the plan took place last year, a week after the hearing. "
    "Kim Yerin finished first in the 400 metres at the national championships. "
    "The former chairman, Peter Lind, joined the board of Ostra in 2019."
)


def check(claim: str, text: str = MARKETS):
    return verify_offline(claim, [("src", text)])


def reasons(claim: str, text: str = MARKETS) -> str:
    return " | ".join(f.detail for f in check(claim, text).failures)


def assert_contradicted(claim: str, text: str, *words: str) -> None:
    v = check(claim, text)
    assert v.verdict == "contradicted", (claim, v.failures)
    said = " ".join(f.detail for f in v.failures)
    for w in words:
        assert w in said, (w, said)


def assert_not_flagged(claim: str, text: str) -> None:
    v = check(claim, text)
    assert v.verdict == "supported", (claim, v.verdict, v.failures, v.unsupported_terms)


# --------------------------------------------------------------------------- direction


@pytest.mark.parametrize("claim, source_words, draft_word", [
    ("Shares of Norvik Energy fell 5% on Tuesday after the company reported a quarterly profit of $1.2 million.", ["rose"], "fell"),
    ("Shares of Norvik Energy slid 5% on Tuesday after the company posted a quarterly profit of $1.2 million.", ["rose"], "slid"),
    ("Revenue in Asia rose 3% while sales in Europe climbed 8%.", ["fell"], "rose"),
    ("Norvik's results missed analysts' forecasts for the third quarter.", ["beat"], "missed"),
    ("The board rejected the merger plan, and regulators did not block it.", ["approved"], "rejected"),
    # both "approved" and "did not block" say yes where the claim says no
    ("Regulators blocked the merger plan.", ["did not block", "approved"], "blocked"),
    ("The regulator approved the listing of Corvane shares.", ["did not approve"], "approved"),
])
def test_reversed_direction_is_contradicted_with_both_words(claim, source_words, draft_word):
    v = check(claim)
    assert v.verdict == "contradicted", v.failures
    detail = next(f.detail for f in v.failures if draft_word in f.detail)
    assert f"draft says “{draft_word}”" in detail and any(f"says “{w}”" in detail for w in source_words), detail


def test_the_pair_is_found_by_what_it_is_about():
    # Asia fell and Europe climbed: each claim word is compared with the one about the same thing.
    assert_not_flagged("Sales in Europe rose 8%, while revenue in Asia dropped 3%.", MARKETS)
    assert_contradicted("Sales in Europe fell 8%.", MARKETS, "climbed", "fell")


@pytest.mark.parametrize("claim", [
    "Shares of Norvik Energy climbed 5% on Tuesday after the company reported a quarterly profit of $1.2 million.",
    "Shares of Norvik Energy increased 5% on Tuesday after the company reported a quarterly profit of $1.2 million.",
    "Norvik's results topped analysts' forecasts for the third quarter.",
    "Regulators did not block the merger plan the board approved.",
    "Revenue in Asia declined 3% while sales in Europe climbed 8%.",
])
def test_same_direction_in_other_words_is_not_flagged(claim):
    assert_not_flagged(claim, MARKETS)


def test_negation_scope_turns_a_word_around():
    # "did not approve" says no, like "rejected": whatever else the claim gets, it is not a reversal.
    v = check("The regulator rejected the listing of Corvane shares.")
    assert v.verdict != "contradicted" or not any("reversed" in f.detail for f in v.failures), v.failures
    # "did not rise" where the source says "fell" is no added negation either.
    v = check("Revenue in Asia did not rise, and sales in Europe climbed 8%.")
    assert not any(f.type == "negation" for f in v.failures), v.failures


# --------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("claim, words", [
    ("Shares of Norvik Energy rose 5% on Tuesday after the company reported a quarterly profit of $1.2 billion.",
     ["$1.2 million", "$1.2 billion", "1,000 times larger"]),
    ("Unemployment in the region rose by 0.5% to 4.1%.", ["0.5 percentage points", "percentage points"]),
    ("The company paid $40 million for the Dunmore plant.", ["€40 million", "$40 million", "currency"]),
    ("The outage at the Dunmore plant lasted 40 hours.", ["40 minutes", "40 hours", "unit"]),
])
def test_scale_unit_currency_and_points_are_contradicted(claim, words):
    assert_contradicted(claim, MARKETS, *words)


@pytest.mark.parametrize("claim", [
    "Shares of Norvik Energy rose 5% on Tuesday after the company reported a quarterly profit of $1,200,000.",
    "Shares of Norvik Energy rose 5 percent on Tuesday after the company reported a quarterly profit of $1.2m.",
    "The central bank raised its main rate by 0.5 percentage points.",
    "The company paid 40 million euros for the Dunmore plant.",
    "The outage at the Dunmore plant lasted 40 mins.",
])
def test_same_figure_written_otherwise_is_not_flagged(claim):
    assert_not_flagged(claim, MARKETS)


def test_figures_carry_points_and_units():
    bp, pp, pct = (extract_numbers(t)[0] for t in ("raised by 50 basis points", "by 0.5 percentage points", "by 0.5%"))
    assert (bp.kind, bp.value) == ("points", 0.5) and numbers_match(pp, bp) and not numbers_match(pct, pp)
    minutes, hours, year, months = (extract_numbers(t)[0] for t in ("40 minutes", "40 hours", "1 year", "12 months"))
    assert minutes.measure == "minutes" and not numbers_match(hours, minutes)
    assert numbers_match(months, year)   # the same span of time in another unit


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize("claim", [
    "Brightwater Labs acquired Halvorsen Group in March for $300 million.",
    "Halvorsen Group was acquired by Brightwater Labs in March for $300 million.",
    "Halvorsen Group was bought by Brightwater Labs in March for $300 million.",
])
def test_who_did_what_to_whom_reversed_is_contradicted(claim):
    assert_contradicted(claim, DEALS, "Halvorsen Group acquired Brightwater Labs", "reversed")


def test_a_lawsuit_the_other_way_round_is_contradicted():
    assert_contradicted("Ardent Bank sued Tessaro over the failed loan.", DEALS, "Tessaro sued Ardent Bank")


@pytest.mark.parametrize("claim", [
    "Brightwater Labs was acquired by Halvorsen Group in March for $300 million.",
    "Brightwater Labs was bought by Halvorsen Group in March for $300 million.",
    "In March Halvorsen Group acquired Brightwater Labs for $300 million.",
    "Ardent Bank was sued by Tessaro over the failed loan.",
])
def test_same_roles_in_other_words_are_not_flagged(claim):
    v = check(claim, DEALS)
    assert v.verdict != "contradicted", v.failures


def test_a_changed_title_is_contradicted_and_the_same_title_is_not():
    assert_contradicted("Maria Gonzalez, Norvik's chief financial officer, said the deal closed before the holiday.",
                        DEALS, "chief executive", "chief financial officer")
    assert_not_flagged("Norvik CEO Maria Gonzalez said the deal closed before the holiday.", DEALS)
    assert_contradicted("The incoming chairman, Peter Lind, joined the board of Ostra in 2019.", DEALS, "former", "incoming")


# --------------------------------------------------------------------------- order and time


@pytest.mark.parametrize("claim, words", [
    ("Maria Gonzalez, Norvik's chief executive, said the deal closed after the holiday.", ["“before”", "“after”"]),
    ("The vote on the plan took place next year, a week after the hearing.", ["last", "next"]),
    ("The vote on the plan took place last year, a week before the hearing.", ["“after”", "“before”"]),
    ("Kim Yerin finished second in the 400 metres at the national championships.", ["first", "second"]),
])
def test_changed_order_or_time_is_contradicted(claim, words):
    assert_contradicted(claim, DEALS, *words)


@pytest.mark.parametrize("claim", [
    "Maria Gonzalez, Norvik's chief executive, said the deal closed prior to the holiday.",
    "The vote on the plan was held last year, a week after the hearing.",
    "Kim Yerin won the 400 metres at the national championships, finishing first.",
])
def test_same_order_in_other_words_is_not_flagged(claim):
    v = check(claim, DEALS)
    assert v.verdict != "contradicted", v.failures


# --------------------------------------------------------------------------- the two sides swapped


@pytest.mark.parametrize("source, claim", [
    ("Arcadia beat Vessel 3-1 in the final on Sunday.", "Vessel lost 3-1 to Arcadia in the final on Sunday."),
    ("The stock lost 10% before rebounding on Friday.", "The stock rebounded on Friday after losing 10%."),
    ("The vote came two days after the hearing ended.", "The hearing ended two days before the vote."),
    ("Exports to China were higher than imports from China in 2023.",
     "Imports from China were lower than exports to China in 2023."),
    # "before" is the claim's own word; the source's "later" is the claim's "later"
    ("Bitcoin fell 3% on Monday but recovered later in the week.",
     "Bitcoin dropped 3% on Monday before recovering later in the week."),
])
def test_opposite_word_with_the_sides_swapped_says_the_same(source, claim):
    v = verify_offline(claim, [("src", source)])
    assert v.verdict != "contradicted", v.failures


@pytest.mark.parametrize("source, claim, words", [
    ("Arcadia beat Vessel 3-1 in the final on Sunday.", "Arcadia lost 3-1 to Vessel in the final on Sunday.", ["beat", "lost"]),
    ("The vote came two days after the hearing ended.", "The vote came two days before the hearing ended.", ["after", "before"]),
])
def test_opposite_word_with_the_sides_in_place_is_contradicted(source, claim, words):
    v = verify_offline(claim, [("src", source)])
    assert v.verdict == "contradicted", v.failures
    assert all(w in " ".join(f.detail for f in v.failures) for w in words)
