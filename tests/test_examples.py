"""The examples run, print their result and check it themselves (tiny settings where possible)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes

ROOT = Path(__file__).resolve().parents[1]
SHARED_PICKLE = ROOT.parent / "shared/data/mnist/mnist-t10k-split.pkl.gz"


def run_example(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return processes.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        warm=True,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_main_example_trains_on_digits_and_writes_the_plot(tmp_path):
    plot = tmp_path / "loss.png"
    result = run_example("train_mlp.py", "--data", "digits", "--epochs", "3", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "final validation accuracy" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_main_example_exits_non_zero_below_its_target():
    result = run_example(
        "train_mlp.py", "--data", "digits", "--epochs", "1", "--plot", "", "--target", "1.01"
    )
    assert result.returncode == 1
    assert "below the target" in result.stderr


@pytest.mark.slow  # trains on 8000 MNIST images: seconds
@pytest.mark.skipif(not SHARED_PICKLE.exists(), reason="needs ../shared/data/mnist (real MNIST)")
def test_main_example_reaches_95_percent_on_the_shared_mnist_pickle():
    result = run_example("train_mlp.py", "--data", str(SHARED_PICKLE), "--plot", "")
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("final validation accuracy: ")[1].split()[0])
    assert accuracy >= 0.95


@pytest.mark.slow
def test_plugin_example_stops_at_its_target():
    result = run_example("write_a_plugin.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped: StopAtAccuracy" in result.stdout and result.stdout.rstrip().endswith("OK")


@pytest.mark.slow
def test_main_example_defaults_to_digits_when_mnist_needs_a_download(tmp_path):
    env = {"PLUGLEARN_CACHE": str(tmp_path), "PLUGLEARN_MNIST_URL": ""}
    result = run_example("train_mlp.py", "--epochs", "1", "--plot", "", "--target", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digits: ")


@pytest.mark.slow  # trains on 8000 MNIST images: seconds
@pytest.mark.skipif(not SHARED_PICKLE.exists(), reason="needs ../shared/data/mnist (real MNIST)")
def test_main_example_defaults_to_mnist_when_it_is_available(tmp_path):
    env = {"PLUGLEARN_CACHE": str(tmp_path), "PLUGLEARN_MNIST_URL": str(SHARED_PICKLE)}
    result = run_example("train_mlp.py", "--epochs", "1", "--plot", "", "--target", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mnist: 8000 train / 1000 valid items, MLP 784-50-10")


EXAMPLES = [p.name for p in sorted((ROOT / "examples").glob("*.py"))]


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.slow
def test_every_example_answers_help_and_every_flag_has_help_text(name):
    result = run_example(name, "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("usage:"), f"{name} does not answer --help"
    lines = result.stdout.split("options:")[1].splitlines()[1:]
    for i, line in enumerate(lines):
        if line.startswith("  -"):  # argparse puts the help after the flag, or below a long one
            same_line = re.match(r"  -\S.*?\s{2,}\S", line)
            below = i + 1 < len(lines) and lines[i + 1].startswith(" " * 10)
            assert same_line or below, f"{name}: {line.strip()} has no help text"


@pytest.mark.slow
def test_main_example_says_what_to_do_when_mnist_cannot_be_downloaded(tmp_path):
    env = {
        "PLUGLEARN_CACHE": str(tmp_path),
        "PLUGLEARN_MNIST_URL": "http://127.0.0.1:9/mnist.pkl.gz",
    }
    result = run_example("train_mlp.py", "--data", "mnist", "--plot", "", env=env)
    assert result.returncode == 2
    assert "--data digits" in result.stderr and "--data PATH" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4


@pytest.mark.slow
def test_both_mnist_examples_say_the_same_two_lines_when_mnist_cannot_be_had(tmp_path):
    env = {
        "PLUGLEARN_CACHE": str(tmp_path),
        "PLUGLEARN_MNIST_URL": "http://127.0.0.1:9/mnist.pkl.gz",
    }
    main = run_example("train_mlp.py", "--data", "mnist", "--plot", "", env=env)
    scratch = run_example("from_scratch.py", "--data", "mnist", env=env)
    for result in (main, scratch):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        what, fix = result.stderr.strip().splitlines()
        assert what.startswith("could not load MNIST from 'mnist': could not download http://")
        assert "--data digits" in fix and "--data PATH" in fix
    assert scratch.stderr == main.stderr


@pytest.mark.slow
def test_main_example_says_in_its_help_that_it_trains_on_the_digits_without_mnist():
    description = run_example("train_mlp.py", "--help").stdout.split("\n\n")[1]
    assert "MNIST" in description and "digits" in description, description


@pytest.mark.slow
def test_main_example_with_lr_find_prints_and_uses_the_suggestion():
    result = run_example(
        "train_mlp.py", "--data", "digits", "--epochs", "2", "--plot", "", "--lr-find"
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"lr_find: 100 batches, suggested lr (\S+)", result.stdout)
    assert found and 1e-7 <= float(found.group(1)) <= 10
    used = re.search(r"trained at base lr (\S+)", result.stdout)
    assert used and used.group(1) == found.group(1)  # the fit used the suggestion


@pytest.mark.slow
def test_hf_example_trains_a_tiny_transformer_and_checks_itself():
    pytest.importorskip("transformers")
    result = run_example("hf_model.py", "--epochs", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final validation accuracy" in result.stdout


@pytest.mark.slow
def test_hf_example_skips_cleanly_without_transformers():
    blocked = (
        "import runpy, sys; sys.modules['transformers'] = None; sys.argv = ['hf_model.py']; "
        "runpy.run_path('examples/hf_model.py', run_name='__main__')"
    )
    result = processes.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "transformers is not installed: skipping" in result.stdout


def final_accuracy(stdout: str) -> float:
    return float(stdout.split("final validation accuracy: ")[1].split()[0])


@pytest.mark.slow
def test_main_example_with_one_cycle_reaches_its_target():
    result = run_example(
        "train_mlp.py", "--data", "digits", "--epochs", "3", "--plot", "", "--one-cycle"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recipes: one-cycle\n" in result.stdout


@pytest.mark.slow
def test_main_example_in_bfloat16_reaches_its_target_in_the_band_of_float32():
    args = ("train_mlp.py", "--data", "digits", "--epochs", "3", "--plot", "")
    bf16, fp32 = run_example(*args, "--bf16"), run_example(*args)
    assert bf16.returncode == 0 and fp32.returncode == 0, bf16.stderr + fp32.stderr
    assert "recipes: bf16\n" in bf16.stdout and "recipes:" not in fp32.stdout
    assert abs(final_accuracy(bf16.stdout) - final_accuracy(fp32.stdout)) <= 0.02
