"""The hierarchical RNN learned optimizer of Wichrowska et al. 2017 (section 3), at CPU
sizes.

Three levels of GRUs (section 3.1): a small *parameter* GRU runs on every scalar
parameter; a *tensor* GRU per parameter tensor reads the mean of its parameters' hidden
states; one *global* GRU reads the mean of the tensor GRUs' hidden states.  Going down,
the tensor GRU's state enters its parameter GRUs as a bias (a linear map of it, added to
their gate pre-activations), and the global GRU's state enters the tensor GRUs and is
added to the parameter GRUs' bias.  Weights are shared across parameters and tensors, so
one meta-trained model runs on any architecture.

Inputs of the parameter GRU at step n, per scalar parameter (section 3.2), for S
timescales s with momentum ``beta_s`` (``beta_s = sigmoid(b_s + o)``: meta-learned initial
logits ``b_s`` plus the momentum-logit offset ``o`` the RNN output at the previous step)::

    mbar_s <- beta_s mbar_s + (1 - beta_s) g            averaged gradients
    lam_s  <- beta_s lam_s  + (1 - beta_s) g^2           their mean square (the appendix's
    w_s    <- beta_s w_s    + (1 - beta_s)                 Adam-like version: of g, not mbar)
    m_s     = (mbar_s / w_s) / sqrt(lam_s / w_s + eps)   averaged gradients rescaled by RMS
    gamma_s = log(lam_s / w_s) - mean_s' log(lam_s' / w_s')   relative gradient magnitudes
    rho     = ell - mean(ell over all parameters)        relative log step length

(``w_s`` is the weight the average has accumulated: dividing by it removes the start-up
bias exactly, also when ``beta_s`` changes over time.)  Outputs, a linear read-out of the
new hidden state with zero biases (section 3.3): the update direction ``d`` (plus a
meta-learned linear projection ``sum_s c_s m_s`` of the rescaled averages, appendix), the
change of log step length ``dl``, the momentum-logit offset ``o`` and, with
``attention=True``, an attention offset ``a``.  The step length is kept relative to an
exponential running average of itself with meta-learned momentum ``beta_ell``, and the
update direction is normalised per tensor::

    ellbar <- beta_ell ellbar + (1 - beta_ell) ell
    ell    <- ellbar + dl
    u       = exp(ell) d / rms_tensor(d)                 p <- p - lr * u

``ell`` starts at 0, i.e. the step length starts at ``lr`` (the initial step-size scale
that the reward protocol sweeps, and that meta-training draws log-uniformly: the model
never sees its absolute value, only ``rho``).  With attention the gradient is taken at
``phi - lr * exp(ell) a / rms_tensor(a)`` (an offset from the current parameters, not from
the previous attended point, section 3.2); the direction returned then moves the
attended point, so the caller's parameters always hold the point where the next
gradient is taken.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .base import EPS, MODELS, GRUCell, LearnedModel, State

__all__ = ["HierarchicalRNN"]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@MODELS.register("hrnn")
class HierarchicalRNN(LearnedModel):
    """Options: ``timescales`` S (3), ``param_hidden`` (10), ``tensor_hidden`` (20),
    ``global_hidden`` (20), ``attention`` (False), ``init_betas`` (0.5, 0.9, 0.99 for S=3;
    log-spaced otherwise), ``readout_scale`` (0.01: initial read-out weights, so an
    untrained model is normalised momentum at a fixed step length)."""

    kind: ClassVar[str] = "hrnn"

    def __init__(self, timescales: int = 3, param_hidden: int = 10, tensor_hidden: int = 20,
                 global_hidden: int = 20, attention: bool = False,
                 init_betas: Sequence[float] | None = None, readout_scale: float = 0.01,
                 **extra: Any) -> None:
        if extra:
            raise TypeError(f"unknown hrnn option(s): {sorted(extra)}")
        S = int(timescales)
        if init_betas is None:
            init_betas = ((0.5, 0.9, 0.99) if S == 3 else
                          tuple(1 - 0.5 * 0.02 ** (i / max(1, S - 1)) for i in range(S)))
        init_betas = tuple(float(b) for b in init_betas)
        if len(init_betas) != S:
            raise ValueError(f"init_betas needs {S} values, got {len(init_betas)}")
        super().__init__(timescales=S, param_hidden=int(param_hidden),
                         tensor_hidden=int(tensor_hidden), global_hidden=int(global_hidden),
                         attention=bool(attention), init_betas=list(init_betas),
                         readout_scale=float(readout_scale))
        Hp, Ht, Hg = int(param_hidden), int(tensor_hidden), int(global_hidden)
        self.S, self.Hp, self.Ht, self.Hg = S, Hp, Ht, Hg
        self.attention = bool(attention)
        self.param_rnn = GRUCell(2 * S + 1, Hp)
        self.tensor_rnn = GRUCell(Hp, Ht)
        self.global_rnn = GRUCell(Ht, Hg)
        # biases going down the hierarchy
        self.tensor_to_param = nn.Parameter(torch.zeros(Ht, 3 * Hp))
        self.global_to_param = nn.Parameter(torch.zeros(Hg, 3 * Hp))
        self.global_to_tensor = nn.Parameter(torch.zeros(Hg, 3 * Ht))
        nn.init.normal_(self.tensor_to_param, std=0.1 / math.sqrt(Ht))
        nn.init.normal_(self.global_to_param, std=0.1 / math.sqrt(Hg))
        nn.init.normal_(self.global_to_tensor, std=0.1 / math.sqrt(Hg))
        # read-out: direction, change of log step length, momentum logit (, attention)
        self.n_out = 4 if self.attention else 3
        self.readout = nn.Parameter(torch.randn(Hp, self.n_out) * float(readout_scale))
        # linear projection of the rescaled averages into the direction (appendix)
        self.direction_mix = nn.Parameter(torch.full((S,), 1.0 / S))
        self.beta_logits = nn.Parameter(torch.tensor([_logit(b) for b in init_betas]))
        self.step_momentum_logit = nn.Parameter(torch.tensor(_logit(0.9)))

    # ------------------------------------------------------------------------------
    def init_state(self, params: Sequence[Tensor]) -> State:
        if not params:
            raise ValueError("no parameters")
        B = params[0].shape[0]
        S = self.S

        def per_param(extra: tuple[int, ...]) -> list[Tensor]:
            return [torch.zeros(p.shape + extra, dtype=p.dtype) for p in params]

        dt = params[0].dtype
        state: State = {
            "mbar": per_param((S,)), "lam": per_param((S,)), "wsum": per_param((S,)),
            "h": per_param((self.Hp,)), "ell": per_param(()), "ellbar": per_param(()),
            "beta_offset": per_param(()),
            "tensor_h": [torch.zeros(B, self.Ht, dtype=dt) for _ in params],
            "global_h": [torch.zeros(B, self.Hg, dtype=dt)],
        }
        if self.attention:
            state["offset"] = per_param(())
        return state

    def _features(self, g: Tensor, st: dict[str, Tensor], rho: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Inputs ``[B, n, 2S+1]`` of one tensor (``g`` flattened to ``[B, n]``) and the
        new averages."""
        beta = torch.sigmoid(self.beta_logits.to(g.dtype) + st["beta_offset"].unsqueeze(-1))
        g1 = g.unsqueeze(-1)
        mbar = beta * st["mbar"] + (1 - beta) * g1
        lam = beta * st["lam"] + (1 - beta) * g1 * g1
        wsum = beta * st["wsum"] + (1 - beta)
        ms = lam / wsum
        m = (mbar / wsum) / torch.sqrt(ms + EPS)
        logms = torch.log(ms + EPS)
        gamma = logms - logms.mean(-1, keepdim=True)
        x = torch.cat((m, gamma, rho.unsqueeze(-1)), -1)
        return x, m, mbar, lam, wsum

    def update(self, grads: Sequence[Tensor], state: State) -> tuple[list[Tensor], State]:
        dt = grads[0].dtype
        B = grads[0].shape[0]
        flat = [g.reshape(B, -1) for g in grads]
        per = lambda name, i: state[name][i].reshape(B, flat[i].shape[1], *state[name][i].shape[grads[i].dim():])  # noqa: E731
        # relative log step length: against the mean over every parameter of the copy
        ells = [per("ell", i) for i in range(len(flat))]
        n_total = sum(e.shape[1] for e in ells)
        ell_mean = sum(e.sum(1) for e in ells) / n_total                       # [B]
        tp = self.tensor_to_param.to(dt)
        gp = self.global_to_param.to(dt)
        gt = self.global_to_tensor.to(dt)
        R = self.readout.to(dt)
        mix = self.direction_mix.to(dt)
        beta_ell = torch.sigmoid(self.step_momentum_logit.to(dt))
        hg = state["global_h"][0]
        bias_from_global = hg @ gp                                            # [B, 3Hp]
        new: State = {k: [] for k in state}
        us: list[Tensor] = []
        tensor_hs = []
        for i, g in enumerate(flat):
            st = {k: per(k, i) for k in ("mbar", "lam", "wsum", "h", "ell", "ellbar",
                                          "beta_offset")}
            x, m, mbar, lam, wsum = self._features(g, st, st["ell"] - ell_mean.unsqueeze(1))
            ht_prev = state["tensor_h"][i]
            bias = (ht_prev @ tp + bias_from_global).unsqueeze(1)             # [B, 1, 3Hp]
            h = self.param_rnn(x, st["h"], bias)                              # [B, n, Hp]
            ht = self.tensor_rnn(h.mean(1), ht_prev, hg @ gt)                 # [B, Ht]
            tensor_hs.append(ht)
            out = h @ R                                                       # [B, n, n_out]
            d = out[..., 0] + (m * mix).sum(-1)
            ellbar = beta_ell * st["ellbar"] + (1 - beta_ell) * st["ell"]
            ell = ellbar + out[..., 1]
            rms_d = torch.sqrt((d * d).mean(1, keepdim=True) + EPS)
            u = torch.exp(ell) * d / rms_d
            if self.attention:
                a = out[..., 3]
                off = torch.exp(ell) * a / torch.sqrt((a * a).mean(1, keepdim=True) + EPS)
                u = u + off - state["offset"][i].reshape(B, -1)
                new["offset"].append(off.reshape(grads[i].shape))
            shape = grads[i].shape
            for k, v in (("mbar", mbar), ("lam", lam), ("wsum", wsum), ("h", h)):
                new[k].append(v.reshape(*shape, v.shape[-1]))
            new["ell"].append(ell.reshape(shape))
            new["ellbar"].append(ellbar.reshape(shape))
            new["beta_offset"].append(out[..., 2].reshape(shape))
            new["tensor_h"].append(ht)
            us.append(u.reshape(shape))
        hg_new = self.global_rnn(torch.stack(tensor_hs, 0).mean(0), hg)
        new["global_h"] = [hg_new]
        return us, new
