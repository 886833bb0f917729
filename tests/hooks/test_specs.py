"""The hook catalogue: every hook documented where it is declared, and placed in the call order."""

from __future__ import annotations

from pluglearn.hooks.specs import HOOKS


def test_every_hook_is_documented_with_its_call_order():
    from pluglearn.hooks import specs

    for hook in HOOKS:
        doc = getattr(specs, hook).__doc__
        assert doc and len(doc.split()) >= 5, f"hook {hook} needs a docstring"
        if hook not in ("state_dict", "load_state_dict", "make_dataloader", "on_error"):
            assert hook in specs.__doc__, f"the call order in specs' docstring lacks {hook}"
