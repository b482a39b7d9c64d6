"""Dataset adapters on the real fixtures (../shared/fixtures), bad input, the registry, and the docs' worked example."""
from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from mhpo_vl.datasets import DATASETS, DataError, DatasetAdapter, load_dataset, register_dataset
from mhpo_vl.images import open_image
from mhpo_vl.types import Sample

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# Geometry3K: both layouts give the same 10 problems, answer = choice text


def test_geometry3k_both_layouts_agree(fixtures_dir):
    folders = load_dataset("geometry3k", str(fixtures_dir / "geometry3k"))
    jsonl = load_dataset("geometry3k", str(fixtures_dir / "geometry3k" / "hf_format.jsonl"))
    assert [s.id for s in folders] == [str(i) for i in range(11, 21)]
    assert [s.id for s in jsonl] == [s.id for s in folders]
    rows = {str(r["id"]): r for r in map(json.loads, (fixtures_dir / "geometry3k" / "hf_format.jsonl").read_text().splitlines())}
    for a, b in zip(folders, jsonl):
        assert a.question == b.question  # annotat_text == HF "problem" minus its "<image>" marker
        assert a.answer == b.answer == rows[a.id]["answer"]  # the choice text, e.g. "80" for id 11, not "D"
        assert a.metadata["answer_letter"] == b.metadata["answer_letter"] == rows[a.id]["ground_truth"]
        assert a.choices == b.choices and a.answer in a.choices
        assert a.answer_type == "multiple_choice" and a.split == "train"  # ids 11-20 lie in train (0-2100)
        # Adapters resolve paths (symlinks included), so compare resolved paths.
        expected = (fixtures_dir / "geometry3k" / a.id / "img_diagram.png").resolve()
        assert Path(a.images[0]) == Path(b.images[0]) == expected
    # id 11: choices 30/40/60/80, letter D -> "80"; id 15: letter C -> "5 \sqrt { 3 }"
    assert (folders[0].answer, folders[0].metadata["answer_letter"]) == ("80", "D")
    assert folders[4].answer == "5 \\sqrt { 3 }"
    assert "<image>" not in jsonl[0].question


def test_geometry3k_split_by_id(fixtures_dir):
    assert len(load_dataset("geometry3k", str(fixtures_dir / "geometry3k"), "train")) == 10
    with pytest.raises(DataError, match="no samples for split 'test'"):
        load_dataset("geometry3k", str(fixtures_dir / "geometry3k"), "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("geometry3k", str(fixtures_dir / "geometry3k"), "dev")


def test_geometry3k_hf_saved_copies(fixtures_dir, tmp_path):
    """A local copy written by `datasets` (save_to_disk and parquet), images stored as HF Image features."""
    import datasets

    rows = [json.loads(line) for line in (fixtures_dir / "geometry3k" / "hf_format.jsonl").read_text().splitlines()]
    table = datasets.Dataset.from_dict({
        "images": [[str(fixtures_dir / "geometry3k" / p) for p in r["images"]] for r in rows],
        "problem": [r["problem"] for r in rows],
        "answer": [r["answer"] for r in rows],
    }).cast_column("images", datasets.Sequence(datasets.Image()))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "train.parquet"))
    for source in (tmp_path / "saved", tmp_path / "train.parquet"):
        samples = load_dataset("geometry3k", str(source), "train")
        assert [s.answer for s in samples] == [r["answer"] for r in rows]
        assert isinstance(samples[0].images[0], Image.Image) and samples[0].images[0].size == (250, 251)
        # No choices in the hub schema: answers are typed by their text ("5 \sqrt { 3 }" is an expression).
        assert samples[0].answer_type == "integer" and samples[4].answer_type == "expression"
        assert samples[0].id == "train-0"
    everything = load_dataset("geometry3k", str(tmp_path / "saved"))  # no split: every split of the saved dict
    assert len(everything) == 10 and {s.split for s in everything} == {"train"}


# ---------------------------------------------------------------------------------------------------------------
# MathVista / MathVision / MathVerse / text sets


def test_mathvista_missing_images_are_errors_unless_asked(fixtures_dir, capsys):
    path = str(fixtures_dir / "mathvista" / "testmini.json")
    with pytest.raises(DataError) as err:
        load_dataset("mathvista", path)
    assert "testmini.json: row 1: field 'image': image file not found" in str(err.value)

    kept = load_dataset("mathvista", path, require_images=False)
    assert len(kept) == 1000
    with_images = {s.id for s in kept if s.images}
    assert with_images == {"106", "225", "540", "824", "852"}
    assert sum("image_missing" in s.metadata for s in kept) == 995
    assert "kept 995 row(s) text-only" in capsys.readouterr().err

    skipped = load_dataset("mathvista", path, skip_bad=True)
    assert len(skipped) == 5 and len(skipped.skipped) == 995
    assert "skipped 995 bad row(s)" in capsys.readouterr().err


def test_mathvista_fields(fixtures_dir):
    samples = {s.id: s for s in load_dataset("mathvista", str(fixtures_dir / "mathvista"), require_images=False)}
    pid28 = samples["28"]  # a Geometry3K problem: choices 7.5/8/8.5/17, answer "8.5" -> letter C
    assert (pid28.answer, pid28.answer_type, pid28.metadata["answer_letter"]) == ("8.5", "multiple_choice", "C")
    assert pid28.metadata["source"] == "Geometry3K"
    pid1 = samples["1"]
    assert (pid1.answer, pid1.answer_type, pid1.precision) == ("1.2", "float", 1)
    assert samples["2"].unit == "g" and samples["2"].answer_type == "integer"
    # testmini.json lists images/106.jpg; the fixture holds the PNG re-encoding: used, and said so.
    assert samples["106"].images[0].endswith("106.png")
    assert samples["106"].metadata["image_substituted"] == "listed as images/106.jpg, found 106.png"


def test_mathvision_all_rows(fixtures_dir):
    samples = load_dataset("mathvision", str(fixtures_dir / "mathvision"))
    assert len(samples) == 304 and all(len(s.images) == 1 and Path(s.images[0]).is_file() for s in samples)
    multiple_choice = [s for s in samples if s.choices]
    assert len(multiple_choice) == 190  # options are empty (114 rows) or five items (190)
    assert sum(s.metadata["options_in_image"] for s in multiple_choice) == 73  # PROVENANCE: 73 rows with options A-E
    row6 = next(s for s in samples if s.id == "6")
    assert (row6.answer, row6.metadata["answer_letter"], row6.choices) == ("D", "D", list("ABCDE"))
    written = next(s for s in multiple_choice if not s.metadata["options_in_image"])
    letter = written.metadata["answer_letter"]
    assert written.answer == written.choices["ABCDE".index(letter)]
    assert "<image1>" in samples[0].question and samples[0].split == "testmini"


def test_mathverse_files(fixtures_dir):
    text_only = load_dataset("mathverse", str(fixtures_dir / "mathverse" / "testmini_text_only.json"))
    assert len(text_only) == 788 and not any(s.images for s in text_only)
    first = text_only[0]  # "Choices:\nA:40°\nB:60°\nC:120°\nD:140°", answer "D"
    assert (first.answer, first.metadata["answer_letter"], first.choices) == ("140°", "D", ["40°", "60°", "120°", "140°"])
    assert first.metadata["query_cot"].startswith("Please first conduct reasoning")
    assert sum(s.metadata["question_type"] == "multi-choice" for s in text_only) == 436
    # "C\nD" (two answers) cannot be one choice: kept as the source wrote it, typed text.
    two = next(s for s in text_only if s.id == "440")
    assert (two.answer, two.answer_type, two.choices) == ("C\nD", "text", None)

    template_file = str(fixtures_dir / "mathverse" / "output_testmini_template.json")
    with pytest.raises(DataError, match="images_version_1-4/image_685.png"):
        load_dataset("mathverse", template_file)
    versions = load_dataset("mathverse", template_file, require_images=False)
    assert [s.metadata["problem_version"] for s in versions] == [
        "Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only"]
    only = load_dataset("mathverse", template_file, require_images=False, problem_version="Vision Only")
    assert [s.id for s in only] == ["3425"]


@pytest.mark.parametrize("name,count,first_id,first_answer", [
    ("math500", 500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("aime24", 30, "60", "204"),
    ("aime25", 30, "0", "70"),
    ("amc23", 40, "1", "27"),  # no id column: the line number
    ("hmmt25", 30, "1", "103"),
])
def test_text_sets(fixtures_dir, name, count, first_id, first_answer):
    samples = load_dataset(name, str(fixtures_dir / "text_math"))
    assert len(samples) == count
    assert (samples[0].id, samples[0].answer, samples[0].images) == (first_id, first_answer, [])
    assert len({s.id for s in samples}) == count


# ---------------------------------------------------------------------------------------------------------------
# Bad input: errors name file, row and field


def _png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card) with a 1-pixel body."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr: ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13: ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4: ihdr + 13])))
    return bytes(data)


def _write_rows(folder: Path, rows: list[dict]) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "map.yaml").write_text(
        "data: data.jsonl\ncolumns:\n  question: q\n  answer: a\n  images: img\n  answer_type: kind\n")
    return folder / "map.yaml"


def test_bad_rows_name_file_row_field(tmp_path, fixtures_dir):
    images = tmp_path / "images"
    images.mkdir()
    good = fixtures_dir / "geometry3k" / "11" / "img_diagram.png"
    shutil.copy(good, images / "good.png")
    (images / "text.png").write_text("this is not an image")
    (images / "bomb.png").write_bytes(_png_claiming_size(10000, 10000))
    (tmp_path.parent / "outside.png").write_bytes(good.read_bytes())
    rows = [
        {"q": "ok", "a": "1", "img": "images/good.png", "kind": "integer"},
        {"q": "missing", "a": "1", "img": "images/nope.png", "kind": "integer"},
        {"q": "not an image", "a": "1", "img": "images/text.png", "kind": "integer"},
        {"q": "bomb", "a": "1", "img": "images/bomb.png", "kind": "integer"},
        {"q": "escape", "a": "1", "img": "../outside.png", "kind": "integer"},
        {"q": "no answer", "img": "images/good.png", "kind": "integer"},
        {"q": "odd type", "a": "1", "img": "images/good.png", "kind": "fraction"},
    ]
    mapping = _write_rows(tmp_path, rows)
    data = str(tmp_path / "data.jsonl")
    expected = [
        (2, "img", "image file not found"),
        (3, "img", "not a readable image"),
        (4, "img", "10000x10000 = 100000000 pixels, over the limit of 50000000"),
        (5, "img", "escapes the dataset root"),
        (6, "a", "missing column"),
        (7, "kind", "unknown answer type 'fraction'"),
    ]
    result = load_dataset(str(mapping), skip_bad=True)
    assert [s.question for s in result] == ["ok"]
    assert [(r.row, r.field) for r in result.skipped] == [(row, field) for row, field, _ in expected]
    for skipped, (_row, _field, reason) in zip(result.skipped, expected):
        assert reason in skipped.reason and skipped.file == data
    for row, field, reason in expected:  # without skip_bad, each bad row alone stops the load with its location
        _write_rows(tmp_path, [rows[0], rows[row - 1]])
        with pytest.raises(DataError) as err:
            load_dataset(str(mapping))
        assert str(err.value).startswith(f"{data}: row 2: field {field!r}: ") and reason in str(err.value)


def test_corrupt_image_fails_on_decode(tmp_path, fixtures_dir):
    """A truncated PNG passes the header check at load time; full decoding names it."""
    original = (fixtures_dir / "geometry3k" / "11" / "img_diagram.png").read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*cannot decode image"):
        open_image(str(truncated))
    assert open_image(str(fixtures_dir / "geometry3k" / "11" / "img_diagram.png"), limit=300 * 300).size == (250, 251)
    with pytest.raises(DataError, match="62750 pixels, over the limit of 1000"):  # 250 x 251
        open_image(str(fixtures_dir / "geometry3k" / "11" / "img_diagram.png"), limit=1000)
    huge = tmp_path / "huge.png"  # 400M pixels: PIL's own guard (179M) fires first; still a DataError naming it
    huge.write_bytes(_png_claiming_size(20000, 20000))
    with pytest.raises(DataError, match=r"huge\.png is over the pixel limit"):
        open_image(str(huge))


def test_invalid_json_line_is_named(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"q": "a", "a": "1"}\n{"q": "b", "a": \n')
    (tmp_path / "map.yaml").write_text("data: data.jsonl\ncolumns: {question: q, answer: a}\n")
    with pytest.raises(DataError, match=r"data\.jsonl: row 2: invalid JSON"):
        load_dataset(str(tmp_path / "map.yaml"))


def test_mapping_file_errors(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"q": "a", "a": "1"}\n')
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("data: data.jsonl\ncolumns: {question: q, answer: a}\nimage_folder: x\n")
    with pytest.raises(DataError, match="unknown key\\(s\\) image_folder"):
        load_dataset(str(bad_key))
    no_answer = tmp_path / "no_answer.yaml"
    no_answer.write_text("data: data.jsonl\ncolumns: {question: q}\n")
    with pytest.raises(DataError, match="the 'answer' role must name a column"):
        load_dataset(str(no_answer))


# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_errors_list_valid_names(fixtures_dir):
    with pytest.raises(ValueError, match="unknown dataset 'geo3k'; valid names: .*geometry3k"):
        load_dataset("geo3k")
    with pytest.raises(ValueError, match="unknown option\\(s\\) require_image for dataset 'mathvista'; valid options: require_images"):
        load_dataset("mathvista", str(fixtures_dir / "mathvista"), require_image=False)


def test_register_function_and_class_adapters():
    @register_dataset("test_fn_adapter")
    def numbers(source, split, *, count: int = 2):
        for i in range(count):
            yield Sample(id=str(i), source="test", split=split or "train", question=f"{i} + 1?", answer=str(i + 1),
                         answer_type="integer")

    try:
        assert [s.answer for s in load_dataset("test_fn_adapter", count=3)] == ["1", "2", "3"]
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("test_fn_adapter")(lambda source, split: [])
    finally:
        DATASETS.pop("test_fn_adapter", None)
    assert issubclass(DATASETS["geometry3k"], DatasetAdapter)


# ---------------------------------------------------------------------------------------------------------------
# docs/datasets.md: the worked example runs as written


def _doc_blocks(text: str) -> list[tuple[str, str]]:
    """(marker, body) for every fenced block preceded by an HTML comment marker line."""
    pattern = re.compile(r"<!-- (.+?) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)]


def test_docs_worked_example(tmp_path, monkeypatch, capsys):
    import runpy

    from mhpo_vl.cli import main

    blocks = _doc_blocks((REPO / "docs" / "datasets.md").read_text())
    markers = [marker for marker, _ in blocks]
    assert markers == ["file: make_my_shapes.py", "file: my_shapes/my_shapes.yaml", "command", "output",
                       "file: my_shapes_adapter.py", "file: use_my_shapes.py", "output: python use_my_shapes.py"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for marker, body in blocks:
        if marker.startswith("file: "):
            target = tmp_path / marker[len("file: "):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body + "\n")
    runpy.run_path("make_my_shapes.py")
    capsys.readouterr()

    command = dict(blocks)["command"]
    assert command.startswith("$ mhpo-vl ")
    assert main(command[len("$ mhpo-vl "):].split()) == 0
    shown = capsys.readouterr().out.replace(str(tmp_path.resolve()), "/work")
    assert shown.strip() == dict(blocks)["output"].strip()

    try:
        runpy.run_path("use_my_shapes.py", run_name="__main__")
        assert capsys.readouterr().out.strip() == dict(blocks)["output: python use_my_shapes.py"].strip()
    finally:
        DATASETS.pop("my_shapes", None)
