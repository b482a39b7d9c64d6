"""The RL loop without a model to load or an engine to start: `build_trainer` is given a sampler that returns fixed
completions, a reward that scores them by their text, a prompt encoder with fixed token ids and a tiny in-process
torch language model; the runtime, the loss, the update and the run directory are the real ones. Seconds."""
import time
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo  # noqa: F401  (the first optimiser of a process imports it, ~4 s here: paid at collection)

from mhpo_vl.config import load_config
from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.train.parts import make_loss
from mhpo_vl.types import Completion, EncodedPrompt, Sample

RIGHT, WRONG = [5, 6, 7], [8, 9]  # token ids of a right and of a wrong completion (different lengths)


class TinyBase(torch.nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.mix = torch.nn.Linear(hidden, hidden)

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, **_):
        mask = attention_mask[..., None].float()
        h = self.embed(input_ids) * mask
        causal = h.cumsum(1) / mask.cumsum(1).clamp(min=1)  # each position sees itself and what came before
        return SimpleNamespace(last_hidden_state=h + torch.tanh(self.mix(causal)))


class TinyLM(torch.nn.Module):
    """What per_token_logprobs needs of a causal LM: `.model(...)` -> last_hidden_state, an output embedding."""

    def __init__(self, vocab: int = 16, hidden: int = 8):
        super().__init__()
        self.config = SimpleNamespace()  # no vision_config: a text model
        self.model = TinyBase(vocab, hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def get_output_embeddings(self):
        return self.lm_head


class FixedEncoder:
    def encode(self, samples):
        return [EncodedPrompt(s, s.question, [1, 2 + int(s.id) % 3]) for s in samples]


class FixedSampler:
    """Group k of a prompt: completion 0 right, the others wrong; prompts whose id is in `all_wrong` get only
    wrong ones (a zero-variance group)."""

    def __init__(self, all_wrong=()):
        self.all_wrong, self.prompts_seen, self.weight_syncs = set(all_wrong), [], 0

    def generate(self, prompts, config):
        self.prompts_seen.extend(p.sample.id for p in prompts)
        right = Completion("right", RIGHT, None, "stop")
        wrong = Completion("wrong", WRONG, None, "stop")
        return [[right if k == 0 and p.sample.id not in self.all_wrong else wrong for k in range(config.n)]
                for p in prompts]

    def load_weights(self, named_tensors):
        self.weight_syncs += 1
        return sum(1 for _ in named_tensors)

    def wake_up(self):
        pass

    def sleep(self):
        pass

    def close(self):
        pass


def fixed_reward(samples, texts, truncated=None):
    verdicts = [SimpleNamespace(correct=t == "right", format_ok=True) for t in texts]
    return SimpleNamespace(rewards=[1.0 if v.correct else 0.0 for v in verdicts], verdicts=verdicts)


class RecordingLoss:
    """The configured loss, recording the global normalisers and rows of each call."""

    def __init__(self, loss_fn):
        self.loss_fn, self.calls = loss_fn, []

    def __call__(self, logprobs, old, adv, mask, **kwargs):
        self.calls.append((kwargs["global_num_tokens"], kwargs["global_num_seqs"], int(mask.sum()), len(adv)))
        return self.loss_fn(logprobs, old, adv, mask, **kwargs)


def make_trainer(tmp_path, *overrides, sampler=None, seed=0, loss_fn=None):
    from mhpo_vl.train import build_trainer

    cfg = load_config(None, [
        f"trainer.output_dir={tmp_path}", "trainer.device=cpu", "trainer.num_threads=1", "rollout.n=2",
        "trainer.rollout_batch_size=4", "trainer.minibatch_size=2", "trainer.micro_batch_size=2",
        "trainer.logprob_micro_batch_size=3", "algorithm.loss=grpo", "optim.lr=0.05", "optim.weight_decay=0.0",
        *overrides])
    torch.manual_seed(seed)
    samples = [Sample(id=str(i), source="fake", split="train", question=f"q{i}", answer="right") for i in range(8)]
    policy = SimpleNamespace(model=TinyLM(), processor=None, tokenizer=SimpleNamespace(pad_token_id=0))
    return build_trainer(cfg, policy=policy, encoder=FixedEncoder(), datasets=(samples, samples[:2]),
                         reward_fn=fixed_reward, sampler=sampler or FixedSampler(), loss_fn=loss_fn)


def test_a_trainer_built_from_fakes_runs_two_steps_in_seconds(tmp_path):
    started = time.perf_counter()
    sampler = FixedSampler()
    trainer = make_trainer(tmp_path, sampler=sampler)
    before = {n: p.detach().clone() for n, p in trainer.rt.unwrapped().named_parameters()}
    rows = [trainer.step(), trainer.step()]
    trainer.close()
    assert time.perf_counter() - started < 5
    assert trainer.step_idx == 2 and sampler.weight_syncs == 2 and len(sampler.prompts_seen) == 8
    for m in rows:  # one right, one wrong answer per prompt: reward 0.5, advantages +-1/sqrt(2) (unbiased std)
        assert m["reward/mean"] == 0.5 and m["groups/zero_variance"] == 0 and m["groups/count"] == 4
        assert m["advantage/abs_mean"] == pytest.approx(2 ** -0.5, rel=1e-5)
        assert m["updates/applied"] == 2 and m["updates/skipped_nonfinite"] == 0 and m["grad_norm"] > 0
        assert m["response/length_mean"] == 2.5 and m["rollout/logprob_diff_mean"] != m["rollout/logprob_diff_mean"]
    assert rows[0]["loss/ratio_mean"] == pytest.approx(1.0, abs=0.05)  # the first minibatch is on-policy
    after = dict(trainer.rt.unwrapped().named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)


def test_scored_rollouts_carry_group_advantages(tmp_path):
    trainer = make_trainer(tmp_path, sampler=FixedSampler(all_wrong={"1"}))
    rollouts = trainer.generate(trainer.encoder.encode(trainer.train_samples[:2]))
    batch = trainer.compute_advantages(trainer.reward(rollouts))
    trainer.close()
    assert batch.rewards_N.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert batch.advantages_N.tolist() == pytest.approx([2 ** -0.5, -(2 ** -0.5), 0.0, 0.0], rel=1e-5)
    assert [g.informative for g in batch.groups()] == [True, False]


def test_the_update_normalises_by_the_minibatch_token_count_so_micro_batching_changes_nothing(tmp_path):
    """token-mean: every micro-batch's loss is divided by the token count of its whole minibatch, so the gradient
    (and the weights after the update) do not depend on how the minibatch is split into micro-batches."""
    results = []
    for micro in (1, 2):
        loss = RecordingLoss(make_loss(load_config(None, ["algorithm.loss=grpo"])))
        trainer = make_trainer(tmp_path / str(micro), f"trainer.micro_batch_size={micro}", loss_fn=loss)
        batch = trainer.compute_advantages(trainer.reward(trainer.generate(trainer.encoder.encode(
            trainer.train_samples[:4]))))
        stats = trainer.update(batch, trainer.compute_old_logprobs(batch.rollouts))
        trainer.close()
        # 2 minibatches of 4 rows (2 prompts x 2): each call is normalised by its minibatch's tokens and rows
        per_minibatch = 4 // micro
        for first in (0, per_minibatch):
            calls = loss.calls[first : first + per_minibatch]
            assert {(tokens, seqs) for tokens, seqs, _, _ in calls} == {(sum(c[2] for c in calls), 4.0)}
        assert sum(c[3] for c in loss.calls) == 8 and sum(c[2] for c in loss.calls) == 20
        results.append((stats, {n: p.detach().clone() for n, p in trainer.rt.unwrapped().named_parameters()}))
    (one, w_one), (two, w_two) = results
    assert one.applied == two.applied == 2 and len(one.minibatch_losses) == 2
    assert one.minibatch_losses == pytest.approx(two.minibatch_losses, abs=1e-6)
    for name in w_one:
        torch.testing.assert_close(w_one[name], w_two[name], rtol=1e-5, atol=1e-7)


def test_dynamic_sampling_refills_with_new_prompts_until_the_batch_is_informative(tmp_path):
    """Prompts 1 and 3 get only wrong answers: the step drops their groups and draws the next 4 prompts (4-7, of
    which 4 and 6 are informative) in one refill round; no group is repeated."""
    sampler = FixedSampler(all_wrong={"1", "3", "5", "7"})
    trainer = make_trainer(tmp_path, "algorithm.dynamic_sampling=true", "data.shuffle=false", sampler=sampler)
    metrics = trainer.step()
    trainer.close()
    assert sampler.prompts_seen == [str(i) for i in range(8)]
    assert metrics["dynamic_sampling/refill_rounds"] == 1 and metrics["dynamic_sampling/padded_groups"] == 0
    assert metrics["groups/zero_variance"] == 2  # of the first draw
    assert metrics["reward/mean"] == 0.5 and metrics["advantage/abs_mean"] == pytest.approx(2 ** -0.5, rel=1e-5)
    assert "timing/dynamic_sampling_s" in metrics


def test_nonfinite_losses_skip_the_update_and_stop_the_run(tmp_path):
    from mhpo_vl.train import TrainingDivergedError

    trainer = make_trainer(tmp_path, "trainer.max_consecutive_nonfinite=3")
    before = {n: p.detach().clone() for n, p in trainer.rt.unwrapped().named_parameters()}
    batch = trainer.compute_advantages(trainer.reward(trainer.generate(trainer.encoder.encode(
        trainer.train_samples[:4]))))
    old = trainer.compute_old_logprobs(batch.rollouts)
    nan_batch = batch.with_advantages(torch.full_like(batch.advantages_N, float("nan")))
    stats = trainer.update(nan_batch, old)
    assert (stats.applied, stats.skipped, trainer.nonfinite.total) == (0, 2, 2)
    assert all(torch.equal(before[n], p) for n, p in trainer.rt.unwrapped().named_parameters())
    assert trainer.update(batch, old).applied == 2 and trainer.nonfinite.in_a_row == 0
    trainer.update(nan_batch, old)
    with pytest.raises(TrainingDivergedError, match="3 updates in a row"):
        trainer.update(nan_batch, old)
    trainer.close()


def test_fit_validates_logs_and_summarises_without_a_model(tmp_path):
    import json

    trainer = make_trainer(tmp_path, "trainer.total_steps=2", "trainer.val_every=1", "trainer.save_every=0",
                           "rollout.val_n=2")
    summary = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "val/accuracy" in rows[0] and "reward/mean" in rows[2]
    assert [v["step"] for v in summary["val_history"]] == [0, 1, 2]
    assert summary["val_accuracy_initial"] == 0.5 and summary["steps"] == 2 and summary["nonfinite_updates"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    assert trainer.run_dir.lock is None  # fit closed the trainer and let go of the directory


def test_the_fakes_satisfy_the_part_protocols() -> None:
    """The seams are Protocols (mhpo_vl.train.interfaces): fakes need no base class. The methods are checked here at
    run time; the signatures by mypy, which CI runs over this file too (the typed assignments below)."""
    from mhpo_vl.train.interfaces import Closeable, Encoder, LossFn, RewardFn, Sampler

    sampler: Sampler = FixedSampler()
    encoder: Encoder = FixedEncoder()
    reward: RewardFn = fixed_reward
    recording = RecordingLoss(make_loss(load_config(None, ["algorithm.loss=grpo"])))
    loss: LossFn = recording
    assert isinstance(sampler, Sampler) and isinstance(sampler, Closeable)
    assert not isinstance(reward, Closeable)  # a plain function: the trainer has nothing to close
    samples = [Sample(id="0", source="fake", split="train", question="q0", answer="right")]
    prompts = encoder.encode(samples)
    groups = sampler.generate(prompts, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0))
    assert [[c.text for c in g] for g in groups] == [["right", "wrong"]]
    out = reward(samples * 2, ["right", "wrong"])
    assert list(out.rewards) == [1.0, 0.0] and [v.correct for v in out.verdicts] == [True, False]
    lp = torch.zeros(2, 3)
    result = loss(lp, lp, torch.tensor([1.0, -1.0]), torch.ones(2, 3), global_num_tokens=6.0, global_num_seqs=2.0)
    assert torch.isfinite(result.loss) and recording.calls == [(6.0, 2.0, 6, 2)]
