"""PPO's critic: the value model GRPO was built to remove (DeepSeekMath, section 4.1).

PPO differs from GRPO in one box of the step: the advantage. Instead of comparing a completion
with its group, a value model V estimates, before every completion token, the reward still to
come; GAE (`algorithm.advantage: gae`) turns the rewards (the score on the last token) and those
estimates into per-token advantages. After the policy step, V is regressed on the GAE returns
with a clipped value loss. In the step that is two explicit calls, `critic.values(tokens)` before
the advantages and `critic.update(...)` after the policy update; everything else is the GRPO step.

The price is the critic: a second network as large as the policy's decoder, its gradients and
its Adam moments, plus a forward pass for the values and a forward/backward for its update every
step. `benchmarks/bench_grpo_vs_ppo.py` measures it. Choose it by adding a `critic:` section to
the config (and `algorithm.advantage: gae`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from r1lab.algorithms import compute_gae, last_token_rewards, masked_mean, value_loss
from r1lab.config import RunConfig
from r1lab.train.batch import TokenBatch
from r1lab.train.forward import Forward
from r1lab.train.packed import PackedBatch, packed_hidden, unflatten

CRITIC = "critic.safetensors"


class ValueModel(nn.Module):
    """V(prompt + completion[:t]) for every completion position t: the policy's decoder, copied
    (the critic starts from the policy's weights, as in verl), and a linear head initialised to 0.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(policy.get_decoder())
        param = next(policy.parameters())
        self.head = nn.Linear(policy.config.hidden_size, 1, device=param.device, dtype=param.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.backbone.requires_grad_(True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                prompt_len: int) -> Tensor:
        """Values [N, T] for the T completion tokens of `input_ids [N, L+T]` (L = prompt_len)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        # position L-1+t has read everything before completion token t: that state's value
        return self.head(hidden[:, prompt_len - 1 : -1]).squeeze(-1).float()  # [N, T]

    def packed(self, pb: PackedBatch) -> Tensor:
        """`forward` through the packed forward (each prompt once, no padding): [R, width]."""
        hidden = packed_hidden(self.backbone, pb)  # [m, d] at the predicting positions
        return unflatten(self.head(hidden).squeeze(-1).float(), pb.valid_c, pb.width)


class Critic:
    """The value model, its optimiser, and the two calls the step makes."""

    def __init__(self, cfg: RunConfig, policy: nn.Module, forward: Forward,
                 model: nn.Module | None = None) -> None:
        if cfg.critic is None:
            raise ValueError("PPO needs a `critic:` section in the config (e.g. `critic: {}`)")
        self.cfg, self.policy, self.forward = cfg, policy, forward
        self.model = model if model is not None else ValueModel(policy)
        self.model.eval()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.critic.lr,
                                           weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))

    @torch.no_grad()
    def values(self, tokens: TokenBatch) -> Tensor:
        """V before every completion token [N, T], without gradient (they feed GAE)."""
        parts = [self._values(tokens, sl) for sl in self._slices(0, len(tokens))]
        return torch.cat(parts) if parts else torch.zeros_like(tokens.mask)

    def _values(self, t: TokenBatch, sl: slice) -> Tensor:
        """Values [n, T] for rows `sl`: through the packed forward when the policy's forward is
        packed (same architecture) and the critic is r1lab's `ValueModel`."""
        critic = self.model
        if isinstance(critic, ValueModel) and self.forward.is_packed(self.policy, t.width):
            dropout = float(getattr(critic.backbone.config, "attention_dropout", 0.0) or 0.0)
            if not (critic.training and dropout > 0):  # the packed forward has no dropout
                rows = torch.arange(sl.start, sl.stop, device=t.input_ids.device)
                return critic.packed(PackedBatch.from_padded(t.input_ids, t.attn, t.prompt_len, rows))
        return critic(t.input_ids[sl], t.attn[sl], t.pos[sl], t.prompt_len)

    def _slices(self, start: int, end: int) -> list[slice]:
        mb = self.cfg.train.micro_batch_size
        return [slice(i, min(i + mb, end)) for i in range(start, end, mb)]

    def returns(self, rewards: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """The critic's targets [N, T]: GAE returns of `rewards` (per sequence or per token)."""
        c = self.cfg.critic
        token_rewards = rewards if rewards.dim() == 2 else last_token_rewards(rewards, mask)
        _, returns = compute_gae(token_rewards.to(values.dtype), values, mask, gamma=c.gamma, lam=c.lam)
        return returns

    def update(self, tokens: TokenBatch, rewards: Tensor, values: Tensor) -> dict[str, float]:
        """Clipped value regression on the GAE returns, on the policy's pass/mini-batch schedule;
        returns its metrics and the values' fit (explained variance) before the update."""
        mask = tokens.mask
        returns = self.returns(rewards, values, mask)
        metrics = self.regress(tokens, mask, values, returns)
        metrics["value_mean"] = masked_mean(values, mask).item()
        metrics["return_mean"] = masked_mean(returns, mask).item()
        residual = masked_mean((returns - values).square(), mask)
        spread = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
        metrics["explained_var"] = (1 - residual / spread.clamp(min=1e-8)).item()
        return metrics

    def regress(self, tokens: TokenBatch, mask: Tensor, old_values: Tensor, returns: Tensor) -> dict[str, float]:
        cfg, alg = self.cfg, self.cfg.algorithm
        N = len(tokens)
        mini = alg.mini_batch_size or N
        starts = [j for _ in range(alg.num_iterations) for j in range(0, N, mini)]
        totals = {"value_loss": 0.0, "vf_clip_frac": 0.0, "value_grad_norm": 0.0}
        self.model.train()
        for j in starts:
            end = min(j + mini, N)
            num_tokens = mask[j:end].sum().clamp(min=1)
            self.optimizer.zero_grad(set_to_none=True)
            for sl in self._slices(j, end):
                m = mask[sl]  # [n, T]
                values = self._values(tokens, sl)  # [n, T]
                per_token, vm = value_loss(values, old_values[sl], returns[sl], m,
                                           clip_range=cfg.critic.value_clip)
                loss = (per_token * m).sum() / num_tokens  # token mean over the mini-batch
                loss.backward()
                totals["value_loss"] += loss.item() / len(starts)
                totals["vf_clip_frac"] += vm["vf_clip_frac"].item() * (m.sum() / num_tokens).item() / len(starts)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            totals["value_grad_norm"] += grad_norm.item() / len(starts)
            self.optimizer.step()
        self.model.eval()
        return totals

    def parameters(self):
        return self.model.parameters()

    def state_dict(self) -> dict[str, Any]:
        return {"critic_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "critic_optimizer" not in state:
            raise ValueError("the checkpoint has no critic optimiser state: it was not written by "
                             "a PPO run (resume it without a `critic:` section)")
        self.optimizer.load_state_dict(state["critic_optimizer"])

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, Path(path) / CRITIC)

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        critic_file = Path(path) / CRITIC
        if not critic_file.is_file():
            raise ValueError(f"{path}: no {CRITIC}, so the critic cannot be restored (was the "
                             "checkpoint written by a GRPO run? resume it without `critic:`)")
        device = str(next(self.model.parameters()).device)
        self.model.load_state_dict(load_file(str(critic_file), device=device))
