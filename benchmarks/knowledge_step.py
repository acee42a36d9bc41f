"""One knowledge-incorporation step on the default model: time, memory, and the reward signal.

For each of the first ``--passages`` built-in passages, the default model samples ``--samples``
implication self-edits, and the environment steps on each. The script reports

* the median step time split into training and evaluation, self-edit size, and the process's peak
  resident memory (and peak CUDA memory on a GPU);
* the gain in gold-answer log-likelihood and the training time of the default inner-loop preset and
  SEAL's preset on the same self-edit (the passage restated one sentence per line), which is how the
  default preset was chosen;
* for every reward metric and both baselines (the un-updated model, and the model trained on the
  raw passage), the fraction of self-edits rewarded: a reward that is almost always 0 or always 1
  teaches an agent nothing, which is how the environment's default metric was chosen.

Usage: python benchmarks/knowledge_step.py [--passages 6] [--samples 3] [--json results/knowledge_step.json]
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from seal_env import InnerLoopConfig, KnowledgeIncorporationEnv
from seal_env.config_cli import parse_config
from seal_env.lm import sample_self_edits
from seal_env.tasks.knowledge import REWARD_METRICS


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@dataclass
class StepBenchConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    passages: int = 6
    """How many built-in passages."""
    samples: int = 3
    """Self-edits sampled per passage."""
    temperature: float = 0.7
    """Sampling temperature of the self-edits."""
    max_new_tokens: int = 160
    """Longest sampled self-edit, in tokens."""
    json: str = "results/knowledge_step.json"
    """Where to write the results."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_config(StepBenchConfig, argv, __doc__.split("\n\n")[0])
    if args.threads:
        torch.set_num_threads(args.threads)

    env = KnowledgeIncorporationEnv(inner_loop=InnerLoopConfig())
    passage_env = KnowledgeIncorporationEnv(model=(env.model, env.tokenizer), baseline="passage")
    records = []
    for index in tqdm(range(args.passages), desc="passages"):
        obs, _ = env.reset(options={"index": index})
        self_edits = sample_self_edits(
            env.model, env.tokenizer, [obs["prompt"]], n=args.samples, temperature=args.temperature,
            max_new_tokens=args.max_new_tokens, seed=index,
        )[0]
        passage_baseline = passage_env.baseline(index).metrics
        for self_edit in self_edits:
            env.reset(options={"index": index})
            _, _, _, _, info = env.step(self_edit)
            records.append({
                "passage": index, "error": info["error"], "chars": len(self_edit),
                "n_train_examples": info["n_train_examples"], "n_train_tokens": info["n_train_tokens"],
                "train_seconds": float(info["train_seconds"]), "eval_seconds": float(info["eval_seconds"]),
                "metrics": info["metrics"], "base": info["baseline_metrics"], "passage_baseline": passage_baseline,
            })
    presets = {"default": InnerLoopConfig(), "seal": InnerLoopConfig.seal()}
    preset_rows = {name: [] for name in presets}
    for index in tqdm(range(args.passages), desc="inner-loop presets"):
        context = env.render_context(env.contexts[index])
        restated = "\n".join(s.strip() + "." for s in context.split(". ") if s.strip())
        for name, config in presets.items():
            preset_env = KnowledgeIncorporationEnv(model=(env.model, env.tokenizer), inner_loop=config,
                                                   reward_metric="log_likelihood")
            preset_env.reset(options={"index": index})
            _, _, _, _, info = preset_env.step(restated)
            preset_rows[name].append({"gain": info["metrics"]["log_likelihood"] - info["baseline_metrics"]["log_likelihood"],
                                      "train_seconds": float(info["train_seconds"])})
    preset_summary = {
        name: {"median_log_likelihood_gain": statistics.median(r["gain"] for r in rows),
               "median_train_seconds": statistics.median(r["train_seconds"] for r in rows),
               "config": presets[name].to_dict()}
        for name, rows in preset_rows.items()
    }
    ok = [r for r in records if r["error"] is None]
    measured = [m for m in REWARD_METRICS if ok and m in ok[0]["metrics"]]  # the controlled one needs controls
    rates = {
        baseline: {m: statistics.fmean(float(r["metrics"][m] > r[key][m]) for r in ok) for m in measured}
        for baseline, key in (("base", "base"), ("passage", "passage_baseline"))
    }
    timing = {
        "median_train_seconds": statistics.median(r["train_seconds"] for r in ok) if ok else None,
        "median_eval_seconds": statistics.median(r["eval_seconds"] for r in ok) if ok else None,
        "median_train_examples": statistics.median(r["n_train_examples"] for r in ok) if ok else None,
        "median_train_tokens": statistics.median(r["n_train_tokens"] for r in ok) if ok else None,
    }
    memory = {"peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        memory["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result = {
        "machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "device": str(env.model.device)},
        "inner_loop": env.inner_loop.to_dict(), "passages": args.passages, "samples": args.samples,
        "steps": len(records), "rejected": len(records) - len(ok),
        "timing": timing, "memory": memory, "reward_rate": rates, "presets": preset_summary, "records": records,
    }
    print(f"\n{len(records)} steps ({result['rejected']} rejected self-edits) on {env.model.device}")
    print(f"median step: train {timing['median_train_seconds']:.1f} s + evaluate {timing['median_eval_seconds']:.1f} s; "
          f"{timing['median_train_examples']} sequences, {timing['median_train_tokens']} tokens")
    print(f"peak resident memory {memory['peak_rss_mib']:.0f} MiB")
    print("\ninner-loop presets on the restated passage (medians)")
    for name, row in preset_summary.items():
        print(f"{name:>8}: log-likelihood gain {row['median_log_likelihood_gain']:+.2f} in {row['median_train_seconds']:.1f} s of training")
    print("\nfraction of self-edits rewarded (score > baseline)")
    print(f"{'metric':>15}  {'vs base model':>13}  {'vs passage-trained':>18}")
    for m in measured:
        base_rate, passage_rate = rates["base"][m], rates["passage"][m]
        print(f"{m:>15}  {base_rate:>13.2f}  {passage_rate:>18.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
