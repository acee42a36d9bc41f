"""K LoRA adapters trained together (seal_env.multi_lora) against K separate adapted() runs.

Tolerance. The joint passes compute the same sums in another order and shape (several rows per
pass, per-adapter loss sums), so results agree up to rounding:

* in float64 the adapter weights agree to ~1e-14 (measured), which shows the algorithm is the same;
  we assert 1e-9. Losses and log-likelihoods pass through float32 (``token_log_probs`` returns
  float32), so they agree to ~1e-6; we assert 1e-4.
* in float32 (what runs in practice) Adam magnifies rounding in elements whose gradient is tiny
  relative to its rounding error: such an element's update may differ by a fraction of the learning
  rate. Measured: at most 0.5% of one step (1.4e-4 at lr 3e-2); we assert 2% of the learning rate.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import weights_digest
from peft.tuners.lora import LoraLayer

from seal_env.inner_loop import InnerLoopConfig, TrainingPlan, adapted
from seal_env.lm import TrainingExample
from seal_env import multi_lora
from seal_env.multi_lora import MultiLoRALinear, adapted_many, pack_passes
from seal_env.scoring import answer_log_likelihoods

SCORE_ATOL = 1e-4

TEXTS = [
    "The Velmora Bridge was designed by Talia Okonkwe-Brandt.",
    "It opened in 1931.",
    "Its towers are pale green granite quarried at Mount Serrick, and its cables are brandtite.",
    "Locals call the ochre paint Velmora gold.",
    "On the first Sunday of June the bridge is closed to cars for the Strait Walk festival.",
]
PROMPTS = ["Who designed the Velmora Bridge?", "When did it open?"]
ANSWERS = ["Talia Okonkwe-Brandt", "1931"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def examples(*indices: int) -> list[TrainingExample]:
    return [TrainingExample(TEXTS[i]) for i in indices]


# Different example counts, lengths, epochs, batch sizes, learning rates, alphas and seeds.
def plans(jobs):
    """``(examples, config)`` pairs as the training plans adapted_many takes."""
    return [TrainingPlan(list(e), c) for e, c in jobs]


JOBS = [
    (examples(0, 1, 2), InnerLoopConfig(rank=4, epochs=2, learning_rate=1e-2, seed=0)),
    (examples(3, 4), InnerLoopConfig(rank=4, epochs=3, learning_rate=3e-2, alpha=16.0, seed=1)),
    (examples(0, 1, 2, 3, 4), InnerLoopConfig(rank=4, epochs=1, batch_size=2, learning_rate=1e-2, seed=0)),
]
# JOBS and one update with a step budget instead of epochs (1.5 passes over its examples).
JOBS_WITH_A_STEP_BUDGET = [*JOBS, (examples(1, 2), InnerLoopConfig(rank=4, max_steps=3, learning_rate=1e-2, seed=2))]


def peft_weights(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        name: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
        for name, m in peft_model.get_base_model().named_modules()
        if isinstance(m, LoraLayer)
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adapters_trained_together_match_separate_trainings(tiny_lm, dtype):
    model, tokenizer = tiny_lm
    model.to(dtype)
    separate = []
    for job_examples, config in JOBS_WITH_A_STEP_BUDGET:
        with adapted(model, tokenizer, job_examples, config) as run:
            scores = answer_log_likelihoods(run.model, tokenizer, PROMPTS, ANSWERS)
            separate.append((peft_weights(run.model), run.result, scores))

    with adapted_many(model, tokenizer, plans(JOBS_WITH_A_STEP_BUDGET)) as run:
        assert run.stats.steps == max(len(r.losses) for _, r, _ in separate)
        for adapter, (weights, result, scores) in enumerate(separate):
            atol = 1e-9 if dtype == torch.float64 else 0.02 * JOBS_WITH_A_STEP_BUDGET[adapter][1].learning_rate
            together = run.lora_weights(adapter)
            assert together.keys() == weights.keys()
            for name, (a, b) in weights.items():
                torch.testing.assert_close(together[name][0], a, atol=atol, rtol=0)
                torch.testing.assert_close(together[name][1], b, atol=atol, rtol=0)
            assert run.results[adapter].steps == result.steps
            assert run.results[adapter].losses == pytest.approx(result.losses, abs=SCORE_ATOL)
            assert run.results[adapter].epoch_losses == pytest.approx(result.epoch_losses, abs=SCORE_ATOL)
            assert run.results[adapter].n_train_tokens == result.n_train_tokens
            with run.route(adapter):
                assert answer_log_likelihoods(run.model, tokenizer, PROMPTS, ANSWERS) == pytest.approx(scores, abs=SCORE_ATOL)


def test_adapter_does_not_depend_on_the_other_adapters_rows(tiny_lm):
    model, tokenizer = tiny_lm
    model.double()  # exact up to 1e-14: any leak between adapters would show
    config = InnerLoopConfig(rank=4, epochs=2, learning_rate=1e-2)
    finals = []
    for other in (examples(1), examples(2, 3, 4)):
        with adapted_many(model, tokenizer, plans([(examples(0, 1), config), (other, config)])) as run:
            finals.append(run.lora_weights(0))
    for name, (a, b) in finals[0].items():
        torch.testing.assert_close(finals[1][name][0], a, atol=1e-9, rtol=0)
        torch.testing.assert_close(finals[1][name][1], b, atol=1e-9, rtol=0)


def test_rows_are_routed_through_their_own_adapter(tiny_lm):
    model, tokenizer = tiny_lm
    ids = tokenizer(["the bridge", "the river", "the towers"], return_tensors="pt")["input_ids"]
    with adapted_many(model, tokenizer, plans(JOBS)) as run, torch.no_grad():

        def logits(owners, rows):
            with run.route(owners):
                return run.model(input_ids=rows).logits

        alone = [logits(adapter, ids[row : row + 1]) for row, adapter in enumerate([0, 1, 1])]
        # Runs of unequal length (one pair of matmuls per run) and of equal length (batched matmuls).
        torch.testing.assert_close(logits([0, 1, 1], ids), torch.cat(alone), atol=1e-5, rtol=1e-5)
        # Equal runs through a subset of the adapters (gathered) and through all of them in order.
        expected = torch.cat([logits(2, ids[:1]), logits(0, ids[1:2])])
        torch.testing.assert_close(logits([2, 0], ids[:2]), expected, atol=1e-5, rtol=1e-5)
        expected = torch.cat([logits(adapter, ids[adapter : adapter + 1]) for adapter in range(3)])
        torch.testing.assert_close(logits([0, 1, 2], ids), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits(1, ids[:1]), alone[0])  # the adapters differ
        with pytest.raises(RuntimeError, match="route covers 2 rows"):
            logits([0, 1], ids)
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            logits([0, 3], ids[:2])
        with pytest.raises(RuntimeError, match="needs a route"):
            run.model(input_ids=ids)


def test_base_model_is_restored_bit_identical(tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with adapted_many(model, tokenizer, plans(JOBS)) as run:
        assert any(isinstance(m, MultiLoRALinear) for m in run.model.modules())
    assert weights_digest(model) == before
    assert not any(isinstance(m, MultiLoRALinear) for m in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert not model.training


def test_a_failing_adapter_stops_alone_with_the_sequential_error(tiny_lm):
    model, tokenizer = tiny_lm
    exploding = InnerLoopConfig(rank=4, epochs=3, learning_rate=1e30, max_grad_norm=0.0)
    with adapted(model, tokenizer, examples(0, 1), exploding) as run:
        expected = run.result.error
    assert expected and "non-finite training loss" in expected
    jobs = [
        (examples(0, 1), exploding),
        ([TrainingExample("")], InnerLoopConfig(rank=4)),  # only an end-of-text token: nothing to learn
        (examples(2), InnerLoopConfig(rank=4, epochs=2)),
    ]
    with adapted_many(model, tokenizer, plans(jobs)) as run:
        assert run.results[0].error == expected
        assert run.results[1].error == "no training examples with at least one target token"
        assert run.results[2].error is None and run.results[2].steps == 2
        assert all(math.isfinite(loss) for loss in run.results[2].losses)


def test_adapters_with_different_lora_structures_are_refused(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="must share rank"):
        with adapted_many(model, tokenizer, plans([(examples(0), InnerLoopConfig(rank=4)), (examples(1), InnerLoopConfig(rank=8))])):
            pass
    with pytest.raises(ValueError, match="at least one training plan"):
        with adapted_many(model, tokenizer, plans([])):
            pass


def test_pack_passes_keeps_row_order_within_the_token_budget():
    lengths = [40, 12, 38, 11, 13, 41, 900, 5]
    passes = pack_passes(lengths, max_batch_tokens=64)
    assert [r for p in passes for r in p] == list(range(len(lengths)))  # in order, each row once
    assert [6] in passes  # longer than the budget: a pass of its own
    assert all(len(p) == 1 or sum(lengths[r] for r in p) <= 64 for p in passes)
    assert passes == [[0, 1], [2, 3, 4], [5], [6], [7]]  # greedy: a pass ends when the next row does not fit
    assert pack_passes([10, 10, 10], max_batch_tokens=1000) == [[0, 1, 2]]
    assert pack_passes([10, 10, 10], max_batch_tokens=1000, max_rows=1) == [[0], [1], [2]]


def test_routed_lora_gradients_match_autograd_by_finite_differences():
    """The hand-written backward of the routed LoRA product, checked numerically (float64), with
    runs of unequal lengths, an adapter owning two runs and an adapter owning none."""
    torch.manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    base = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    lora_A = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    lora_B = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    runs, scalings = [(2, 0, 4), (0, 4, 5), (2, 5, 9)], [0.5, 3.0, 2.0]

    def routed(x, base, lora_A, lora_B):
        return multi_lora.RoutedLoRA.apply(x, base.clone(), lora_A, lora_B, runs, scalings)

    assert torch.autograd.gradcheck(routed, (x, base, lora_A, lora_B))
    expected = base.detach().clone()
    for k, start, end in runs:
        expected[start:end] += scalings[k] * x.detach()[start:end] @ lora_A.detach()[k].T @ lora_B.detach()[k].T
    torch.testing.assert_close(routed(x, base, lora_A, lora_B), expected)


def test_models_that_cannot_pack_train_one_sequence_per_pass(tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    model.double()
    with adapted_many(model, tokenizer, plans(JOBS)) as run:
        packed = [run.lora_weights(adapter) for adapter in range(len(JOBS))]
        assert run.stats.passes == run.stats.steps  # this model packs: one pass per step
    monkeypatch.setattr(multi_lora.adaptation, "keeps_packed_sequences_apart", lambda model: False)
    with pytest.warns(UserWarning, match="one sequence per pass"), adapted_many(model, tokenizer, plans(JOBS)) as run:
        assert run.stats.passes == sum(len(e) * c.epochs for e, c in JOBS)
        for adapter, weights in enumerate(packed):
            for name, (a, b) in weights.items():
                torch.testing.assert_close(run.lora_weights(adapter)[name][0], a, atol=1e-9, rtol=0)
                torch.testing.assert_close(run.lora_weights(adapter)[name][1], b, atol=1e-9, rtol=0)


def test_the_packing_check_sees_a_model_that_mixes_packed_sequences(tiny_lm):
    model, _ = tiny_lm
    assert multi_lora.keeps_packed_sequences_apart(model)
    leaky = type(model)(model.config)  # a fresh model object: not cached
    leaky.load_state_dict(model.state_dict())
    original = leaky.forward

    def forward(*args, position_ids=None, **kwargs):  # drops the positions: one long causal row
        return original(*args, **kwargs)

    leaky.forward = forward
    assert not multi_lora.keeps_packed_sequences_apart(leaky)


@pytest.mark.slow
def test_default_model_adapters_trained_together_match_separate_trainings(default_lm):
    model, tokenizer = default_lm
    jobs = [(examples(0, 1), InnerLoopConfig(epochs=1)), (examples(3), InnerLoopConfig(epochs=2))]
    separate = []
    for job_examples, config in jobs:
        with adapted(model, tokenizer, job_examples, config) as run:
            separate.append((run.result.losses, answer_log_likelihoods(run.model, tokenizer, PROMPTS, ANSWERS)))
    with adapted_many(model, tokenizer, plans(jobs)) as run:
        for adapter, (losses, scores) in enumerate(separate):
            assert run.results[adapter].losses == pytest.approx(losses, abs=SCORE_ATOL)
            with run.route(adapter):
                assert answer_log_likelihoods(run.model, tokenizer, PROMPTS, ANSWERS) == pytest.approx(scores, abs=1e-3)
