"""A trained row's ``protocol`` section: everything besides the head that decides its numbers.

Two rows (of one run, of two runs, or of epcache and another tool) are comparable exactly when
their fingerprints match; the report's run comparison lists the keys where they differ.
"""

from __future__ import annotations

from typing import Any

from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.config.runspec import RunSpec
from epcache.probe.config.suite import suite_record
from epcache.probe.data.folds import selection_text
from epcache.probe.data.samples import RunData
from epcache.probe.results.ranking import epoch_selection

__all__ = ["protocol_fingerprint"]


def protocol_fingerprint(run: RunSpec, data: RunData, config: ProbeConfig, *, repeat: int = 0) -> dict[str, Any]:
    """Everything that decides a row's numbers besides the head: compare rows across runs and tools by it.

    ``repeat``: which of the config's ``repeats`` runs of the sweep the row belongs to.
    """
    s = run.settings
    p = s.protocol
    opt = run.hyperparameters()
    return {
        "recipe": p.recipe,
        "optimizer": run.optimizer,
        "momentum": opt["momentum"],
        "betas": opt["betas"],
        "lr_rule": "absolute" if run.blr is None else "blr",
        "lr": run.lr,
        "blr": run.blr,
        "wd": run.wd,
        "batch_size": p.batch_size,
        "epochs": p.epochs,
        "passes_per_epoch": p.passes_per_epoch,
        "steps_per_epoch": p.steps_per_epoch,
        "total_steps": p.total_steps,
        "warmup_steps": p.warmup_steps,
        "min_steps": p.min_steps,
        "schedule": "linear warm-up, half-cosine to 0 (per step)",
        "adapted": list(p.adapted),
        "holdout_fraction": s.holdout,
        "holdout_rule": data.to_json(0)["holdout_rule"],
        "holdout_size": len(data.holdout_rows),
        "train_size": len(data.train_rows),
        "shots": s.shots,
        "fraction": s.fraction,
        "data_seed": s.data_seed,
        "tokens": run.tokens,
        "layer_mix": run.layer_mix,
        "layers": list(run.group_key),
        "store_provenance": s.store_provenance,
        "eval_provenance": s.eval_provenance,
        # the text of the rule the trainer runs, and its name (holdout, cvK, none: resolved once by the plan)
        "selection": selection_text(s.selection, epoch_selection(bool(len(data.holdout_rows) or data.folds))),
        "selection_rule": s.selection,
        "refit": s.refit,  # final model retrained on train + holdout for its selected steps
        "dtype": s.dtype,
        "amp": s.amp,  # bf16: the heads' matmuls under autocast; weights, losses, BN, MP covariance float32
        "amp_rule": s.amp_rule,
        "compile": config.run.compile,
        "trust_store": config.inputs.trust_store,
        **suite_record(config, repeat),  # a preset and repeats only where given: other rows keep their keys
    }
