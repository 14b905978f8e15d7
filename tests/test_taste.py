"""The simulated person of the steerability benchmark likes a colour the way a person would: the colour
first, its neighbours in hue next, and no colourless object (black, grey) above a neighbouring hue."""
import pytest
import torch

from dreamdpo.toyworld.taste import Taste
from dreamdpo.toyworld.vocab import COLOURS


def square(rgb) -> torch.Tensor:
    img = torch.ones(1, 3, 64, 64)
    img[0, :, 16:48, 16:48] = torch.tensor(rgb)[:, None, None]
    return img


@pytest.mark.parametrize("colour", list(COLOURS))
def test_the_colour_itself_wins_and_black_loses_to_its_nearest_hue(colour):
    taste = Taste(colour=colour)
    scores = {name: float(taste.score(square(rgb))) for name, rgb in COLOURS.items()}
    others = sorted((s, n) for n, s in scores.items() if n != colour)
    assert max(scores, key=scores.get) == colour
    black, grey = float(taste.score(square((0.02, 0.02, 0.02)))), float(taste.score(square((0.5, 0.5, 0.5))))
    assert black < others[-1][0] and grey < others[-1][0], (colour, others[-1], black, grey)


def test_a_darker_shade_of_the_colour_beats_another_hue():
    taste = Taste(colour="blue")
    navy, purple, cyan = (square(rgb) for rgb in ((0.05, 0.05, 0.3), COLOURS["purple"], COLOURS["cyan"]))
    assert taste.choose(navy, purple) == "a" and taste.choose(navy, cyan) == "a"
    assert taste.choose(square(COLOURS["blue"]), square(COLOURS["blue"])) == "tie"


@pytest.mark.parametrize("colour", ["red", "blue", "yellow"])
def test_a_vivid_shade_beats_a_dull_one_and_a_dull_one_beats_the_next_hue(colour):
    taste = Taste(colour=colour)
    vivid, dull = (square(tuple(k * x for x in COLOURS[colour])) for k in (1.0, 0.5))
    assert taste.choose(vivid, dull) == "a"
    nearest = max((n for n in COLOURS if n != colour), key=lambda n: float(taste.score(square(COLOURS[n]))))
    assert taste.choose(dull, square(COLOURS[nearest])) == "a", nearest
