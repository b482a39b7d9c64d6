"""Bad input and output faults (issue 10, items 1, 4, 10, 11, 12, 14 and the scoring denominator): each test
reproduces what a user hit, then checks the behaviour they should get instead.

  1  `score --out` naming its own input emptied it; outputs are now renamed into place only when complete.
  4  a training prompt over data.max_prompt_length was found only when drawn; now every prompt is measured at load.
  10 config values were checked late or not at all; YAML and dataset errors were tracebacks; `base:` options stuck.
  11 invalid UTF-8 or a lone surrogate crashed `score` and left an empty output file.
  12 empty gold answers loaded silently.
  14 `eval` of a run's checkpoint ignored the run's image settings ("prompt token ids differ (153 vs 483)").
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from mhpo_vl.cli import main
from mhpo_vl.config import ConfigError, load_config, save_config

SCORE = ["score", "--benchmark", "math500", "--num-workers", "1"]
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo_cpu.yaml")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _summary(err: str) -> dict:
    return json.loads(next(line for line in err.splitlines() if line.startswith("{")))


# ------------------------------------------------------------------------- 1: score never truncates its input --

def test_score_refuses_out_naming_its_own_input_directly_or_through_links(tmp_path, capsys):
    predictions = _jsonl(tmp_path / "p.jsonl", [{"answer": "4", "response": "\\boxed{4}"}] * 3)
    before = predictions.read_bytes()
    symlink, hardlink = tmp_path / "sym.jsonl", tmp_path / "hard.jsonl"
    symlink.symlink_to(predictions)
    os.link(predictions, hardlink)
    for out in (predictions, symlink, hardlink, tmp_path / "sub" / ".." / "p.jsonl"):
        code = main([*SCORE, "--predictions", str(predictions), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--out {out} is the --predictions file ({predictions.resolve()})" in err
        assert predictions.read_bytes() == before


class _JsonFailingOnSecondWrite:
    """Stands in for the json module inside commands/score.py: the writer dies on the second output row."""

    JSONDecodeError = json.JSONDecodeError
    loads = staticmethod(json.loads)

    def __init__(self) -> None:
        self.calls = 0

    def dumps(self, obj, **kwargs):
        if isinstance(obj, dict) and "correct" in obj:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("writer died")
        return json.dumps(obj, **kwargs)


def test_a_score_run_that_fails_midway_leaves_the_previous_output_whole(tmp_path, monkeypatch):
    import mhpo_vl.commands.score as score

    predictions = _jsonl(tmp_path / "p.jsonl", [{"answer": "4", "response": "\\boxed{4}"}] * 3)
    out = tmp_path / "scored.jsonl"
    out.write_text("the previous complete output\n")
    monkeypatch.setattr(score, "json", _JsonFailingOnSecondWrite())
    with pytest.raises(RuntimeError, match="writer died"):
        main([*SCORE, "--predictions", str(predictions), "--out", str(out)])
    assert out.read_text() == "the previous complete output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "scored.jsonl"]  # no temporary file left


def test_atomic_output_replaces_a_symlink_target_and_keeps_the_mode(tmp_path):
    from mhpo_vl.runs.atomic_io import atomic_text_output

    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with atomic_text_output(link) as handle:
        handle.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------ 11: bad bytes and lone surrogates --

def test_invalid_utf8_is_a_bad_row_naming_line_and_field(tmp_path, capsys):
    good = json.dumps({"answer": "4", "response": "\\boxed{4}"}).encode()
    bad = b'{"answer": "5", "response": "caf\xe9 \\\\boxed{5}"}'  # Latin-1 bytes in a UTF-8 file
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b"\n".join([good, bad, good]) + b"\n")
    out = tmp_path / "out.jsonl"
    code = main([*SCORE, "--predictions", str(predictions), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{predictions} line 2: invalid UTF-8 in field 'response' (byte 0xe9, the line's byte 33)" in err
    assert not out.exists()
    code = main([*SCORE, "--predictions", str(predictions), "--out", str(out), "--skip-bad-rows"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == [True, True]
    assert _summary(err)["bad_rows_skipped"] == 1


def test_a_lone_surrogate_is_scored_and_written_back_exactly(tmp_path, capsys):
    # "\ud83d" alone: the first half of an emoji cut off by a length limit. Valid JSON, not encodable as UTF-8.
    cut = '{"answer": "4", "response": "so \\ud83d \\\\boxed{4}"}'
    accented = {"answer": "7", "response": "réponse \\boxed{7}"}
    predictions = _jsonl(tmp_path / "p.jsonl", [cut, accented])
    out = tmp_path / "out.jsonl"
    code = main([*SCORE, "--predictions", str(predictions), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    first, second = map(json.loads, lines)
    assert first["response"] == "so \ud83d \\boxed{4}" and first["correct"] is True
    assert second["correct"] is True and "réponse" in lines[1]  # other rows keep their text unescaped
    assert _summary(err)["rows_written_with_ascii_escapes"] == 1


def test_skipped_rows_and_the_denominator_are_stated(tmp_path, capsys):
    rows = [{"answer": "4", "response": "\\boxed{4}"}, {"answer": "4", "response": "\\boxed{5}"},
            {"response": "\\boxed{1}"}]  # the third lacks its gold answer
    predictions = _jsonl(tmp_path / "p.jsonl", rows)
    code = main([*SCORE, "--predictions", str(predictions), "--out", str(tmp_path / "o.jsonl"), "--skip-bad-rows"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = _summary(err)
    assert (summary["scored"], summary["correct"], summary["accuracy"]) == (2, 1, 0.5)
    assert summary["bad_rows_skipped"] == 1 and summary["accuracy_with_skipped_as_wrong"] == pytest.approx(1 / 3, abs=1e-6)
    assert "scored rows (1 skipped bad rows not counted)" == summary["accuracy_denominator"]
    assert "accuracy 1/2 is over the scored rows only: 1 bad row(s) were skipped" in err


# ------------------------------------------------------------------------------------- 10: config checks --

@pytest.mark.parametrize("overrides, key", [
    (["optim.lr=-1"], "optim.lr must be > 0, got -1.0"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["optim.lr=.nan"], "optim.lr must be > 0, got nan"),
    (["rollout.temperature=0"], "rollout.temperature must be > 0"),
    (["rollout.top_p=0"], "rollout.top_p must be in (0, 1]"),
    (["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1]"),
    (["rollout.val_temperature=0"], "rollout.val_temperature must be > 0"),
    (["rollout.gpu_memory_utilization=1.2"], "rollout.gpu_memory_utilization must be in (0, 1]"),
    (["rollout.max_tokens=0"], "rollout.max_tokens must be >= 1"),
    (["trainer.total_steps=-1"], "trainer.total_steps must be >= 1, got -1"),
    (["trainer.total_steps=0"], "trainer.total_steps must be >= 1, got 0"),
    (["trainer.keep_last=0"], "trainer.keep_last must be >= 1"),
    (["trainer.val_every=-2"], "trainer.val_every must be >= 0"),
    (["data.max_prompt_length=0"], "data.max_prompt_length must be > 0"),
    (["data.min_pixels=5000", "data.max_pixels=4000"], "data.min_pixels (5000) must be <= data.max_pixels (4000)"),
    (["reward.accuracy_weight=-0.5"], "reward.accuracy_weight must be >= 0"),
    (["reward.accuracy_weight=0", "reward.format_weight=0"], "reward.accuracy_weight + reward.format_weight"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas must be two numbers in [0, 1)"),
    (["warmstart.batch_size=0"], "warmstart.batch_size must be >= 1"),
    (["data.train.options={n: 5}"], "data.train: unknown option(s) n for dataset 'geometry3k'"),
    (["data.val.name=geometry4k"], "data.val: unknown dataset 'geometry4k'"),
    (["data.template=reason_boxd"], "data.template: unknown prompt template 'reason_boxd'"),
    (["algorithm.loss_params={c: -1.0}"], "algorithm.loss='mhpo' / algorithm.loss_params"),
])
def test_out_of_range_values_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert key in str(info.value)


def test_yaml_syntax_error_is_one_line_naming_file_and_line_then_traceback_with_verbose(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dtype: float32\ndata:\n  train: {name: geosynth\n  template: plain\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mhpo-vl train: error: config {bad}: invalid YAML (line 5, column 11: while parsing a flow mapping")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["train", "--verbose", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "invalid YAML (line 5" in err.splitlines()[-1]


def test_bad_override_value_is_a_config_error(capsys):
    assert main(["train", "--config", DEMO, "rollout.n=[1,"]) == 2
    assert "override 'rollout.n=[1,': the value is not valid YAML" in capsys.readouterr().err


def test_a_dataset_error_in_train_is_one_line(tmp_path, capsys, tiny_vl_model_dir):
    from run_helpers import small_overrides

    args = small_overrides(tiny_vl_model_dir, tmp_path / "run", **{
        "data.train": f"{{name: geometry3k, source: {tmp_path / 'nowhere.jsonl'}, split: train}}",
        "rollout.backend": "hf"})
    assert main(["train", "--config", DEMO, *args]) == 2
    err = capsys.readouterr().err
    # A failure inside the run first shows the tail of logs/train.log (library output, which may hold anything),
    # then our error: that part is one line, with no traceback unless --verbose.
    ours = err.split("the error follows ----")[-1]
    assert f"mhpo-vl train: error: {tmp_path / 'nowhere.jsonl'}: source not found" in ours and "Traceback" not in ours


def test_a_child_config_switching_datasets_does_not_inherit_the_base_options(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {
        "train": {"name": "geosynth", "split": "train", "limit": 50, "options": {"n": 200, "difficulty": 2}},
        "val": {"name": "geosynth", "split": "val", "options": {"n": 16}}}}))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ndata:\n  train: {name: geometry3k, source: g3k.jsonl}\n"
                     "  val: {options: {seed: 3}}\n")
    cfg = load_config(child)
    assert (cfg.data.train.name, cfg.data.train.source, cfg.data.train.options) == ("geometry3k", "g3k.jsonl", {})
    assert cfg.data.train.limit is None and cfg.data.train.split == "train"  # the spec's defaults, not the base's
    assert cfg.data.val.options == {"n": 16, "seed": 3}  # same dataset: deep-merged as before
    # An override that switches datasets behaves the same; one that keeps the name merges.
    cfg = load_config(child, ["data.val.name=math500"])
    assert (cfg.data.val.name, cfg.data.val.options, cfg.data.val.split) == ("math500", {}, "test")
    cfg = load_config(child, ["data.train.limit=7"])
    assert (cfg.data.train.name, cfg.data.train.source, cfg.data.train.limit) == ("geometry3k", "g3k.jsonl", 7)


# --------------------------------------------------------------------------------- 12: empty gold answers --

def test_empty_gold_answer_is_a_data_error_unless_skipped(tmp_path, capsys):
    from mhpo_vl.datasets import DataError, load_dataset

    rows = [{"id": 1, "problem": "1+1?", "answer": "2", "images": []},
            {"id": 2, "problem": "2+2?", "answer": "  ", "images": []},
            {"id": 3, "problem": "3+3?", "answer": "", "images": []}]
    source = _jsonl(tmp_path / "g3k.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_dataset("geometry3k", str(source), "train")
    assert str(info.value) == f"{source}: row 2: field 'answer': empty gold answer ('') for sample '2'; every problem needs one"
    loaded = load_dataset("geometry3k", str(source), "train", skip_bad=True)
    assert [s.id for s in loaded] == ["1"] and [s.row for s in loaded.skipped] == [2, 3]
    err = capsys.readouterr().err
    assert "skipped 2 bad row(s)" in err and "row 3: field 'answer': empty gold answer" in err


def test_column_mapping_names_its_own_answer_column(tmp_path):
    from mhpo_vl.datasets import DataError, load_dataset

    source = _jsonl(tmp_path / "rows.jsonl", [{"q": "1+1?", "gold": "2"}, {"q": "2+2?", "gold": " "}])
    mapping = tmp_path / "map.yaml"
    mapping.write_text(f"data: {source}\ncolumns: {{question: q, answer: gold}}\n")
    with pytest.raises(DataError, match=r"row 2: field 'gold': empty gold answer"):
        load_dataset(str(mapping))


# ------------------------------------------------------------------------ 4: every prompt checked at load --

@pytest.fixture(scope="module")
def tiny_processor(tiny_vl_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl_model_dir)


def test_prompt_length_equals_the_encoded_length(tiny_processor, fixtures_dir):
    """The load-time check measures prompts without decoding pixels; it must agree with the real encoding."""
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.prompts import get_template

    samples = (list(load_dataset("geosynth", split="train", n=12, seed=0, difficulty=3))
               + list(load_dataset("geometry3k", str(fixtures_dir / "geometry3k" / "hf_format.jsonl"), "train"))
               + list(load_dataset("math500", str(fixtures_dir / "text_math")))[:4])
    lengths = set()
    for min_pixels, max_pixels, system in ((None, None, None), (3136, 3136, "Be brief."), (50_000, 400_000, None)):
        encoder = PromptEncoder(tiny_processor, get_template("reason_boxed"), max_prompt_length=10**6,
                                min_pixels=min_pixels, max_pixels=max_pixels, system_prompt=system)
        for sample in samples:
            length = encoder.prompt_length(sample)
            assert length == len(encoder.encode_one(sample).prompt_token_ids), (min_pixels, sample.id)
            lengths.add(length)
    assert len(lengths) > 10  # the cases really differ (image sizes, limits, text)


def _long_prompt_dataset(tmp_path: Path) -> Path:
    rows = [{"unique_id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    rows[4]["problem"] = "Add these numbers: " + " + ".join(["1"] * 200) + "."  # ~400 tokens
    return _jsonl(tmp_path / "math.jsonl", rows)


def test_a_too_long_training_prompt_stops_the_trainer_before_it_starts(tmp_path, tiny_vl_model_dir):
    from run_helpers import small_overrides

    from mhpo_vl.collate import PromptTooLongError
    from mhpo_vl.train import build_trainer

    source = _long_prompt_dataset(tmp_path)
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, tmp_path / "run", **{
        "data.train": f"{{name: math500, source: {source}}}", "rollout.backend": "hf"}))
    with pytest.raises(PromptTooLongError) as info:
        build_trainer(cfg)
    message = str(info.value)
    assert "prompt of sample math500/p4 is " in message and "over max_prompt_length=256 (data.train)" in message
    assert "data.skip_bad=true (mhpo-vl train --skip-bad)" in message
    assert info.value.length > 256 and info.value.sample_id == "p4"


def test_skip_bad_drops_too_long_prompts_and_lists_them(tmp_path, tiny_processor, capsys):
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.config import DataConfig, DatasetSpec
    from mhpo_vl.prompts import get_template
    from mhpo_vl.train.run_data import load_run_datasets

    source = str(_long_prompt_dataset(tmp_path))
    encoder = PromptEncoder(tiny_processor, get_template("direct_boxed"), max_prompt_length=256, use_images=True)
    data = DataConfig(train=DatasetSpec(name="math500", source=source), val=DatasetSpec(name="math500", source=source),
                      skip_bad=True)
    train, val = load_run_datasets(data, encoder)
    assert [s.id for s in train] == ["p0", "p1", "p2", "p3", "p5"] and [s.id for s in val] == [s.id for s in train]
    err = capsys.readouterr().err
    length = encoder.prompt_length(next(s for s in load_dataset_rows(source) if s.id == "p4"))
    assert f"data.train: skipped 1 of 6 prompt(s) over max_prompt_length=256 (data.skip_bad):\n  - math500/p4: {length} tokens" in err


def load_dataset_rows(source: str):
    from mhpo_vl.datasets import load_dataset

    return load_dataset("math500", source)


def test_an_image_the_encoder_refuses_is_a_bad_row_at_load(tmp_path, tiny_processor, capsys):
    from PIL import Image

    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.datasets import DataError, load_dataset
    from mhpo_vl.prompts import get_template
    from mhpo_vl.train.run_data import check_prompt_lengths

    Image.new("RGB", (64, 64), "white").save(tmp_path / "square.png")
    Image.new("RGB", (900, 3), "white").save(tmp_path / "strip.png")  # aspect ratio 300: qwen-vl-utils refuses > 200
    rows = [{"id": i, "images": [name], "problem": "<image>Find x.", "answer": "3"}
            for i, name in enumerate(["square.png", "strip.png", "square.png"])]
    samples = list(load_dataset("geometry3k", str(_jsonl(tmp_path / "g.jsonl", rows)), "train"))
    encoder = PromptEncoder(tiny_processor, get_template("plain"), max_prompt_length=512)
    with pytest.raises(DataError, match=r"row 1: field 'images': image .*strip.png \(900x3\): absolute aspect ratio"):
        check_prompt_lengths(encoder, samples, "data.train", skip_bad=False)
    kept = check_prompt_lengths(encoder, samples, "data.train", skip_bad=True)
    assert [s.id for s in kept] == ["0", "2"]
    assert "data.train: skipped geometry3k/1 (data.skip_bad)" in capsys.readouterr().err


def test_train_skip_bad_flag_sets_data_skip_bad(monkeypatch, capsys):
    import mhpo_vl.config

    seen = {}

    def load_and_stop(path, overrides):
        seen["cfg"] = load_config(path, overrides)
        raise ConfigError("stop before the trainer")

    monkeypatch.setattr(mhpo_vl.config, "load_config", load_and_stop)
    assert main(["train", "--config", DEMO, "--skip-bad"]) == 2
    assert seen["cfg"].data.skip_bad is True
    assert main(["train", "--config", DEMO]) == 2 and seen["cfg"].data.skip_bad is False


# ----------------------------------------------------------------- 14: eval of a run's checkpoint --

def _fake_run(tmp_path: Path, tiny_vl_model_dir: Path) -> Path:
    """A run directory as the trainer leaves it: config.yaml (the demo's image settings) and one checkpoint."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step_000002"
    shutil.copytree(tiny_vl_model_dir, checkpoint)
    cfg = load_config(DEMO, [f"trainer.output_dir={run}"])
    save_config(cfg, run / "config.yaml")
    return checkpoint


def _eval_args(checkpoint: Path, fixtures_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(checkpoint), "--benchmarks", "geometry3k", "--source",
            f"geometry3k={fixtures_dir / 'geometry3k' / 'hf_format.jsonl'}", "--split", "geometry3k=train",
            "--limit", "2", "--n", "1", "--max-tokens", "4", "--dtype", "float32", "--max-prompt-length", "1024",
            "--no-progress", "--output-dir", str(out), *extra]


def test_eval_of_a_checkpoint_reuses_the_runs_image_settings(tmp_path, tiny_vl_model_dir, fixtures_dir, capsys):
    checkpoint = _fake_run(tmp_path, tiny_vl_model_dir)
    out = tmp_path / "eval"
    assert main(_eval_args(checkpoint, fixtures_dir, out, "--backend", "hf")) == 0
    err = capsys.readouterr().err
    settings = json.loads((out / "geometry3k" / "run.json").read_text())
    assert settings["pixels"] == [None, None]  # demo_cpu.yaml: the processor's own limits, as in training
    assert settings["template"] == "direct_boxed"  # geometry3k uses the training prompt: the run's
    assert f"{checkpoint} is a checkpoint of the run {checkpoint.parent.parent}: using its data.min_pixels=null" in err
    # Explicit flags win, and a model outside a run keeps the eval defaults.
    out2 = tmp_path / "eval2"
    assert main(_eval_args(checkpoint, fixtures_dir, out2, "--backend", "hf", "--min-pixels", "3136",
                           "--template", "geometry3k=plain")) == 0
    settings = json.loads((out2 / "geometry3k" / "run.json").read_text())
    assert settings["pixels"] == [3136, None] and settings["template"] == "plain"


def test_pixel_limits_outside_the_models_processor_are_refused_before_vllm_starts(tiny_processor):
    from mhpo_vl.collate import check_pixels_match_processor

    check_pixels_match_processor(tiny_processor.image_processor, None, None, "tiny")
    check_pixels_match_processor(tiny_processor.image_processor, 3136, 12544, "tiny")
    with pytest.raises(ValueError, match=r"image pixel limits 262144\.\.4194304 are outside tiny's own image "
                                         r"processor limits 3136\.\.12544"):
        check_pixels_match_processor(tiny_processor.image_processor, 262144, 4194304, "tiny")


@pytest.mark.slow
def test_eval_of_a_demo_checkpoint_with_vllm_and_default_flags(tmp_path, tiny_vl_model_dir, fixtures_dir, capsys):
    """The reported failure: vLLM's prompt ids differed from the encoder's (the eval default pixel limits resized the
    images past the tiny processor's own, and vLLM resized them again). With the run's settings it samples."""
    checkpoint = _fake_run(tmp_path, tiny_vl_model_dir)
    code = main(_eval_args(checkpoint, fixtures_dir, tmp_path / "eval"))
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["benchmarks"]["geometry3k"]["metrics"]["problems"] == 2


def test_every_subcommand_takes_verbose():
    import argparse

    from mhpo_vl.cli import SUBCOMMANDS, build_parser

    for name in SUBCOMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        assert "--verbose" in sub._option_string_actions, name
    argv = ["data", "show", "geosynth", "--verbose"]
    assert build_parser(argv).parse_args(argv).verbose
