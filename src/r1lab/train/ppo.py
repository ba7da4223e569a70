"""PPO with a learned critic: the baseline GRPO was built to remove (DeepSeekMath, section 4.1).

PPO differs from GRPO in one box of the step: the advantage. Instead of comparing a completion
with its group, a value model V estimates, before every completion token, the reward still to
come; GAE turns the rewards (the score on the last token) and those estimates into per-token
advantages, and V is regressed on the GAE returns with a clipped value loss. Everything else
(sampling, rewards, clipped policy loss, aggregation, KL) is the GRPO step unchanged, so
`PPOTrainer` overrides only `_advantages`.

The price is the critic: a second network as large as the policy's decoder, its gradients and
its Adam moments, plus a forward pass for the values and a forward/backward for its update
every step. `benchmarks/bench_grpo_vs_ppo.py` measures it.

Choose it by adding a `critic:` section to the config (and `algorithm.advantage: gae`);
`build_trainer` picks the trainer from the config.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from r1lab.algorithms import compute_gae, last_token_rewards, masked_mean, value_loss
from r1lab.config import RunConfig
from r1lab.train.common import call_with
from r1lab.train.grpo import GRPOTrainer
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


class PPOTrainer(GRPOTrainer):
    """The GRPO trainer with a critic: GAE advantages, and a value-model update per step."""

    def __init__(self, cfg: RunConfig, model, tokenizer, rows: Sequence[dict[str, Any]],
                 run_dir: str | Path, ref_model=None, critic: nn.Module | None = None) -> None:
        if cfg.critic is None:
            raise ValueError("PPO needs a `critic:` section in the config (e.g. `critic: {}`)")
        super().__init__(cfg, model, tokenizer, rows, run_dir, ref_model=ref_model)
        c = cfg.critic
        self.critic = critic if critic is not None else ValueModel(model)
        self.critic.eval()
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=c.lr, weight_decay=cfg.optim.weight_decay,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
        )
        self.adv_options = {**self.adv_options, "gamma": c.gamma, "lam": c.lam, "whiten": c.whiten}

    def _advantages(self, rewards, mask, input_ids, attn, pos, L) -> tuple[Tensor, dict[str, float]]:
        """GAE advantages from the critic's values; then one critic update on the GAE returns."""
        c = self.cfg.critic
        with torch.no_grad():
            values = torch.cat([self._values(input_ids, attn, pos, L, sl)
                                for sl in self._slices(0, len(input_ids))])  # [N, T]
        advantages = call_with(self.advantage_fn, self.adv_options, rewards=rewards, mask=mask,
                               group_size=self.cfg.rollout.group_size, values=values)  # [N, T]
        token_rewards = rewards if rewards.dim() == 2 else last_token_rewards(rewards, mask)
        _, returns = compute_gae(token_rewards.to(values.dtype), values, mask,
                                 gamma=c.gamma, lam=c.lam)  # [N, T] the critic's targets
        metrics = self._update_critic(input_ids, attn, pos, L, mask, values, returns)
        metrics["value_mean"] = masked_mean(values, mask).item()
        metrics["return_mean"] = masked_mean(returns, mask).item()
        residual = masked_mean((returns - values).square(), mask)
        spread = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
        metrics["explained_var"] = (1 - residual / spread.clamp(min=1e-8)).item()
        return advantages, metrics

    def _values(self, input_ids, attn, pos, L, sl: slice) -> Tensor:
        """The critic's values [n, T] for rows `sl`: through the packed forward when the policy's
        forward is packed (same architecture) and the critic is r1lab's `ValueModel`."""
        critic = self.critic
        if isinstance(critic, ValueModel) and self._packed(self.model, input_ids.shape[1]):
            dropout = float(getattr(critic.backbone.config, "attention_dropout", 0.0) or 0.0)
            if not (critic.training and dropout > 0):  # the packed forward has no dropout
                rows = torch.arange(sl.start, sl.stop, device=input_ids.device)
                return critic.packed(PackedBatch.from_padded(input_ids, attn, L, rows))
        return critic(input_ids[sl], attn[sl], pos[sl], L)

    def _slices(self, start: int, end: int) -> list[slice]:
        mb = self.cfg.train.micro_batch_size
        return [slice(i, min(i + mb, end)) for i in range(start, end, mb)]

    def _update_critic(self, input_ids, attn, pos, L, mask, old_values, returns) -> dict[str, float]:
        """Clipped value regression, on the same pass/mini-batch schedule as the policy."""
        cfg, alg = self.cfg, self.cfg.algorithm
        N = len(input_ids)
        mini = alg.mini_batch_size or N
        starts = [j for _ in range(alg.num_iterations) for j in range(0, N, mini)]
        totals = {"value_loss": 0.0, "vf_clip_frac": 0.0, "value_grad_norm": 0.0}
        self.critic.train()
        for j in starts:
            end = min(j + mini, N)
            num_tokens = mask[j:end].sum().clamp(min=1)
            self.critic_optimizer.zero_grad(set_to_none=True)
            for sl in self._slices(j, end):
                m = mask[sl]  # [n, T]
                values = self._values(input_ids, attn, pos, L, sl)  # [n, T]
                per_token, vm = value_loss(values, old_values[sl], returns[sl], m,
                                           clip_range=cfg.critic.value_clip)
                loss = (per_token * m).sum() / num_tokens  # token mean over the mini-batch
                loss.backward()
                totals["value_loss"] += loss.item() / len(starts)
                totals["vf_clip_frac"] += vm["vf_clip_frac"].item() * (m.sum() / num_tokens).item() / len(starts)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.optim.grad_clip)
            totals["value_grad_norm"] += grad_norm.item() / len(starts)
            self.critic_optimizer.step()
        self.critic.eval()
        return totals

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "critic_optimizer" not in state:
            raise ValueError("the checkpoint has no critic optimiser state: it was not written by "
                             "a PPO run (resume it without a `critic:` section)")
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def resume(self, path: str | Path) -> list[str]:
        """GRPO's resume, plus the critic's weights (critic.safetensors) and optimiser."""
        from safetensors.torch import load_file

        critic_file = Path(path) / CRITIC
        if not critic_file.is_file():
            raise ValueError(f"{path}: no {CRITIC}, so the critic cannot be restored (was the "
                             "checkpoint written by a GRPO run? resume it without `critic:`)")
        changed = super().resume(path)
        self.critic.load_state_dict(load_file(str(critic_file), device=str(self.critic.head.weight.device)))
        return changed

    def save(self, path: str | Path, *args: Any, **kwargs: Any) -> Path:
        """The policy as GRPO saves it, and the critic next to it (critic.safetensors)."""
        from safetensors.torch import save_file

        out = Path(super().save(path, *args, **kwargs))
        state = {k: v.detach().contiguous().cpu() for k, v in self.critic.state_dict().items()}
        save_file(state, out / CRITIC)
        return out


def build_trainer(cfg: RunConfig, model, tokenizer, rows: Sequence[dict[str, Any]],
                  run_dir: str | Path, ref_model=None) -> GRPOTrainer:
    """PPO when the config has a `critic:` section, else GRPO."""
    cls = PPOTrainer if cfg.critic is not None else GRPOTrainer
    return cls(cfg, model, tokenizer, rows, run_dir, ref_model=ref_model)
