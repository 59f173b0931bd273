"""Linear probes stacked: BN + classifier on one vector input (CLS, GAP or both)."""

from __future__ import annotations

from torch import Tensor

from epcache.probe.train.stacks.base import TensorStack, stacked_batch_norm

__all__ = ["LinearStack"]


class LinearStack(TensorStack):
    """Linear probes on one vector input (CLS, GAP or both): the stack is BN + classifier only."""

    def pool(self, x: Tensor) -> Tensor:
        return x.unsqueeze(0).expand(self.size, -1, -1)  # (K, B, W): the same vector for every config

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)  # running statistics may differ per config (e.g. loaded slices)
        # Training: every config normalises the same input with the same batch statistics, so BN
        # runs once and the K classifiers become one (B, W) x (W, K*C) matmul.
        b, c = self.bn_name, self.cls_name
        y = stacked_batch_norm(
            x.unsqueeze(0),
            self.t(f"{b}.running_mean"),
            self.t(f"{b}.running_var"),
            self.t(f"{b}.num_batches_tracked"),
            training=True,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
        )[0]  # (B, W); the (1, W) statistics broadcast into every config's (K, W) running buffers
        w = self.t(f"{c}.weight")  # (K, C, W)
        K, C, W = w.shape
        logits = y @ w.reshape(K * C, W).t()  # (B, K*C)
        return logits.view(-1, K, C).transpose(0, 1) + self.t(f"{c}.bias").unsqueeze(1)
