"""`mhpo-vl data show` / `data overlap` on every fixture in its original format, and bad input through the CLI."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mhpo_vl.cli import main


def _show(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = main(["data", "show", *argv])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, rows, captured.err


@pytest.mark.parametrize("layout", ["geometry3k", "geometry3k/hf_format.jsonl"])
def test_show_geometry3k_both_layouts(capsys, fixtures_dir, layout):
    code, rows, err = _show(capsys, "geometry3k", "--source", str(fixtures_dir / layout))
    assert code == 0 and len(rows) == 10
    # InterGPS letters D B A B C B D C D A mapped onto each problem's choices (= the HF copy's answers).
    assert [r["answer"] for r in rows] == ["80", "13", "9", "48", "5 \\sqrt { 3 }", "10", "120", "22",
                                           "\\frac { 2 \\sqrt { 2 } } { 5 }", "16"]
    assert all(r["answer"] in r["choices"] and r["metadata"]["answer_letter"] in "ABCD" for r in rows)
    assert rows[0]["prompt"].endswith("The final answer MUST BE put in \\boxed{}.")  # reason_boxed by default
    # Two of the ten share their text ("Find x.") and differ only in the diagram.
    assert "shown 10 of 10 sample(s) (9 distinct question text(s)), 10 image(s) decoded, 0 row(s) skipped" in err


def test_show_counts_the_demo_splits_distinct_questions(capsys):
    """Issue 9: the demo's validation split holds >= 200 distinct questions (255 of 256), its training split 3984 of
    4000, read from configs/demo_cpu.yaml so a config change is checked too."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml").read_text())["data"]
    for split, at_least in (("val", 200), ("train", 3900)):
        spec = data[split]
        options = [f"--option={k}={v}" for k, v in spec["options"].items()]
        code, rows, err = _show(capsys, spec["name"], "--split", spec["split"], "--limit", "0", *options)
        distinct = int(re.search(r"\((\d+) distinct question", err).group(1))
        assert code == 0 and rows == [] and distinct >= at_least, err


def test_show_mathvision_decodes_all_304_images(capsys, fixtures_dir):
    code, rows, err = _show(capsys, "mathvision", "--source", str(fixtures_dir / "mathvision"), "--template", "mathvision")
    assert code == 0 and len(rows) == 304
    assert "304 image(s) decoded" in err
    assert all(len(r["images"]) == 1 and r["images"][0].endswith(".jpg") for r in rows)
    assert all(r["prompt"].startswith("Please solve the problem step by step") for r in rows)


@pytest.mark.parametrize("name,count", [("math500", 500), ("aime24", 30), ("aime25", 30), ("amc23", 40), ("hmmt25", 30)])
def test_show_text_sets(capsys, fixtures_dir, name, count):
    code, rows, _ = _show(capsys, name, "--source", str(fixtures_dir / "text_math"), "--template", "plain")
    assert code == 0 and len(rows) == count and all(r["images"] == [] for r in rows)
    assert all(r["prompt"] == r["question"].strip() for r in rows)


def test_show_mathvista(capsys, fixtures_dir):
    source = str(fixtures_dir / "mathvista" / "testmini.json")
    code, rows, err = _show(capsys, "mathvista", "--source", source)
    assert code == 1 and rows == []
    assert "testmini.json: row 1: field 'image': image file not found" in err
    code, rows, err = _show(capsys, "mathvista", "--source", source, "--option", "require_images=false",
                            "--template", "mathvista", "--limit", "30")
    assert code == 0 and len(rows) == 30 and "kept 995 row(s) text-only" in err
    code, rows, err = _show(capsys, "mathvista", "--source", source, "--skip-bad")
    assert code == 0 and [r["id"] for r in rows] == ["106", "225", "540", "824", "852"]
    assert "skipped 995 bad row(s)" in err and "5 image(s) decoded" in err


def test_show_mathverse_files(capsys, fixtures_dir):
    code, rows, _ = _show(capsys, "mathverse", "--source", str(fixtures_dir / "mathverse" / "testmini_text_only.json"),
                          "--template", "mathverse")
    assert code == 0 and len(rows) == 788 and rows[0]["prompt"] == rows[0]["metadata"]["query_cot"]
    code, rows, err = _show(capsys, "mathverse", "--source", str(fixtures_dir / "mathverse" / "output_testmini_template.json"),
                            "--option", "require_images=false")
    assert code == 0 and len(rows) == 5 and "kept 5 row(s) without their image" in err


def test_show_geosynth(capsys):
    code, rows, err = _show(capsys, "geosynth", "--split", "test", "--option", "n=3", "--option", "difficulty=2",
                            "--template", "direct_boxed")
    assert code == 0 and len(rows) == 3 and rows[0]["images"] == ["<in-memory 112x112>"]
    assert "3 image(s) decoded" in err


def _dataset_with_corrupt_image(fixtures_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "geometry3k"
    for problem in ("11", "12"):
        shutil.copytree(fixtures_dir / "geometry3k" / problem, root / problem)
    png = root / "12" / "img_diagram.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])  # header and the first image chunks intact, the rest of the pixels cut off
    return root


def test_corrupt_image_is_named(capsys, fixtures_dir, tmp_path):
    root = _dataset_with_corrupt_image(fixtures_dir, tmp_path)
    code, rows, err = _show(capsys, "geometry3k", "--source", str(root))
    assert code == 1 and [r["id"] for r in rows] == ["11"]  # printed up to the bad one, then stopped
    assert f"error: {root / '12' / 'img_diagram.png'}: row 12: field 'images': cannot decode image" in err
    code, rows, err = _show(capsys, "geometry3k", "--source", str(root), "--skip-bad")
    assert code == 0 and [r["id"] for r in rows] == ["11"]
    assert "skipped geometry3k/12" in err and "1 row(s) skipped" in err


def test_console_entry_point_exit_status(fixtures_dir, tmp_path):
    root = _dataset_with_corrupt_image(fixtures_dir, tmp_path)
    done = subprocess.run([sys.executable, "-m", "mhpo_vl.cli", "data", "show", "geometry3k", "--source", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"{root / '12' / 'img_diagram.png'}: row 12: field 'images': cannot decode image" in done.stderr


def test_unreadable_image_is_named_at_load(capsys, fixtures_dir, tmp_path):
    """A file that is not an image at all fails when the dataset is read, naming the row's file and field."""
    root = tmp_path / "geometry3k"
    shutil.copytree(fixtures_dir / "geometry3k" / "11", root / "11")
    (root / "11" / "img_diagram.png").write_bytes(b"<html>not found</html>")
    code, rows, err = _show(capsys, "geometry3k", "--source", str(root))
    assert code == 1 and rows == []
    assert f"error: {root / '11' / 'data.json'}: field 'img_diagram.png': not a readable image" in err


def test_overlap(capsys, fixtures_dir):
    g = fixtures_dir / "geometry3k"
    assert main(["data", "overlap", f"geometry3k:{g}@train", f"geometry3k:{g / 'hf_format.jsonl'}"]) == 0
    captured = capsys.readouterr()
    pairs = [json.loads(line) for line in captured.out.splitlines()]
    assert [(p["kind"], p["train"]["id"], p["eval"]["id"], p["image_distance"]) for p in pairs] == [
        ("text+image", str(i), str(i), 0) for i in range(11, 21)]
    assert "10 of 10 eval problem(s) have a near-duplicate" in captured.err

    # MathVerse testmini vs MathVista testmini (no images here, so text evidence only): MathVista pid 28 is
    # Geometry3K test problem 2462 and appears in MathVerse as problem 253.
    verse = fixtures_dir / "mathverse" / "testmini_text_only.json"
    vista = fixtures_dir / "mathvista" / "testmini.json"
    assert main(["data", "overlap", f"mathverse:{verse}", f"mathvista:{vista}", "--eval-option", "require_images=false"]) == 0
    pairs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ("253", "28") in {(p["train"]["id"], p["eval"]["id"]) for p in pairs}
    assert all(p["kind"] == "text" and p["text_similarity"] >= 0.8 for p in pairs)
    assert len(pairs) == 9
