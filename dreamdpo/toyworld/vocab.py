"""The toy world's vocabulary and its tiny prompt grammar.

Prompts are one object ("a red cube") or two joined by a relation ("a red cube and a blue sphere",
"a red cube to the left of a blue sphere"). Left/right are world sides: the left object sits at
y < 0, which is the image's left from the front camera (azimuth 0).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dreamdpo.errors import UserError

# saturated hues only: they stay distinct under shading and against the white background
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.70, 0.20),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.25, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.45, 0.70),
}
SHAPES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder", "torus")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
ARTICLES = ("a", "an", "the")
RELATIONS = {"and": "and", "to the left of": "left_of", "left of": "left_of",
             "to the right of": "right_of", "right of": "right_of"}
RELATION_WORDS = ("and", "to", "the", "left", "right", "of")


@dataclass(frozen=True)
class ObjectSpec:
    colour: str | None  # None: the prompt names no colour
    shape: str

    def words(self) -> list[str]:
        return ([self.colour] if self.colour else []) + [self.shape]

    def caption(self) -> str:
        return "a " + " ".join(self.words())


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]  # 1 or 2
    relation: str = "and"  # and | left_of | right_of (objects[0] relative to objects[1])

    @property
    def words(self) -> list[str]:
        """Content words (colours and shapes), in prompt order, repeats kept."""
        return [w for o in self.objects for w in o.words()]

    def by_side(self) -> tuple[ObjectSpec, ...]:
        """Objects ordered (left, right) in the world; one-object scenes unchanged."""
        if len(self.objects) == 2 and self.relation == "right_of":
            return (self.objects[1], self.objects[0])
        return self.objects

    def caption(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].caption()
        rel = {"and": "and", "left_of": "to the left of", "right_of": "to the right of"}[self.relation]
        return f"{self.objects[0].caption()} {rel} {self.objects[1].caption()}"


def known_words() -> list[str]:
    return list(ARTICLES) + list(COLOUR_NAMES) + list(SHAPES) + ["and", "to", "left", "right", "of"]


def _unknown(word: str, prompt: str) -> UserError:
    return UserError(
        f"the toy world does not know the word '{word}' in {prompt!r}; it knows: {', '.join(known_words())}"
    )


def _parse_object(tokens: list[str], prompt: str) -> ObjectSpec:
    words = [t for t in tokens if t not in ARTICLES]
    for w in words:
        if w not in COLOURS and w not in SHAPES:
            raise _unknown(w, prompt)
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(shapes) != 1 or len(colours) > 1 or (colours and words.index(colours[0]) > words.index(shapes[0])):
        raise UserError(
            f"cannot read {' '.join(tokens)!r} in {prompt!r} as one object; write '[a] [colour] shape', "
            f"e.g. 'a red cube' (colours: {', '.join(COLOUR_NAMES)}; shapes: {', '.join(SHAPES)})"
        )
    return ObjectSpec(colours[0] if colours else None, shapes[0])


def parse_prompt(prompt: str) -> Scene:
    """'a red cube', 'a red cube and a blue sphere', 'a red cube to the left of a blue sphere'."""
    text = re.sub(r"[^a-z ]+", " ", prompt.lower())
    tokens = text.split()
    if not tokens:
        raise UserError("the prompt is empty; write e.g. 'a red cube'")
    for w in tokens:
        if w not in known_words():
            raise _unknown(w, prompt)
    joined = " ".join(tokens)
    for phrase in sorted(RELATIONS, key=len, reverse=True):  # longest relation phrase first
        m = re.search(rf"(^| ){phrase}( |$)", joined)
        if m:
            left, right = joined[: m.start()].split(), joined[m.end():].split()
            return Scene((_parse_object(left, prompt), _parse_object(right, prompt)), RELATIONS[phrase])
    leftover = [t for t in tokens if t in RELATION_WORDS and t != "the"]
    if leftover:
        raise UserError(f"cannot read {prompt!r}: use 'and', 'to the left of' or 'to the right of' between two objects")
    return Scene((_parse_object(tokens, prompt),))


def parse_words(text: str) -> list[str]:
    """The content words (colours, shapes) of free text such as a negative prompt; unknown words are an error."""
    words = re.sub(r"[^a-z ]+", " ", text.lower()).split()
    for w in words:
        if w not in known_words():
            raise _unknown(w, text)
    return list(dict.fromkeys(w for w in words if w in COLOURS or w in SHAPES))
