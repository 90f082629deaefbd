"""Hand-computed tests for uqa.evaluation.squad and .urdu (official SQuAD v2.0 semantics + Urdu normalizer).

Every expected value below was worked out by hand (the arithmetic is in the comments); none is
produced by the code under test. F1 literals with 4 decimals are compared with abs=1e-4. At the end, a
differential test against an independent transcription of the official evaluate-v2.0.py on
thousands of random English/Urdu/punctuation cases (and real UQA answers when ../shared has them).
"""

from __future__ import annotations

import pytest
from conftest import UQA_DIR, needs_shared

from uqa.evaluation.squad import (
    NORMALIZERS,
    apply_margin_threshold,
    best_margin_threshold,
    compute_exact,
    compute_f1,
    find_best_thresh,
    get_tokens,
    normalize_official,
    question_scores,
    squad_v2_evaluate,
)
from uqa.evaluation.urdu import normalize_urdu

OFF = normalize_official
URDU = normalize_urdu


def approx(x):
    return pytest.approx(x, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# normalize_official (exactly evaluate-v2.0.py normalize_answer)
# ----------------------------------------------------------------------------------------------

OFFICIAL_NORM_CASES = [
    ("The Cat!", "cat"),  # lower, punctuation, article
    ("theory of everything", "theory of everything"),  # 'the' inside 'theory' kept (\b)
    ("  hello \t world\n", "hello world"),  # whitespace collapse
    ("a-b", "ab"),  # punctuation removed BEFORE articles: 'a-b' -> 'ab', not 'b'
    ("a.the", "athe"),  # same ordering effect
    ("An apple, the pear.", "apple pear"),
    ("$5.00 (approx.)", "500 approx"),  # all of string.punctuation incl. S* symbols $ ( )
    ("a the an", ""),  # only articles -> empty
    ("THE Answer", "answer"),  # case
    ("لاہور۔", "لاہور۔"),  # ۔ (U+06D4) is not ASCII punctuation
    ("the لاہور", "لاہور"),  # article before Urdu word is removed
    ("theلاہور", "theلاہور"),  # Urdu letters are \w: no word boundary, nothing removed
]


@pytest.mark.parametrize("text,expected", OFFICIAL_NORM_CASES)
def test_normalize_official(text, expected):
    assert normalize_official(text) == expected


# ----------------------------------------------------------------------------------------------
# normalize_urdu
# ----------------------------------------------------------------------------------------------

URDU_NORM_CASES = [
    ("\u0644\u0627\u06c1\u0648\u0631\u06d4", "\u0644\u0627\u06c1\u0648\u0631"),  # لاہور۔ -> لاہور
    ("\u0639\u0644\u064a", "\u0639\u0644\u06cc"),  # علي (Arabic yeh) -> علی
    ("\u0645\u0635\u0637\u0641\u0649", "\u0645\u0635\u0637\u0641\u06cc"),  # مصطفى (alef maksura) -> مصطفی
    ("\u0643\u062a\u0627\u0628", "\u06a9\u062a\u0627\u0628"),  # كتاب (Arabic kaf) -> کتاب
    ("\u0634\u0647\u0631", "\u0634\u06c1\u0631"),  # شهر (Arabic heh) -> شہر
    ("\u0644\u0627\u0640\u06c1\u0648\u0631", "\u0644\u0627\u06c1\u0648\u0631"),  # tatweel removed
    ("\u06a9\u064e\u062a\u0627\u0628", "\u06a9\u062a\u0627\u0628"),  # fatha U+064E removed
    ("\u0645\u0648\u0633\u06cc\u0670", "\u0645\u0648\u0633\u06cc"),  # موسیٰ: superscript alef removed
    ("\u06c1\u0645\u200c\u0648\u0637\u0646", "\u06c1\u0645\u0648\u0637\u0646"),  # ZWNJ removed
    ("\u200f\u0644\u0627\u06c1\u0648\u0631\u200f", "\u0644\u0627\u06c1\u0648\u0631"),  # RLM removed
    ("\u202b\u0644\u0627\u06c1\u0648\u0631\u202c", "\u0644\u0627\u06c1\u0648\u0631"),  # RLE ... PDF
    ("\u2067\u0644\u0627\u06c1\u0648\u0631\u2069", "\u0644\u0627\u06c1\u0648\u0631"),  # RLI ... PDI
    # «کیا؟» ہاں، ٹھیک؛  -> کیا ہاں ٹھیک   (« » ؟ ، ؛ all P*)
    (
        "\u00ab\u06a9\u06cc\u0627\u061f\u00bb \u06c1\u0627\u06ba\u060c \u0679\u06be\u06cc\u06a9\u061b",
        "\u06a9\u06cc\u0627 \u06c1\u0627\u06ba \u0679\u06be\u06cc\u06a9",
    ),
    ("\u0663", "3"),  # Arabic-Indic three
    ("\u06f3", "3"),  # Extended Arabic-Indic three
    ("\u0633\u0646 \u06f1\u06f9\u06f4\u06f7\u0621", "\u0633\u0646 1947\u0621"),  # سن ۱۹۴۷ء -> سن 1947ء
    ("\u0627\u0653", "\u0622"),  # NFC: alef + madda -> آ
    ("\u0627\u200c\u0653", "\u0622"),  # ZWNJ between base and mark: removed, then NFC composes
    ("\u0647\u0654", "\u06c2"),  # heh+hamza -> heh goal+hamza -> NFC ۂ
    ("CPU \u06a9\u06cc", "cpu \u06a9\u06cc"),  # Latin inside Urdu lower-cased
    ("The Lahore Fort", "the lahore fort"),  # English articles NOT removed
    ("$5 + 3 = 8!", "$5 + 3 = 8"),  # S* symbols kept ($ + =), P* removed (!)
    ("a-b_c", "abc"),  # ASCII P* (Pd, Pc) removed, not replaced by space
    (
        "  \u0644\u0627\u06c1\u0648\u0631 \n  \u0634\u06c1\u0631  ",
        "\u0644\u0627\u06c1\u0648\u0631 \u0634\u06c1\u0631",
    ),
    ("x\U00010100y", "xy"),  # astral P* char (AEGEAN WORD SEPARATOR LINE, Po)
    ("\ufeff\u0644\u0627\u06c1\u0648\u0631\u061c", "\u0644\u0627\u06c1\u0648\u0631"),  # BOM, ALM removed
    ("", ""),
]


@pytest.mark.parametrize("text,expected", URDU_NORM_CASES)
def test_normalize_urdu(text, expected):
    assert normalize_urdu(text) == expected


def test_normalizers_registry():
    assert NORMALIZERS == {"official": normalize_official, "urdu": normalize_urdu}


@pytest.mark.parametrize(
    "text,norm,expected",
    [
        ("", OFF, []),
        ("The  cat sat.", OFF, ["cat", "sat"]),
        ("the", OFF, []),  # non-empty raw text that normalizes to nothing
        (
            "\u0644\u0627\u06c1\u0648\u0631\u060c \u067e\u0627\u06a9\u0633\u062a\u0627\u0646\u06d4",
            URDU,
            ["\u0644\u0627\u06c1\u0648\u0631", "\u067e\u0627\u06a9\u0633\u062a\u0627\u0646"],
        ),
    ],
)
def test_get_tokens(text, norm, expected):
    assert get_tokens(text, norm) == expected


# ----------------------------------------------------------------------------------------------
# compute_exact / compute_f1   (reference, prediction, normalizer, EM, F1)
# ----------------------------------------------------------------------------------------------

LAHORE = "\u0644\u0627\u06c1\u0648\u0631"  # لاہور
ISLAMABAD = "\u0627\u0633\u0644\u0627\u0645 \u0622\u0628\u0627\u062f"  # اسلام آباد
ALLAMA_IQBAL = "\u0639\u0644\u0627\u0645\u06c1 \u0645\u062d\u0645\u062f \u0627\u0642\u0628\u0627\u0644"  # علامہ محمد اقبال
IQBAL_POET = "\u0645\u062d\u0645\u062f \u0627\u0642\u0628\u0627\u0644\u060c \u0634\u0627\u0639\u0631"  # محمد اقبال، شاعر
SAL = "\u0633\u0627\u0644"  # سال

PAIR_CASES = [
    ("The Cat", "cat", OFF, 1, 1.0),
    ("Hello, world!", "hello world", OFF, 1, 1.0),
    ("PARIS", "paris", OFF, 1, 1.0),
    ("  new\tyork \n", "new york", OFF, 1, 1.0),
    ("theory", "ory", OFF, 0, 0.0),  # 'theory' keeps its 'the'
    # Counter overlap: ref {q:2,r:1}, pred {p:1,q:2} -> common 2; P=2/3 R=2/3 F1=2/3
    ("q q r", "p q q", OFF, 0, 0.6667),
    # ref {q:1,r:1}, pred {q:3} -> common 1; P=1/3 R=1/2 F1=2*(1/6)/(5/6)=0.4
    ("q r", "q q q", OFF, 0, 0.4),
    ("red apple", "green pear", OFF, 0, 0.0),  # no common tokens
    ("Paris", "", OFF, 0, 0.0),  # empty prediction vs answer
    ("", "", OFF, 1, 1.0),  # empty vs empty
    ("", "Paris", OFF, 0, 0.0),  # answer vs no-answer
    ("the", "", OFF, 1, 1.0),  # ref normalizes to empty: both token lists empty
    ("the", "an", OFF, 1, 1.0),
    ("the", "paris", OFF, 0, 0.0),
    ("Barack Obama", "Obama", OFF, 0, 0.6667),  # P=1 R=1/2 -> 2/3
    # common {four,five}=2; P=2/3 R=2/5 -> 2*(4/15)/(16/15)=0.5
    ("one two three four five", "four five six", OFF, 0, 0.5),
    (LAHORE + "\u06d4", LAHORE, OFF, 0, 0.0),  # لاہور۔ vs لاہور: ۔ not ASCII punctuation
    (LAHORE + "\u06d4", LAHORE, URDU, 1, 1.0),
    # official: [اسلام, آباد۔] vs [اسلام, آباد] -> common 1, P=R=1/2 -> 0.5
    (ISLAMABAD + "\u06d4", ISLAMABAD, OFF, 0, 0.5),
    (ISLAMABAD + "\u06d4", ISLAMABAD, URDU, 1, 1.0),
    # urdu: [علامہ, محمد, اقبال] vs [محمد, اقبال, شاعر] -> common 2, P=R=2/3 -> 0.6667
    (ALLAMA_IQBAL, IQBAL_POET, URDU, 0, 0.6667),
    # official: 'اقبال،' keeps the comma -> common 1, P=R=1/3 -> 0.3333
    (ALLAMA_IQBAL, IQBAL_POET, OFF, 0, 0.3333),
    ("\u0639\u0644\u06cc", "\u0639\u0644\u064a", OFF, 0, 0.0),  # علی vs علي
    ("\u0639\u0644\u06cc", "\u0639\u0644\u064a", URDU, 1, 1.0),
    ("\u06a9\u062a\u0627\u0628", "\u0643\u062a\u0627\u0628", URDU, 1, 1.0),  # کتاب vs كتاب
    ("\u0634\u06c1\u0631", "\u0634\u0647\u0631", URDU, 1, 1.0),  # شہر vs شهر
    ("\u0645\u0635\u0637\u0641\u06cc", "\u0645\u0635\u0637\u0641\u0649", URDU, 1, 1.0),  # مصطفی vs مصطفى
    (SAL + " 1947", SAL + " \u06f1\u06f9\u06f4\u06f7", URDU, 1, 1.0),  # سال 1947 vs سال ۱۹۴۷
    (SAL + " 1947", SAL + " \u06f1\u06f9\u06f4\u06f7", OFF, 0, 0.5),  # only سال shared: P=R=1/2
    # urdu keeps 'the': [the, lahore, fort] vs [lahore, fort] -> P=1 R=2/3 -> 0.8
    ("the Lahore Fort", "Lahore Fort", URDU, 0, 0.8),
    ("the Lahore Fort", "Lahore Fort", OFF, 1, 1.0),
    ("$5", "5", URDU, 0, 0.0),  # $ is Sc: kept by the Urdu normalizer
    ("$5", "5", OFF, 1, 1.0),
    ("\u06d4", "", URDU, 1, 1.0),  # '۔' normalizes to empty under Urdu
    ("\u06d4", "", OFF, 0, 0.0),
]


@pytest.mark.parametrize("ref,pred,norm,em,f1", PAIR_CASES)
def test_exact_and_f1(ref, pred, norm, em, f1):
    assert compute_exact(ref, pred, norm) == em
    assert compute_f1(ref, pred, norm) == approx(f1)


def test_default_normalizer_is_official():
    assert compute_exact(LAHORE + "\u06d4", LAHORE) == 0
    assert compute_f1("Barack Obama", "Obama") == approx(0.6667)


# ----------------------------------------------------------------------------------------------
# question_scores   (prediction, references, normalizer, EM, F1)
# ----------------------------------------------------------------------------------------------

QUESTION_CASES = [
    ("Paris", ["Paris", "City of Paris"], OFF, 1, 1.0),
    # vs 'paris' 0; vs [city, of, paris]: P=1 R=1/3 -> 0.5; max 0.5
    ("city", ["Paris", "City of Paris"], OFF, 0, 0.5),
    # vs [barack, obama] P=R=1/2 -> 0.5; vs [obama] P=1/2 R=1 -> 2/3; max 0.6667
    ("President Obama", ["Barack Obama", "Obama"], OFF, 0, 0.6667),
    ("", [], OFF, 1, 1.0),  # unanswerable as []
    ("", [""], OFF, 1, 1.0),  # unanswerable as ['']
    ("London", [], OFF, 0, 0.0),
    ("London", [""], OFF, 0, 0.0),
    ("", ["Paris"], OFF, 0, 0.0),  # empty prediction on answerable question
    ("", ["the", "a"], OFF, 1, 1.0),  # all references normalize to empty -> gold ['']
    ("foo", ["the", "a"], OFF, 0, 0.0),
    ("", ["The", "Paris"], OFF, 0, 0.0),  # 'The' filtered out, only 'Paris' is gold
    ("the", ["The", "Paris"], OFF, 0, 0.0),
    ("\u06f3", ["3", "\u062a\u06cc\u0646"], URDU, 1, 1.0),  # ۳ vs [3, تین]
    ("\u06f3", ["3", "\u062a\u06cc\u0646"], OFF, 0, 0.0),
    ("", ["\u06d4"], URDU, 1, 1.0),  # ['۔'] is empty after Urdu normalization
    ("", ["\u06d4"], OFF, 0, 0.0),
]


@pytest.mark.parametrize("pred,refs,norm,em,f1", QUESTION_CASES)
def test_question_scores(pred, refs, norm, em, f1):
    got_em, got_f1 = question_scores(pred, refs, norm)
    assert got_em == em
    assert got_f1 == approx(f1)


def test_question_scores_rejects_bare_string():
    with pytest.raises(TypeError):
        question_scores("Paris", "Paris")


def test_normalizer_by_name():
    assert question_scores(LAHORE, [LAHORE + "\u06d4"], "urdu") == (1, 1.0)
    with pytest.raises(ValueError, match="unknown normalizer"):
        compute_exact("a", "a", "klingon")


# ----------------------------------------------------------------------------------------------
# squad_v2_evaluate
# ----------------------------------------------------------------------------------------------

# Set A:   q1 has ['Paris'] pred 'paris'                 EM 1  F1 1
#          q2 has ['Barack Obama','Obama'] pred 'President Obama'  EM 0  F1 2/3
#          q3 no-ans [] pred ''                          EM 1  F1 1
#          q4 no-ans [''] pred 'London'                  EM 0  F1 0
#          q5 has ['New York'] pred 'york'               EM 0  F1 2/3 (P=1 R=1/2)
REFS_A = {
    "q1": ["Paris"],
    "q2": ["Barack Obama", "Obama"],
    "q3": [],
    "q4": [""],
    "q5": ["New York"],
}
PREDS_A = {"q1": "paris", "q2": "President Obama", "q3": "", "q4": "London", "q5": "york"}


def test_evaluate_breakdown_without_na_scores():
    out = squad_v2_evaluate(PREDS_A, REFS_A)
    assert list(out) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]  # fmt: skip
    # exact 2/5; f1 (1 + 2/3 + 1 + 0 + 2/3)/5 = 2/3
    assert out["exact"] == approx(40.0)
    assert out["f1"] == approx(66.6667)
    assert out["total"] == 5
    # HasAns q1,q2,q5: exact 1/3; f1 (1 + 2/3 + 2/3)/3 = 7/9
    assert out["HasAns_exact"] == approx(33.3333)
    assert out["HasAns_f1"] == approx(77.7778)
    assert out["HasAns_total"] == 3
    # NoAns q3,q4: 1/2
    assert out["NoAns_exact"] == approx(50.0)
    assert out["NoAns_f1"] == approx(50.0)
    assert out["NoAns_total"] == 2
    assert "best_exact" not in out and "best_f1_thresh" not in out


def test_evaluate_subset_keys_only_when_non_empty():
    only_has = squad_v2_evaluate({"a": "Paris", "b": "Rome"}, {"a": ["Paris"], "b": ["Milan"]})
    assert list(only_has) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert only_has["exact"] == approx(50.0) and only_has["HasAns_total"] == 2
    only_no = squad_v2_evaluate({"a": "", "b": "x"}, {"a": [], "b": [""]})
    assert list(only_no) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert only_no["NoAns_exact"] == approx(50.0) and only_no["NoAns_total"] == 2


# Set B (na score in brackets; higher = more likely no answer):
#   q1 has ['Paris']        pred 'Paris'  EM 1 F1 1    [0.1]
#   q2 has ['Barack Obama'] pred 'Obama'  EM 0 F1 2/3  [0.4]
#   q3 no-ans []            pred 'London' EM 0 F1 0    [0.6]
#   q4 no-ans ['']          pred ''       EM 1 F1 1    [0.2]
#   q5 has ['Tokyo']        pred 'Kyoto'  EM 0 F1 0    [0.9]
REFS_B = {"q1": ["Paris"], "q2": ["Barack Obama"], "q3": [], "q4": [""], "q5": ["Tokyo"]}
PREDS_B = {"q1": "Paris", "q2": "Obama", "q3": "London", "q4": "", "q5": "Kyoto"}
NA_B = {"q1": 0.1, "q2": 0.4, "q3": 0.6, "q4": 0.2, "q5": 0.9}
# find_best_thresh sweep (sorted q1 .1, q4 .2, q2 .4, q3 .6, q5 .9), start cur = #no-ans = 2:
#   EM: q1 +1 -> 3 (best, .1); q4 +0; q2 +0; q3 -1 -> 2; q5 +0  => 300/5 = 60.0 @ 0.1
#   F1: q1 +1 -> 3 (.1); q4 +0; q2 +2/3 -> 3.6667 (best, .4); q3 -1; q5 +0 => 100*(11/3)/5 = 73.3333 @ 0.4


def test_evaluate_no_answer_threshold_and_best():
    out = squad_v2_evaluate(PREDS_B, REFS_B, no_answer_scores=NA_B, no_answer_threshold=0.5)
    # na > 0.5: q3 (no-ans -> 1.0), q5 (has-ans -> 0.0); others raw.
    # exact 1,0,1,1,0 = 3/5; f1 1 + 2/3 + 1 + 1 + 0 = 11/3 -> /5
    assert out["exact"] == approx(60.0)
    assert out["f1"] == approx(73.3333)
    assert out["total"] == 5
    assert out["HasAns_exact"] == approx(33.3333)  # q1 only of q1,q2,q5
    assert out["HasAns_f1"] == approx(55.5556)  # (1 + 2/3 + 0)/3 = 5/9
    assert out["HasAns_total"] == 3
    assert out["NoAns_exact"] == approx(100.0)
    assert out["NoAns_f1"] == approx(100.0)
    assert out["NoAns_total"] == 2
    assert out["best_exact"] == approx(60.0)
    assert out["best_exact_thresh"] == approx(0.1)
    assert out["best_f1"] == approx(73.3333)
    assert out["best_f1_thresh"] == approx(0.4)
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_evaluate_default_threshold_keeps_raw_scores():
    out = squad_v2_evaluate(PREDS_B, REFS_B, no_answer_scores=NA_B)
    # threshold 1.0: no na score exceeds it -> raw: exact 1,0,0,1,0 = 40; f1 (1 + 2/3 + 0 + 1 + 0)/5
    assert out["exact"] == approx(40.0)
    assert out["f1"] == approx(53.3333)
    assert out["NoAns_exact"] == approx(50.0)
    # best_* depend only on raw scores, not on the threshold
    assert (out["best_exact"], out["best_exact_thresh"]) == (approx(60.0), approx(0.1))
    assert (out["best_f1"], out["best_f1_thresh"]) == (approx(73.3333), approx(0.4))


def test_find_best_thresh_direct():
    has = {"q1": True, "q2": True, "q3": False, "q4": False, "q5": True}
    exact_raw = {"q1": 1, "q2": 0, "q3": 0, "q4": 1, "q5": 0}
    f1_raw = {"q1": 1.0, "q2": 2 / 3, "q3": 0.0, "q4": 1.0, "q5": 0.0}
    assert find_best_thresh(PREDS_B, exact_raw, NA_B, has) == (approx(60.0), approx(0.1))
    assert find_best_thresh(PREDS_B, f1_raw, NA_B, has) == (approx(73.3333), approx(0.4))


def test_best_thresh_ties_follow_na_scores_order():
    # qa: has-ans, correct (EM 1); qb: no-ans with a non-empty prediction; equal na scores 0.5.
    refs = {"qa": ["Paris"], "qb": []}
    preds = {"qa": "Paris", "qb": "London"}
    # order qb, qa: cur 1 -> qb -1 -> 0 -> qa +1 -> 1 (not > 1): best stays 1/2 = 50 @ 0.0
    out = squad_v2_evaluate(preds, refs, no_answer_scores={"qb": 0.5, "qa": 0.5})
    assert (out["best_exact"], out["best_exact_thresh"]) == (approx(50.0), 0.0)
    # order qa, qb: cur 1 -> qa +1 -> 2 (best, 0.5) -> qb -1 -> 1: best 2/2 = 100 @ 0.5
    out = squad_v2_evaluate(preds, refs, no_answer_scores={"qa": 0.5, "qb": 0.5})
    assert (out["best_exact"], out["best_exact_thresh"]) == (approx(100.0), 0.5)


def test_best_thresh_starts_at_zero_with_real_valued_scores():
    # q1 has-ans wrong (0) at -2.0; q2 no-ans pred '' at 3.0. cur 1 -> +0 -> +0: never improves
    refs = {"q1": ["Paris"], "q2": [""]}
    preds = {"q1": "Rome", "q2": ""}
    out = squad_v2_evaluate(preds, refs, no_answer_scores={"q1": -2.0, "q2": 3.0})
    assert out["best_exact"] == approx(50.0) and out["best_exact_thresh"] == 0.0
    assert out["best_f1"] == approx(50.0) and out["best_f1_thresh"] == 0.0


def test_negative_threshold_with_logit_scores():
    # q1 has-ans correct, score -3.0; q2 no-ans pred 'London', score 2.0; threshold 0.0
    refs = {"q1": ["Paris"], "q2": []}
    preds = {"q1": "Paris", "q2": "London"}
    out = squad_v2_evaluate(preds, refs, no_answer_scores={"q1": -3.0, "q2": 2.0}, no_answer_threshold=0.0)
    # q2: 2.0 > 0.0 -> predicted no-answer -> 1.0; q1 kept (1)
    assert out["exact"] == approx(100.0) and out["f1"] == approx(100.0)
    assert out["HasAns_exact"] == approx(100.0) and out["NoAns_exact"] == approx(100.0)
    # sweep: cur 1 -> q1 +1 -> 2 (best @ -3.0) -> q2 -1 -> 1
    assert out["best_exact"] == approx(100.0) and out["best_exact_thresh"] == -3.0
    assert out["best_f1"] == approx(100.0) and out["best_f1_thresh"] == -3.0


def test_best_thresh_uses_raw_prediction_truthiness():
    # Official quirk: a no-answer question predicted as 'the' scores EM 1 (normalizes to ''),
    # but the sweep subtracts 1 because the raw prediction string is non-empty.
    refs = {"q1": [], "q2": ["Paris"]}
    preds = {"q1": "the", "q2": "Paris"}
    out = squad_v2_evaluate(preds, refs, no_answer_scores={"q1": 0.3, "q2": 0.7})
    assert out["exact"] == approx(100.0)
    # cur 1 -> q1 -1 -> 0 -> q2 +1 -> 1 (not > 1): 1/2 = 50 @ 0.0
    assert out["best_exact"] == approx(50.0) and out["best_exact_thresh"] == 0.0


def test_threshold_without_scores_uses_zero_like_official():
    # Official fills na probs with 0.0; 0.0 > -0.5 so every question counts as predicted no-answer.
    refs = {"q1": ["Paris"], "q2": []}
    preds = {"q1": "Paris", "q2": ""}
    out = squad_v2_evaluate(preds, refs, no_answer_threshold=-0.5)
    assert out["exact"] == approx(50.0)  # q1 -> 0.0, q2 -> 1.0
    assert out["HasAns_exact"] == approx(0.0) and out["NoAns_exact"] == approx(100.0)
    assert "best_exact" not in out


def test_urdu_normalizer_in_evaluate():
    refs = {"u1": [LAHORE], "u2": [], "u3": ["\u0639\u0644\u06cc"]}
    preds = {"u1": LAHORE + "\u06d4", "u2": "", "u3": "\u0639\u0644\u064a"}
    off = squad_v2_evaluate(preds, refs)
    assert off["exact"] == approx(33.3333) and off["HasAns_exact"] == approx(0.0)
    urdu = squad_v2_evaluate(preds, refs, normalize=normalize_urdu)
    assert urdu["exact"] == approx(100.0) and urdu["f1"] == approx(100.0)
    assert squad_v2_evaluate(preds, refs, normalize="urdu") == urdu


def test_extra_predictions_are_ignored():
    out = squad_v2_evaluate({"q1": "Paris", "zzz": "whatever"}, {"q1": ["Paris"]})
    assert out["total"] == 1 and out["exact"] == approx(100.0)


def test_missing_predictions_raise():
    refs = {f"id{i}": ["x"] for i in range(7)}
    with pytest.raises(ValueError) as err:
        squad_v2_evaluate({}, refs)
    msg = str(err.value)
    for i in range(5):
        assert f"'id{i}'" in msg
    assert "'id5'" not in msg and "2 more" in msg


def test_missing_no_answer_scores_raise():
    with pytest.raises(ValueError, match="'q2'"):
        squad_v2_evaluate({"q1": "a", "q2": "b"}, {"q1": ["a"], "q2": ["b"]}, no_answer_scores={"q1": 0.0})


def test_bad_reference_inputs():
    with pytest.raises(ValueError):
        squad_v2_evaluate({}, {})
    with pytest.raises(TypeError):
        squad_v2_evaluate({"q1": "Paris"}, {"q1": "Paris"})


# ----------------------------------------------------------------------------------------------
# best_margin_threshold: the no-answer threshold over logit margins (the pipeline's tuning)
# ----------------------------------------------------------------------------------------------


def _applied_f1(preds, refs, margins, threshold):
    """F1 (0..100) of the predictions with "" wherever margin > threshold, by squad_v2_evaluate."""
    applied = {q: ("" if margins[q] > threshold else p) for q, p in preds.items()}
    return squad_v2_evaluate(applied, refs)["f1"]


def _tune(preds, refs, margins, which=1):
    answer = {q: question_scores(preds[q], refs[q])[which] for q in refs}
    null = {q: question_scores("", refs[q])[which] for q in refs}
    return answer, null, best_margin_threshold(answer, null, margins)


# q1, q2 answerable and answered right; q3, q4 unanswerable (answered: wrong, "": right)
REFS_M = {"q1": ["Paris"], "q2": ["Rome"], "q3": [], "q4": []}
PREDS_M = {"q1": "Paris", "q2": "Rome", "q3": "Oslo", "q4": "Bern"}


def test_margin_threshold_all_negative_margins():
    # the case: every margin < 0. The official search starts at 0.0, which answers everything.
    margins = {"q1": -9.0, "q2": -8.0, "q3": -2.0, "q4": -1.0}
    _, _, (best, thresh) = _tune(PREDS_M, REFS_M, margins)
    # answer q1, q2 (margin <= -8), "" for q3, q4 -> 4/4; the cut lies between -8 and -2
    assert best == 100.0 and -8.0 <= thresh < -2.0 and thresh == -5.0
    assert _applied_f1(PREDS_M, REFS_M, margins, thresh) == best
    official_best, official_thresh = find_best_thresh(PREDS_M, {q: question_scores(PREDS_M[q], REFS_M[q])[1]
                                                                for q in REFS_M}, margins,
                                                      {q: bool(r) for q, r in REFS_M.items()})
    assert official_best == 100.0 and official_thresh == -8.0  # the official value, for contrast
    assert _applied_f1(PREDS_M, REFS_M, margins, 0.0) == 50.0  # what 0.0 would have given


def test_margin_threshold_all_positive_margins():
    margins = {"q1": 1.0, "q2": 2.0, "q3": 5.0, "q4": 7.0}
    _, _, (best, thresh) = _tune(PREDS_M, REFS_M, margins)
    assert best == 100.0 and 2.0 <= thresh < 5.0 and thresh == 3.5
    assert _applied_f1(PREDS_M, REFS_M, margins, thresh) == best


def test_margin_threshold_no_answer_everywhere_is_best():
    # answering anything only costs: q1 wrong span, q3/q4 unanswerable. "" everywhere: 3/4 (q1: 0)
    refs = {"q1": ["Paris"], "q2": [], "q3": [], "q4": []}
    preds = {"q1": "Lyon", "q2": "Oslo", "q3": "Bern", "q4": "Rome"}
    margins = {"q1": -3.0, "q2": -2.5, "q3": 0.5, "q4": 4.0}
    _, _, (best, thresh) = _tune(preds, refs, margins)
    assert best == 75.0
    assert thresh < -3.0  # below every margin: "" everywhere
    assert _applied_f1(preds, refs, margins, thresh) == best
    # the official search reports 0.0 for this (its start), which answers q1 and q2 (both wrong):
    # q3, q4 right -> 2/4
    assert find_best_thresh(preds, {q: 0.0 for q in refs}, margins, {q: bool(r) for q, r in refs.items()}) == (
        75.0, 0.0)
    assert _applied_f1(preds, refs, margins, 0.0) == 50.0


def test_margin_threshold_answer_everywhere_is_best():
    refs = {"q1": ["Paris"], "q2": ["Rome"], "q3": ["Oslo"]}
    preds = {"q1": "Paris", "q2": "Rome", "q3": "Oslo"}
    margins = {"q1": 3.0, "q2": -1.0, "q3": 9.5}
    _, _, (best, thresh) = _tune(preds, refs, margins)
    assert best == 100.0 and thresh >= 9.5
    assert _applied_f1(preds, refs, margins, thresh) == best


def test_margin_threshold_ties_fall_on_one_side():
    # q1 (right) and q3 (unanswerable, answered) share margin 0.0: no threshold separates them.
    # The official sweep steps through q1 alone and reports 75 @ 0.0, which cannot be applied.
    refs = {"q1": ["Paris"], "q2": ["Rome"], "q3": [], "q4": []}
    preds = {"q1": "Paris", "q2": "Lyon", "q3": "Oslo", "q4": "Bern"}
    margins = {"q1": 0.0, "q3": 0.0, "q2": 1.0, "q4": 2.0}
    has = {q: bool(r) for q, r in refs.items()}
    raw = {q: question_scores(preds[q], refs[q])[1] for q in refs}
    assert find_best_thresh(preds, raw, margins, has) == (75.0, 0.0)
    assert _applied_f1(preds, refs, margins, 0.0) == 50.0  # applied, the official "best" is not reached
    _, _, (best, thresh) = _tune(preds, refs, margins)
    assert best == 50.0  # "" everywhere: q3, q4 right; answering q1+q3 together: +1 -1
    assert _applied_f1(preds, refs, margins, thresh) == best
    assert thresh < 0.0  # equally good cuts: the one with the most "" (as the official prefers)


def test_margin_threshold_infinite_margins_and_exact_equality():
    # +inf: no span in any window (always ""), and F1 fractions: the score is reproduced to the last bit
    refs = {"q1": ["Barack Obama"], "q2": ["one two three four five"], "q3": [], "q4": ["Paris"]}
    preds = {"q1": "Obama", "q2": "four five six", "q3": "", "q4": ""}
    margins = {"q1": -0.3, "q2": 0.7, "q3": 0.1, "q4": float("inf")}
    answer, null, (best, thresh) = _tune(preds, refs, margins)
    assert best == approx(100 * (2 / 3 + 0.5 + 1) / 4)
    assert apply_margin_threshold(answer, null, margins, thresh) == best
    assert _applied_f1(preds, refs, margins, thresh) == best
    # no finite margin at all: the threshold changes nothing
    inf = {q: float("inf") for q in refs}
    assert best_margin_threshold(answer, null, inf) == (apply_margin_threshold(answer, null, inf, 0.0), 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_margin_threshold_is_the_best_of_every_cut(seed):
    """Random margins (with ties): no threshold does better, and the chosen one gives the best exactly."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 60)
    qids = [f"q{i}" for i in range(n)]
    answer = {q: rng.choice([0.0, 1.0, rng.random()]) for q in qids}
    null = {q: float(rng.random() < 0.4) for q in qids}
    margins = {q: rng.choice([round(rng.uniform(-8, 8), 1), float(rng.randint(-3, 3))]) for q in qids}
    best, thresh = best_margin_threshold(answer, null, margins)
    assert apply_margin_threshold(answer, null, margins, thresh) == best
    candidates = [-1e9, 1e9] + [m + d for m in margins.values() for d in (-1e-6, 0.0, 1e-6)]
    assert max(apply_margin_threshold(answer, null, margins, t) for t in candidates) == approx(best)


# ----------------------------------------------------------------------------------------------
# Differential test: an independent transcription of the official evaluate-v2.0.py
# ----------------------------------------------------------------------------------------------
# The functions below are written from the official SQuAD v2.0 script (evaluate-v2.0.py, public,
# ~300 lines), kept as close to its text as Python 3 allows; nothing here imports uqa.evaluation.


def _official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    import re
    import string

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _official_get_tokens(s):
    if not s:
        return []
    return _official_normalize_answer(s).split()


def _official_compute_exact(a_gold, a_pred):
    return int(_official_normalize_answer(a_gold) == _official_normalize_answer(a_pred))


def _official_compute_f1(a_gold, a_pred):
    import collections

    gold_toks = _official_get_tokens(a_gold)
    pred_toks = _official_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def _official_get_raw_scores(dataset, preds):
    exact_scores = {}
    f1_scores = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if _official_normalize_answer(a["text"])]
                if not gold_answers:
                    # For unanswerable questions, only correct answer is empty string
                    gold_answers = [""]
                if qid not in preds:
                    continue
                a_pred = preds[qid]
                # Take max over all gold answers
                exact_scores[qid] = max(_official_compute_exact(a, a_pred) for a in gold_answers)
                f1_scores[qid] = max(_official_compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def _official_apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, na_prob_thresh):
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def _official_make_eval_dict(exact_scores, f1_scores, qid_list=None):
    if not qid_list:
        total = len(exact_scores)
        return {"exact": 100.0 * sum(exact_scores.values()) / total,
                "f1": 100.0 * sum(f1_scores.values()) / total, "total": total}
    total = len(qid_list)
    return {"exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
            "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, "total": total}


def _official_find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def _official_main(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    """main() without the file handling: the out_eval dict."""
    if na_probs is None:
        na_probs_used = {k: 0.0 for k in preds}
    else:
        na_probs_used = na_probs
    qid_to_has_ans = {qa["id"]: bool(qa["answers"]) for a in dataset for p in a["paragraphs"] for qa in p["qas"]}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = _official_get_raw_scores(dataset, preds)
    exact_thresh = _official_apply_no_ans_threshold(exact_raw, na_probs_used, qid_to_has_ans, na_prob_thresh)
    f1_thresh = _official_apply_no_ans_threshold(f1_raw, na_probs_used, qid_to_has_ans, na_prob_thresh)
    out_eval = _official_make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        for k, v in _official_make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids).items():
            out_eval[f"HasAns_{k}"] = v
    if no_ans_qids:
        for k, v in _official_make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids).items():
            out_eval[f"NoAns_{k}"] = v
    if na_probs is not None:
        best_exact, exact_thresh_v = _official_find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        best_f1, f1_thresh_v = _official_find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
        out_eval.update(best_exact=best_exact, best_exact_thresh=exact_thresh_v, best_f1=best_f1,
                        best_f1_thresh=f1_thresh_v)
    return out_eval


# pieces the random strings are built from: English (articles in every case, words that contain
# them), Urdu and Arabic letterforms, ASCII and Unicode punctuation, digits of three scripts,
# combining marks, invisible controls, Unicode whitespace, and letters whose lower() is special
_PIECES = (
    ["a", "an", "the", "A", "An", "THE", "The", "theory", "another", "at", "then", "ant", "Paris", "new", "York",
     "x", "Ab", "i", "İstanbul", "STRASSE", "ẞ", "ΣΑΣ", "Ǆ", "ﬁ"]
    + ["لاہور", "کراچی", "علی", "علي", "كتاب", "کتاب", "شہر", "شهر", "مصطفى", "اسلام", "آباد", "ہے", "کا", "کی",
       "۱۹۴۷", "1947", "٣", "سن", "ء", "ـ", "\u064e", "\u0670", "\u0653"]
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["۔", "،", "؟", "؛", "«", "»", "—", "’", "…", "¿", "٪"]
    + ["\u200c", "\u200f", "\ufeff", "\u061c"]
)
_SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", "\xa0", "\u2009", "\u3000", "\u200b"]


def _random_text(rng, max_pieces=7):
    n = rng.randint(0, max_pieces)
    out = []
    for _ in range(n):
        out.append(rng.choice(_PIECES))
        out.append(rng.choice(_SEPARATORS))
    return "".join(out)


def _random_cases(rng, n, texts=None):
    for _ in range(n):
        if texts and rng.random() < 0.5:
            gold = rng.choice(texts)
            # a prediction near a real answer: a prefix, a suffix, the answer with punctuation or an article
            words = gold.split()
            k = rng.randint(0, len(words))
            pred = rng.choice([" ".join(words[:k]), " ".join(words[k:]), gold + rng.choice(["۔", ".", "،", " the"]),
                               "the " + gold, _random_text(rng, 3), gold])
        else:
            gold, pred = _random_text(rng), _random_text(rng)
        yield gold, pred


def _check_pairs(pairs):
    mismatches = []
    for gold, pred in pairs:
        ours = (normalize_official(gold), get_tokens(gold), compute_exact(gold, pred), compute_f1(gold, pred))
        theirs = (_official_normalize_answer(gold), _official_get_tokens(gold), _official_compute_exact(gold, pred),
                  _official_compute_f1(gold, pred))
        if ours != theirs:
            mismatches.append((gold, pred, ours, theirs))
    return mismatches


def test_differential_pairs_against_the_official_script():
    import random

    rng = random.Random(20240601)
    pairs = list(_random_cases(rng, 4000))
    assert sum(1 for g, p in pairs if compute_f1(g, p) not in (0.0, 1.0)) > 100  # partial overlaps are covered
    assert _check_pairs(pairs) == []


def _random_dataset(rng, n_questions, texts=None):
    qas, preds, na = [], {}, {}
    for i in range(n_questions):
        qid = f"q{i}"
        kind = rng.random()
        if kind < 0.3:
            answers = []  # unanswerable (official: an empty answers list)
        else:
            golds = [g for g, _ in _random_cases(rng, rng.randint(1, 4), texts)]
            if all(g == "" for g in golds):
                golds.append("x")  # a list of only "" counts as unanswerable here, answerable there (documented)
            answers = [{"text": g, "answer_start": 0} for g in golds]
        qas.append({"id": qid, "answers": answers})
        golds = [a["text"] for a in answers]
        preds[qid] = rng.choice([rng.choice(golds) if golds else "", "", _random_text(rng, 4)])
        na[qid] = rng.choice([round(rng.random(), 2), round(rng.uniform(-5, 5), 1), 0.5])  # with ties
    return [{"paragraphs": [{"qas": qas}]}], preds, na


def _check_datasets(rng, n_datasets, texts=None):
    mismatches = []
    for _ in range(n_datasets):
        dataset, preds, na = _random_dataset(rng, rng.randint(1, 40), texts)
        refs = {qa["id"]: [a["text"] for a in qa["answers"]] for qa in dataset[0]["paragraphs"][0]["qas"]}
        for golds_pred in refs.items():
            qid, golds = golds_pred
            ours = question_scores(preds[qid], golds)
            exact, f1 = _official_get_raw_scores([{"paragraphs": [{"qas": [{"id": qid, "answers": [
                {"text": g} for g in golds]}]}]}], {qid: preds[qid]})
            if ours != (exact[qid], f1[qid]):
                mismatches.append(("question", golds, preds[qid], ours, (exact[qid], f1[qid])))
        thresh = rng.choice([1.0, 0.5, 0.0, -1.0])
        for kwargs, official_kwargs in (({}, {}), ({"no_answer_scores": na, "no_answer_threshold": thresh},
                                                   {"na_probs": na, "na_prob_thresh": thresh})):
            ours = squad_v2_evaluate(preds, refs, **kwargs)
            theirs = _official_main(dataset, preds, **official_kwargs)
            if ours != theirs or list(ours) != list(theirs):
                mismatches.append(("dataset", refs, preds, na, ours, theirs))
    return mismatches


def test_differential_datasets_against_the_official_script():
    """Whole evaluations: max over references, the empty-gold rule, HasAns/NoAns, threshold, best_*."""
    import random

    assert _check_datasets(random.Random(7), 300) == []


@needs_shared
def test_differential_on_real_uqa_answers():
    import random

    import pandas as pd

    frame = pd.read_parquet(UQA_DIR / "validation.parquet", columns=["answer"])
    texts = sorted({a for a in frame["answer"].tolist() if isinstance(a, str) and a})
    rng = random.Random(11)
    assert _check_pairs(list(_random_cases(rng, 4000, texts))) == []
    assert _check_datasets(rng, 100, texts) == []
