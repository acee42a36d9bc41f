"""Quick start: make the knowledge-incorporation environment, reset, step one self-edit, read the evidence.

Run: python examples/quickstart.py   (CPU, ~30 s with the embedded default model)
"""

import gymnasium as gym

import seal_env  # noqa: F401  (registers the environments)

env = gym.make("seal_env/KnowledgeIncorporation-v0")  # built-in passages, embedded SmolLM2-135M-Instruct
obs, info = env.reset(seed=0)
print(obs["prompt"])

# A self-edit is what a generator model writes in reply to obs["prompt"]. Here we hand-write one:
# the passage restated one sentence per line, as "implications".
self_edit = "\n".join(sentence.strip() + "." for sentence in obs["context"].split(". ") if sentence.strip())

obs, reward, terminated, truncated, info = env.step(self_edit)
print(f"\nreward {reward}  (score {info['score']:.3f} vs baseline {info['baseline_score']:.3f}, gain {info['gain']:+.3f})")
print(f"trained on {info['n_train_examples']} sequences / {info['n_train_tokens']} tokens, final loss {info['train_loss']:.3f}")
print(f"train {float(info['train_seconds']):.1f} s, evaluate {float(info['eval_seconds']):.1f} s, error: {info['error']}")
for item in info["items"]:
    print(f"  Q: {item['question']}\n     gold: {item['answers'][0]!r}  model: {item['prediction']!r}  "
          f"F1 {item['f1']:.2f}  log-likelihood {item['log_likelihood']:.2f}")
