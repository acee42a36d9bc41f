"""The ``seal-env`` command line.

Subcommands:

* ``seal-env demo`` – show a context, sample self-edits from a model, step the environment on each and
  print a table of rewards, scores and timings.
* ``seal-env envs`` – list the registered environment ids.
* ``seal-env serve`` – serve an environment over HTTP/WebSocket in the OpenEnv conventions
  (:mod:`seal_env.serve`, the optional ``serve`` extra; step it with ``seal_env.serve.RemoteEnv``).
* ``seal-env train`` – train a self-edit generator with an agent (ReST-EM or GRPO). It is added by the
  ``agents`` package (``agents.cli.add_train_command``) through the ``seal_env.commands`` entry-point
  group, which any installed package may extend with ``def command(subparsers) -> None``.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from typing import Sequence

import gymnasium as gym

from seal_env.config_cli import INNER_PREFIX, Option, add_option, dataclass_options, given_options
from seal_env.inner_loop import InnerLoopConfig

COMMANDS_GROUP = "seal_env.commands"
"""Entry-point group of extra subcommands: each entry is ``command(subparsers)`` and adds its parser."""

def add_inner_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """``--inner-*`` options for every :class:`InnerLoopConfig` field (default: the chosen preset's)."""
    group = parser.add_argument_group("inner loop (LoRA update per self-edit)")
    group.add_argument(
        "--inner-preset", choices=["default", "seal"], default="default",
        help="'default': tuned for the embedded model on CPU; 'seal': the paper's r=32, alpha=64, 10 epochs",
    )
    for option in _inner_loop_options():
        add_option(group, option, f"{option.help} (default preset: {option.default})")


def inner_loop_from_args(args: argparse.Namespace) -> InnerLoopConfig:
    overrides = {name[len(INNER_PREFIX):]: value for name, value in given_options(args, _inner_loop_options()).items()}
    return InnerLoopConfig.seal(**overrides) if args.inner_preset == "seal" else InnerLoopConfig(**overrides)


def _inner_loop_options() -> list[Option]:
    return [o._replace(dest=INNER_PREFIX + o.dest) for o in dataclass_options(InnerLoopConfig)]


def _demo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from seal_env.lm import sample_self_edits
    from seal_env.models import load_model

    env_kwargs = dict(model=args.model, inner_loop=inner_loop_from_args(args), reward_margin=args.reward_margin)
    if args.env == "seal_env/KnowledgeIncorporation-v0":
        env_kwargs.update(passages=args.data, reward_metric=args.reward_metric, baseline=args.baseline)
    elif args.data:
        env_kwargs["tasks"] = args.data
    env = gym.make(args.env, **env_kwargs)
    base_env = env.unwrapped
    obs, info = env.reset(seed=args.seed, options={"index": args.index} if args.index is not None else None)
    print(f"== context {info['context_index']} ==\n{obs['context']}\n")
    print("== prompt ==\n" + obs["prompt"])
    generator, tokenizer = (base_env.model, base_env.tokenizer) if args.generator is None else load_model(args.generator)
    self_edits = sample_self_edits(
        generator, tokenizer, [obs["prompt"]], n=args.num_self_edits, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, progress=True,
    )[0]
    print("computing the baseline ...", flush=True)
    baseline = base_env.baseline(info["context_index"])
    rows = []
    for k, self_edit in enumerate(tqdm(self_edits, desc="stepping self-edits")):
        env.reset(options={"index": info["context_index"]})
        _, reward, _, _, step_info = env.step(self_edit)
        rows.append((k, reward, step_info))
        print(f"\n-- self-edit {k} --\n{self_edit.strip()}")
        if step_info["error"]:
            print(f"   (rejected: {step_info['error']})")
    metric_names = list(baseline.metrics)
    header = ["#", "reward", "score", "gain", *metric_names, "train s", "eval s", "examples"]
    table = [["base", "", f"{baseline.score:.3f}", "", *(f"{baseline.metrics[m]:.3f}" for m in metric_names), "", "", ""]]
    for k, reward, i in rows:
        table.append([
            str(k), f"{reward:.0f}",
            "-" if i["score"] is None else f"{i['score']:.3f}",
            "-" if i["gain"] is None else f"{i['gain']:+.3f}",
            *(f"{i['metrics'][m]:.3f}" if m in i["metrics"] else "-" for m in metric_names),
            f"{float(i['train_seconds']):.1f}", f"{float(i['eval_seconds']):.1f}", str(i["n_train_examples"]),
        ])
    widths = [max(len(r[c]) for r in [header, *table]) for c in range(len(header))]
    print("\n" + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in table:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"context_index": info["context_index"], "baseline": baseline.metrics,
                 "steps": [{"self_edit": s, "reward": r, **{k: i[k] for k in ("score", "gain", "metrics", "error")},
                            "train_seconds": float(i["train_seconds"]), "eval_seconds": float(i["eval_seconds"])}
                           for s, (_, r, i) in zip(self_edits, rows)]},
                f, indent=2, default=str,
            )
    return 0


def _envs(_: argparse.Namespace) -> int:
    for env_id in sorted(gym.registry):
        if env_id.startswith("seal_env/"):
            print(env_id)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:  # imported here: the rest of seal_env never imports the optional serve extra
        from seal_env.serve import serve_command
    except ImportError as exc:  # openenv-core, fastapi or uvicorn is missing; the message says what to install
        print(f"seal-env serve: {exc}", file=sys.stderr)
        return 1
    return serve_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seal-env", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="sample self-edits for one context and step the environment on each",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--env", default="seal_env/KnowledgeIncorporation-v0", help="registered environment id")
    demo.add_argument("--model", default=None, help="inner model: HF id or local path (default: the embedded SmolLM2-135M-Instruct)")
    demo.add_argument("--generator", default=None, help="model that writes self-edits (default: the inner model)")
    demo.add_argument("--data", default=None, help="contexts file (passages JSON for knowledge incorporation); default: built-in demo set")
    demo.add_argument("--index", type=int, default=None, help="context index (default: drawn from --seed)")
    demo.add_argument("--num-self-edits", type=int, default=3, help="self-edits to sample and step")
    demo.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the generator")
    demo.add_argument("--max-new-tokens", type=int, default=160, help="self-edit length limit in tokens")
    demo.add_argument("--reward-metric", default="log_likelihood", help="knowledge env: log_likelihood, f1, exact_match or contains")
    demo.add_argument("--baseline", default="base", help="knowledge env: 'base' (un-updated model) or 'passage' (trained on the passage)")
    demo.add_argument("--reward-margin", type=float, default=0.0, help="reward is 1 iff score > baseline + margin")
    demo.add_argument("--seed", type=int, default=0, help="seed of context choice and sampling")
    demo.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_inner_loop_arguments(demo)
    demo.set_defaults(handler=_demo)

    envs = sub.add_parser("envs", help="list the registered environment ids")
    envs.set_defaults(handler=_envs)

    serve = sub.add_parser("serve", help="serve an environment over HTTP/WebSocket (OpenEnv conventions; needs seal-env[serve])",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--env", default="seal_env/KnowledgeIncorporation-v0", help="registered environment id")
    serve.add_argument("--env-kwargs", default="{}", help='environment keyword arguments as a JSON object, e.g. \'{"passages": "data.json"}\'')
    serve.add_argument("--model", default=None, help="inner model: HF id or local path (default: the embedded SmolLM2-135M-Instruct)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every request (default: $SEAL_ENV_TOKEN, else none)")
    serve.add_argument("--max-sessions", type=int, default=16, help="concurrent WebSocket sessions (they share one model)")
    serve.set_defaults(handler=_serve)

    # Packages above this one add their subcommands (the agents package adds ``train``) through the
    # ``seal_env.commands`` entry-point group, so that the environments never import their users.
    for entry_point in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry_point.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import seal_env  # noqa: F401  (registers the environments)

    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
