import pytest
import torch

from conftest import weights_digest
from seal_env.inner_loop import InnerLoopConfig, TrainingPlan, adapted, clip_grad_norms_, prepare_update
from seal_env.lm import TrainingExample, tokenize_example
from seal_env.scoring import answer_log_likelihoods

FACTS = [TrainingExample("The Velmora Bridge is painted ochre."), TrainingExample("Talia Norwin designed it.")]
FAST = InnerLoopConfig(epochs=3, learning_rate=1e-2)


def test_adapter_changes_the_model_inside_and_base_weights_survive(tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    prompt, answer = ["The Velmora Bridge is painted"], [" ochre."]
    base_ll = answer_log_likelihoods(model, tokenizer, prompt, answer)[0]
    with adapted(model, tokenizer, FACTS, FAST) as run:
        assert run.result.error is None and run.result.steps == 6
        adapted_ll = answer_log_likelihoods(run.model, tokenizer, prompt, answer)[0]
    assert adapted_ll > base_ll  # it learnt the fact
    assert weights_digest(model) == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any("lora" in name for name, _ in model.named_modules())
    assert answer_log_likelihoods(model, tokenizer, prompt, answer)[0] == pytest.approx(base_ll, abs=1e-6)


def test_same_seed_gives_same_losses_and_leaves_global_rng_alone(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with adapted(model, tokenizer, FACTS, FAST) as first:
        losses = first.result.losses
    assert torch.rand(1) == expected_next
    with adapted(model, tokenizer, FACTS, FAST) as second:
        assert second.result.losses == losses
    with adapted(model, tokenizer, FACTS, InnerLoopConfig(epochs=3, learning_rate=1e-2, seed=1)) as third:
        assert third.result.losses != losses


def test_non_finite_loss_stops_training_and_is_reported(tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    with adapted(model, tokenizer, FACTS, InnerLoopConfig(learning_rate=1e30, epochs=3)) as run:
        assert run.result.error is not None and "non-finite" in run.result.error
        assert run.result.steps < 6
    assert weights_digest(model) == before


def test_exception_inside_the_block_still_restores_the_model(tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with adapted(model, tokenizer, FACTS, FAST):
            raise RuntimeError("evaluation failed")
    assert weights_digest(model) == before and not any("lora" in n for n, _ in model.named_modules())


def test_completion_only_loss_masks_the_prompt(tokenizer):
    example = TrainingExample(prompt="Question: colour?", completion=" ochre")
    all_tokens = tokenize_example(tokenizer, example, max_tokens=64, loss_on="all")
    completion = tokenize_example(tokenizer, example, max_tokens=64, loss_on="completion")
    n_prompt = len(tokenizer("Question: colour?", add_special_tokens=False)["input_ids"])
    assert all(all_tokens.loss_mask)
    assert completion.loss_mask == [False] * n_prompt + [True] * (len(completion.input_ids) - n_prompt)
    assert completion.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_completion_and_drops_the_prompt_start(tokenizer):
    example = TrainingExample(prompt="word " * 50, completion=" ochre")
    tokenized = tokenize_example(tokenizer, example, max_tokens=8, loss_on="completion")
    assert tokenized.truncated and len(tokenized.input_ids) == 8
    assert tokenized.input_ids[-1] == tokenizer.eos_token_id and tokenized.loss_mask[-1]


def test_batches_pad_only_to_their_longest_sequence(tiny_lm):
    model, tokenizer = tiny_lm
    examples = [TrainingExample("short."), TrainingExample("a somewhat longer training sentence about bridges.")]
    with adapted(model, tokenizer, examples, InnerLoopConfig(batch_size=2, epochs=1)) as run:
        assert run.result.steps == 1
        assert run.result.n_train_tokens == sum(
            len(tokenize_example(tokenizer, e, max_tokens=256).input_ids) for e in examples
        )


def test_no_usable_examples_is_an_error_not_a_crash(tiny_lm):
    model, tokenizer = tiny_lm
    with adapted(model, tokenizer, [], FAST) as run:
        assert run.result.error and run.result.steps == 0


def test_a_step_budget_takes_the_same_steps_whatever_the_number_of_examples(tiny_lm):
    model, tokenizer = tiny_lm
    more_facts = FACTS + [TrainingExample(f"Fact number {i} is true.") for i in range(3)]
    for examples in (FACTS, more_facts):
        budget = InnerLoopConfig(max_steps=7, batch_size=2, epochs=1, learning_rate=1e-2)
        schedule = prepare_update(tokenizer, TrainingPlan(examples, budget)).batches
        # The epochs' own schedule, cut at the budget: the same seeded passes, the last one cut short.
        long_schedule = prepare_update(tokenizer, TrainingPlan(examples, InnerLoopConfig(epochs=20, batch_size=2))).batches
        assert schedule == long_schedule[:7]
        seen = [i for _, batch in schedule for i in batch]
        assert set(seen) == set(range(len(examples)))
        with adapted(model, tokenizer, examples, budget) as run:
            assert run.result.error is None and run.result.steps == 7


def test_the_step_budget_is_left_out_of_the_settings_when_off():
    assert "max_steps" not in InnerLoopConfig().to_dict()  # logs written before the option still resume
    assert InnerLoopConfig(**InnerLoopConfig(max_steps=30).to_dict()) == InnerLoopConfig(max_steps=30)


@pytest.mark.parametrize(
    "bad", [dict(rank=0), dict(learning_rate=float("nan")), dict(epochs=0), dict(loss_on="prompt"), dict(dropout=1.0),
            dict(max_steps=0)]
)
def test_invalid_config_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="invalid InnerLoopConfig"):
        InnerLoopConfig(**bad)


def test_seal_preset_matches_the_paper():
    seal = InnerLoopConfig.seal()
    assert (seal.rank, seal.alpha, seal.epochs, seal.learning_rate, seal.batch_size) == (32, 64.0, 10, 1e-3, 1)
    assert InnerLoopConfig.seal(epochs=2).epochs == 2


def test_clip_grad_norms_clips_each_group_as_torch_clips_one():
    torch.manual_seed(0)

    def params(scale):
        out = [torch.nn.Parameter(torch.zeros(3, 4)) for _ in range(3)]
        for p in out[:2]:  # the third has no gradient, as a finished adapter's
            p.grad = scale * torch.randn(3, 4)
        return out

    groups = [params(10.0), params(0.01), params(10.0), [torch.nn.Parameter(torch.zeros(2))]]
    expected = [[p.grad.clone() if p.grad is not None else None for p in g] for g in groups]
    for grads in expected[:2]:  # torch's own clipping, one group at a time, in place on the copies
        reference = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads if g is not None]
        for p, g in zip(reference, grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(reference, 1.0)

    clip_grad_norms_(groups, [1.0, 1.0, 0.0, 1.0])

    for group, grads in zip(groups[:2], expected[:2]):
        for p, g in zip(group, grads):
            assert (p.grad is None) == (g is None)
            if g is not None:
                assert torch.equal(p.grad, g)
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in groups[0][:2]])) < 1.0 + 1e-5
    assert all(torch.equal(p.grad, g) for p, g in zip(groups[2][:2], expected[2][:2]))  # max_norm 0: untouched
    no_gradient = torch.nn.Parameter(torch.zeros(2))
    clip_grad_norms_([[no_gradient]], [1.0])  # no gradients anywhere: nothing to do, no error
    assert no_gradient.grad is None
