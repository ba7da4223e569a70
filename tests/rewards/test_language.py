from r1lab.rewards.language import language_consistency, word_scripts


def test_pure_english_and_pure_chinese():
    assert language_consistency("<think>add the two numbers</think><answer>3</answer>").value == 1.0
    assert (
        language_consistency("<think>两个数相加</think><answer>3</answer>", target="zh").value
        == 1.0
    )


def test_mixing_is_caught_per_character_for_chinese():
    # 4 latin words + 2 han characters (each one word)
    s = language_consistency("<think>we need 相加 so add</think><answer>3</answer>")
    assert s.value == 4 / 6 and s.metrics["words"] == 6


def test_numbers_and_latex_are_not_words():
    assert word_scripts(r"12 + \frac{3}{4} = x") == ["latin"]


def test_only_the_thinking_is_checked():
    s = language_consistency("<think>the answer</think><answer>答案是三</answer>")
    assert s.value == 1.0


def test_no_words_scores_zero():
    assert language_consistency("<think>1+2=3</think><answer>3</answer>").value == 0.0
