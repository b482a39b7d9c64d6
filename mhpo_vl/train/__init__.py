"""The RL training loop and its parts.

    from mhpo_vl.config import load_config
    from mhpo_vl.train import build_trainer
    build_trainer(load_config("configs/demo_cpu.yaml")).fit()

loop.py (Trainer: the step as named phases, fit), parts.py (build_trainer: each part from the config unless given),
interfaces.py (the Protocols of the parts), state.py (TrainState: what a checkpoint restores), checkpointing.py,
records.py (what each phase returns), advantages.py, dynamic_sampling.py, logprobs.py (old logprobs), update.py
(minibatches, micro-batch accumulation), micro_batches.py, lr_schedule.py, warmstart.py, data_order.py,
run_data.py (a run's datasets, every prompt checked).
"""
from mhpo_vl.train.interfaces import TrainerParts
from mhpo_vl.train.loop import Trainer
from mhpo_vl.train.parts import build_trainer
from mhpo_vl.train.records import Rollouts, ScoredRollouts
from mhpo_vl.train.update import TrainingDivergedError

__all__ = ["Rollouts", "ScoredRollouts", "Trainer", "TrainerParts", "TrainingDivergedError", "build_trainer"]
