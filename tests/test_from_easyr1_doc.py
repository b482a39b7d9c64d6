"""docs/from_easyr1.md cannot drift: every key its tables name in the "ours" column is a field of RunConfig (a dotted
path through the dataclasses), every single default written beside one key is the schema's default, and the
command it gives for "EasyR1's GRPO run, here" loads."""
from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.config import RunConfig, load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "from_easyr1.md"
MISSING = object()


def tables(text: str) -> list[list[dict[str, str]]]:
    """Each markdown table as rows of {header: cell}."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*-+\s*\|)+", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip()[1:-1])]
                assert len(cells) == len(header), f"{DOC.name}: row has {len(cells)} cells, not {len(header)}: {lines[i]}"
                rows.append(dict(zip(header, cells)))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def default_at(dotted: str) -> Any:
    """RunConfig()'s value at a dotted path, MISSING when some part is not a field."""
    node: Any = RunConfig()
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return MISSING
        node = getattr(node, part)
    return node


def our_keys(cell: str) -> list[str]:
    return [k for k in re.findall(r"`([^`]+)`", cell) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", k)]


def test_every_key_in_the_ours_column_exists_and_every_default_is_the_schemas():
    found = tables(DOC.read_text(encoding="utf-8"))
    mapping = [t for t in found if "ours" in t[0] and "our default" in t[0]]
    assert len(mapping) == 2, "expected the EasyR1 and the TRL table"
    checked_keys, checked_defaults = 0, 0
    for table in mapping:
        for row in table:
            keys = our_keys(row["ours"])
            if row["ours"] != "none":
                assert keys, f"the ours cell names no key: {row}"
            for key in keys:
                assert default_at(key) is not MISSING, f"{DOC.name}: {key} (row {row}) is not a RunConfig field"
                checked_keys += 1
            values = re.findall(r"`([^`]*)`", row["our default"])
            if len(keys) == 1 and len(values) == 1 and not dataclasses.is_dataclass(default_at(keys[0])):
                actual = default_at(keys[0])
                written = yaml.safe_load(values[0])
                if isinstance(actual, tuple):
                    actual = list(actual)
                if isinstance(actual, float) and not isinstance(written, bool):
                    written = float(written)  # YAML 1.1 reads 1e-06 as text
                assert written == actual, f"{DOC.name}: {keys[0]} default written {values[0]}, schema has {actual!r}"
                checked_defaults += 1
    assert checked_keys >= 70 and checked_defaults >= 50, (checked_keys, checked_defaults)


def test_the_checker_catches_a_wrong_key():
    assert default_at("rollout.top_p") is not MISSING and default_at("data.train.name") == "geometry3k"
    assert default_at("rollout.top_k") is MISSING and default_at("optim.lr.x") is MISSING
    assert our_keys("`rollout.val_temperature`, `0.6`") == ["rollout.val_temperature"]


def test_the_easyr1_today_command_loads(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index("# EasyR1's GRPO run as EasyR1 runs it today, here:"):]
    command = block[block.index("mhpo-vl train"):block.index("```")].replace("\\\n", " ")
    args = shlex.split(command)[2:]
    config, overrides = args[1], args[2:]
    repo = DOC.parent.parent
    cfg = load_config(repo / config, overrides)
    assert (cfg.algorithm.kl_coef, cfg.model.freeze_vision_tower, cfg.rollout.top_p) == (0.01, False, 1.0)
    assert (cfg.rollout.val_temperature, cfg.rollout.val_top_p, cfg.algorithm.aggregation) == (0.6, 0.95, "token-mean")
    assert cfg.algorithm.loss_params == {"eps_low": 0.2, "eps_high": 0.3, "dual_clip": True}


def test_every_differing_default_says_what_was_decided_and_why():
    """A row whose default differs says keep / changed, and gives its evidence after a colon; the defaults changed
    on 5 Dec 2026 (top_p, validation sampling) are recorded as changed."""
    rows = [r for t in tables(DOC.read_text(encoding="utf-8")) for r in t if "same? decision and evidence" in r]
    differing = [r for r in rows if r["same? decision and evidence"].startswith("differs")]
    assert len(differing) >= 10
    for r in differing:
        decision = r["same? decision and evidence"]
        assert re.match(r"differs, (keep|changed)[^:]*: \S.{4,}", decision), decision  # a decision, then its reason
    changed = {k for r in rows if "changed 5 Dec 2026" in r["same? decision and evidence"]
               or "same since 5 Dec 2026" in r["same? decision and evidence"] for k in our_keys(r.get("ours", ""))}
    assert {"rollout.top_p", "rollout.val_temperature", "rollout.val_top_p"} <= changed
