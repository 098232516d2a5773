"""The methods' light config entries (issue #22 item 9): the CLI composes and checks a config with
`sparsetune.methods.CONFIGS` and each package's config module, which import no torch; the method
classes (and torch) load on first use. That a bad value is refused before torch is imported is a row
of tests/test_bad_input.py (REFUSED_FAST); the figure is in README, "Faults and exit codes"."""

from __future__ import annotations

import pytest

from sparsetune.methods import BUILT_IN, CONFIGS, REGISTRY, config_class, method_class


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_the_light_config_entry_is_the_method_s_own_config_class(name):
    """CONFIGS names, for every built-in method, the very class the method is built with."""
    assert set(CONFIGS) == set(BUILT_IN) <= set(REGISTRY)
    assert config_class(name) is method_class(name).config_class


def test_method_packages_still_export_their_public_names():
    """The packages import their layers on first use (PEP 562), so the documented imports still work."""
    from sparsetune.methods.lora import LoRA, LoRAConfig
    from sparsetune.methods.pat import PAT, prune_hidden
    from sparsetune.methods.s2ft import MixedAdapterModel, S2FTAdapter, switch
    from sparsetune.methods.spt import SPT, routed_ffn

    assert LoRA.config_class is LoRAConfig and PAT.__name__ == "PAT" and SPT.__name__ == "SPT"
    assert all(callable(x) for x in (prune_hidden, MixedAdapterModel, S2FTAdapter, switch, routed_ffn))
    with pytest.raises(AttributeError):
        import sparsetune.methods.s2ft as s2ft

        s2ft.not_a_name  # noqa: B018
