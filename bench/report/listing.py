"""What `bench list` shows: registry entries filtered by shell-style patterns (timm's
`list_models('vit*')`), the open_clip and timm names that resolve on first use, and their
pretrained weights with whether each is in the local Hugging Face cache."""

from __future__ import annotations

import fnmatch


def matches(name: str, pattern: str | None) -> bool:
    return pattern is None or fnmatch.fnmatchcase(name, pattern)


def registry_rows(registry, pattern: str | None) -> list[tuple[str, str, str]]:
    """(name, settings, description) of the registered entries whose name matches."""
    return [(e.name, ",".join(e.settings) or "-", _adaptive(e.obj) + e.description) for e in registry if matches(e.name, pattern)]


def _adaptive(obj) -> str:
    """'ADAPTIVE, against <family>: ' for an attack built to evade a defense family."""
    family = getattr(obj, "adaptive", None)
    return f"ADAPTIVE, against {family}: " if family else ""


def _with_params(entry, description: str) -> str:
    """The description with the model's parameter counts, for entries that can count them
    (built here from the registry, so the listing cannot drift from the code)."""
    count = entry.extra.get("param_counts")
    if count is None:
        return description
    c = count()
    shipped = ""
    params = getattr(entry.obj, "Params", None)
    if params is not None and hasattr(params, "pretrain_config"):
        from bench.models.pretrain import shipped_path

        shipped = "; weights shipped" if shipped_path(params().pretrain_config()) else "; pre-trained on first use"
    return f"{description} [image tower {c['visual'] / 1e6:.2f}M of {c['total'] / 1e6:.2f}M params{shipped}]"


def model_rows(pattern: str | None) -> list[tuple[str, str, str]]:
    """Registered models, plus, when a pattern is given, the open_clip architectures (or,
    for a 'timm:' pattern, the timm architectures) it matches."""
    from bench.core.registry import MODELS
    from bench.models.classifiers import TIMM_PREFIX, _timm_tags, timm_architectures
    from bench.models.published import open_clip_architectures, tokenizer_problem

    rows = [(n, st, _with_params(MODELS.entry(n), d)) for n, st, d in registry_rows(MODELS, pattern)]
    if pattern is None:
        return rows
    shown = {r[0] for r in rows}
    if pattern.startswith(TIMM_PREFIX):
        tags = _timm_tags()
        for arch in timm_architectures():
            name = TIMM_PREFIX + arch
            if matches(name, pattern) and name not in shown:
                n = len(tags.get(arch, []))
                rows.append((name, "supervised", f"timm architecture; {n} pretrained tag(s)"))
        return rows
    import open_clip

    for arch in open_clip_architectures():
        if matches(arch, pattern) and arch not in shown and not tokenizer_problem(arch):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            note = f"tags: {', '.join(tags)}" if tags else "no pretrained tags"
            rows.append((arch, "finetune", f"open_clip architecture; {note}"))
    return rows


def naming_note() -> str:
    """How to name the models that resolve on first use (printed under `bench list models`)."""
    import open_clip

    from bench.models.published import open_clip_architectures, tokenizer_problem

    archs = [a for a in open_clip_architectures() if not tokenizer_problem(a)]
    pairs = [(a, t) for a, t in open_clip.list_pretrained() if a in set(archs)]
    return (
        f"Also any open_clip architecture as ARCH or ARCH:TAG ({len(archs)} architectures, {len(pairs)} pretrained "
        "tags; e.g. ViT-B-32:openai; bench list models --pretrained), and for the supervised setting any timm "
        "architecture as timm:ARCH or timm:ARCH.TAG (e.g. timm:resnet18, timm:resnet18.a1_in1k; "
        "bench list models 'timm:*'). Filter with a pattern: bench list models 'ViT-B*'."
    )


def pretrained_rows(pattern: str | None) -> list[tuple[str, str, str]]:
    """(name for --models, cached, weight file or hub repo) of open_clip's pretrained pairs,
    or timm's for a 'timm:' pattern."""
    from bench.models.classifiers import TIMM_PREFIX, timm_pretrained
    from bench.models.published import pretrained_pairs

    rows = timm_pretrained(pattern) if pattern and pattern.startswith(TIMM_PREFIX) else pretrained_pairs(pattern)
    return [(r["name"], r["cached"], str(r["path"]) if r["path"] else r["repo"]) for r in rows]
