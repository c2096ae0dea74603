"""Profile files: save / load, the router digest that ties a profile to its model, the concentration summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from emo_slice.artifacts import atomic_write_text
from emo_slice.errors import DataError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.model.hf_names import router_name
from emo_slice.safejson import read_json

PROFILE_FORMAT = "emo-slice-profile"


PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 1 << 28  # 16 layers x 128 experts x 5 scores is a few hundred KB
SCORE_KEYS = ("mean-prob", "frequency", "reap", "easy-ep", "count")
PROBABILITIES = ("mean-prob", "frequency")


def save_profile(profile: dict, out: str | os.PathLike) -> Path:
    """Write a profile as JSON, atomically (temp file renamed into place; an existing `out` is replaced)."""
    return atomic_write_text(out, json.dumps(profile, indent=1) + "\n")


def load_profile(path: str | os.PathLike, flag: str = "--profile") -> dict:
    """A profile file, its structure checked (every layer's scores lists of numbers, one per routed expert)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give the profile file (JSON) that `emo-slice profile` wrote")
    if not os.path.lexists(p):
        raise UsageError(
            f"{flag} {path}: no such file; make one with `emo-slice profile MODEL --examples SRC --out {path}`"
        )
    d = read_json(p, hint="make it again with `emo-slice profile`", max_bytes=MAX_PROFILE_BYTES, label=f"{flag} {p}")
    if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
        raise DataError(f"{flag} {path} is not an emo-slice profile; make one with `emo-slice profile`")
    version = d.get("format_version", 0)
    if not isinstance(version, int) or version > PROFILE_VERSION:
        raise DataError(f"{flag} {path} was written by a newer emo-slice (format {version!r}); upgrade emo-slice")
    why = _malformed(d)
    if why:
        raise DataError(f"{flag} {path} is damaged ({why}); make it again with `emo-slice profile`")
    return d


def _numbers(xs, n: int) -> bool:
    return (
        isinstance(xs, list)
        and len(xs) == n
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)
    )


def _bad_scores(xs, n: int, method: str) -> str | None:
    """What is wrong with one layer's scores of one method: n finite numbers, none negative (every score is a
    mean, share, count or norm), probabilities (mean-prob, frequency) at most 1."""
    if not _numbers(xs, n):
        return f"are not {n} finite numbers"
    if min(xs) < 0:
        return f"hold a negative value ({min(xs)!r}), which no routing gives"
    if method in PROBABILITIES and max(xs) > 1 + 1e-6:
        return f"hold {max(xs)!r}, above 1, but they are probabilities"
    return None


def _malformed(d: dict) -> str | None:
    """What is wrong with a profile's structure, or None."""
    model, layers = d.get("model"), d.get("layers")
    if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
        return "no model fingerprint"
    if not isinstance(layers, list) or not layers:
        return "no layers"
    for l, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("layer") != l or not isinstance(layer.get("scores"), dict):
            return f"layer {l} is not a layer record"
        n = layer.get("routed")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"layer {l} has no routed-expert count"
        if not isinstance(layer.get("tokens"), int):
            return f"layer {l} has no token count"
        for method in SCORE_KEYS:
            why = _bad_scores(layer["scores"].get(method), n, method)
            if why:
                return f"layer {l} {method} scores {why}"
    if not isinstance(d.get("tokens", 0), int) or not isinstance(d.get("greedy") or {}, dict):
        return "bad token count or greedy record"
    return None


def router_digest(ckpt: Checkpoint) -> str:
    """sha256 of every layer's router bytes: tells apart models of the same architecture (the fingerprint
    covers config and tensor layout only). Reads L*E*D values, a few MB for the release."""
    import hashlib

    h = hashlib.sha256()
    for l in ckpt.config.moe_layers():
        info = ckpt.info(router_name(ckpt.config, l))
        with open(info.file, "rb") as f:
            f.seek(info.start)
            h.update(f.read(info.nbytes))
    return h.hexdigest()[:16]


def check_profile_matches(profile: dict, ckpt: Checkpoint, flag: str = "--profile") -> None:
    """Refuse a profile made on another model (fingerprint or router weights differ)."""
    model = profile.get("model", {})
    theirs, mine = model.get("fingerprint"), ckpt.fingerprint()
    if not isinstance(model.get("router_digest"), str):
        raise DataError(
            f"{flag} does not record the digest of the router weights it was made on, so it cannot be checked "
            f"against {ckpt.path} (a model of the same architecture has the same fingerprint); profile this model "
            "again with `emo-slice profile`"
        )
    same = theirs == mine
    if same:  # the router bytes are read once, only when the cheap fingerprint already agrees
        same = model["router_digest"] == router_digest(ckpt)
    if not same:
        raise UsageError(
            f"{flag} was made on another model ({model.get('path')}, fingerprint {theirs}, routers "
            f"{model.get('router_digest')}) than {ckpt.path}; profile this model first"
        )
    cfg = ckpt.config
    shape = [cfg.experts_in_layer(l) - cfg.num_shared_experts for l in range(cfg.num_hidden_layers)]
    if [layer["routed"] for layer in profile["layers"]] != shape:
        raise DataError(
            f"{flag} scores {len(profile['layers'])} layers of {[x['routed'] for x in profile['layers']][:4]}... "
            f"routed experts, but {ckpt.path} has {len(shape)} layers of {shape[:4]}...; the file was edited: "
            "profile this model again"
        )


def concentration(profile: dict, shares=(0.25, 0.125), method: str = "mean-prob") -> list[dict]:
    """Per layer: share of the routing mass carried by the top 25% / 12.5% of routed experts."""
    rows = []
    for layer in profile["layers"]:
        s = sorted(layer["scores"][method], reverse=True)
        total = sum(s) or 1.0
        row = {"layer": layer["layer"], "tokens": layer["tokens"]}
        for share in shares:
            n = max(1, round(len(s) * share))
            row[f"top_{share:g}"] = sum(s[:n]) / total
            row[f"n_{share:g}"] = n
        row["used"] = sum(1 for c in layer["scores"]["count"] if c > 0)
        row["routed"] = len(s)
        rows.append(row)
    return rows
