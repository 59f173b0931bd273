"""The EP benchmark's ``results.csv`` schema and its row rules, as plain data and one checker.

The EP benchmark repository keeps its ImageNet table in one ``results.csv`` from which its README
is generated; its generator refuses a row that breaks a rule and lists a row it cannot reproduce as
unverified. A row epcache exports has to survive that generator, so the same rules are checked here
before anything is written, each with the fix that makes the row acceptable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["EP_FAMILIES", "EP_RESULTS_COLUMNS", "EP_ROW_RULES", "check_ep_row"]

EP_RESULTS_COLUMNS = (
    "family", "method", "arch", "pretrain", "eval", "image_size", "lp", "lp_gap", "ep", "ep_queries",
    "ep_variant", "model", "loader", "pretrain_tag", "finetune", "lp_variant", "lp_log", "ep_log", "notes",
    "verified", "amp", "waiting", "gap_reason", "knn", "knn_k", "knn_T", "knn_log", "extra_flags",
)
"""The columns of the EP benchmark's ``results.csv``, in its order."""

EP_FAMILIES = ("MIM", "JEA", "Hybrid", "VLM", "GEN")
_REQUIRED = ("family", "method", "arch", "pretrain", "eval", "image_size", "lp", "lp_gap", "ep")

EP_ROW_RULES: dict[str, str] = {
    "columns": "family, method, arch, pretrain, eval, image_size, lp, lp_gap and ep are present.",
    "numbers": "lp, ep and image_size are numeric; '-' means not measured yet, allowed for lp always "
               "and for ep only when a 'waiting' note says what is outstanding.",
    "family": "family is one of MIM, JEA, Hybrid, VLM, GEN.",
    "eval": "eval is IN-1K: the whole benchmark is ImageNet-1k.",
    "lp_gap": "lp_gap is yes or no; yes when LP used GAP instead of [CLS], i.e. exactly when lp_variant is pos.",
    "knn": "knn is numeric when set, and then knn_k records the winning k.",
    "gap_reason": "lp_gap=yes needs gap_reason no_cls (the encoder has no [CLS]) or attn_pool (its pooled "
                  "output comes from its own learned attention pooling).",
    "waiting": "a row is not both ticked (verified=yes) and waiting on something.",
    "verified": "verified is yes, no or blank.",
    "variants": "lp_variant is cls or pos; ep_variant is ep or ep_all; ep_queries is a whole number.",
    "reproducible": "a row is reproducible only when model, loader, ep_queries, ep_variant and lp_variant "
                    "are all recorded (and the loader is not 'unsupported:<name>').",
}
"""Each rule the EP benchmark's generator holds a row to, by name, in the words of its README and columns."""


def check_ep_row(row: Mapping[str, Any]) -> list[str]:
    """The rules ``row`` breaks, one ``"<rule>: <problem>; fix: <how>"`` line each (empty: none).

    - columns: family, method, arch, pretrain, eval, image_size, lp, lp_gap and ep are present.
    - numbers: lp, ep and image_size are numeric; '-' (not measured yet) is allowed for lp always and for
      ep only with a 'waiting' note saying what is outstanding.
    - family: one of MIM, JEA, Hybrid, VLM, GEN.
    - eval: IN-1K, the whole benchmark is ImageNet-1k.
    - lp_gap: yes or no, yes exactly when lp_variant is pos (LP used GAP instead of [CLS]).
    - knn: numeric when set, and then knn_k records the winning k.
    - gap_reason: lp_gap=yes needs no_cls or attn_pool (the two get different markers).
    - waiting: a row is not both ticked and waiting.
    - verified: yes, no or blank.
    - variants: lp_variant cls or pos, ep_variant ep or ep_all, ep_queries a whole number.
    - reproducible: model, loader, ep_queries, ep_variant and lp_variant are all recorded.

    The generator stops at the first broken rule; all are reported here so one edit fixes a row.
    """
    out: list[str] = []

    def text(col: str) -> str:
        return str(row.get(col) or "").strip()

    def bad(rule: str, problem: str, fix: str) -> None:
        out.append(f"{rule}: {problem}; fix: {fix}")

    missing = [c for c in _REQUIRED if c not in row]
    if missing:
        bad("columns", f"missing column(s) {missing}", "give every required column, blank where unknown")
    for col in ("lp", "ep", "image_size"):
        value = text(col)
        if col not in row:
            continue
        if value in ("-", ""):
            if col == "lp" or (col == "ep" and text("waiting")):
                continue
            fix = ("run an EP head on this store or add a 'waiting' note saying what is outstanding" if col == "ep"
                   else "give image_size (the evaluation resolution in pixels)")
            bad("numbers", f"{col} is {value!r}", fix)
            continue
        if not _is_number(value):
            bad("numbers", f"{col} is not numeric: {value!r}", f"record {col} as a number")
    if "family" in row and text("family") not in EP_FAMILIES:
        bad("family", f"unknown family {text('family')!r}", f"give family, one of {', '.join(EP_FAMILIES)}")
    if "eval" in row and text("eval") != "IN-1K":
        bad("eval", f"eval is {text('eval')!r}", "export only rows evaluated on ImageNet-1k and give eval=IN-1K")
    gap = text("lp_gap").lower()
    if "lp_gap" in row and gap not in ("yes", "no"):
        bad("lp_gap", f"lp_gap must be yes/no, got {text('lp_gap')!r}", "set lp_gap yes for GAP (pos), no for cls")
    elif text("lp_variant") in ("cls", "pos") and gap != ("yes" if text("lp_variant") == "pos" else "no"):
        bad("lp_gap", f"lp_gap={gap} but lp_variant={text('lp_variant')}",
            "set lp_gap yes exactly when lp_variant is pos")
    if text("knn") not in ("", "-"):
        if not _is_number(text("knn")):
            bad("knn", f"knn is not numeric: {text('knn')!r}", "record knn as a number")
        if not text("knn_k"):
            bad("knn", "knn is set but knn_k is not", "record the winning k in knn_k")
    if gap == "yes" and text("gap_reason") not in ("no_cls", "attn_pool"):
        bad("gap_reason", f"lp_gap=yes with gap_reason={text('gap_reason')!r}",
            "give gap_reason no_cls (no [CLS] token) or attn_pool (the pooled output is the encoder's own "
            "attention pooling), or probe the [CLS] token (linear head, tokens cls)")
    if text("waiting") and text("verified").lower() == "yes":
        bad("waiting", "row is ticked but also has a 'waiting' note", "clear one of verified and waiting")
    if text("verified").lower() not in ("yes", "no", ""):
        bad("verified", f"verified must be yes/no/blank, got {text('verified')!r}", "set verified yes, no or blank")
    if text("lp_variant") not in ("", "cls", "pos"):
        bad("variants", f"lp_variant {text('lp_variant')!r}", "lp_variant is cls or pos (GAP)")
    if text("ep_variant") not in ("", "ep", "ep_all"):
        bad("variants", f"ep_variant {text('ep_variant')!r}", "ep_variant is ep (patches) or ep_all (CLS + patches)")
    if text("ep_queries") and not text("ep_queries").isdigit():
        bad("variants", f"ep_queries {text('ep_queries')!r}", "record the winning query count as a whole number")
    unrecorded = [c for c in ("model", "loader", "ep_queries", "ep_variant", "lp_variant") if not text(c)]
    if text("loader").startswith("unsupported:"):
        unrecorded.append("loader (unsupported)")
    if unrecorded:
        bad("reproducible", f"not recorded: {', '.join(unrecorded)}",
            "record them (run linear on tokens cls or gap and ep on tokens patch or all, and give model and loader)")
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
