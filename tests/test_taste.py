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
