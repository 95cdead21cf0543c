"""PPO with an LSTM controller over the space's decision sequence (as in MnasNet).

The controller walks the space's decision slots in order (`SearchSpace.decision_slots`):
at each slot an LSTM step reads the embedding of the previous action, a per-slot softmax
head scores the slot's values, and values the walk does not offer at that point (an input
already taken, an input slot after the list ended) are masked out. A slot a walk skips is
a forced step with probability 1, so every space has one fixed-length sequence and a batch
of walks advances in lockstep.

Updates are asynchronous: children are sampled from the policy of the moment they are
proposed, and each finished child joins a buffer; when the buffer holds `batch` children
the policy takes `epochs` Adam steps on the PPO clipped objective, with the log-probability
each child had when it was sampled as the old policy (so children proposed before an
update are corrected by the importance ratio, and clipped). Advantage = reward minus an
exponential moving average of rewards (the MnasNet baseline), scaled by the batch's
spread; an entropy bonus keeps exploring. Plain numpy: no TensorFlow in the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnasfpn.search.strategy import Outcome, Proposal, Strategy
from mnasfpn.searchspace.spaces import Decision, SearchSpace

_NEG = -1e9


@dataclass(frozen=True)
class PPOConfig:
    hidden: int = 64
    embed: int = 32
    lr: float = 0.01
    batch: int = 16
    epochs: int = 4
    clip: float = 0.2
    entropy: float = 0.002
    baseline_decay: float = 0.9
    max_grad_norm: float = 5.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class LSTMPolicy:
    """Parameters and the exact forward / backward pass of the controller."""

    def __init__(self, slots: Sequence[Decision], cfg: PPOConfig, rng: np.random.Generator):
        self.slots = list(slots)
        self.vocab = [tuple(d.choices) for d in self.slots]
        self.index = [{v: i for i, v in enumerate(vs)} for vs in self.vocab]
        sizes = [len(v) for v in self.vocab]
        self.vmax = max(sizes)
        # token 0 starts the sequence; slot t's value j is token 1 + offset[t] + j
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        n_tokens = 1 + int(sum(sizes))
        h, e, t = cfg.hidden, cfg.embed, len(self.slots)
        scale = 1.0 / np.sqrt(h)
        b = np.zeros(4 * h)
        b[h : 2 * h] = 1.0  # forget-gate bias 1: remember by default
        # Zero heads: the first policy is uniform over the offered values (random search).
        self.params: dict[str, np.ndarray] = {
            "emb": rng.normal(0.0, 0.1, (n_tokens, e)),
            "wx": rng.uniform(-scale, scale, (e, 4 * h)),
            "wh": rng.uniform(-scale, scale, (h, 4 * h)),
            "b": b,
            "wo": np.zeros((t, h, self.vmax)),
            "bo": np.zeros((t, self.vmax)),
        }
        self.hidden = h

    def forward(
        self, actions: np.ndarray, masks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list]:
        """Log-probability of each whole sequence (B), its summed entropy (B), and a cache."""
        bsz, steps = actions.shape
        h = np.zeros((bsz, self.hidden))
        c = np.zeros((bsz, self.hidden))
        logp = np.zeros(bsz)
        ent = np.zeros(bsz)
        cache = []
        rows = np.arange(bsz)
        for t in range(steps):
            tok = (
                np.zeros(bsz, dtype=np.int64)
                if t == 0
                else 1 + self.offset[t - 1] + actions[:, t - 1]
            )
            h, c, probs, logs, step = self._step(t, tok, h, c, masks[:, t])
            logp += logs[rows, actions[:, t]]
            ent_t = -np.where(masks[:, t], probs * logs, 0.0).sum(axis=1)
            ent += ent_t
            cache.append((*step, probs, logs, ent_t))
        return logp, ent, cache

    def _step(
        self, t: int, tok: np.ndarray, h: np.ndarray, c: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
        p = self.params
        hd = self.hidden
        x = p["emb"][tok]
        z = x @ p["wx"] + h @ p["wh"] + p["b"]
        i, f, o = _sigmoid(z[:, :hd]), _sigmoid(z[:, hd : 2 * hd]), _sigmoid(z[:, 2 * hd : 3 * hd])
        g = np.tanh(z[:, 3 * hd :])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        logits = np.where(mask, h_new @ p["wo"][t] + p["bo"][t], _NEG)
        logits = logits - logits.max(axis=1, keepdims=True)
        logs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        probs = np.where(mask, np.exp(logs), 0.0)
        return h_new, c_new, probs, logs, (tok, x, h, c, i, f, o, g, tc, h_new)

    def backward(
        self,
        actions: np.ndarray,
        masks: np.ndarray,
        cache: list,
        d_logp: np.ndarray,
        d_ent: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Gradients of a loss whose derivatives by each sequence's log-probability and
        entropy are `d_logp` and `d_ent` (B each)."""
        p = self.params
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        bsz, steps = actions.shape
        hd = self.hidden
        dh_next = np.zeros((bsz, hd))
        dc_next = np.zeros((bsz, hd))
        rows = np.arange(bsz)
        for t in range(steps - 1, -1, -1):
            tok, x, h_prev, c_prev, i, f, o, g, tc, h = cache[t][:10]
            probs, logs, ent_t = cache[t][10:]
            onehot = np.zeros_like(probs)
            onehot[rows, actions[:, t]] = 1.0
            dlogits = d_logp[:, None] * (onehot - probs)
            # d(entropy)/d(logit_j) = -p_j (log p_j + H)
            safe_logs = np.where(masks[:, t], logs, 0.0)
            dlogits += d_ent[:, None] * (-probs * (safe_logs + ent_t[:, None]))
            grads["wo"][t] += h.T @ dlogits
            grads["bo"][t] += dlogits.sum(axis=0)
            dh = dlogits @ p["wo"][t].T + dh_next
            do = dh * tc
            dc = dh * o * (1.0 - tc**2) + dc_next
            di = dc * g
            dg = dc * i
            df = dc * c_prev
            dc_next = dc * f
            dz = np.concatenate(
                [di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g**2)], axis=1
            )
            grads["wx"] += x.T @ dz
            grads["wh"] += h_prev.T @ dz
            grads["b"] += dz.sum(axis=0)
            np.add.at(grads["emb"], tok, dz @ p["wx"].T)
            dh_next = dz @ p["wh"].T
        return grads


class PPO(Strategy):
    name = "ppo"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int,
        repeats: int | None = None,
        config: PPOConfig | None = None,
    ) -> None:
        super().__init__(space, seed=seed, repeats=repeats)
        self.cfg = config or PPOConfig()
        self.policy = LSTMPolicy(space.decision_slots(), self.cfg, self.rng)
        self.adam_m = {k: np.zeros_like(v) for k, v in self.policy.params.items()}
        self.adam_v = {k: np.zeros_like(v) for k, v in self.policy.params.items()}
        self.adam_t = 0
        self.baseline: float | None = None
        # finished children waiting for the next update: (indices, old log-prob, reward)
        self.buffer: list[tuple[tuple[int, ...], float, float]] = []
        self.updates = 0

    # -- sampling -------------------------------------------------------------------------

    def propose(self, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        pol = self.policy
        steps = len(pol.slots)
        walkers = [self.space.walker() for _ in range(n)]
        pending: list[Decision | None] = [next(w) for w in walkers]
        indices: list[list[int]] = [[] for _ in range(n)]
        actions = np.zeros((n, steps), dtype=np.int64)
        h = np.zeros((n, pol.hidden))
        c = np.zeros((n, pol.hidden))
        logp = np.zeros(n)
        for t, slot in enumerate(pol.slots):
            mask = np.zeros((n, pol.vmax), dtype=bool)
            for b, d in enumerate(pending):
                mask[b] = self._slot_mask(t, slot, d)
            tok = (
                np.zeros(n, dtype=np.int64) if t == 0 else 1 + pol.offset[t - 1] + actions[:, t - 1]
            )
            h, c, probs, logs, _ = pol._step(t, tok, h, c, mask)
            cum = np.cumsum(probs, axis=1)
            u = self.rng.random(n) * cum[:, -1]
            drawn = np.minimum((cum <= u[:, None]).sum(axis=1), pol.vmax - 1)
            # never a masked value, even at a rounding edge
            drawn = np.where(mask[np.arange(n), drawn], drawn, probs.argmax(axis=1))
            actions[:, t] = drawn
            logp += logs[np.arange(n), drawn]
            for b in range(n):
                a = int(drawn[b])
                d = pending[b]
                if d is not None and d.name == slot.name:
                    value = pol.vocab[t][a]
                    indices[b].append(d.choices.index(value))
                    try:
                        pending[b] = walkers[b].send(value)
                    except StopIteration:
                        pending[b] = None
        return [
            self.proposal(ix, logp=float(lp)) for ix, lp in zip(indices, logp.tolist(), strict=True)
        ]

    def _slot_mask(self, t: int, slot: Decision, d: Decision | None) -> np.ndarray:
        mask = np.zeros(self.policy.vmax, dtype=bool)
        index = self.policy.index[t]
        if d is not None and d.name == slot.name:
            mask[[index[v] for v in d.choices]] = True
        else:
            mask[index[-1]] = True  # a slot this walk skips: forced "no more inputs"
        return mask

    def encode_batch(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Decision indices → the controller's (actions, masks) over every slot."""
        pol = self.policy
        steps = len(pol.slots)
        actions = np.zeros((len(batch), steps), dtype=np.int64)
        masks = np.zeros((len(batch), steps, pol.vmax), dtype=bool)
        for b, ix in enumerate(batch):
            met = {
                d.name: (d, d.choices[i])
                for d, i in zip(self.space.decode_decisions(ix), ix, strict=True)
            }
            for t, slot in enumerate(pol.slots):
                d, value = met.get(slot.name, (None, -1))
                masks[b, t] = self._slot_mask(t, slot, d)
                actions[b, t] = pol.index[t][value]
        return actions, masks

    def log_prob(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        actions, masks = self.encode_batch(batch)
        logp, _, _ = self.policy.forward(actions, masks)
        return logp

    def adopt(self, indices: Sequence[int]) -> Proposal:
        # A seed the policy did not sample: its log-probability under the current policy
        # stands in for the sampling one, so its ratio starts at 1 and is clipped as usual.
        return self.proposal(indices, logp=float(self.log_prob([indices])[0]))

    # -- learning -------------------------------------------------------------------------

    def learn(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            if o.reward is None:
                continue
            logp = o.proposal.info.get("logp")
            if logp is None:
                logp = float(self.log_prob([o.proposal.indices])[0])
            self.buffer.append((o.proposal.indices, float(logp), float(o.reward)))
            if len(self.buffer) >= self.cfg.batch:
                self.update(self.buffer)
                self.buffer = []

    def update(self, batch: Sequence[tuple[tuple[int, ...], float, float]]) -> None:
        cfg = self.cfg
        rewards = np.array([r for _, _, r in batch])
        old_logp = np.array([lp for _, lp, _ in batch])
        adv = np.empty(len(batch))
        for k, r in enumerate(rewards):  # the moving average as each child finished
            if self.baseline is None:
                self.baseline = float(r)
            adv[k] = r - self.baseline
            self.baseline = cfg.baseline_decay * self.baseline + (1 - cfg.baseline_decay) * r
        adv = adv / (adv.std() + 1e-8) if len(adv) > 1 else adv
        actions, masks = self.encode_batch([ix for ix, _, _ in batch])
        n = len(batch)
        for _ in range(cfg.epochs):
            logp, _, cache = self.policy.forward(actions, masks)
            ratio = np.exp(np.clip(logp - old_logp, -20, 20))
            clipped = np.clip(ratio, 1 - cfg.clip, 1 + cfg.clip)
            # loss = -mean(min(ratio·A, clip(ratio)·A)) - entropy·mean(H)
            unclipped_active = ratio * adv <= clipped * adv
            d_logp = np.where(unclipped_active, -adv * ratio / n, 0.0)
            d_ent = np.full(n, -cfg.entropy / n)
            grads = self.policy.backward(actions, masks, cache, d_logp, d_ent)
            self._adam(grads)
        self.updates += 1

    def _adam(self, grads: dict[str, np.ndarray]) -> None:
        cfg = self.cfg
        norm = np.sqrt(sum(float((g**2).sum()) for g in grads.values()))
        scale = min(1.0, cfg.max_grad_norm / (norm + 1e-12))
        self.adam_t += 1
        b1, b2 = 0.9, 0.999
        for k, g in grads.items():
            g = g * scale
            self.adam_m[k] = b1 * self.adam_m[k] + (1 - b1) * g
            self.adam_v[k] = b2 * self.adam_v[k] + (1 - b2) * g**2
            m_hat = self.adam_m[k] / (1 - b1**self.adam_t)
            v_hat = self.adam_v[k] / (1 - b2**self.adam_t)
            self.policy.params[k] -= cfg.lr * m_hat / (np.sqrt(v_hat) + 1e-8)

    def arrays_version(self) -> str | None:
        return str(self.adam_t)  # weights and Adam moments change only in an update

    # -- state ----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        for k, v in self.policy.params.items():
            state[f"param_{k}"] = v
            state[f"adam_m_{k}"] = self.adam_m[k]
            state[f"adam_v_{k}"] = self.adam_v[k]
        state["adam_t"] = self.adam_t
        state["baseline"] = self.baseline
        state["buffer"] = [[list(ix), lp, r] for ix, lp, r in self.buffer]
        state["updates"] = self.updates
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        for k in self.policy.params:
            self.policy.params[k] = np.asarray(state[f"param_{k}"], dtype=float)
            self.adam_m[k] = np.asarray(state[f"adam_m_{k}"], dtype=float)
            self.adam_v[k] = np.asarray(state[f"adam_v_{k}"], dtype=float)
        self.adam_t = int(state["adam_t"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.buffer = [(tuple(ix), float(lp), float(r)) for ix, lp, r in state["buffer"]]
        self.updates = int(state["updates"])
