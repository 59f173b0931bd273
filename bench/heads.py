"""Training-step cost of EP pooling-first vs EP reference order vs generic MHCA vs MP vs linear, on CPU.

Command (from the repository root):

    python bench/heads.py --threads 1     # the numbers below
    python bench/heads.py                 # torch's default threads (2 on the dev box)

Machine: the 2-core CPU development box (no GPU), torch 2.14.1, float32. Runtime: about 30 s.
Resource note: each step holds a (64, 196, 768) float32 batch (38 MB) plus, in reference order,
the (64, 196, 768) value projection and its gradient. The dev box is shared: with 2 threads any
other busy process stalls torch's parallel regions and inflates the many small ops of the
pooling-first path most; ``--threads 1`` is far less sensitive to that, which is why it is the
reference setting. The load average is printed before and after.

What is timed: one training step of a full head (pooling -> BN -> Linear(768, 1000), train
mode, cross-entropy, ``backward``; the tokens are frozen, so no gradient flows into them) at
D=768, N=196 patch tokens (ViT-B/16), batch 64, M in {8, 32}. All configurations run in
interleaved rounds (2 warm-up rounds, then 7 timed); the median per image is reported.

Expected result (``--threads 1``, dev box, 2026-11-22, load average ~4 from other jobs):

    head                   GFLOP/img fwd  ms/img fwd+bwd
    mhca (8 heads)                0.4669          21.590
    ep M=8 pool_first             0.0075           0.834
    ep M=8 reference              0.2355           9.858
    ep M=32 pool_first            0.0220           1.509
    ep M=32 reference             0.2427          11.231
    M=8: reference/pool_first = 11.8x, mhca/pool_first = 25.9x
    M=32: reference/pool_first = 7.4x, mhca/pool_first = 14.3x

i.e. pooling first is roughly an order of magnitude cheaper per training step than the
reference order (whose N·D·D value projection dominates, docs/EP_SPEC.md §1.5), and generic MHCA
(K and V projections over all tokens) costs about twice the reference EP order.

MP (input CLS + 196 patches) and the linear probe on CLS were added on 2026-11-27
(``--threads 1``, load average 6.6-8 from other jobs; two runs):

    mp (4x128, hidden 512)        0.1815          21.0   (21.4 in the other run)
    linear (CLS)                  0.0015           0.124 (0.184)
    MP: mp/ep32 pool_first = 7.0x (8.0x), mp/linear = 170x (116x)

MP's 768->512 projection of every patch token (154 of its 181.5 MFLOP, docs/PROBE_FAMILIES.md §1.4) makes
it cost about as much as EP in the reference order: one MP config costs ~7 EP_32 configs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from epcache.probe.heads import create_head, head_cost

DIM, TOKENS, BATCH, CLASSES = 768, 196, 64, 1000
QUERIES = (8, 32)
WARMUP, REPEATS = 2, 7


def one_step(head: torch.nn.Module, order: str | None, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Wall time of one training step (forward, loss, backward)."""
    if order is not None:
        head.pooling.order = order
    head.zero_grad(set_to_none=True)
    start = time.perf_counter()
    F.cross_entropy(head(tokens), labels).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed steps per configuration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    tokens = torch.randn(BATCH, TOKENS, DIM)
    labels = torch.randint(0, CLASSES, (BATCH,))
    with_cls = torch.cat([torch.randn(BATCH, 1, DIM), tokens], dim=1)  # MP and linear read CLS + patches
    heads = {"mhca": create_head("mhca", in_dim=DIM, num_classes=CLASSES).train()}
    heads |= {f"ep{m}": create_head("ep", in_dim=DIM, num_classes=CLASSES, queries=m).train() for m in QUERIES}
    heads["mp"] = create_head("mp", in_dim=DIM, num_classes=CLASSES, num_prefix=1).train()
    heads["linear"] = create_head("linear", in_dim=DIM, num_classes=CLASSES, num_prefix=1).train()
    configs = [("mhca", None)] + [(f"ep{m}", order) for m in QUERIES for order in ("pool_first", "reference")]
    configs += [("mp", None), ("linear", None)]

    # Interleaved rounds: a burst of load from elsewhere on the machine hits every configuration.
    times: dict[tuple[str, str | None], list[float]] = {c: [] for c in configs}
    for r in range(WARMUP + args.repeats):
        for name, order in configs:
            x = with_cls if name in ("mp", "linear") else tokens
            elapsed = one_step(heads[name], order, x, labels)
            if r >= WARMUP:
                times[(name, order)].append(elapsed)
    ms = {c: statistics.median(t) / BATCH * 1e3 for c, t in times.items()}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, D={DIM}, N={TOKENS}, B={BATCH}")
    print(f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (timings need an idle machine)")
    print(f"median of {args.repeats} interleaved steps after {WARMUP} warm-up, per image")
    print(f"{'head':<22} {'GFLOP/img fwd':>13} {'ms/img fwd+bwd':>15}")
    gflop = head_cost("mhca", dim=DIM, num_classes=CLASSES, num_tokens=TOKENS).flops / 1e9
    print(f"{'mhca (8 heads)':<22} {gflop:>13.4f} {ms[('mhca', None)]:>15.3f}")
    for m in QUERIES:
        for order in ("pool_first", "reference"):
            with torch.device("meta"):
                probe = create_head("ep", in_dim=DIM, num_classes=CLASSES, queries=m)
            probe.pooling.order = order
            gflop = _flops(probe) / 1e9
            print(f"{f'ep M={m} {order}':<22} {gflop:>13.4f} {ms[(f'ep{m}', order)]:>15.3f}")
    for name, label in (("mp", "mp (4x128, hidden 512)"), ("linear", "linear (CLS)")):
        gflop = head_cost(name, dim=DIM, num_classes=CLASSES, num_tokens=TOKENS).flops / 1e9
        print(f"{label:<22} {gflop:>13.4f} {ms[(name, None)]:>15.3f}")
    mp, ep32, linear = ms[("mp", None)], ms[("ep32", "pool_first")], ms[("linear", None)]
    print(f"MP: mp/ep32 pool_first = {mp / ep32:.1f}x, mp/linear = {mp / linear:.1f}x")
    for m in QUERIES:
        fast = ms[(f"ep{m}", "pool_first")]
        print(
            f"M={m}: reference/pool_first = {ms[(f'ep{m}', 'reference')] / fast:.1f}x, "
            f"mhca/pool_first = {ms[('mhca', None)] / fast:.1f}x"
        )


def _flops(head: torch.nn.Module) -> int:
    with torch.device("meta"):
        x = torch.empty(1, TOKENS, DIM)
    with FlopCounterMode(display=False) as counter:
        head.eval()(x)
    return counter.get_total_flops()


if __name__ == "__main__":
    main()
