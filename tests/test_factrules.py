"""Rule-based claim checking (pipeline/text/factrules.py) and its benchmark scripts."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from pipeline.text.factrules import (
    SourceIndex,
    extract_dates,
    extract_numbers,
    numbers_match,
    quote_appears_verbatim,
    verify_offline,
)

ROOT = Path(__file__).resolve().parents[1]

SENATE = (
    "Senator representing Yobe North, Ahmad Lawan, on Tuesday moved a motion for the adjournment "
    "of the first plenary session of the Senate over the deaths of former Speaker Benjamin Nzeribe "
    "and member Funke Adedoyin.\n\n"
    "Lawan raised the motion after the Senate President Bukola Saraki read 16 letters that the "
    "chambers had received while it was on its annual recess.\n\n"
    "The Senate resolved to observe a minute of silence in honour of the departed souls. "
    "The National Assembly resumed from its annual recess on October 9, 2018. "
    "Saraki said the chamber would not sit again until Thursday. "
    "“We owe them a debt of gratitude,” Saraki told reporters."
)
MARKET = (
    "The company reported revenue of 1,200,000 dollars for the quarter. "
    "Its Asian unit was sold for $5 billion in cash. "
    "Sales in Europe grew 12% from a year earlier. "
    "Some 1,187,000 customers signed up, the firm said. "
    "The unions said 15,000 people registered for the rally. "
    "The firm ranked 3rd in the national survey and employs three engineers. "
    "Its chief executive, Maria Gonzalez, didn't comment on the results."
)


def verdict(claim: str, text: str = SENATE):
    return verify_offline(claim, [("src", text)])


def failure_types(claim: str, text: str = SENATE) -> set[str]:
    return {f.type for f in verdict(claim, text).failures}


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("claim", [
    "The company reported revenue of $1.2 million for the quarter.",
    "The company reported revenue of 1.2m dollars for the quarter.",
    "Its Asian unit was sold for $5bn in cash.",
    "Its Asian unit was sold for $5,000,000,000 in cash.",
    "Sales in Europe grew 12 percent from a year earlier.",
    "Sales in Europe grew 12 per cent from a year earlier.",
    "The firm ranked 3rd in the national survey and employs 3 engineers.",
])
def test_equivalent_number_formats_match(claim):
    v = verdict(claim, MARKET)
    assert "number" not in {f.type for f in v.failures}, v.failures
    assert v.verdict == "supported"


@pytest.mark.parametrize("claim, value", [
    ("Its Asian unit was sold for $6 billion in cash.", "$6 billion"),
    ("Sales in Europe grew 21% from a year earlier.", "21%"),
    ("Its Asian unit was sold for €5 billion in cash.", "€5 billion"),
    ("The firm ranked 4th in the national survey and employs three engineers.", "4th"),
])
def test_changed_number_is_caught_and_named(claim, value):
    v = verdict(claim, MARKET)
    assert v.verdict == "contradicted"
    assert any(f.type == "number" and f.value == value for f in v.failures), v.failures


def test_percent_is_not_a_plain_number_and_ordinal_is_not_a_count():
    pct = extract_numbers("grew 12%")[0]
    plain = extract_numbers("12 stores")[0]
    third = extract_numbers("ranked 3rd")[0]
    three = extract_numbers("three engineers")[0]
    assert not numbers_match(pct, plain)
    assert not numbers_match(third, three)
    assert three.value == 3 and third.kind == "ordinal"


def test_approximation_needs_a_marker_or_a_rounded_figure():
    # A scaled, rounded figure is how journalists write 1,187,000.
    assert verdict("About 1.2 million customers signed up, the firm said.", MARKET).verdict == "supported"
    assert verdict("Some 1.2 million customers signed up, the firm said.", MARKET).verdict == "supported"
    # ...but a precise-looking figure gets no slack, marker or not.
    assert "number" in failure_types("Some 1.3 million customers signed up, the firm said.", MARKET)
    assert "number" in failure_types("The unions said more than 15,001 people registered for the rally.", MARKET)
    assert "number" in failure_types("The unions said 16,000 people registered for the rally.", MARKET)
    assert verdict("The unions said more than 15,000 people registered for the rally.", MARKET).verdict == "supported"


HACK = "The exchange said attackers took $48.2 million from its hot wallet. It holds $12 million in reserve."


def test_a_rounded_figure_rounds_at_its_last_written_digit_zeros_included():
    # "$48 million" is $48.2 million as reporters write it; "$50 million" is not, unless hedged.
    assert verdict("Attackers took $48 million from the exchange's hot wallet.", HACK).verdict == "supported"
    assert "number" in failure_types("Attackers took $50 million from the exchange's hot wallet.", HACK)
    assert verdict("Attackers took nearly $50 million from the exchange's hot wallet.", HACK).verdict == "supported"
    assert "number" in failure_types("The exchange holds $10 million in reserve.", HACK)
    [twelve], [source] = extract_numbers("$12.0 million"), extract_numbers("$12 million")
    assert numbers_match(twelve, source)


def test_years_are_dates_not_counts():
    nums = extract_numbers("In 2018 the firm hired 2,018 people.", [(d.start, d.end) for d in extract_dates("In 2018 the firm hired 2,018 people.")])
    assert [q.raw for q in nums] == ["2,018"]


# --------------------------------------------------------------------------- dates


def test_equivalent_date_forms_match():
    for form in ("9 October 2018", "October 9, 2018", "2018-10-09", "Oct. 9, 2018"):
        v = verdict(f"The National Assembly resumed from its annual recess on {form}.")
        assert "date" not in {f.type for f in v.failures}, (form, v.failures)
        assert v.verdict == "supported", form


@pytest.mark.parametrize("claim", [
    "The National Assembly resumed from its annual recess on October 9, 2017.",
    "The National Assembly resumed from its annual recess on November 9, 2018.",
    "The National Assembly resumed from its annual recess on October 12, 2018.",
    "Senator representing Yobe North, Ahmad Lawan, on Wednesday moved a motion for the adjournment.",
])
def test_shifted_dates_are_caught(claim):
    v = verdict(claim)
    assert v.verdict == "contradicted"
    assert any(f.type == "date" for f in v.failures)


def test_may_the_verb_is_not_a_month():
    assert extract_dates("May the committee decide later?") == []
    assert [d.month for d in extract_dates("The vote was held in May.")] == [5]


# --------------------------------------------------------------------------- quotes


def test_curly_and_straight_quotes_match():
    assert verdict('"We owe them a debt of gratitude," Saraki told reporters.').verdict == "supported"
    assert verdict("‘We owe them a debt of gratitude,’ Saraki told reporters.").verdict == "supported"


def test_altered_or_fabricated_quotes_fail():
    v = verdict("“We owe them a great debt of gratitude,” Saraki told reporters.")
    assert v.verdict != "supported"
    assert [f.type for f in v.failures] == ["quote"]
    assert "quote" in failure_types('Lawan said: "This Senate will never forget them."')


def test_quote_appears_verbatim_enforces_the_exact_words():
    source = "He said: “We will not back down , whatever happens.” Then he left."
    assert quote_appears_verbatim('"We will not back down, whatever happens."', source)
    assert quote_appears_verbatim("we will not back   down", source)
    assert quote_appears_verbatim("We will not … whatever happens", source)
    assert not quote_appears_verbatim("We will never back down", source)
    assert not quote_appears_verbatim("will not back down whatever happens today", source)
    assert not quote_appears_verbatim("e will no", source)  # not on word boundaries
    assert not quote_appears_verbatim("", source)


# --------------------------------------------------------------------------- entities


def test_surname_reference_to_a_person_named_in_full_is_fine():
    v = verdict("Lawan moved a motion for the adjournment of the first plenary session of the Senate.")
    assert "entity" not in {f.type for f in v.failures}
    assert verdict("Senate President Bukola Saraki read 16 letters.").failures == []


def test_an_organisation_the_passage_calls_by_its_short_name_is_the_one_the_source_names_in_full():
    """The offline writer gives "Halvane said ..." its full name; the source's passage still says "Halvane"."""
    source = ("Attackers who took $48.2 million from Korvex used a stolen key, according to Halvane Security, the firm "
              "investigating the breach. Korvex's wallets needed two of three keys. Halvane said the attacker had one "
              "of those keys and tricked the withdrawal system into a second approval. Withdrawals stay paused.")
    index = SourceIndex.build([("1", source)], window_size=2)
    full = "Halvane Security said the attacker had one of those keys and tricked the withdrawal system into a second approval."
    assert verify_offline(full, index).verdict == "supported"
    # Another organisation with the same first word is not the one the source names.
    other = verify_offline(full.replace("Halvane Security", "Halvane Capital"), index)
    assert other.verdict != "supported" and "Halvane Capital" in " ".join(f.value or "" for f in other.failures) + " ".join(other.unsupported_terms)


def test_an_acronym_is_the_name_the_passage_writes_out():
    """Headlines abbreviate: "FDMC rejects a spot ETF …" is what "The Federal Digital Markets Commission … rejected a
    spot exchange-traded fund …" says. An acronym the passage does not spell out is still a name no source has."""
    source = ("The Federal Digital Markets Commission on Wednesday rejected a spot exchange-traded fund holding the "
              "Pyra token, turning down an application from Ostrander Funds in a 3-2 vote.")
    index = SourceIndex.build([("1", source)], window_size=4)
    claim = "FDMC rejects a spot ETF holding the Pyra token, turning down an application in 3-2 vote"
    assert verify_offline(claim, index).verdict == "supported"
    assert verify_offline(claim.replace("FDMC", "SEC"), index).verdict != "supported"


def test_unknown_name_fails():
    v = verdict("Lawan raised the motion after Senator Dino Melaye read 16 letters.")
    assert any(f.type == "entity" and "Dino Melaye" in f.value for f in v.failures)
    assert v.verdict != "supported"


def test_name_swapped_with_another_from_the_same_source_is_a_contradiction():
    v = verdict(
        "Nzeribe raised the motion after the Senate President Bukola Saraki read 16 letters that the "
        "chambers had received while it was on its annual recess."
    )
    assert v.verdict == "contradicted"
    assert any(f.type == "entity" and f.value == "Nzeribe" for f in v.failures)


def test_acronym_swap_is_caught():
    text = "A hunter who ate a wild rabbit in China has caught the plague, the WHO said."
    assert verdict("A hunter who ate a wild rabbit in WHO has caught the plague, the WHO said.", text).verdict == "contradicted"


# --------------------------------------------------------------------------- negation


def test_added_negation_is_a_contradiction():
    v = verdict("The Senate resolved not to observe a minute of silence in honour of the departed souls.")
    assert v.verdict == "contradicted"
    assert [f.type for f in v.failures] == ["negation"]


def test_removed_negation_is_a_contradiction():
    assert verdict("Saraki said the chamber would sit again until Thursday.").verdict == "contradicted"
    assert verdict("Its chief executive, Maria Gonzalez, did comment on the results.", MARKET).verdict == "contradicted"


def test_same_polarity_written_differently_is_not_a_negation():
    v = verdict("Its chief executive, Maria Gonzalez, did not comment on the results.", MARKET)
    assert v.verdict == "supported", v.failures


# --------------------------------------------------------------------------- verdicts


def test_verbatim_sentence_is_supported_with_verbatim_evidence():
    claim = "The Senate resolved to observe a minute of silence in honour of the departed souls."
    v = verify_offline(claim, [("other", MARKET), ("senate", SENATE)])
    assert v.verdict == "supported"
    assert v.source_id == "senate"
    assert v.evidence == claim
    assert SENATE[v.evidence_start:v.evidence_end] == v.evidence


def test_trimmed_sentence_is_supported():
    v = verdict("The chamber would not sit again until Thursday.")
    assert v.verdict == "supported", (v.failures, v.unsupported_terms)


def test_unsupported_addition_is_not_supported():
    v = verdict(
        "The Senate resolved to observe a minute of silence in honour of the departed souls, "
        "a move critics called a waste of public money."
    )
    assert v.verdict == "unverifiable"
    assert v.failures == []
    assert {"critics", "waste", "money"} <= set(v.unsupported_terms)


def test_addition_borrowing_a_name_from_elsewhere_in_the_source_is_not_supported():
    v = verdict(
        "The Senate resolved to observe a minute of silence in honour of the departed souls, "
        "with backing from Bukola Saraki."
    )
    assert v.verdict != "supported"
    assert "Bukola Saraki" in v.unsupported_terms


def test_claim_about_something_else_is_unverifiable():
    v = verdict("The central bank raised interest rates by 50 basis points.")
    assert v.verdict == "unverifiable"
    assert "number" in {f.type for f in v.failures}


def test_semantic_scorer_can_steer_retrieval():
    sources = [("a", "The ministry said exports fell in spring."), ("b", "The ministry said exports fell in spring.")]
    picked = verify_offline(
        "The ministry said exports fell in spring.", sources,
        semantic_scorer=lambda claim, texts: [0.0] * (len(texts) - 1) + [1.0],
    )
    assert picked.source_id == "b"
    with pytest.raises(ValueError, match="scores for"):
        verify_offline("The ministry said exports fell.", sources, semantic_scorer=lambda c, t: [1.0])


def test_index_is_reusable_and_bad_input_is_named():
    index = SourceIndex.build([("s", SENATE)])
    assert verify_offline("Saraki told reporters.", index).source_id == "s"
    with pytest.raises(ValueError, match="source #0"):
        verify_offline("A claim.", [42])
    with pytest.raises(ValueError, match="claim is empty"):
        verify_offline("   ", index)
    assert verify_offline("A claim about nothing.", []).verdict == "unverifiable"


# --------------------------------------------------------------------------- benchmark scripts


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_builds_labelled_cases_and_scores_them(tmp_path, capsys):
    build, run = _load("factcheck_build"), _load("factcheck")
    data = tmp_path / "data"
    data.mkdir()
    body = " ".join([SENATE, MARKET, "The Senate was not in session on Monday, officials said."])
    truth = {f"key{i}": {"articleBody": body, "url": f"https://example.org/{i}"} for i in range(4)}
    (data / "ground-truth.json").write_text(json.dumps(truth))
    cases_path = tmp_path / "cases.jsonl"
    assert build.main(["--data", str(data), "--out", str(cases_path)]) == 0
    cases = [json.loads(line) for line in cases_path.read_text().splitlines()]
    assert {c["split"] for c in cases} == {"dev", "heldout"}
    assert {c["label"] for c in cases} == {"supported", "contradicted", "unverifiable"}
    for c in cases:
        assert (c["error_type"] is None) == (c["label"] == "supported")
        if c["error_type"]:
            assert c["claim"] not in c["sources"][0]["text"]

    out = tmp_path / "verdicts.jsonl"
    capsys.readouterr()
    assert run.main(["--cases", str(cases_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("heldout: min-recall ")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [c["id"] for c in cases]
    assert set(rows[0]) == {"id", "verdict", "source_id", "evidence"}


def test_benchmark_with_model_explains_what_is_missing(tmp_path, monkeypatch):
    run = _load("factcheck")
    cases = tmp_path / "c.jsonl"
    cases.write_text(json.dumps({"id": "1", "claim": "x", "sources": [{"id": "s", "text": "x"}]}) + "\n")
    monkeypatch.setitem(sys.modules, "pipeline.services.llm", None)  # import fails as if the gateway were absent
    with pytest.raises(SystemExit, match="needs the LLM gateway"):
        run.main(["--cases", str(cases), "--out", str(tmp_path / "o.jsonl"), "--with-model"])


def test_benchmark_injects_paraphrase_errors_with_faithful_twins():
    import random

    build = _load("factcheck_build")
    rng = random.Random(3)
    for _ in range(10):
        wrong = build.reverse_direction("Sales in Europe rose 8% in May, the company said.", rng)
        assert wrong and re.search(r"\b(?:fell|declined|dropped)\b", wrong) and "rose" not in wrong
        same = build.reverse_direction("Sales in Europe rose 8% in May, the company said.", rng, faithful=True)
        assert same and re.search(r"\b(?:climbed|increased|advanced)\b", same)
        wrong = build.change_order("The deal closed before the holiday, the company said.", rng)
        assert wrong and "after the holiday" in wrong
        wrong = build.swap_roles("Halvorsen Group acquired Brightwater Labs in March.", rng)
        assert wrong in ("Brightwater Labs acquired Halvorsen Group in March.",
                         "Halvorsen Group was acquired by Brightwater Labs in March.")
        assert build.swap_roles("Halvorsen Group acquired Brightwater Labs in March.", rng, faithful=True) == \
            "Brightwater Labs was acquired by Halvorsen Group in March."
        wrong = build.change_scale("The company paid $40 million for the plant.", rng)
        assert wrong and re.search(r"[$€£]40 (?:billion|thousand|million)", wrong) and wrong != "The company paid $40 million for the plant."
    # Words inside a quotation are never changed, even one opened in an earlier sentence.
    assert build.reverse_direction("“Prices rose,” she said.", rng) is None
    assert build.reverse_direction("prices rose and kept rising,” she said.", rng) is None
    # A capitalised word before another capital is a name, not a direction.
    assert build.reverse_direction("Fallen Order borrows from Souls.", rng) is None


def test_benchmark_reports_paraphrase_types_and_faithful_variants(capsys):
    run = _load("factcheck")
    source = {"id": "s", "text": "Sales rose 8% in May. Halvorsen Group acquired Brightwater Labs in March."}
    cases = [
        {"id": "1", "claim": "Sales fell 8% in May.", "sources": [source], "label": "contradicted", "error_type": "direction",
         "split": "heldout", "variant": "paraphrase"},
        {"id": "2", "claim": "Sales climbed 8% in May.", "sources": [source], "label": "supported", "error_type": None,
         "split": "heldout", "variant": "direction-faithful"},
        {"id": "3", "claim": "Brightwater Labs acquired Halvorsen Group in March.", "sources": [source],
         "label": "contradicted", "error_type": "role", "split": "heldout", "variant": "paraphrase"},
        {"id": "4", "claim": "Sales rose 8% in May.", "sources": [source], "label": "supported", "error_type": None, "split": "heldout"},
    ]
    verdicts, _ = run.rules_verdicts(cases)
    report = run.score(cases, verdicts)["heldout"]
    assert report["recall"] == {"direction": 1.0, "role": 1.0}
    assert report["labelled"] == {"direction": 1, "role": 1}
    assert report["faithful_variants"] == {"direction-faithful": (0, 1), "original": (0, 1)}
    run.print_report({"heldout": report}, "heldout", 1.0, len(cases))
    out = capsys.readouterr().out
    assert "recall direction 1.000  (1/1, 1 given their label)" in out
    assert "direction-faithful  0.000  (0/1)" in out
    assert out.strip().splitlines()[-1] == "heldout: min-recall 1.00 false-alarms 0.00"
