import pytest

from seal_env.scoring import answer_log_likelihoods, contains_answer, exact_match, normalize_answer, token_f1


def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Dresk River!") == "dresk river"
    assert normalize_answer("an Apple, a pear") == "apple pear"
    assert normalize_answer("") == ""


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("Talia Norwin", ["Talia Norwin"], 1.0),
        ("the Talia Norwin.", "talia norwin", 1.0),
        ("Norwin", ["Talia Norwin"], 0.0),
        ("1887", ["1886", "1887"], 1.0),
    ],
)
def test_exact_match_known_cases(prediction, golds, expected):
    assert exact_match(prediction, golds) == expected


def test_token_f1_known_cases():
    assert token_f1("Talia Norwin", "Talia Norwin") == 1.0
    assert token_f1("Norwin", "Talia Norwin") == pytest.approx(2 / 3)  # p=1, r=1/2
    assert token_f1("designed by Talia Norwin", "Talia Norwin") == pytest.approx(2 * 0.5 * 1 / 1.5)  # p=1/2, r=1
    assert token_f1("blue", "ochre") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalise to nothing
    assert token_f1("x", ["ochre", "x y"]) == pytest.approx(2 / 3)  # best gold counts


def test_contains_answer_needs_whole_words():
    assert contains_answer("The bridge was designed by Talia Norwin.", "Talia Norwin") == 1.0
    assert contains_answer("It opened in 18870.", "1887") == 0.0
    assert contains_answer("No idea.", ["Talia Norwin", "Norwin"]) == 0.0


def test_answer_log_likelihood_prefers_the_trained_continuation(tiny_lm):
    model, tokenizer = tiny_lm
    scores = answer_log_likelihoods(model, tokenizer, ["Q: colour?", "Q: colour?"], ["ochre", "ochre"])
    assert len(scores) == 2 and scores[0] == pytest.approx(scores[1], abs=1e-5)
    assert all(s < 0 for s in scores)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        answer_log_likelihoods(model, tokenizer, ["a", "b"], ["c"])
