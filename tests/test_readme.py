"""The README's hook reference and set-up commands stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pluglearn.hooks.specs import HOOKS, KIND_DOCS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_hook_reference_matches_the_specs():
    text = README.read_text()
    table = text.split("<!-- hooks:start -->")[1].split("<!-- hooks:end -->")[0]
    rows = [r for r in table.strip().splitlines()[2:] if r.startswith("|")]
    documented = {}
    for row in rows:
        hook, args, kind = (c.strip() for c in row.strip("|").split("|")[:3])
        documented[hook.strip("`")] = (tuple(a.strip() for a in args.split(",")), kind)
    assert list(documented) == list(HOOKS), "README's hook table must list every hook, in order"
    for hook, spec in HOOKS.items():
        assert documented[hook][0] == spec.args, f"README gives {hook} the wrong arguments"
        assert documented[hook][1] == KIND_DOCS[spec.kind].title, hook


def test_readme_explains_every_kind_by_the_name_pluglearn_hooks_prints():
    text = README.read_text()
    explained = text.split("## Hook reference")[1].split("<!-- hooks:start -->")[0]
    assert set(KIND_DOCS) == {spec.kind for spec in HOOKS.values()}
    for kind in KIND_DOCS.values():
        assert f"*{kind.title}*" in explained, (
            f"the README does not explain the kind {kind.title!r}"
        )


def test_readme_names_the_two_setup_commands_that_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci/run").read_text()
    install = re.search(r"^python3 -m venv .*$", text, re.M).group(0)
    assert "-c constraints.txt" in install and "examples/train_mlp.py" in install
    assert ".venv/bin/python -m pytest" in text
    assert "-c constraints.txt" in ci and "-m pytest" in ci


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed ``section`` (up to the next ##)."""
    text = README.read_text()
    assert f"\n{section}\n" in text, f"the README has no section {section!r}"
    body = text.split(f"\n{section}\n")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_write_a_metric_examples_run_and_report_what_a_hand_computation_gives():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from pluglearn import DataLoaders, Learner

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 4, (60,), generator=g)
    valid = [(x[40:48], y[40:48]), (x[48:56], y[48:56]), (x[56:], y[56:])]
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    dls = DataLoaders([(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)], valid)
    learn = Learner(model, dls, lr=0.2, defaults=False)
    blocks = python_blocks("## Write a metric")
    assert len(blocks) == 2, "the section shows AverageMetric and a plugin of one's own"
    namespace = {"learn": learn}
    for block in blocks:
        exec(compile(block, "README.md: Write a metric", "exec"), namespace)

    with torch.no_grad():  # the model after the last fit made the last validation predictions
        top2 = model(x[40:]).topk(2, dim=1).indices
        losses = [F.cross_entropy(model(xb), yb).item() for xb, yb in valid]
    expected_top2 = (top2 == y[40:, None]).any(dim=1).float().mean().item()
    assert learn.metrics["top2"] == pytest.approx(expected_top2)
    assert learn.metrics["max_loss"] == pytest.approx(max(losses))
    assert "train_top2" in learn.metrics


@pytest.mark.slow  # imports mlflow and trains 3 epochs on the digits: a few seconds
def test_the_use_section_runs_as_printed_on_the_digits(tmp_path, monkeypatch):
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn

    from pluglearn.data.digits import load_digits

    block = python_blocks("## Use")[0]  # the first: the later ones are sketches (a resume)
    monkeypatch.chdir(tmp_path)  # the block writes mlp.plx and mlflow.db where it runs
    torch.manual_seed(0)
    (x_train, y_train), (x_valid, y_valid) = load_digits()
    namespace = {
        "x_train": x_train, "y_train": y_train, "x_valid": x_valid, "y_valid": y_valid,
        "model": nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10)),
    }  # fmt: skip
    exec(compile(block, "README.md, ## Use", "exec"), namespace)
    learn, loaded = namespace["learn"], namespace["loaded"]
    assert learn.validate()["accuracy"] > 0.85
    x = x_valid[:16]
    assert torch.equal(loaded.predict(x), learn.predict(x))
    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mlp").experiment_id])
    assert run.info.status == "FINISHED" and "accuracy" in run.data.metrics
