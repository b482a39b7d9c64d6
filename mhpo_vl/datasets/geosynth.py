"""geosynth: procedurally drawn geometry problems with exact integer answers, seeded and reproducible.

Every problem states the numbers it needs in its text ("In triangle ABC, angle A = 50 and angle B = 60. Find angle C.")
and the diagram draws the same figure with the same labels, so a tiny model can learn from the text alone while a
real VLM sees a consistent picture. It is the bundled data for the offline demo and the tests.

Difficulty picks the problem kinds and number ranges:
  0  the answer can be read off the question (vertical angles, equal sides, a radius); angles in steps of 5
  1  + one-step arithmetic: supplementary angles, triangle angle sum, rectangle area, Pythagorean hypotenuse;
     triangles named ABC, PQR, XYZ, DEF or KLM
  2  + complementary angles, perimeter, diameter, a right-triangle leg, isosceles base angle; any integer angle
  3  + exterior angle, quadrilateral angle sum, square area from perimeter; lengths up to 40

``wide=True`` (any difficulty) makes the problem space large enough that a small model cannot memorise it: angles in
steps of 1, lengths up to 99, and every point renamed to random distinct capital letters (the same renaming in the text
and the diagram). At difficulty 0 that is ~10^6 distinct questions instead of ~70, so held-out accuracy measures the
skill (read the number off the question) rather than recall of the training questions.

Splits are disjoint by construction: each question text hashes to a bucket, 80% train, 10% val, 10% test, and a
split only keeps problems of its buckets, so no question appears in two splits (at any seed or difficulty). Within a
split, problems are drawn i.i.d. (a kind uniformly, then its numbers), so an easy difficulty with many samples repeats
problems, as epochs would; ``generate(n)`` is a prefix of ``generate(n + k)`` for the same seed.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mhpo_vl.datasets.base import DatasetAdapter, Record, register_dataset
from mhpo_vl.types import Sample

SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}
MAX_DIFFICULTY = 3
BUCKET_SALT = "geosynth-v1"
MAX_TRIES_PER_KIND = 400  # a kind with ~20 problems puts one in a 10% bucket within 400 draws unless it has none

Point = tuple[float, float]


@dataclass
class Problem:
    kind: str
    numbers: tuple[int, ...]  # the given numbers, in the order the answer formula uses them
    question: str
    answer: int
    figure: Figure


@dataclass
class Figure:
    """Model-space drawing (y up): segments, circles, text labels at points, angle labels at vertices."""

    segments: list[tuple[Point, Point]] = field(default_factory=list)
    circles: list[tuple[Point, float]] = field(default_factory=list)
    points: dict[str, Point] = field(default_factory=dict)  # named vertices, labelled outward from the centre
    texts: list[tuple[Point, str]] = field(default_factory=list)  # labels at the midpoint of sides etc.
    angle_marks: list[tuple[str, str, str, str]] = field(default_factory=list)  # (arm1, vertex, arm2, text)
    right_angles: list[tuple[str, str, str]] = field(default_factory=list)

    def polygon(self, *names: str) -> None:
        for a, b in zip(names, names[1:] + names[:1]):
            self.segments.append((self.points[a], self.points[b]))


# ----------------------------------------------------------------------------------------------------------------
# Problem kinds. Each takes (rng, numbers-config) and returns a Problem; text always carries the needed numbers.


@dataclass(frozen=True)
class Ranges:
    angle_step: int
    length_max: int
    triple_scale_max: int
    vary_letters: bool


RANGES = {
    0: Ranges(angle_step=5, length_max=20, triple_scale_max=1, vary_letters=False),
    1: Ranges(angle_step=5, length_max=15, triple_scale_max=2, vary_letters=True),
    2: Ranges(angle_step=1, length_max=20, triple_scale_max=3, vary_letters=True),
    3: Ranges(angle_step=1, length_max=40, triple_scale_max=5, vary_letters=True),
}
WIDE = Ranges(angle_step=1, length_max=99, triple_scale_max=5, vary_letters=True)
POINT_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O look-alikes of 1 and 0
_NAME_RUN = re.compile(r"\b[A-Z]+\b")  # point names in question texts: all-capital words (AB, AOC, O)
TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25))
TRIANGLE_NAMES = ("ABC", "PQR", "XYZ", "DEF", "KLM")


def _angle(rng: random.Random, r: Ranges, low: int, high: int) -> int:
    """A multiple of the difficulty's step in [low, high]."""
    return rng.randrange(math.ceil(low / r.angle_step) * r.angle_step, high + 1, r.angle_step)


def _names(rng: random.Random, r: Ranges) -> str:
    return rng.choice(TRIANGLE_NAMES) if r.vary_letters else TRIANGLE_NAMES[0]


def _triangle_points(angle_a: float, angle_b: float) -> dict[str, Point]:
    """A at the origin, B at (1, 0), C placed by the law of sines."""
    a, b = math.radians(angle_a), math.radians(angle_b)
    side_ac = math.sin(b) / math.sin(a + b)
    return {"0": (0.0, 0.0), "1": (1.0, 0.0), "2": (side_ac * math.cos(a), side_ac * math.sin(a))}


def _named(points: dict[str, Point], names: str) -> dict[str, Point]:
    return {names[int(k)]: v for k, v in points.items()}


def vertical_angles(rng, r):
    x = _angle(rng, r, 10, 170)
    fig = _crossing_lines(x)
    fig.angle_marks += [("A", "O", "C", str(x)), ("B", "O", "D", "?")]
    return Problem("vertical_angles", (x,), f"Lines AB and CD meet at O. Angle AOC = {x}. Find angle BOD.", x, fig)


def _crossing_lines(x: int) -> Figure:
    t = math.radians(180 - x)
    pts = {"O": (0.0, 0.0), "A": (-1.0, 0.0), "B": (1.0, 0.0), "C": (math.cos(t), math.sin(t)), "D": (-math.cos(t), -math.sin(t))}
    fig = Figure(points=pts)
    fig.segments += [(pts["A"], pts["B"]), (pts["C"], pts["D"])]
    return fig


def isosceles_side(rng, r):
    n = _names(rng, r)
    side = rng.randint(2, r.length_max)
    apex = _angle(rng, r, 30, 120)
    fig = _isosceles_figure(n, apex)
    fig.texts += [(_mid(fig.points[n[0]], fig.points[n[1]]), str(side)), (_mid(fig.points[n[0]], fig.points[n[2]]), "?")]
    q = f"In triangle {n}, {n[0]}{n[1]} = {n[0]}{n[2]} and {n[0]}{n[1]} = {side}. Find {n[0]}{n[2]}."
    return Problem("isosceles_side", (side,), q, side, fig)


def _isosceles_figure(n: str, apex: float) -> Figure:
    height = 1.0 / math.tan(math.radians(apex / 2))
    fig = Figure(points={n[0]: (0.0, height), n[1]: (-1.0, 0.0), n[2]: (1.0, 0.0)})
    fig.polygon(*n)
    return fig


def circle_radius(rng, r):
    radius = rng.randint(2, r.length_max)
    fig = _circle_figure(diameter=False)
    fig.texts.append((_mid(fig.points["O"], fig.points["A"]), str(radius)))
    return Problem("circle_radius", (radius,), f"Circle O has radius {radius}. Point A is on the circle. Find OA.", radius, fig)


def _circle_figure(diameter: bool) -> Figure:
    t = math.radians(30)
    pts = {"O": (0.0, 0.0), "A": (math.cos(t), math.sin(t))}
    fig = Figure(points=pts, circles=[((0.0, 0.0), 1.0)])
    if diameter:
        pts["B"] = (-math.cos(t), -math.sin(t))
        fig.segments.append((pts["B"], pts["A"]))
    else:
        fig.segments.append((pts["O"], pts["A"]))
    return fig


def supplementary(rng, r):
    x = _angle(rng, r, 20, 160)
    t = math.radians(180 - x)
    pts = {"O": (0.0, 0.0), "A": (-1.0, 0.0), "B": (1.0, 0.0), "C": (math.cos(t), math.sin(t))}
    fig = Figure(points=pts, segments=[(pts["A"], pts["B"]), (pts["O"], pts["C"])])
    fig.angle_marks += [("A", "O", "C", str(x)), ("C", "O", "B", "?")]
    q = f"Points A, O, B lie on a line. Angle AOC = {x}. Find angle COB."
    return Problem("supplementary", (x,), q, 180 - x, fig)


def triangle_third_angle(rng, r):
    n = _names(rng, r)
    a = _angle(rng, r, 20, 130)
    b = _angle(rng, r, 20, 160 - a)
    fig = Figure(points=_named(_triangle_points(a, b), n))
    fig.polygon(*n)
    fig.angle_marks += [(n[1], n[0], n[2], str(a)), (n[0], n[1], n[2], str(b)), (n[0], n[2], n[1], "?")]
    q = f"In triangle {n}, angle {n[0]} = {a} and angle {n[1]} = {b}. Find angle {n[2]}."
    return Problem("triangle_third_angle", (a, b), q, 180 - a - b, fig)


def _rectangle(rng, r) -> tuple[int, int, Figure]:
    w, h = rng.randint(2, r.length_max), rng.randint(2, r.length_max)
    pts = {"A": (0.0, 0.0), "B": (float(w), 0.0), "C": (float(w), float(h)), "D": (0.0, float(h))}
    fig = Figure(points=pts)
    fig.polygon("A", "B", "C", "D")
    fig.texts += [(_mid(pts["A"], pts["B"]), str(w)), (_mid(pts["B"], pts["C"]), str(h))]
    return w, h, fig


def rectangle_area(rng, r):
    w, h, fig = _rectangle(rng, r)
    return Problem("rectangle_area", (w, h), f"Rectangle ABCD has AB = {w} and BC = {h}. Find its area.", w * h, fig)


def rectangle_perimeter(rng, r):
    w, h, fig = _rectangle(rng, r)
    return Problem("rectangle_perimeter", (w, h), f"Rectangle ABCD has AB = {w} and BC = {h}. Find its perimeter.", 2 * (w + h), fig)


def _right_triangle(rng, r) -> tuple[str, int, int, int, Figure]:
    n = _names(rng, r)
    a, b, c = rng.choice(TRIPLES[: 2 + min(r.triple_scale_max, 2)])
    k = rng.randint(1, r.triple_scale_max)
    if rng.random() < 0.5:
        a, b = b, a
    a, b, c = a * k, b * k, c * k  # BC = a, AC = b, AB = c; right angle at the third vertex
    pts = {n[2]: (0.0, 0.0), n[1]: (float(a), 0.0), n[0]: (0.0, float(b))}
    fig = Figure(points=pts, right_angles=[(n[0], n[2], n[1])])
    fig.polygon(*n)
    return n, a, b, c, fig


def right_hypotenuse(rng, r):
    n, a, b, c, fig = _right_triangle(rng, r)
    p = fig.points
    fig.texts += [(_mid(p[n[1]], p[n[2]]), str(a)), (_mid(p[n[0]], p[n[2]]), str(b)), (_mid(p[n[0]], p[n[1]]), "?")]
    q = f"In right triangle {n}, angle {n[2]} = 90, {n[0]}{n[2]} = {b} and {n[1]}{n[2]} = {a}. Find {n[0]}{n[1]}."
    return Problem("right_hypotenuse", (a, b), q, c, fig)


def right_leg(rng, r):
    n, a, b, c, fig = _right_triangle(rng, r)
    p = fig.points
    fig.texts += [(_mid(p[n[1]], p[n[2]]), "?"), (_mid(p[n[0]], p[n[2]]), str(b)), (_mid(p[n[0]], p[n[1]]), str(c))]
    q = f"In right triangle {n}, angle {n[2]} = 90, {n[0]}{n[1]} = {c} and {n[0]}{n[2]} = {b}. Find {n[1]}{n[2]}."
    return Problem("right_leg", (c, b), q, a, fig)


def complementary(rng, r):
    x = _angle(rng, r, 10, 80)
    t = math.radians(x)
    pts = {"O": (0.0, 0.0), "A": (1.0, 0.0), "B": (0.0, 1.0), "C": (math.cos(t), math.sin(t))}
    fig = Figure(points=pts, segments=[(pts["O"], pts["A"]), (pts["O"], pts["B"]), (pts["O"], pts["C"])])
    fig.right_angles.append(("A", "O", "B"))
    fig.angle_marks += [("A", "O", "C", str(x)), ("C", "O", "B", "?")]
    q = f"Angle AOB = 90 and ray OC lies inside it. Angle AOC = {x}. Find angle COB."
    return Problem("complementary", (x,), q, 90 - x, fig)


def circle_diameter(rng, r):
    radius = rng.randint(2, r.length_max)
    fig = _circle_figure(diameter=True)
    fig.texts += [(_mid(fig.points["O"], fig.points["A"]), str(radius))]
    q = f"Circle O has radius {radius}. AB is a diameter. Find AB."
    return Problem("circle_diameter", (radius,), q, 2 * radius, fig)


def isosceles_base_angle(rng, r):
    n = _names(rng, r)
    apex = _angle(rng, r, 20, 140)
    if apex % 2:
        apex += 1  # the base angles must be whole numbers
    fig = _isosceles_figure(n, apex)
    fig.angle_marks += [(n[1], n[0], n[2], str(apex)), (n[0], n[1], n[2], "?")]
    q = f"In triangle {n}, {n[0]}{n[1]} = {n[0]}{n[2]} and angle {n[0]} = {apex}. Find angle {n[1]}."
    return Problem("isosceles_base_angle", (apex,), q, (180 - apex) // 2, fig)


def exterior_angle(rng, r):
    n = _names(rng, r).replace("DEF", "ABC")  # the extension point is D: keep it out of the triangle's names
    a = _angle(rng, r, 20, 120)
    b = _angle(rng, r, 20, 150 - a)
    tri = _triangle_points(b, 180 - a - b)  # B at origin, C at (1, 0), A above
    pts = {n[1]: tri["0"], n[2]: tri["1"], n[0]: tri["2"], "D": (1.6, 0.0)}
    fig = Figure(points=pts)
    fig.polygon(*n)
    fig.segments.append((pts[n[2]], pts["D"]))
    fig.angle_marks += [(n[1], n[0], n[2], str(a)), (n[0], n[1], n[2], str(b)), (n[0], n[2], "D", "?")]
    q = f"In triangle {n}, angle {n[0]} = {a} and angle {n[1]} = {b}. D is on ray {n[1]}{n[2]} past {n[2]}. Find angle {n[0]}{n[2]}D."
    return Problem("exterior_angle", (a, b), q, a + b, fig)


def quad_fourth_angle(rng, r):
    while True:
        a, b, c = _angle(rng, r, 60, 120), _angle(rng, r, 60, 120), _angle(rng, r, 60, 120)
        d = 360 - a - b - c
        if 50 <= d <= 130:
            break
    pts = _quadrilateral_points(a, b, c)
    fig = Figure(points=pts)
    fig.polygon("A", "B", "C", "D")
    fig.angle_marks += [("D", "A", "B", str(a)), ("A", "B", "C", str(b)), ("B", "C", "D", str(c)), ("C", "D", "A", "?")]
    q = f"In quadrilateral ABCD, angle A = {a}, angle B = {b} and angle C = {c}. Find angle D."
    return Problem("quad_fourth_angle", (a, b, c), q, d, fig)


def _quadrilateral_points(a: float, b: float, c: float) -> dict[str, Point]:
    """A convex ABCD with the given interior angles at A, B, C: D is where the ray from A and the ray from C meet."""
    for side_bc in (1.0, 0.8, 1.2, 0.6, 1.5):
        t_bc = math.radians(180 - b)
        cpt = (1.0 + side_bc * math.cos(t_bc), side_bc * math.sin(t_bc))
        t_cd = math.radians(360 - b - c)
        t_ad = math.radians(a)
        # Solve A + s*u = C + t*v for s, t > 0.
        u, v = (math.cos(t_ad), math.sin(t_ad)), (math.cos(t_cd), math.sin(t_cd))
        det = u[0] * (-v[1]) - u[1] * (-v[0])
        if abs(det) < 1e-9:
            continue
        s = ((cpt[0]) * (-v[1]) - (cpt[1]) * (-v[0])) / det
        t = (u[0] * cpt[1] - u[1] * cpt[0]) / det
        if s > 0.2 and t > 0.2:
            return {"A": (0.0, 0.0), "B": (1.0, 0.0), "C": cpt, "D": (s * u[0], s * u[1])}
    return {"A": (0.0, 0.0), "B": (1.0, 0.0), "C": (1.1, 0.9), "D": (-0.1, 1.0)}  # not reached for 60-120 angles


def square_area_from_perimeter(rng, r):
    side = rng.randint(2, r.length_max)
    pts = {"A": (0.0, 0.0), "B": (1.0, 0.0), "C": (1.0, 1.0), "D": (0.0, 1.0)}
    fig = Figure(points=pts)
    fig.polygon("A", "B", "C", "D")
    fig.texts.append(((0.5, 0.5), f"P={4 * side}"))
    return Problem("square_area_from_perimeter", (side,), f"Square ABCD has perimeter {4 * side}. Find its area.", side * side, fig)


KINDS: dict[int, tuple[Callable[[random.Random, Ranges], Problem], ...]] = {
    0: (vertical_angles, isosceles_side, circle_radius),
    1: (supplementary, triangle_third_angle, rectangle_area, right_hypotenuse),
    2: (complementary, rectangle_perimeter, circle_diameter, right_leg, isosceles_base_angle),
    3: (exterior_angle, quad_fourth_angle, square_area_from_perimeter),
}


def relabel(problem: Problem, rng: random.Random) -> Problem:
    """Rename every point to random distinct letters, consistently in the question and the figure."""
    used = sorted(set("".join(_NAME_RUN.findall(problem.question))) | set("".join(problem.figure.points)))
    mapping = dict(zip(used, rng.sample(POINT_LETTERS, len(used))))

    def names(text: str) -> str:
        return "".join(mapping[c] for c in text)

    fig = problem.figure
    figure = Figure(segments=fig.segments, circles=fig.circles, texts=fig.texts,
                    points={names(k): v for k, v in fig.points.items()},
                    angle_marks=[(names(a), names(v), names(b), t) for a, v, b, t in fig.angle_marks],
                    right_angles=[(names(a), names(v), names(b)) for a, v, b in fig.right_angles])
    question = _NAME_RUN.sub(lambda m: names(m.group()), problem.question)
    return Problem(problem.kind, problem.numbers, question, problem.answer, figure)


def kinds_for(difficulty: int) -> tuple[Callable, ...]:
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"geosynth difficulty must be 0..{MAX_DIFFICULTY}, got {difficulty}")
    return tuple(kind for level in range(difficulty + 1) for kind in KINDS[level])


def _bucket(problem: Problem) -> int:
    """The problem's split bucket, from its question text: two samples with the same question share a split."""
    key = f"{BUCKET_SALT}:{problem.question}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % 10


def problems(seed: int, difficulty: int, split: str, wide: bool = False) -> Iterator[Problem]:
    """The split's endless problem stream. Each draw picks a kind uniformly, then numbers until the problem falls in
    the split's buckets, so every split has the same mix of kinds. Draw i has its own RNG: streams are prefix-stable."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"geosynth split must be one of {', '.join(SPLIT_BUCKETS)}; got {split!r}")
    kinds, buckets = list(kinds_for(difficulty)), SPLIT_BUCKETS[split]
    ranges = WIDE if wide else RANGES[difficulty]
    stream = f"geosynth:{seed}:{difficulty}:{split}" + (":wide" if wide else "")
    draw_index = 0
    while kinds:
        rng = random.Random(f"{stream}:{draw_index}")
        draw_index += 1
        kind = rng.choice(kinds)
        for _ in range(MAX_TRIES_PER_KIND):
            problem = kind(rng, ranges)
            if wide:
                problem = relabel(problem, rng)
            if _bucket(problem) in buckets:
                yield problem
                break
        else:  # this kind has (almost surely) no problem in this split's buckets at this difficulty
            kinds.remove(kind)
    raise RuntimeError(f"geosynth: no problems for split {split!r} at difficulty {difficulty}")


def generate(n: int, seed: int, difficulty: int = 1, image_size: int = 112, *, split: str = "train",
             wide: bool = False) -> list[Sample]:
    """``n`` problems of the given split with in-memory diagrams (``Sample.images = [PIL.Image]``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    samples = []
    for index, problem in zip(range(n), problems(seed, difficulty, split, wide)):
        samples.append(Sample(
            id=f"geosynth-{split}-d{difficulty}{'w' if wide else ''}-s{seed}-{index:05d}",
            source="geosynth",
            split=split,
            question=problem.question,
            images=[draw(problem.figure, image_size)],
            answer=str(problem.answer),
            answer_type="integer",
            metadata={"kind": problem.kind, "numbers": list(problem.numbers), "difficulty": difficulty, "seed": seed,
                      "wide": wide},
        ))
    return samples


# ----------------------------------------------------------------------------------------------------------------
# Drawing: model space -> pixels, black lines on white, labels with Pillow's built-in font (same pixels every run).


def draw(fig: Figure, size: int):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, size // 10))
    to_px = _fit(fig, size)
    width = max(1, size // 64)
    for p, q in fig.segments:
        pen.line([to_px(p), to_px(q)], fill="black", width=width)
    for centre, radius in fig.circles:
        (cx, cy), (ex, _) = to_px(centre), to_px((centre[0] + radius, centre[1]))
        rad = ex - cx
        pen.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], outline="black", width=width)
    centre = _centre([to_px(p) for p in fig.points.values()])
    label_gap = size * 0.07
    for name, point in fig.points.items():
        px, py = to_px(point)
        dx, dy = _unit((px - centre[0], py - centre[1]))
        pen.text((px + dx * label_gap, py + dy * label_gap), name, fill="black", font=font, anchor="mm")
    for point, text in fig.texts:  # side labels sit just outside the side, away from the figure's centre
        px, py = to_px(point)
        dx, dy = _unit((px - centre[0], py - centre[1]))
        px, py = px + dx * size * 0.06, py + dy * size * 0.06
        pen.text((px, py), text, fill=(0, 0, 200), font=font, anchor="mm",
                 stroke_width=1, stroke_fill="white")
    mark = size * 0.06
    for arm1, vertex, arm2 in fig.right_angles:
        v = to_px(fig.points[vertex])
        u1, u2 = _unit(_sub(to_px(fig.points[arm1]), v)), _unit(_sub(to_px(fig.points[arm2]), v))
        a, c = (v[0] + u1[0] * mark, v[1] + u1[1] * mark), (v[0] + u2[0] * mark, v[1] + u2[1] * mark)
        b = (a[0] + u2[0] * mark, a[1] + u2[1] * mark)
        pen.line([a, b, c], fill="black", width=1)
    for arm1, vertex, arm2, text in fig.angle_marks:
        v = to_px(fig.points[vertex])
        u1, u2 = _unit(_sub(to_px(fig.points[arm1]), v)), _unit(_sub(to_px(fig.points[arm2]), v))
        bisector = _unit((u1[0] + u2[0], u1[1] + u2[1])) if abs(u1[0] + u2[0]) + abs(u1[1] + u2[1]) > 1e-6 else (-u1[1], u1[0])
        distance = size * 0.15
        pen.text((v[0] + bisector[0] * distance, v[1] + bisector[1] * distance), text, fill=(200, 0, 0), font=font,
                 anchor="mm", stroke_width=1, stroke_fill="white")
    return image


def _fit(fig: Figure, size: int) -> Callable[[Point], tuple[float, float]]:
    xs = [p[0] for seg in fig.segments for p in seg] + [p[0] for p in fig.points.values()]
    ys = [p[1] for seg in fig.segments for p in seg] + [p[1] for p in fig.points.values()]
    for (cx, cy), radius in fig.circles:
        xs += [cx - radius, cx + radius]
        ys += [cy - radius, cy + radius]
    min_x, max_x, min_y, max_y = min(xs), max(xs), min(ys), max(ys)
    scale = size * 0.7 / max(max_x - min_x, max_y - min_y, 1e-9)
    mid_x, mid_y = (min_x + max_x) / 2, (min_y + max_y) / 2
    return lambda p: (size / 2 + (p[0] - mid_x) * scale, size / 2 - (p[1] - mid_y) * scale)


def _mid(p: Point, q: Point) -> Point:
    return ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)


def _sub(p, q):
    return (p[0] - q[0], p[1] - q[1])


def _unit(v):
    length = math.hypot(*v)
    return (v[0] / length, v[1] / length) if length > 1e-9 else (0.0, -1.0)


def _centre(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


@register_dataset("geosynth")
@dataclass
class GeoSynth(DatasetAdapter):
    """``load_dataset("geosynth", split="train", n=1000, seed=0, difficulty=1, wide=False)``; ``source`` must be None."""

    n: int = 1000
    seed: int = 0
    difficulty: int = 1
    image_size: int = 112
    wide: bool = False

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if source is not None:
            raise ValueError(f"geosynth is generated, not read: leave source unset (got {source!r})")
        for index, sample in enumerate(generate(self.n, self.seed, self.difficulty, self.image_size, split=split or "train",
                                                   wide=self.wide)):
            yield Record({"sample": sample}, file="geosynth", row=index)

    def to_sample(self, record: Record) -> Sample:
        return record.parsed_fields["sample"]
