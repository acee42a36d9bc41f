"""Inner-loop benchmark: the reference recipe, our sequential loop and multi_lora on the same self-edits.

One run measures, on the default model (or ``--model``) and the same self-edits:

(a) ``reference`` – SEAL's release recipe: a new PEFT model and a Hugging Face ``Trainer`` per
    self-edit, every sequence padded to ``--reference-max-length`` tokens (the release pads to 2048;
    the length used is printed), the adapter saved to disk and loaded again (onto the base model) for
    evaluation, as the release hands it to a separate inference server. Same hyper-parameters as
    ours (constant learning rate), so the work is the same and only the machinery differs.
(b) ``sequential`` – our inner loop: ``adapted()`` (in-memory PEFT, plain PyTorch loop, batches
    padded to their own longest row, loss and output layer only at target positions) + ``evaluate``.
(c) ``multi_lora K=k`` – ``adapted_many`` on k self-edits at once + ``evaluate_batch``.

Beside them, as a ceiling: ``frozen base K=k`` (largest k) runs only the frozen base model's
forward and input-gradient backward over the packed passes of (c), with no adapters, optimiser or
evaluation. Its training MFU is what LoRA code could at best reach on this machine and model.

The methods run in rounds, interleaved (reference, sequential, K=1, 2, 4, 8 in every round), so a
busy shared CPU slows all of them alike; each reports the median over rounds of its self-edits per
minute. Every self-edit is one knowledge-incorporation update (one training sequence per line) and
its evaluation (greedy answers and gold-answer log-likelihood of the passage's questions).

Model FLOPs (counted, not hard-coded; ``P`` = weights of the decoder's linear layers, ``P_lora`` =
one adapter's LoRA weights, ``d*V`` = the output layer):

* training, per real (non-padding) token: ``4 P + 6 P_lora`` (forward 2P; backward 2P for the input
  gradients only, as the base weights are frozen; LoRA forward 2 + backward 4), plus ``4 d V`` per
  target token (output layer forward and input gradient); counted analytically from the token
  counts, identically for every method, so padding and logits the reference computes at
  non-target positions are not useful FLOPs;
* evaluation, per token the decoder processes: ``2 P + 2 P_lora`` (finished rows in generation
  excluded), plus ``2 d V`` per row the output layer runs on; counted with forward hooks;
* attention score FLOPs (under 2% at these sequence lengths) are not counted.

MFU = model FLOPs / wall seconds / matmul peak, where the peak is the best rate of a large
``torch.matmul`` (``--peak-size``, model dtype, same threads) over measurements taken before every
method of every round.

Usage::

    python benchmarks/inner_loop.py --quick --json results/inner_loop_quick.json
    python benchmarks/inner_loop.py --rounds 3 --json results/inner_loop.json
    python benchmarks/inner_loop.py --data ../shared/data/squad_eval_passages.json --json results/inner_loop_squad.json
    # on a GPU machine without the weights (K up to 64 needs 64 self-edits, hence --data):
    python benchmarks/inner_loop.py --random-weights --model ARCH_DIR --data ../shared/data/squad_eval_passages.json \
        --self-edits 64 --ks 1,2,8,32,64 --rounds 2 --json results/inner_loop_cuda.json
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from _common import markdown_table, restatement, run_environment, write_json
from peft import PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments, default_data_collator

from seal_env.config_cli import comma_list, parse_config
from seal_env.inner_loop import InnerLoopConfig, TrainingPlan, adapted, prepare_update, training_state_restored
from seal_env.lm import TrainingExample, pack_batch, token_log_probs, tokenize_example
from seal_env.models import load_model
from seal_env.multi_lora import adapted_many, default_max_batch_tokens, pack_passes
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv, Passage, load_passages

SEAL_MAX_LENGTH = 2048
TARGETS = {"sequential_vs_reference": 5.0, "multi_lora_k8_vs_sequential": 2.0, "mfu_multi_lora_k8": 0.40}


# ----------------------------------------------------------------------------------- workload


@dataclass
class Item:
    """One self-edit to process: its passage and its training examples."""

    passage: Passage
    examples: list[TrainingExample]


def load_items(env: KnowledgeIncorporationEnv, args: BenchConfig) -> list[Item]:
    """The self-edits: a generator's from ``--data``, else each built-in passage restated one
    sentence per line (a stand-in with the length of a real implications list)."""
    items = []
    for passage in env.contexts:
        if args.data:
            edits = passage.self_edits.get(args.generator) or []
            if not edits:
                continue
            self_edit = edits[0]
        else:
            self_edit = restatement(passage.context)
        examples = env.self_edit_to_examples(self_edit, passage)[: args.max_lines]
        items.append(Item(passage, examples))
        if len(items) == args.self_edits:
            break
    if len(items) < max(args.ks):
        raise SystemExit(f"need at least {max(args.ks)} self-edits, found {len(items)}")
    return items


# ------------------------------------------------------------------------------------- FLOPs


@dataclass
class Sizes:
    """Weight counts of the FLOP formula."""

    linear: int  # P: decoder linear layers
    head: int  # d * V
    lora: int  # P_lora: one adapter

    @classmethod
    def of(cls, model: torch.nn.Module, config: InnerLoopConfig) -> "Sizes":
        if config.target_modules != "all-linear":
            raise SystemExit("the FLOP count assumes target_modules='all-linear'")
        linears = [m for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
        return cls(
            linear=sum(m.weight.numel() for m in linears),
            head=model.get_output_embeddings().weight.numel(),
            lora=sum(config.rank * (m.in_features + m.out_features) for m in linears),
        )

    def training(self, tokenizer, items: Sequence[Item], config: InnerLoopConfig, *, lora: bool = True) -> float:
        """FLOPs of training ``items`` for ``config.epochs`` epochs (real tokens only; ``lora=False``:
        the frozen base model alone)."""
        flops = 0.0
        for item in items:
            for example in item.examples:
                t = tokenize_example(tokenizer, example, max_tokens=config.max_tokens_per_example, loss_on=config.loss_on)
                targets = sum(t.loss_mask[1:])
                if targets:
                    flops += len(t.input_ids) * (4 * self.linear + 6 * self.lora * lora) + targets * 4 * self.head
        return flops * config.epochs


class EvalFlops:
    """Counts evaluation FLOPs with forward hooks on the decoder and the output layer."""

    def __init__(self, model: torch.nn.Module, sizes: Sizes, pad_token_id: int):
        self.sizes, self.pad_token_id, self.flops = sizes, pad_token_id, 0.0
        self._handles = [
            model.get_decoder().register_forward_pre_hook(self._decoder, with_kwargs=True),
            model.get_output_embeddings().register_forward_pre_hook(self._head),
        ]

    def _decoder(self, module, args, kwargs) -> None:
        if torch.is_grad_enabled():
            return  # training is counted analytically
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is None:
            return
        new = ids.shape[1]
        real = mask[:, -new:].bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        if new == 1:  # a generation step: rows whose answer has ended are fed the pad token
            real = real & (ids != self.pad_token_id)
        self.flops += int(real.sum()) * 2 * (self.sizes.linear + self.sizes.lora)

    def _head(self, module, args) -> None:
        if not torch.is_grad_enabled():
            self.flops += args[0].numel() / module.in_features * 2 * self.sizes.head

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def matmul_peak_gflops(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """Best rate of a ``size`` x ``size`` matmul, in GFLOP/s."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = 0.0
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------- memory


@contextmanager
def peak_memory_mib(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory during the block: CUDA allocations on a GPU, else the process's resident set
    (Linux VmHWM, reset through /proc/self/clear_refs). ``"peak"`` and ``"increase"`` over the start."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        peak = torch.cuda.max_memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux: the peak is then the process's peak so far
        start = _status_kib("VmRSS") * 1024
        yield out
        peak = _status_kib("VmHWM") * 1024
    out.update(peak=peak / 2**20, increase=(peak - start) / 2**20)


def _status_kib(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------------------ methods


@dataclass
class Measurement:
    """One method's run over some self-edits in one round."""

    items: int
    item_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_flops: float = 0.0
    eval_flops: float = 0.0
    padded_tokens: int = 0
    tokens: int = 0
    memory: dict[str, float] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    """Gold-answer log-likelihood after each self-edit's update, in the order of ``item_ids``."""


class Bench:
    def __init__(self, env: KnowledgeIncorporationEnv, config: InnerLoopConfig, args: BenchConfig):
        self.env, self.config, self.args = env, config, args
        self.model, self.tokenizer = env.model, env.tokenizer
        self.device = next(self.model.parameters()).device
        self.sizes = Sizes.of(self.model, config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def tokenized(self, item: Item):
        return [
            tokenize_example(self.tokenizer, e, max_tokens=self.config.max_tokens_per_example, loss_on=self.config.loss_on)
            for e in item.examples
        ]

    def measure(self, method: Callable[[list[Item], Measurement], None], items: list[Item], item_ids: list[int]) -> Measurement:
        m = Measurement(items=len(items), item_ids=item_ids, train_flops=self.sizes.training(self.tokenizer, items, self.config))
        counter = EvalFlops(self.model, self.sizes, self.pad_id)
        try:
            with peak_memory_mib(self.device) as memory:
                sync(self.device)
                start = time.perf_counter()
                method(items, m)
                sync(self.device)
                m.seconds = time.perf_counter() - start
        finally:
            counter.remove()
        m.eval_flops, m.memory = counter.flops, dict(memory)
        return m

    def _evaluate(self, model, passage: Passage, m: Measurement) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            m.scores.append(self.env.evaluate(model, passage).metrics["log_likelihood"])
        m.eval_seconds += time.perf_counter() - start

    # (a) -------------------------------------------------------------------------------------
    def reference(self, items: list[Item], m: Measurement) -> None:
        length = self.args.reference_max_length
        with training_state_restored(self.model):  # get_peft_model freezes the base
            for item in items:
                start = time.perf_counter()
                rows = []
                for t in self.tokenized(item):
                    if sum(t.loss_mask[1:]) == 0:
                        continue
                    ids = t.input_ids[:length]
                    pad = length - len(ids)
                    labels = [i if keep else -100 for i, keep in zip(ids, t.loss_mask)]
                    rows.append(
                        {
                            "input_ids": torch.tensor(ids + [self.pad_id] * pad),
                            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                            "labels": torch.tensor(labels + [-100] * pad),
                        }
                    )
                    m.tokens += len(ids)
                    m.padded_tokens += length
                with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng():
                    peft_model = get_peft_model(self.model, self.config.lora_config())
                    arguments = TrainingArguments(
                        output_dir=folder,
                        per_device_train_batch_size=self.config.batch_size,
                        num_train_epochs=self.config.epochs,
                        learning_rate=self.config.learning_rate,
                        lr_scheduler_type="constant",
                        weight_decay=self.config.weight_decay,
                        max_grad_norm=self.config.max_grad_norm,
                        seed=self.config.seed,
                        save_strategy="no",
                        logging_strategy="no",
                        report_to="none",
                        disable_tqdm=True,
                        use_cpu=self.device.type == "cpu",
                        dataloader_num_workers=0,
                    )
                    Trainer(model=peft_model, args=arguments, train_dataset=rows, data_collator=default_data_collator).train()
                    peft_model.save_pretrained(folder + "/adapter")
                    peft_model.unload()
                    m.train_seconds += time.perf_counter() - start
                    served = PeftModel.from_pretrained(self.model, folder + "/adapter")  # the "inference server"
                    served.eval()
                    self._evaluate(served, item.passage, m)
                    served.unload()

    # (b) -------------------------------------------------------------------------------------
    def sequential(self, items: list[Item], m: Measurement) -> None:
        for item in items:
            start = time.perf_counter()
            with adapted(self.model, self.tokenizer, item.examples, self.config) as run:
                m.train_seconds += time.perf_counter() - start
                m.tokens += run.result.n_train_tokens * self.config.epochs
                m.padded_tokens += run.result.n_train_tokens * self.config.epochs  # batch size 1: no padding
                self._evaluate(run.model, item.passage, m)

    # (c) -------------------------------------------------------------------------------------
    def multi_lora(self, k: int) -> Callable[[list[Item], Measurement], None]:
        def run_k(items: list[Item], m: Measurement) -> None:
            for first in range(0, len(items), k):
                chunk = items[first : first + k]
                start = time.perf_counter()
                plans = [TrainingPlan(item.examples, self.config) for item in chunk]
                with adapted_many(self.model, self.tokenizer, plans, max_batch_tokens=self.args.max_batch_tokens) as run:
                    m.train_seconds += time.perf_counter() - start
                    m.tokens += run.stats.tokens
                    m.padded_tokens += run.stats.tokens  # packed end to end: no padding
                    start = time.perf_counter()
                    with torch.no_grad():
                        evaluations = self.env.evaluate_batch(run.model, [item.passage for item in chunk], run.route)
                    m.eval_seconds += time.perf_counter() - start
                    m.scores += [e.metrics["log_likelihood"] for e in evaluations]

        return run_k

    # (d) -------------------------------------------------------------------------------------
    def frozen_base(self, k: int) -> Callable[[list[Item], Measurement], None]:
        """The ceiling of (c) on this machine: the frozen base model's forward and input-gradient
        backward alone, over the packed passes multi_lora K=k trains on (the same rows per step, no
        adapters, no optimiser, no evaluation). Its training MFU bounds what any LoRA code can reach."""

        def run_k(items: list[Item], m: Measurement) -> None:
            m.train_flops = self.sizes.training(self.tokenizer, items, self.config, lora=False)
            max_batch_tokens = self.args.max_batch_tokens or default_max_batch_tokens(self.device)
            # Gradients flow back from the loss to the embeddings' output, as they do to the adapters.
            hook = self.model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.requires_grad_())
            self.model.train()
            try:
                with training_state_restored(self.model):
                    for p in self.model.parameters():
                        p.requires_grad_(False)
                    for first in range(0, len(items), k):
                        # multi_lora's own schedule: the same rows in every step as adapted_many trains.
                        adapters = [prepare_update(self.tokenizer, TrainingPlan(item.examples, self.config))
                                    for item in items[first : first + k]]
                        start = time.perf_counter()
                        for step in range(max(len(a.batches) for a in adapters)):
                            rows = [a.examples[j] for a in adapters if step < len(a.batches) for j in a.batches[step][1]]
                            lengths = [len(t.input_ids) for t in rows]
                            for batch in pack_passes(lengths, max_batch_tokens=max_batch_tokens):
                                ids, positions, loss_mask = pack_batch([rows[r] for r in batch], self.device)
                                log_probs, _ = token_log_probs(self.model, ids, None, loss_mask, position_ids=positions)
                                (-log_probs.sum()).backward()
                                m.tokens += ids.numel()
                                m.padded_tokens += ids.numel()
                        sync(self.device)
                        m.train_seconds += time.perf_counter() - start
            finally:
                hook.remove()
                self.model.eval()

        return run_k


# ------------------------------------------------------------------------------------- report


def summarise(name: str, runs: list[Measurement], peak_gflops: float) -> dict[str, Any]:
    def median(values):
        return statistics.median(values)

    rate = median([60 * r.items / r.seconds for r in runs])
    return {
        "method": name,
        "rounds": len(runs),
        "self_edits": sum(r.items for r in runs),
        "self_edits_per_minute": rate,
        "seconds_per_self_edit": 60 / rate,
        "train_seconds_per_self_edit": median([r.train_seconds / r.items for r in runs]),
        "eval_seconds_per_self_edit": median([r.eval_seconds / r.items for r in runs]),
        "mfu": median([(r.train_flops + r.eval_flops) / r.seconds / 1e9 / peak_gflops for r in runs]),
        "train_mfu": median([r.train_flops / r.train_seconds / 1e9 / peak_gflops for r in runs]),
        "gflops_per_second": median([(r.train_flops + r.eval_flops) / r.seconds / 1e9 for r in runs]),
        "padding_fraction": 1 - sum(r.tokens for r in runs) / max(1, sum(r.padded_tokens for r in runs)),
        "peak_memory_mib": max(r.memory["peak"] for r in runs),
        "peak_memory_increase_mib": max(r.memory["increase"] for r in runs),
        "mean_log_likelihood": statistics.fmean(scores) if (scores := [s for r in runs for s in r.scores]) else None,
        "runs": [vars(r) for r in runs],
    }


@dataclass
class BenchConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    quick: bool = False
    """A run of a few minutes: 1 round, 2 epochs, 3 lines per self-edit, 12-token answers, 1 thread."""
    json: Path = Path("results/inner_loop.json")
    """Where to write the results."""
    data: Path | None = None
    """Passages JSON with self_edits (e.g. ../shared/data/squad_eval_passages.json)."""
    generator: str = "seal-iter2-qwen2.5-7b"
    """Whose self-edits to take from --data."""
    model: str | None = None
    """Inner model (default: the embedded SmolLM2-135M-Instruct)."""
    random_weights: bool = False
    """The model's architecture and tokenizer with random weights (timings need no trained weights;
    --model may then be a folder holding only config.json and the tokenizer files)."""
    device: str | None = None
    """Where to run (default: CUDA when available, else CPU)."""
    self_edits: int = 8
    """Distinct self-edits (at least the largest K)."""
    max_lines: int | None = None
    """Keep at most this many lines (training sequences) per self-edit (--quick: 3)."""
    epochs: int | None = None
    """Inner-loop epochs (default: InnerLoopConfig's; --quick: 2)."""
    rounds: int | None = None
    """Interleaved rounds; medians are over rounds (default 3; --quick: 1)."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"parse": comma_list(int)})
    """Comma-separated multi_lora sizes K."""
    sequential_items: int | None = None
    """Self-edits per round for (b) and small K (default: the largest K, so that (b) and (c) time the
    same self-edits: self-edits differ in length, and timing others biased the ratio)."""
    reference_items: int = 1
    """Self-edits per round for the reference recipe."""
    reference_max_length: int | None = None
    """Reference padding length (default 256; --quick: 128; SEAL pads to SEAL_MAX_LENGTH)."""
    max_answer_tokens: int | None = None
    """Greedy answer length in evaluation (default 24; --quick: 12)."""
    max_batch_tokens: int | None = None
    """multi_lora tokens packed into one training pass (default: by device)."""
    peak_size: int = 2048
    """Matrix size of the matmul peak measurement."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice; --quick: 1, since two threads per process fight for
    a shared CPU's cores)."""

    def __post_init__(self) -> None:
        # Explicit options win over the presets.
        preset = dict(rounds=1, epochs=2, max_lines=3, max_answer_tokens=12, reference_max_length=128, threads=1) if self.quick else dict(
            rounds=3, max_answer_tokens=24, reference_max_length=256
        )
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.ks = sorted(set(self.ks))
        self.sequential_items = self.sequential_items or max(self.ks)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The command line is :class:`BenchConfig` (one option per field, help from its docstring)."""
    return parse_config(BenchConfig, argv, __doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device, random_weights=args.random_weights)
    passages = load_passages(args.data) if args.data else load_passages()
    # The gold answers' log-likelihood alone: what this benchmark compares across inner loops.
    env = KnowledgeIncorporationEnv(passages, model=(model, tokenizer), max_answer_tokens=args.max_answer_tokens,
                                    reward_metric="log_likelihood")
    config = replace(InnerLoopConfig(), **({"epochs": args.epochs} if args.epochs else {}))
    items = load_items(env, args)
    bench = Bench(env, config, args)
    device = bench.device

    methods: list[tuple[str, Callable, int]] = [
        ("reference", bench.reference, args.reference_items),
        ("sequential", bench.sequential, args.sequential_items),
    ] + [(f"multi_lora K={k}", bench.multi_lora(k), max(k, args.sequential_items)) for k in args.ks]
    ceiling = f"frozen base K={max(args.ks)}"
    methods.append((ceiling, bench.frozen_base(max(args.ks)), max(args.ks)))
    runs: dict[str, list[Measurement]] = {name: [] for name, _, _ in methods}
    peaks = []
    for round_ in range(args.rounds):
        for name, method, n in methods:
            # The peak is re-measured before every method: on a shared CPU one measurement can land
            # in a slow moment (1-thread peaks of 112 and 147 GFLOP/s were seen on this machine), and
            # a low peak would flatter MFU; the best of all of them is used.
            peaks.append(matmul_peak_gflops(args.peak_size, next(model.parameters()).dtype, device))
            chosen = [(round_ * n + i) % len(items) for i in range(n)]
            runs[name].append(bench.measure(method, [items[i] for i in chosen], chosen))
            print(f"round {round_ + 1}/{args.rounds} {name}: {runs[name][-1].seconds:.1f} s for {n} self-edits", file=sys.stderr)
    peak = max(peaks)

    summaries = {name: summarise(name, r, peak) for name, r in runs.items()}
    frozen_base = summaries.pop(ceiling)  # not a method: no evaluation, reported apart
    sequential = summaries["sequential"]
    largest = f"multi_lora K={max(args.ks)}"
    sequential_scores = {i: score for r in runs["sequential"] for i, score in zip(r.item_ids, r.scores)}
    for name, s in summaries.items():
        s["speedup_vs_sequential"] = s["self_edits_per_minute"] / sequential["self_edits_per_minute"]
        # Same self-edit, same settings: multi_lora must give the sequential loop's scores.
        differences = [abs(score - sequential_scores[i]) for r in runs[name] for i, score in zip(r.item_ids, r.scores) if i in sequential_scores]
        s["max_score_difference_vs_sequential"] = max(differences) if differences else None
    lines_per_edit = statistics.fmean(len(item.examples) for item in items)
    result = {
        "speedup_sequential_vs_reference": sequential["self_edits_per_minute"] / summaries["reference"]["self_edits_per_minute"],
        "speedup_multi_lora_k8_vs_sequential": summaries[largest]["speedup_vs_sequential"] if max(args.ks) == 8 else None,
        "mfu_sequential": sequential["mfu"],
        "mfu_multi_lora_k8": summaries[largest]["mfu"] if max(args.ks) == 8 else None,
        "train_mfu_sequential": sequential["train_mfu"],
        "train_mfu_multi_lora_k8": summaries[largest]["train_mfu"] if max(args.ks) == 8 else None,
        "padding_fraction_multi_lora_k8": summaries[largest]["padding_fraction"] if max(args.ks) == 8 else None,
        "train_mfu_frozen_base_k8": frozen_base["train_mfu"] if max(args.ks) == 8 else None,
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_measured": peaks,
        "targets": TARGETS,
        "flop_formula": {
            "training_per_real_token": "4*P + 6*P_lora (+ 4*d*V per target token)",
            "evaluation_per_processed_token": "2*P + 2*P_lora (+ 2*d*V per output-layer row)",
            "P": bench.sizes.linear,
            "P_lora": bench.sizes.lora,
            "d*V": bench.sizes.head,
            "attention_scores": "not counted (under 2% at these lengths)",
        },
        "workload": {
            "source": str(args.data) if args.data else "built-in demo passages, one sentence per line",
            "generator": args.generator if args.data else None,
            "self_edits": len(items),
            "mean_lines_per_self_edit": lines_per_edit,
            "questions_per_passage": statistics.fmean(len(item.passage.questions) for item in items),
            "inner_loop": config.to_dict(),
            "max_answer_tokens": args.max_answer_tokens,
            "reference_max_length": args.reference_max_length,
            "rounds": args.rounds,
            "quick": args.quick,
            "random_weights": args.random_weights,
        },
        "methods": summaries,
        "ceiling": frozen_base,
        "environment": {**run_environment(), "device": str(device), "note": "2-core CPU shared with other jobs: timings are noisy"},
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(args.json, result)

    header = ["method", "self-edits/min", "x sequential", "train s/edit", "eval s/edit", "MFU", "train MFU", "padding", "peak MiB (+)", "max Δscore vs seq"]
    rows = [
        [
            name,
            f"{s['self_edits_per_minute']:.2f}",
            f"{s['speedup_vs_sequential']:.2f}",
            f"{s['train_seconds_per_self_edit']:.1f}",
            f"{s['eval_seconds_per_self_edit']:.1f}",
            f"{100 * s['mfu']:.1f}%",
            f"{100 * s['train_mfu']:.1f}%",
            f"{100 * s['padding_fraction']:.0f}%",
            f"{s['peak_memory_mib']:.0f} (+{s['peak_memory_increase_mib']:.0f})",
            "-" if name in ("sequential", "reference") or s["max_score_difference_vs_sequential"] is None
            else f"{s['max_score_difference_vs_sequential']:.1e}",
        ]
        for name, s in summaries.items()
    ]
    print(markdown_table(header, rows))
    print(
        f"{len(items)} self-edits, {lines_per_edit:.1f} lines each, {config.epochs} epochs, {args.rounds} round(s); "
        f"reference padded to {args.reference_max_length} tokens (SEAL: {SEAL_MAX_LENGTH}); "
        f"matmul peak {peak:.1f} GFLOP/s ({args.peak_size}^2, {torch.get_num_threads()} threads, {device}); "
        f"wall {result['wall_seconds']:.0f} s"
    )
    print(
        f"ceiling: the frozen base model alone on the packed passes of {largest} (no adapters, optimiser or "
        f"evaluation): train MFU {100 * frozen_base['train_mfu']:.1f}%, {frozen_base['train_seconds_per_self_edit']:.1f} train s/edit"
    )
    checks = [
        ("sequential vs reference", result["speedup_sequential_vs_reference"], TARGETS["sequential_vs_reference"], "x"),
        ("multi_lora K=8 vs sequential", result["speedup_multi_lora_k8_vs_sequential"], TARGETS["multi_lora_k8_vs_sequential"], "x"),
        ("MFU multi_lora K=8", result["mfu_multi_lora_k8"], TARGETS["mfu_multi_lora_k8"], ""),
    ]
    for label, value, target, unit in checks:
        if value is not None:
            print(f"target {label} >= {target}{unit}: measured {value:.2f}{unit} -> {'met' if value >= target else 'NOT met'}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
