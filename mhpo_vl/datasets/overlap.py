"""Near-duplicate problems between two datasets: normalised question text and a perceptual image hash.

Benchmarks borrow from each other: MathVista testmini holds 62 Geometry3K problems and MathVerse testmini 129, some
of them Geometry3K TEST problems. Validating on Geometry3K test therefore overlaps those benchmarks, and training on a
dataset that contains them contaminates the evaluation. ``find_overlaps(train, eval)`` reports, for each eval problem,
the train problems that look like it:

  text+image  question text similar AND diagram matches: the same problem
  image       the same diagram with a different question (often the same problem, reworded or another sub-question)
  text        similar text while at least one side has no image to compare (unconfirmed); only questions of at least
              ``min_text_chars`` normalised characters count, since "Find x." alone says nothing
Similar text with clearly different diagrams is not reported: Geometry3K has hundreds of "Find x." problems.

Text similarity is the Jaccard index of character 3-grams of the normalised question (case, spacing, LaTeX markup and
choice lists removed). The image hash is a 256-bit difference hash (dHash, 17x16 grey thumbnail, bit = left pixel
brighter than right), robust to re-encoding and rescaling; distance is the number of differing bits.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mhpo_vl.images import open_image
from mhpo_vl.types import Sample

HASH_WIDTH, HASH_HEIGHT = 16, 16  # bits per row x rows: 256 bits
DEFAULT_TEXT_THRESHOLD = 0.8
DEFAULT_HASH_DISTANCE = 16  # of 256 bits; re-encoded or rescaled copies measured <= 8, distinct diagrams >= 28
DEFAULT_MIN_TEXT_CHARS = 25

_CHOICES_TAIL = re.compile(r"\n\s*(choices?|options?)\s*:.*$", re.IGNORECASE | re.DOTALL)
_IMAGE_TAG = re.compile(r"<image\d*>", re.IGNORECASE)
_LATEX_SPACING = re.compile(r"\\(mathrm|text|mathbf|left|right|displaystyle|quad|,|;|!)")


def normalize_question(text: str) -> str:
    """Lowercase alphanumerics only: markup, spacing and listed choices do not make two problems different."""
    text = _CHOICES_TAIL.sub("", text)
    text = _IMAGE_TAG.sub("", text)
    text = _LATEX_SPACING.sub("", text)
    text = text.replace("\\", " ")
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def trigrams(normalized: str) -> frozenset[str]:
    if len(normalized) < 3:
        return frozenset([normalized]) if normalized else frozenset()
    return frozenset(normalized[i: i + 3] for i in range(len(normalized) - 2))


def image_dhash(image: Any) -> int:
    """256-bit difference hash of an image (path or PIL)."""
    import numpy as np
    from PIL import Image

    grey = open_image(image).convert("L").resize((HASH_WIDTH + 1, HASH_HEIGHT), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, :-1] > pixels[:, 1:]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class Overlap:
    train: Sample
    eval: Sample
    kind: str  # "text+image" | "image" | "text"
    text_similarity: float
    image_distance: int | None  # smallest distance over the two samples' image pairs; None if either has none

    def as_record(self) -> dict[str, Any]:
        def brief(sample: Sample) -> dict[str, Any]:
            return {"source": sample.source, "split": sample.split, "id": sample.id, "question": sample.question}

        return {"kind": self.kind, "text_similarity": round(self.text_similarity, 3),
                "image_distance": self.image_distance, "train": brief(self.train), "eval": brief(self.eval)}


def find_overlaps(
    train: Sequence[Sample],
    eval_: Sequence[Sample],
    *,
    text_threshold: float = DEFAULT_TEXT_THRESHOLD,
    hash_distance: int = DEFAULT_HASH_DISTANCE,
    min_text_chars: int = DEFAULT_MIN_TEXT_CHARS,
) -> list[Overlap]:
    """Every (train, eval) pair that looks like the same problem, eval order first, best match first."""
    train_grams = [trigrams(normalize_question(s.question)) for s in train]
    eval_norm = [normalize_question(s.question) for s in eval_]
    train_hashes = [[image_dhash(im) for im in s.images] for s in train]
    eval_hashes = [[image_dhash(im) for im in s.images] for s in eval_]

    # Inverted index: trigram -> train rows, so each eval question is compared only with rows sharing a trigram.
    postings: dict[str, list[int]] = defaultdict(list)
    for row, grams in enumerate(train_grams):
        for gram in grams:
            postings[gram].append(row)
    hash_index = [(row, h) for row, hashes in enumerate(train_hashes) for h in hashes]

    found: list[Overlap] = []
    for e_row, e_sample in enumerate(eval_):
        grams = trigrams(eval_norm[e_row])
        shared = Counter(row for gram in grams for row in postings.get(gram, ()))
        similarity = {row: n / (len(grams) + len(train_grams[row]) - n) for row, n in shared.items()}
        distance: dict[int, int] = {}
        for h in eval_hashes[e_row]:
            for row, train_hash in hash_index:
                d = hamming(h, train_hash)
                if d <= hash_distance and d < distance.get(row, hash_distance + 1):
                    distance[row] = d
        candidates = {row for row, sim in similarity.items() if sim >= text_threshold} | set(distance)
        matches = []
        for row in candidates:
            sim = similarity.get(row, 0.0)
            both_have_images = bool(train_hashes[row]) and bool(eval_hashes[e_row])
            if row in distance:
                kind = "text+image" if sim >= text_threshold else "image"
            elif both_have_images or len(eval_norm[e_row]) < min_text_chars:
                continue  # similar words, different diagrams (or too short to mean anything): not the same problem
            else:
                kind = "text"
            best_distance = distance.get(row) if both_have_images else None
            if best_distance is None and both_have_images:
                best_distance = min(hamming(a, b) for a in eval_hashes[e_row] for b in train_hashes[row])
            matches.append(Overlap(train[row], e_sample, kind, sim, best_distance))
        order = {"text+image": 0, "image": 1, "text": 2}
        matches.sort(key=lambda m: (order[m.kind], -m.text_similarity, m.image_distance or 0))
        found.extend(matches)
    return found
