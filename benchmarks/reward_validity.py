"""Reward-validity benchmark: does the knowledge environment's reward measure knowledge?

For each passage the environment is stepped, exactly as an agent steps it, on

* ``restatement`` - the passage restated one sentence per line (a faithful self-edit);
* one self-edit of each external set in the data's ``self_edits`` (``qwen2.5-7b-base``, ``gpt-4.1``,
  ``seal-iter2-qwen2.5-7b`` in the SEAL release);
* ``untrained`` - ``--samples`` self-edits sampled from the untrained model (as the train job samples);
* two junk controls: ``junk-other`` (the restatement of a different passage) and ``junk-shuffled``
  (the passage's words in a random order).

The environment also scores the gold-answer log-likelihood on the questions of a *control* passage
(another passage of the data, its ``control_passages=1``), which an update should not move.
Every self-edit is stepped under inner-loop seed 0; those of the first ``--retest-limit`` passages
also under seed 1.

The JSON holds, each as a number or ``{mean, low, high}`` with a 95% bootstrap interval over passages:

``restatement_positive_fraction``
    share of passages where the restatement's dense gain (score minus baseline) is above 0;
``junk_loses_fraction``
    share of (passage, junk) pairs where the junk gains less than the restatement;
``seal_beats_untrained_fraction``
    share of (seal-iter2 self-edit, untrained self-edit) pairs of a passage where the first gains more;
``retest_r``
    Pearson correlation of the gains under the two inner-loop seeds;
``dense_text_agreement``
    Spearman rank correlation between the dense gain and the text gain (the mean of the gains in
    answer containment and token F1) over all stepped self-edits;
``control_damage``
    mean change of the control passage's gold log-likelihood (nats per token; negative = damage);
``length_partial_r``
    multiple correlation R of the dense gain with the number of training lines and of training
    tokens (0: length buys no reward).

For a candidate whose reward is not damage-controlled already, the JSON's ``damage_controlled`` holds
the same statistics of the same steps with each gain replaced by its damage-controlled form (the gain
minus the control passage's change): what ``reward_metric="controlled_log_likelihood"`` would have
rewarded, computed from the logged numbers without stepping again.

Candidates (``--candidate``) are named settings of the environment and its inner loop; see
:data:`CANDIDATES`. Each step is appended to ``<out>/<candidate>.log.jsonl`` (the same command
resumes), sampled self-edits are cached in ``<out>/self_edits.jsonl`` and shared by the candidates.

Example::

    python benchmarks/reward_validity.py --data ../shared/data/squad_eval_passages.json --limit 50 \\
        --candidate default --out results/reward_validity --json results/reward_validity/default.json
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from _common import (Interval, ResultLog, bootstrap_ci, main_exit_code, markdown_table, pearson, restatement,
                     run_environment, spearman, write_json)
from seal_env.config_cli import parse_config
from seal_env.inner_loop import InnerLoopConfig
from seal_env.lm import sample_self_edits
from seal_env.models import DEFAULT_MODEL_NAME, load_model
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv, Passage, load_passages, sentences

SEAL_SET = "seal-iter2-qwen2.5-7b"
JUNK_KINDS = ("junk-other", "junk-shuffled")
RETEST_SEED = 1

# The train job's preset before this benchmark chose one (agents.runner's lighter inner loop).
_TRAIN_PRESET = InnerLoopConfig(epochs=2, batch_size=8, max_tokens_per_example=128)

# The reward metric of the candidates that came before the damage-controlled one (the env's default then).
_LL = {"reward_metric": "log_likelihood"}
CONTROLLED = "controlled_log_likelihood"

CANDIDATES: dict[str, dict[str, Any]] = {
    "default": _LL,  # the environment's defaults before this benchmark chose (its default is now "controlled")
    "train-preset": {**_LL, "inner_loop": _TRAIN_PRESET},
    "lr-3e-4": {**_LL, "inner_loop": InnerLoopConfig(learning_rate=3e-4)},
    "seal-targets": {**_LL, "inner_loop": InnerLoopConfig(target_modules=["q_proj", "v_proj"])},
    "topic": {**_LL, "question_topic": True},
    "title-prefix": {**_LL, "title_prefix": True},
    "topic-title": {**_LL, "question_topic": True, "title_prefix": True},
    "topic-title-lr-3e-4": {**_LL, "question_topic": True, "title_prefix": True,
                            "inner_loop": InnerLoopConfig(learning_rate=3e-4)},
    "passage-baseline": {**_LL, "baseline": "passage"},
    "pmi": {"reward_metric": "answer_pmi"},
    "pmi-topic-title": {"reward_metric": "answer_pmi", "question_topic": True, "title_prefix": True},
    "pmi-lr-3e-4": {"reward_metric": "answer_pmi", "inner_loop": InnerLoopConfig(learning_rate=3e-4)},
    "controlled": {"reward_metric": CONTROLLED},
    "controlled-3": {"reward_metric": CONTROLLED, "control_passages": 3},
    "controlled-train-preset": {"reward_metric": CONTROLLED, "inner_loop": _TRAIN_PRESET},
    # What a self-edit adds beyond its passage, as knowledge_incorporation.py's rows train (passage +
    # self-edit) rather than the self-edit alone.
    "passage-plus": {"reward_metric": CONTROLLED, "include_passage": True, "baseline": "passage"},
    # The same, scored by recall of the passage's answer-bearing sentences (no question): the reward
    # of the learning run that selects for coverage of the passage.
    "passage-plus-recall": {"reward_metric": "answer_sentence_log_likelihood", "include_passage": True, "baseline": "passage"},
    # The chosen reward, and the recall one, with one update example per sentence instead of per line,
    # so that line breaks alone buy no optimiser steps (the learning run's derived self-edits showed
    # that they did); the second is the reward of the learning run trained that way.
    "controlled-sentences": {"reward_metric": CONTROLLED, "split_sentences": True},
    "passage-plus-recall-sentences": {"reward_metric": "answer_sentence_log_likelihood", "include_passage": True,
                                      "baseline": "passage", "split_sentences": True},
    # The same two rewards with a fixed budget of optimiser steps per update (about five epochs of a
    # typical self-edit's examples), so that no self-edit buys steps with more lines or sentences.
    "controlled-30-steps": {"reward_metric": CONTROLLED, "inner_loop": InnerLoopConfig(max_steps=30)},
    "passage-plus-recall-60-steps": {"reward_metric": "answer_sentence_log_likelihood", "include_passage": True,
                                     "baseline": "passage", "inner_loop": InnerLoopConfig(max_steps=60)},
}
"""Environment keyword arguments of each candidate (``inner_loop`` replaces the whole config;
``control_passages`` is 1 unless a candidate sets it)."""


TARGETS = {
    "restatement_positive_fraction": (">=", 0.95),
    "junk_loses_fraction": (">=", 0.95),
    "seal_beats_untrained_fraction": (">=", 0.70),
    "retest_r": (">=", 0.9),
    "length_partial_r": ("|x|<=", 0.3),
}


@dataclass
class ValidityConfig:
    data: Path
    """Passages JSON with external ``self_edits`` sets (the layout of squad_eval_passages.json)."""
    out: Path = Path("runs/reward_validity")
    """Folder of the resumable logs (one per candidate) and the shared self-edit cache."""
    json: Path | None = None
    """Where to write the summary JSON (default ``<out>/<candidate>.json``); a markdown table goes beside it."""
    candidate: str = "default"
    """Name in :data:`CANDIDATES`."""
    limit: int = 50
    """Use the first N passages."""
    retest_limit: int | None = None
    """Step the self-edits of the first N passages under a second inner-loop seed (default: all)."""
    samples: int = 2
    """Self-edits sampled from the untrained model per passage."""
    temperature: float = 1.0
    """Sampling temperature of the untrained self-edits (the train job's)."""
    sample_tokens: int = 128
    """Longest sampled self-edit, in tokens."""
    seed: int = 0
    """Seed of sampling and shuffling."""
    model: str | None = None
    """Model id or path (default: the embedded SmolLM2-135M-Instruct)."""
    device: str | None = None
    """Device of the model (default: CUDA when available, else CPU)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""

    def __post_init__(self) -> None:
        # The logs record the data's absolute path, so that a resumed run may spell it differently.
        self.data = Path(self.data).resolve()
        if self.candidate not in CANDIDATES:
            raise ValueError(f"unknown candidate {self.candidate!r}; choose one of {', '.join(CANDIDATES)}")
        if self.limit < 2:
            raise ValueError("--limit must be >= 2 (the controls need another passage)")
        if self.samples < 1:
            raise ValueError("--samples must be >= 1")


def shuffled_words(passage: Passage, seed: int) -> str:
    """The passage's words in a random order, as lines of the restatement's lengths (the same size)."""
    words = passage.context.split()
    order = np.random.default_rng(seed).permutation(len(words))
    shuffled = [words[i] for i in order]
    lines, start = [], 0
    for sentence in sentences(passage.context):
        n = len(sentence.split())
        lines.append(" ".join(shuffled[start : start + n]))
        start += n
    return "\n".join(line for line in lines if line)


class RewardValidity:
    def __init__(self, config: ValidityConfig, model: tuple[torch.nn.Module, Any] | None = None):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        passages = load_passages(config.data)[: config.limit]
        if len(passages) < 2:
            raise ValueError(f"{config.data}: the benchmark needs at least 2 passages")
        self.passages = passages
        model = model or load_model(config.model, device=config.device)
        settings = {"control_passages": 1, **CANDIDATES[config.candidate]}
        self.env = KnowledgeIncorporationEnv(passages, model=model, **settings)
        self.external_sets = sorted({name for p in passages for name in p.self_edits})
        config.out.mkdir(parents=True, exist_ok=True)
        self.samples = ResultLog(
            config.out / "self_edits.jsonl",
            {"data": str(config.data), "model": config.model or DEFAULT_MODEL_NAME, "samples": config.samples,
             "temperature": config.temperature, "sample_tokens": config.sample_tokens, "seed": config.seed},
            ("passage",),
        )
        self.log = ResultLog(config.out / f"{config.candidate}.log.jsonl", self._provenance(), ("passage", "kind", "seed"))

    def _provenance(self) -> dict[str, Any]:
        env = self.env
        return {
            "data": str(self.config.data),
            "model": self.config.model or DEFAULT_MODEL_NAME,
            "candidate": self.config.candidate,
            "inner_loop": env.inner_loop.to_dict(),
            "env": {"reward_metric": env.reward_metric, "baseline": env.baseline_mode,
                    "include_passage": env.include_passage, "max_answer_tokens": env.max_answer_tokens,
                    "title_prefix": env.title_prefix, "question_topic": env.question_topic,
                    # Absent when off, so that logs written before the option existed still resume.
                    **({"split_sentences": True} if env.split_sentences else {})},
            "samples": self.config.samples,
            "seed": self.config.seed,
        }

    # ------------------------------------------------------------------ self-edits

    def untrained_self_edits(self, index: int) -> list[str]:
        cached = self.samples.get((index,))
        if cached is None:
            texts = sample_self_edits(
                self.env.model, self.env.tokenizer, [self.env.render_prompt(self.passages[index])],
                n=self.config.samples, temperature=self.config.temperature,
                max_new_tokens=self.config.sample_tokens, seed=self.config.seed + index,
            )[0]
            cached = {"passage": index, "texts": texts}
            self.samples.append(cached)
        return cached["texts"]

    def self_edits(self, index: int) -> dict[str, str]:
        """Every self-edit stepped for passage ``index``, by kind."""
        passage = self.passages[index]
        other = self.passages[(index + 1) % len(self.passages)]
        edits = {"restatement": restatement(passage.context)}
        edits.update({name: passage.self_edits[name][0] for name in self.external_sets if passage.self_edits.get(name)})
        edits.update({f"untrained-{k}": text for k, text in enumerate(self.untrained_self_edits(index))})
        edits["junk-other"] = restatement(other.context)
        edits["junk-shuffled"] = shuffled_words(passage, self.config.seed + index)
        return edits

    # ------------------------------------------------------------------ stepping

    def step(self, index: int, kind: str, self_edit: str, seed: int) -> dict[str, Any]:
        env = self.env
        env.inner_loop = replace(env.inner_loop, seed=seed)
        env.reset(options={"index": index})
        _, reward, _, _, info = env.step(self_edit)
        metrics, baseline = info["metrics"], info["baseline_metrics"]

        def change(name: str) -> float | None:
            return metrics[name] - baseline[name] if name in metrics and name in baseline else None

        lines = [e.completion for e in env.plan_training(self_edit, self.passages[index]).examples] if not info["error"] else []
        return {
            "passage": index, "kind": kind, "seed": seed, "reward": reward, "error": info["error"],
            "gain": info["gain"], "contains_gain": change("contains"), "f1_gain": change("f1"),
            "control_change": change("control_log_likelihood"),
            "n_lines": len(lines), "n_train_tokens": info["n_train_tokens"],
            "train_seconds": float(info["train_seconds"]), "eval_seconds": float(info["eval_seconds"]),
        }

    def run(self) -> dict[str, Any]:
        config = self.config
        retest = len(self.passages) if config.retest_limit is None else min(config.retest_limit, len(self.passages))
        work = []
        for index in range(len(self.passages)):
            seeds = (self.env.inner_loop.seed, RETEST_SEED) if index < retest else (self.env.inner_loop.seed,)
            for seed in seeds:
                work.append((index, seed))
        base_seed = self.env.inner_loop.seed
        with tqdm(total=len(work), desc=f"{config.candidate}: passages x seeds") as bar:
            for index, seed in work:
                for kind, text in self.self_edits(index).items():
                    if (index, kind, seed) not in self.log:
                        self.log.append(self.step(index, kind, text, seed))
                bar.update()
        self.env.inner_loop = replace(self.env.inner_loop, seed=base_seed)
        # Only this run's (passage, seed) steps: a shorter --limit or --retest-limit over a longer
        # run's log summarises the shorter screen.
        planned = set(work)
        records = [r for r in self.log if (r["passage"], r["seed"]) in planned]
        summary = summarise(records, len(self.passages), self._provenance())
        if self.env.reward_metric != CONTROLLED:
            derived = summarise(damage_controlled(records), len(self.passages), self._provenance())
            derived["candidate"] = f"{config.candidate}, damage-controlled (same steps)"
            summary["damage_controlled"] = derived
        summary["environment"] = run_environment()
        path = config.json or config.out / f"{config.candidate}.json"
        write_json(path, summary)
        path.with_suffix(".md").write_text(markdown_summary(with_derived([summary])), encoding="utf-8")
        return summary


# ---------------------------------------------------------------------- statistics


def damage_controlled(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each gain replaced by the gain minus the control passage's change, and the
    reward by that gain's sign: what ``reward_metric="controlled_log_likelihood"`` gives for the very
    same update and evaluation (every candidate has ``reward_margin=0``)."""
    derived = []
    for record in records:
        gain, control = record["gain"], record["control_change"]
        controlled = None if gain is None or control is None else gain - control
        derived.append({**record, "gain": controlled, "reward": float(controlled is not None and controlled > 0)})
    return derived


def with_derived(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each summary followed by its damage-controlled statistics, where it has them."""
    return [row for s in summaries for row in (s, s.get("damage_controlled")) if row is not None]


def _by_passage(records: Sequence[dict[str, Any]], seed: int) -> dict[int, dict[str, dict[str, Any]]]:
    table: dict[int, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r["seed"] == seed:
            table.setdefault(r["passage"], {})[r["kind"]] = r
    return table


def _gain(record: dict[str, Any] | None) -> float | None:
    return None if record is None else record["gain"]


def passage_bootstrap(
    passages: Sequence[int], statistic: Callable[[Sequence[int]], float], *, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """``statistic`` over the passages and its 95% percentile-bootstrap interval, resampling passages
    (for statistics that are not a mean of per-passage values: correlations)."""
    point = statistic(passages)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = statistic([passages[i] for i in rng.integers(0, len(passages), len(passages))])
        if math.isfinite(value):
            values.append(value)
    if not values or not math.isfinite(point):
        return Interval(point, math.nan, math.nan)
    low, high = np.quantile(values, [0.025, 0.975])
    return Interval(point, float(low), float(high))


def _multiple_r(y: Sequence[float], predictors: Sequence[Sequence[float]]) -> float:
    """R of the least-squares fit of ``y`` on the predictors (with an intercept)."""
    if len(y) < len(predictors) + 2 or np.std(y) == 0:
        return math.nan
    design = np.column_stack([np.ones(len(y)), *predictors])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    fitted = design @ coef
    ss_res, ss_tot = np.sum((y - fitted) ** 2), np.sum((np.asarray(y) - np.mean(y)) ** 2)
    return float(math.sqrt(max(0.0, 1.0 - ss_res / ss_tot)))


def _mean_interval(values_by_passage: dict[int, float]) -> dict[str, float] | None:
    if not values_by_passage:
        return None
    return bootstrap_ci(list(values_by_passage.values())).to_dict()


def summarise(records: Sequence[dict[str, Any]], n_passages: int, provenance: dict[str, Any]) -> dict[str, Any]:
    """The validity statistics of a candidate's logged steps (see the module docstring)."""
    base_seed = provenance["inner_loop"]["seed"]
    main = _by_passage(records, base_seed)
    restatement_positive, junk_loses, seal_beats, damage = {}, {}, {}, {}
    each_junk_loses: dict[str, dict[int, float]] = {kind: {} for kind in JUNK_KINDS}
    for p, kinds in main.items():
        restated = _gain(kinds.get("restatement"))
        if restated is not None:
            restatement_positive[p] = float(restated > 0)
            for kind in JUNK_KINDS:
                junk = _gain(kinds.get(kind))
                # An unusable junk self-edit (no gain) counts as losing: it earns reward 0.
                each_junk_loses[kind][p] = float(junk is None or junk < restated)
            junk_loses[p] = float(np.mean([each_junk_loses[kind][p] for kind in JUNK_KINDS]))
        seal = _gain(kinds.get(SEAL_SET))
        untrained = [_gain(r) for k, r in kinds.items() if k.startswith("untrained-")]
        if seal is not None and untrained:
            seal_beats[p] = float(np.mean([u is None or seal > u for u in untrained]))
        changes = [r["control_change"] for r in kinds.values() if r["control_change"] is not None]
        if changes:
            damage[p] = float(np.mean(changes))

    usable = [r for r in records if r["seed"] == base_seed and r["gain"] is not None]
    passages = sorted({r["passage"] for r in usable})

    def of(ps: Sequence[int], kinds: Callable[[dict], bool] = lambda r: True) -> list[dict[str, Any]]:
        chosen = []
        for p in ps:
            chosen += [r for r in usable if r["passage"] == p and kinds(r)]
        return chosen

    retest = _by_passage(records, RETEST_SEED)
    pairs = {
        p: [(main[p][k]["gain"], r["gain"]) for k, r in kinds.items()
            if k in main.get(p, {}) and r["gain"] is not None and main[p][k]["gain"] is not None]
        for p, kinds in retest.items()
    }
    retest_passages = sorted(p for p in pairs if pairs[p])

    def retest_r(ps: Sequence[int]) -> float:
        points = [pair for p in ps for pair in pairs[p]]
        return pearson([a for a, _ in points], [b for _, b in points])

    def agreement(ps: Sequence[int]) -> float:
        rows = [r for r in of(ps) if r["contains_gain"] is not None]
        return spearman([r["gain"] for r in rows], [(r["contains_gain"] + r["f1_gain"]) / 2 for r in rows])

    def length_r(ps: Sequence[int]) -> float:
        rows = of(ps, lambda r: r["kind"] not in JUNK_KINDS)
        return _multiple_r(np.array([r["gain"] for r in rows]),
                           [np.array([r["n_lines"] for r in rows], float), np.array([r["n_train_tokens"] for r in rows], float)])

    by_kind = {}
    for r in records:
        if r["seed"] == base_seed:
            by_kind.setdefault(r["kind"].split("-")[0] if r["kind"].startswith("untrained") else r["kind"], []).append(r)
    summary = {
        "candidate": provenance["candidate"],
        "n_passages": len(main),
        "n_passages_planned": n_passages,
        "n_steps": len(records),
        "restatement_positive_fraction": _mean_interval(restatement_positive),
        "junk_loses_fraction": _mean_interval(junk_loses),
        "junk_loses_fraction_by_kind": {kind: _mean_interval(values) for kind, values in each_junk_loses.items()},
        "seal_beats_untrained_fraction": _mean_interval(seal_beats),
        "retest_r": passage_bootstrap(retest_passages, retest_r).to_dict() if retest_passages else None,
        "dense_text_agreement": passage_bootstrap(passages, agreement).to_dict() if passages else None,
        "control_damage": _mean_interval(damage),
        "length_partial_r": passage_bootstrap(passages, length_r).to_dict() if passages else None,
        "by_kind": {
            kind: {"n": len(rs), "mean_gain": float(np.mean([r["gain"] for r in rs if r["gain"] is not None] or [math.nan])),
                   "mean_contains_gain": float(np.mean([r["contains_gain"] for r in rs
                                                        if r["contains_gain"] is not None] or [math.nan])),
                   "reward_rate": float(np.mean([r["reward"] for r in rs])),
                   "errors": sum(r["error"] is not None for r in rs),
                   "median_train_seconds": float(np.median([r["train_seconds"] for r in rs])),
                   "median_eval_seconds": float(np.median([r["eval_seconds"] for r in rs]))}
            for kind, rs in sorted(by_kind.items())
        },
        "targets": {name: f"{op} {value}" for name, (op, value) in TARGETS.items()},
        "provenance": provenance,
    }
    summary["targets_met"] = met(summary)
    return summary


def met(summary: dict[str, Any]) -> dict[str, bool | None]:
    """Which targets the point estimates meet (None: not measured)."""
    result: dict[str, bool | None] = {}
    for name, (op, value) in TARGETS.items():
        entry = summary.get(name)
        x = entry["mean"] if isinstance(entry, dict) else entry
        if x is None or not math.isfinite(x):
            result[name] = None
        else:
            result[name] = abs(x) <= value if op == "|x|<=" else x >= value
    return result


def _cell(entry: Any, digits: int = 2) -> str:
    if entry is None:
        return "-"
    if isinstance(entry, dict):
        if not math.isfinite(entry["low"]):
            return f"{entry['mean']:.{digits}f}"
        return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    return f"{entry:.{digits}f}"


STATISTICS = ("restatement_positive_fraction", "junk_loses_fraction", "seal_beats_untrained_fraction", "retest_r",
              "dense_text_agreement", "control_damage", "length_partial_r")


def markdown_summary(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per candidate: every statistic with its interval, and the targets met."""
    header = ["candidate", "passages"] + list(STATISTICS) + ["targets met"]
    rows = []
    for s in summaries:
        hits = met(s)
        rows.append([s["candidate"], s["n_passages"]] + [_cell(s[name]) for name in STATISTICS]
                    + [f"{sum(bool(v) for v in hits.values())}/{len(hits)}"])
    return markdown_table(header, rows)


def parse_args(argv: Sequence[str] | None = None) -> ValidityConfig:
    """The command line is :class:`ValidityConfig` (one option per field, help from its docstring)."""
    return parse_config(ValidityConfig, argv, __doc__.split("\n\n")[0], required=("data",))


def main(argv: Sequence[str] | None = None) -> int:
    def work() -> None:
        summary = RewardValidity(parse_args(argv)).run()
        print(markdown_summary(with_derived([summary])))
        hits = met(summary)
        print("targets met: " + ", ".join(f"{k}={'yes' if v else ('no' if v is False else 'n/a')}" for k, v in hits.items()))

    return main_exit_code("reward_validity", work)


if __name__ == "__main__":
    sys.exit(main())
