"""Many LoRA adapters on one frozen model, trained and evaluated together.

:func:`adapted_many` is the batched form of :func:`seal_env.inner_loop.adapted`: it attaches K fresh,
independent LoRA adapters to the model (one per self-edit), trains all of them in shared
forward/backward passes, hands the model to the caller for evaluation, and removes the adapters,
leaving the base weights bit-identical.

How the K updates stay independent although they share every pass:

* **Routing.** Every adapted linear layer is a :class:`MultiLoRALinear` holding K (A, B) pairs. Each
  batch row goes through the base layer and through the LoRA pair of the adapter that owns the row
  (set with :meth:`MultiAdaptation.route`). Rows never mix in a transformer, so the gradient of
  adapter i depends only on the rows of self-edit i.
* **Loss.** The loss of a pass is the SUM over adapters of each adapter's mean token loss over its own
  mini-batch, exactly the loss :func:`~seal_env.inner_loop.train_lora` minimises for that adapter
  alone, so every adapter's gradient is scaled as in separate training.
* **Optimiser.** All adapters' weights live in one ``[K, P_lora]`` table (each layer's stacked
  parameters are views into it). One ``torch.optim.AdamW`` has one parameter group per adapter (its
  own learning rate and weight decay) over that adapter's row. AdamW is elementwise, so this equals
  K separate optimisers; an adapter with no rows in a step has no gradient and is skipped (its step
  count stays its own).
* **Clipping.** Each adapter's gradient is clipped by its own norm, as ``train_lora`` clips the one
  adapter it trains.
* **Order and initialisation.** Adapter i sees its examples in the order ``train_lora`` would use
  (the same seeded permutation per epoch) and starts from the weights PEFT draws in ``adapted()``
  with the same config (same seed), so K adapters trained together match K sequential ``adapted()``
  runs up to floating-point rounding (``tests/test_multi_lora.py`` states the tolerance).

Scheduling: optimiser step t trains mini-batch t of every adapter that still has one; an adapter
that has finished simply has no rows in later steps. The sequences of a step are packed end to end
into one row (``position_ids`` restart at 0 with each, so Transformers attends only within a
sequence, as in TRL's padding-free training) and cut into passes of at most ``max_batch_tokens``
tokens (gradients accumulate over them). Self-edits of different lengths thus share passes with no
padding; each layer routes the tokens of a pass in runs, one per adapter.

Why not PEFT: PEFT's mixed-adapter batches (``adapter_names=``) work for inference only (it refuses
them in training mode) and loop over adapters with fancy indexing; training K adapters per row needs
the routing above, written here in plain PyTorch.

Usage::

    plans = [TrainingPlan(examples_0, InnerLoopConfig()), TrainingPlan(examples_1, InnerLoopConfig())]
    with adapted_many(model, tokenizer, plans) as run:
        print([r.final_loss for r in run.results], run.stats.passes)
        with run.route([0, 0, 1]), torch.no_grad():  # rows 0, 1 -> adapter 0; row 2 -> adapter 1
            logits = run.model(input_ids=ids).logits
"""

from seal_env.multi_lora.adaptation import MultiAdaptation, adapted_many, lora_structure
from seal_env.multi_lora.packing import PackingStats, default_max_batch_tokens, keeps_packed_sequences_apart, pack_passes
from seal_env.multi_lora.routing import MultiLoRALinear, RoutedLoRA, Routing

__all__ = [
    "MultiAdaptation",
    "MultiLoRALinear",
    "PackingStats",
    "RoutedLoRA",
    "Routing",
    "adapted_many",
    "default_max_batch_tokens",
    "keeps_packed_sequences_apart",
    "lora_structure",
    "pack_passes",
]
