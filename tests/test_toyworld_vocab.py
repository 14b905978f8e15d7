"""The toy vocabulary and prompt grammar."""
import pytest

from dreamdpo.errors import UserError
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, ObjectSpec, parse_prompt


def test_vocabulary_is_big_enough():
    assert len(COLOURS) >= 8
    assert {"sphere", "cube", "cone", "cylinder", "torus"} <= set(SHAPES)


def test_single_and_two_object_prompts():
    assert parse_prompt("a red cube").objects == (ObjectSpec("red", "cube"),)
    assert parse_prompt("A Blue Sphere.").objects == (ObjectSpec("blue", "sphere"),)
    two = parse_prompt("a red cube and a blue sphere")
    assert two.objects == (ObjectSpec("red", "cube"), ObjectSpec("blue", "sphere")) and two.relation == "and"
    left = parse_prompt("a red cube to the left of a blue sphere")
    assert left.relation == "left_of" and left.by_side()[0] == ObjectSpec("red", "cube")
    right = parse_prompt("a red cube to the right of a blue sphere")
    assert right.by_side() == (ObjectSpec("blue", "sphere"), ObjectSpec("red", "cube"))
    assert parse_prompt("an orange cone").caption() == "a orange cone"
    assert parse_prompt(right.caption()) == right


def test_unknown_word_is_one_line_listing_known_words():
    with pytest.raises(UserError) as e:
        parse_prompt("a red dragon")
    msg = str(e.value)
    assert "dragon" in msg and "\n" not in msg
    assert all(w in msg for w in ("red", "cube", "torus", "left"))


@pytest.mark.parametrize("bad", ["", "a red", "a cube red", "a red blue cube", "a red cube and", "red cube of"])
def test_malformed_prompts_are_user_errors(bad):
    with pytest.raises(UserError):
        parse_prompt(bad)
