"""``<out>/summary.json``, ``<out>/summary.md`` and ``<out>/figures/<setting>.png`` from a study's run folders (and
``figures/reuse_boundary.png`` when two or more points of the reuse sweep have finished)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mhpo_vl.study.aggregate import (
    COLUMNS,
    DEFINITIONS,
    PAIRED_KEYS,
    group_records,
    paired_differences,
    reuse_boundary,
    run_record,
)
from mhpo_vl.study.figures import plot_reuse_boundary, plot_setting
from mhpo_vl.study.plan import LONG, REUSE, STRESS, Plan

# Which extreme each column shows next to mean +- std: the worst seed (lowest accuracy, largest drop/norm/spikes).
EXTREME = {"val_accuracy_initial": "min", "val_accuracy_final": "min", "val_accuracy_best": "min", "drop": "max", "late_min": "min",
           "max_grad_norm": "max", "spikes": "max", "skipped_updates": "max"}
DIGITS = {"max_grad_norm": 3, "spikes": 1, "skipped_updates": 1}


def build_report(plan: Plan) -> dict[str, Path]:
    records = [run_record(run) for run in plan.runs()]
    groups = group_records(plan, records)
    figures = {s: plot_setting(plan, s, plan.out_dir / "figures" / f"{s}.png") for s in plan.settings}
    boundary = reuse_boundary(records)
    figures["reuse_boundary"] = plot_reuse_boundary(boundary, plan.out_dir / "figures" / "reuse_boundary.png")
    paired = paired_differences(plan, records)
    summary = {"study": plan.to_json(), "definitions": DEFINITIONS, "groups": groups, "reuse_boundary": boundary,
               "paired": paired, "runs": records}
    json_path = plan.out_dir / "summary.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    md_path = plan.out_dir / "summary.md"
    md_path.write_text(render_markdown(plan, groups, records, figures, boundary, paired))
    return {"summary.json": json_path, "summary.md": md_path,
            **{f"figure {s}": p for s, p in figures.items() if p is not None}}


def render_markdown(plan: Plan, groups: list[dict[str, Any]], records: list[dict[str, Any]],
                    figures: dict[str, Path | None], boundary: list[dict[str, Any]] | None = None,
                    paired: list[dict[str, Any]] | None = None) -> str:
    base = f"Base config `{plan.base_config}`" + (f" with `{' '.join(plan.user_overrides)}`" if plan.user_overrides else "")
    lines = [f"# Study `{plan.out_dir}`", "",
             f"{base}; seeds {', '.join(map(str, plan.seeds))} (`trainer.seed` = `data.seed` = the seed). "
             f"Rebuild this page: `mhpo-vl study --summarize-only --output-dir {plan.out_dir}`.", "", "## Settings", ""]
    for setting, overrides in plan.settings.items():
        what = " ".join(f"`{o}`" for o in overrides) if overrides else "the base config as is"
        lines.append(f"- **{setting}**: {what}")
    lines += ["", f"(stress = {json.dumps(STRESS)}: each step's rollouts feed several optimiser steps, so the "
              "policy moves away from the one that sampled them and ratios leave 1; long = "
              f"{json.dumps(LONG)}: near on-policy on a harder task for 4x the steps, where the paper's claim is "
              f"made; reuse = {json.dumps(REUSE)}: reuseN takes N optimiser steps (epochs x minibatches) per "
              "rollout batch at the demo's learning rate.)", "", "## Losses", "",
              "| label | loss | scale on the policy term |", "|---|---|---|"]
    lines += [f"| {v.label} | {v.loss} | {v.scale:.6g} |" for v in plan.variants]
    for setting in plan.settings:
        lines += ["", f"## Results: {setting}", "", _group_table([g for g in groups if g["setting"] == setting])]
        if figures.get(setting):
            lines += ["", f"![{setting}](figures/{setting}.png)"]
    if boundary:
        lines += ["", "## The reuse boundary", "", _boundary_table(boundary)]
        if figures.get("reuse_boundary"):
            lines += ["", "![reuse boundary](figures/reuse_boundary.png)"]
    if paired and any(e["seeds"] or e["unpaired"] for e in paired):
        lines += ["", "## Paired by seed", "", _paired_table(paired)]
        lines += [f"- {e['setting']}, {e['reference']} - {e['other']}: seed {u['seed']} unpaired (starts "
                  f"{u['starts'][0]:.3f} / {u['starts'][1]:.3f}; CPU {u['cpus'][0] or '-'} / {u['cpus'][1] or '-'})"
                  for e in paired for u in e["unpaired"]]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    lines += ["", "## Every run", "", _run_table(records)]
    return "\n".join(lines) + "\n"


def _group_table(groups: list[dict[str, Any]]) -> str:
    head = "| loss | runs done (diverged) / planned | " + " | ".join(title for _, title in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for g in groups:
        cells = [_cell(key, g["stats"][key]) for key, _ in COLUMNS]
        rows.append(f"| {g['loss']} | {g['runs_done']} ({g['runs_diverged']}) / {g['runs_planned']} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def _boundary_table(entries: list[dict[str, Any]]) -> str:
    """Per loss and optimiser steps per rollout batch: seeds that end at or above their start, then start, final,
    min last 20% and drop as mean +- std (worst seed)."""
    keys = ("val_accuracy_initial", "val_accuracy_final", "late_min", "drop")
    rows = ["| loss | optimiser steps per batch (setting) | seeds ending >= start | start | final | min last 20% | "
            "drop best->final |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        rows.append(f"| {e['loss']} | {e['steps_per_batch']} ({e['setting']}) | {e['held']} of {len(e['seeds'])} | "
                    + " | ".join(_cell(k, e[k]) for k in keys) + " |")
    return "\n".join(rows)


def _paired_table(paired: list[dict[str, Any]]) -> str:
    """One row per (setting, other loss, measure): reference - other per seed and over the pairs."""
    rows = ["| setting | difference | measure | pairs (seeds) | per seed | mean ± std | 95% interval (paired t) | "
            "above / below / level | sign test p |", "|" + "---|" * 9]
    for e in paired:
        if not e["seeds"]:
            continue
        for key, title in PAIRED_KEYS:
            d = e[key]
            if not d["n"]:
                continue
            per_seed = ", ".join(f"{x:+.3f}" for x in d["diffs"])
            mean = f"{d['mean']:+.3f}" + (f" ± {d['std']:.3f}" if d["std"] is not None else "")
            ci = f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else "-"
            rows.append(f"| {e['setting']} | {e['reference']} - {e['other']} | {title} | {d['n']} "
                        f"({', '.join(map(str, e['seeds']))}) | {per_seed} | {mean} | {ci} | "
                        f"{d['above']} / {d['below']} / {d['level']} | {d['sign_p']:.3g} |")
    return "\n".join(rows)


def _cell(key: str, s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    digits = DIGITS.get(key, 3)
    text = f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")
    extreme = EXTREME.get(key)
    if extreme and s["n"] > 1:
        text += f" ({extreme} {s[extreme]:.{digits}f})"
    return text


def _run_table(records: list[dict[str, Any]]) -> str:
    keys = ["val_accuracy_initial", "val_accuracy_final", "val_accuracy_best", "drop", "late_min", "max_grad_norm"]
    rows = ["| setting | loss | seed | status | steps | start | final | best | drop | min last 20% | max grad norm | "
            "spike steps | seconds | CPU |", "|" + "---|" * 14]
    for r in records:
        nums = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in keys]
        spikes = ", ".join(map(str, r.get("spike_steps", []))) or "-"
        seconds = f"{r['wall_seconds']:.0f}" if r.get("wall_seconds") is not None else "-"
        rows.append(f"| {r['setting']} | {r['loss']} | {r['seed']} | {r['status']} | {r.get('steps', '-')} | "
                    + " | ".join(nums) + f" | {spikes} | {seconds} | {r.get('cpu') or '-'} |")
    return "\n".join(rows)
