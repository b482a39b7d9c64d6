"""`mhpo-vl plan-memory --config C --gpus N --gpu-memory GiB [key=value ...]`: the steady-state memory budget per
GPU of a run (mhpo_vl.train.memory_plan: each item, both phases of a step, the vLLM KV cache), whether it fits and
the largest rollout.gpu_memory_utilization that would. Exit 0 when it fits, 1 when it does not, 2 on a bad config."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs (= processes); default: the config's `# hardware: NxMGiB` header line")
    parser.add_argument("--gpu-memory", type=float, default=None,
                        help="GiB per GPU as torch reports it (an 80 GB H100 reports ~79.2); default: the header")
    parser.add_argument("overrides", nargs="*", help="config overrides as key.path=value")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.config import ConfigError, load_config
    from mhpo_vl.train.memory_plan import hardware_of, parse_hardware, plan_for_config

    cfg = load_config(args.config, list(args.overrides))
    gpus, gib = args.gpus, args.gpu_memory
    if gpus is None or gib is None:
        stated = hardware_of(args.config)
        hw = parse_hardware(stated) if stated else None
        if hw is None:
            raise ConfigError(f"{args.config}: give --gpus and --gpu-memory (the file states no GPU hardware: "
                              f"{stated or 'no # hardware: line'})")
        gpus, gib = gpus or hw[0], gib or hw[1]
    result = plan_for_config(cfg, gpus, gib)
    if result is None:
        raise ConfigError(f"{cfg.model.name_or_path}: no config.json found (local folder, Hugging Face cache) and not "
                          "a shipped model; download its config.json or give a local folder")
    print("\n".join(result.lines()))
    return 0 if result.fits else 1
