import pytest

from bench.core.config import ConfigError, SuiteConfig, from_dict, load_suite
from bench.core.registry import ATTACKS, DEFENSES, Registry, UnknownNameError
from defenses.tbar import TbarParams


def test_unknown_name_is_one_line_with_suggestion():
    with pytest.raises(UnknownNameError) as e:
        ATTACKS.entry("badnet")
    msg = str(e.value)
    assert "\n" not in msg and "Did you mean 'badnets'?" in msg and "blended" in msg


def test_resolve_all_and_lists():
    fixed = [n for n in ATTACKS.names() if not ATTACKS.get(n).adaptive]
    assert ATTACKS.resolve("all") == fixed  # adaptive attacks are selected by name or as `adaptive`
    assert DEFENSES.resolve("all") == DEFENSES.names()
    assert DEFENSES.resolve("tbar, finetune") == ["tbar", "finetune"]
    with pytest.raises(UnknownNameError):
        DEFENSES.resolve("tbar,fintune")


def test_registry_rejects_duplicates_and_multiline_descriptions():
    reg = Registry("thing")
    reg.add("a", object(), "one line")
    with pytest.raises(ValueError):
        reg.add("a", object(), "again")
    with pytest.raises(ValueError):
        reg.add("b", object(), "two\nlines")


def test_typed_config_errors_name_the_field_and_allowed_values():
    with pytest.raises(ConfigError, match=r"tbar: unknown field\(s\) stpes; allowed: .*steps"):
        from_dict(TbarParams, {"stpes": 3}, "tbar")
    with pytest.raises(ConfigError, match=r"tbar.variant = 'both' is not allowed; allowed: 'triggered', 'mix'"):
        from_dict(TbarParams, {"variant": "both"}, "tbar")
    with pytest.raises(ConfigError, match=r"tbar\.steps must be an integer"):
        from_dict(TbarParams, {"steps": "many"}, "tbar")
    with pytest.raises(ConfigError, match=r"kappa"):
        from_dict(TbarParams, {"kappa": 1.5}, "tbar")


def test_builtin_suites_load_and_bad_suite_files_fail_clearly(tmp_path):
    s = load_suite("micro")
    assert isinstance(s, SuiteConfig) and s.models == ["tiny-clip", "tiny-resnet"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nattack_params: {badnets: {side: 'big'}}\n")
    with pytest.raises(ConfigError, match=r"attack_params\.badnets"):
        load_suite(str(bad))
    bad.write_text("name: x\ndatasets: [shapez]\n")
    with pytest.raises(UnknownNameError, match="shapes"):
        load_suite(str(bad))
    with pytest.raises(UnknownNameError, match="micro"):
        load_suite("mirco")


def test_kept_seed_formulas_are_the_ones_the_committed_pages_were_made_with():
    """subseed is the one derivation; three older purposes keep their integer formulas, since
    a changed derivation changes numbers under unchanged ids. Any other purpose is the hash."""
    import hashlib

    from bench.core.splits import subseed

    for seed in (0, 1, 2, 4_294_967_295):
        assert subseed(seed, "defense-data") == seed * 1000 + 17
        assert subseed(seed, "wanet-noise") == subseed(seed, "tbar-mix-clean") == seed + 1
    digest = hashlib.sha256(b"3:poison").digest()[:4]
    assert subseed(3, "poison") == int.from_bytes(digest, "little") & 0x7FFFFFFF
