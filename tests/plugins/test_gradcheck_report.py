"""GradCheck's table and failure message, written out in full: one row, none, several, with and
without a culprit."""

from __future__ import annotations

from pluglearn.plugins.gradcheck_report import (
    GradRow,
    failure_message,
    format_table,
)


def _row(name="0.w", module="Linear(in=4, out=3)", ok=False, note="", epoch=1, batch=2):
    return GradRow(epoch, batch, name, module, (4, 3), 12, 0.5, 0.25, ok, 1e-4, 1e-6, note)


def test_the_table_of_one_row_and_of_none():
    assert format_table([_row(ok=True)], "manual") == "\n".join(
        [
            "GradCheck (manual backward vs autograd), epoch 1, batch 2",
            "parameter  shape          checked  max abs err  max rel err  result",
            "0.w        (4, 3)              12     5.00e-01     2.50e-01  ok",
        ]
    )
    assert format_table([], "numeric") == (
        "\nparameter  shape          checked  max abs err  max rel err  result"
    )


def test_failure_message_of_one_row_without_culprit_names_the_modules_class():
    assert failure_message([_row()], "") == (
        "0.w of Linear(in=4, out=3): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, "
        "atol 1e-06): check Linear.bwd (epoch 1, batch 2)."
    )


def test_failure_message_of_several_rows_lists_them_and_keeps_the_note():
    rows = [_row("0.w"), _row("input", module="Net()", note="(.g has shape (3,))")]
    assert failure_message(rows, "Lin.bwd (module '0')") == (
        "0.w of Linear(in=4, out=3): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, "
        "atol 1e-06): check Lin.bwd (module '0'). Failing: 0.w, input (epoch 1, batch 2)."
    )
    only_input = [_row("input", module="Net()", note="(no .g: its bwd never set it)")]
    assert failure_message(only_input, "") == (
        "input of Net(): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, atol 1e-06) "
        "(no .g: its bwd never set it): check Net.bwd (epoch 1, batch 2)."
    )
