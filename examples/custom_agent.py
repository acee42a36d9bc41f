"""A new RL algorithm on the agent protocol: REINFORCE with a baseline, in one ``learn`` method.

The policy, sampling, saving and loading come from ``GeneratorAgent`` (a LoRA adapter on a causal
LM); the runner does the rest (rounds, held-out evaluation, logs, plot, resume). ``learn`` gets one
round's records (prompt, self-edit, reward, info) and takes one policy-gradient step:
``loss = -sum((reward - mean reward) * log p(self-edit | prompt)) / n``.

Run: python examples/custom_agent.py   (CPU, a few minutes with the embedded default model;
writes runs/custom-agent-<time>/, see its progress.png and metrics.jsonl)
"""

import time
from dataclasses import replace

import gymnasium as gym
import torch

import seal_env  # noqa: F401  (registers the environments)
from agents import GeneratorAgent, GeneratorConfig, TrainConfig, train
from seal_env.lm import TrainingExample, chat_prompt, pad_batch, token_log_probs, tokenize_example
from seal_env.models import load_model


class ReinforceAgent(GeneratorAgent):
    name = "reinforce"
    samples_per_context = 2  # self-edits per context and round: the baseline is their mean reward

    def learn(self, records, *, seed):
        rewards = [r.reward for r in records]
        baseline = sum(rewards) / len(rewards)
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.config.learning_rate)  # fresh each round: resumable
        pad_id = self.tokenizer.pad_token_id
        for record in records:
            advantage = record.reward - baseline
            if advantage == 0:
                continue
            # The self-edit as the model wrote it: a chat reply to the observation's prompt.
            example = TrainingExample(completion=record.self_edit, prompt=chat_prompt(self.tokenizer, record.prompt))
            tokens = tokenize_example(self.tokenizer, example, max_tokens=1024, loss_on="completion")
            log_probs, _ = token_log_probs(self.model, *pad_batch([tokens], pad_id, self.model.device))
            (-advantage * log_probs.sum() / len(records)).backward()  # gradients add up over the records
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        return {"baseline": baseline, "steps": 1.0}


if __name__ == "__main__":
    model, tokenizer = load_model(None, shared=False)  # a private copy: the agent trains it
    job = TrainConfig(
        output_dir=f"runs/custom-agent-{time.strftime('%Y%m%d-%H%M%S')}", rounds=1, contexts_per_round=2, eval_contexts=2
    )
    env = gym.make("seal_env/KnowledgeIncorporation-v0", inner_loop=replace(job.inner_loop, epochs=1))
    agent = ReinforceAgent(model, tokenizer, GeneratorConfig(learning_rate=1e-4, max_new_tokens=64))
    history = train(agent, env, job)
    print(f"held-out reward {history[0]['eval/reward']:.2f} -> {history[-1]['eval/reward']:.2f}; "
          f"outputs in {job.output_dir}")
