"""geosynth: exact answers, reproducible pixels, disjoint splits, difficulty levels."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from PIL import Image

from mhpo_vl.datasets import load_dataset
from mhpo_vl.datasets.geosynth import KINDS, generate, kinds_for, problems

# The answer of each kind from its given numbers (metadata["numbers"]), written independently of the generator.
ANSWERS = {
    "vertical_angles": lambda x: x,                    # vertical angles are equal
    "isosceles_side": lambda s: s,                     # the two equal sides
    "circle_radius": lambda r: r,                      # OA is a radius
    "supplementary": lambda x: 180 - x,                # angles on a straight line
    "triangle_third_angle": lambda a, b: 180 - a - b,  # angle sum of a triangle
    "rectangle_area": lambda w, h: w * h,
    "right_hypotenuse": lambda a, b: math.isqrt(a * a + b * b),
    "complementary": lambda x: 90 - x,
    "rectangle_perimeter": lambda w, h: 2 * (w + h),
    "circle_diameter": lambda r: 2 * r,
    "right_leg": lambda c, b: math.isqrt(c * c - b * b),
    "isosceles_base_angle": lambda apex: (180 - apex) // 2,
    "exterior_angle": lambda a, b: a + b,              # exterior angle = sum of the two remote interior angles
    "quad_fourth_angle": lambda a, b, c: 360 - a - b - c,
    "square_area_from_perimeter": lambda side: side * side,  # the question gives the perimeter 4 * side
}


def test_pinned_first_problems():
    """Seed 0, difficulty 1: the stream starts with these (a change here changes every demo run's data)."""
    samples = generate(3, seed=0, difficulty=1)
    assert [(s.question, s.answer) for s in samples] == [
        ("Lines AB and CD meet at O. Angle AOC = 35. Find angle BOD.", "35"),
        ("In triangle DEF, DE = DF and DE = 14. Find DF.", "14"),
        ("Circle O has radius 3. Point A is on the circle. Find OA.", "3"),
    ]
    assert samples[0].id == "geosynth-train-d1-s0-00000" and samples[0].answer_type == "integer"


@pytest.mark.parametrize("difficulty", [0, 1, 2, 3])
def test_answers_exact_and_numbers_in_text(difficulty):
    samples = generate(150, seed=3, difficulty=difficulty)
    assert {s.metadata["kind"] for s in samples} == {k.__name__ for k in kinds_for(difficulty)}
    for s in samples:
        numbers = s.metadata["numbers"]
        assert s.answer == str(ANSWERS[s.metadata["kind"]](*numbers)), s.question
        assert int(s.answer) > 0
        words = re.findall(r"\d+", s.question)
        if s.metadata["kind"] in ("right_hypotenuse", "right_leg", "complementary"):
            words.remove("90")  # the stated right angle
        if s.metadata["kind"] == "square_area_from_perimeter":
            assert words == [str(4 * numbers[0])]
        else:  # every number the answer needs is in the text, so a text-only model can learn it
            assert sorted(words) == sorted(str(n) for n in numbers), s.question
        assert len(s.question.split()) <= 26  # short: under ~40 tokens for a small BPE
        if s.metadata["kind"] in ("right_hypotenuse", "right_leg"):
            a, b = numbers
            assert (math.isqrt(a * a + b * b) ** 2 == a * a + b * b) or (math.isqrt(a * a - b * b) ** 2 == a * a - b * b)


def test_difficulty_zero_answers_are_readable():
    for s in generate(60, seed=1, difficulty=0):
        assert s.answer in re.findall(r"\d+", s.question)
    assert len(KINDS[0]) == 3 and len(kinds_for(3)) == 15
    with pytest.raises(ValueError, match="difficulty must be 0..3"):
        generate(1, seed=0, difficulty=4)


def test_reproducible_pixels_and_prefix():
    a = generate(12, seed=7, difficulty=2, image_size=96)
    b = generate(12, seed=7, difficulty=2, image_size=96)
    assert [s.question for s in a] == [s.question for s in b]
    assert all(x.images[0].tobytes() == y.images[0].tobytes() for x, y in zip(a, b))
    longer = generate(20, seed=7, difficulty=2, image_size=96)
    assert [s.question for s in longer[:12]] == [s.question for s in a]
    other = generate(12, seed=8, difficulty=2, image_size=96)
    assert [s.question for s in other] != [s.question for s in a]
    image = a[0].images[0]
    assert isinstance(image, Image.Image) and image.size == (96, 96) and image.mode == "RGB"
    # A diagram, not a blank: some dark line pixels, mostly white background.
    dark = int((np.asarray(image.convert("L")) < 128).sum())
    assert 50 < dark < 96 * 96 // 3


def test_splits_are_disjoint_and_cover_every_kind():
    questions = {}
    for split in ("train", "val", "test"):
        drawn = list(itertools.islice(problems(0, 3, split), 1500))
        questions[split] = {p.question for p in drawn}
        assert {p.kind for p in drawn} == {k.__name__ for k in kinds_for(3)}, split
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    # Also across difficulties: a level-0 test problem never shows up in level-1 training data.
    level1_train = {p.question for p in itertools.islice(problems(5, 1, "train"), 3000)}
    level0_test = {p.question for p in itertools.islice(problems(5, 0, "test"), 300)}
    assert not level1_train & level0_test


def test_load_dataset_geosynth():
    samples = load_dataset("geosynth", split="val", n=5, seed=2, difficulty=1, image_size=64)
    assert len(samples) == 5 and all(s.split == "val" and s.images[0].size == (64, 64) for s in samples)
    assert [s.question for s in samples] == [s.question for s in generate(5, seed=2, difficulty=1, image_size=64, split="val")]
    with pytest.raises(ValueError, match="leave source unset"):
        load_dataset("geosynth", source="somewhere")
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        load_dataset("geosynth", split="dev", n=1)


def test_wide_relabels_text_and_figure_consistently():
    """wide=True: random distinct letters for every point, the same in the question and the diagram's labels."""
    import random

    from mhpo_vl.datasets.geosynth import POINT_LETTERS, RANGES, relabel, vertical_angles

    base = vertical_angles(random.Random(0), RANGES[0])  # "Lines AB and CD meet at O. Angle AOC = x. Find angle BOD."
    wide = relabel(base, random.Random(5))
    mapping = {}
    for old, new in zip(base.figure.points, wide.figure.points):
        mapping[old] = new
    assert sorted(mapping) == ["A", "B", "C", "D", "O"] and len(set(mapping.values())) == 5
    assert set(mapping.values()) <= set(POINT_LETTERS)
    a, b, c, d, o = (mapping[k] for k in "ABCDO")
    x = base.answer
    assert wide.question == f"Lines {a}{b} and {c}{d} meet at {o}. Angle {a}{o}{c} = {x}. Find angle {b}{o}{d}."
    assert wide.figure.angle_marks == [(a, o, c, str(x)), (b, o, d, "?")]
    assert [wide.figure.points[mapping[k]] for k in "ABCDO"] == [base.figure.points[k] for k in "ABCDO"]
    assert wide.answer == base.answer and wide.numbers == base.numbers


@pytest.mark.parametrize("difficulty", [0, 3])
def test_wide_is_far_from_memorisable_and_keeps_answers_exact(difficulty):
    train = generate(1000, seed=0, difficulty=difficulty, split="train", wide=True, image_size=32)
    val = generate(200, seed=1, difficulty=difficulty, split="val", wide=True, image_size=32)
    assert len({s.question for s in train}) >= 990 and len({s.question for s in val}) >= 198
    assert not {s.question for s in train} & {s.question for s in val}
    for s in train[:300]:
        assert s.answer == str(ANSWERS[s.metadata["kind"]](*s.metadata["numbers"])), s.question
        assert s.metadata["wide"] is True and "w-s0-" in s.id
    # The numbers range widely (narrow level 0 draws lengths up to 20 and angles in steps of 5).
    answers = {int(s.answer) for s in train if s.metadata["kind"] in ("isosceles_side", "circle_radius")}
    assert max(answers) > 90 and len(answers) > 60
    # wide=False is unchanged: the pinned stream above still holds, and wide draws a different stream.
    assert [s.question for s in generate(3, seed=0, difficulty=1)] != [s.question for s in generate(3, seed=0, difficulty=1, wide=True)]
