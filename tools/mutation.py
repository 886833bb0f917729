"""Mutation testing of the code whose bugs would be silent; for developers, not CI.

A mutant is a copy of the code with one small change (``<=`` made ``<``, a constant changed, a
call dropped). The tests that cover a module should fail on each of its mutants ("killed"); a
mutant that passes them ("survived") is a bug the suite would not notice. This script runs
mutmut 3 on chosen modules, each mutant against only the tests that reach the mutated function,
then prints the kill rate per module and every survivor as ``file:line`` with its change.

    pip install -c constraints.txt -e ".[dev,mutation]"        # pytest, hypothesis, mutmut
    python tools/mutation.py                                   # the default modules
    python tools/mutation.py --module data/safe_pickle.py      # one (or more) of them
    python tools/mutation.py --module hooks/dispatch.py --tests tests/test_learner.py
    python tools/mutation.py --list                            # modules and their tests
    python tools/mutation.py --module data/batch_tree.py --recheck   # survivors: all the tests

mutmut rewrites the files it mutates, so everything happens in a copy of the working tree (the
files git tracks or would track) under a temporary folder: ``src/`` here is never touched. The
copy is deleted afterwards unless ``--keep`` (then ``cd`` there and ``mutmut browse``). Minutes
per module on two cores; ``--jobs`` runs mutants in parallel. Equivalent or harmless survivors
are listed, with the reason, in ``docs/testing.md``; run this before resolving an issue that
touches one of these modules, and keep each module at 90 % or more.

mutmut 3 skips every function that carries a decorator, so the ``@hookimpl`` methods of the
plugins (their hook bodies) would never be mutated. In the copy, each is undecorated (the
decorator line blanked, so line numbers stay right) and marked again at the end of the module,
``Class.hook = (hookimpl(...))(Class.hook)``: see ``mutation_hooks.py``. ``--no-hooks`` leaves
the modules as they are (the old behaviour).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from mutation_hooks import expose_hooks_in  # tools/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent
PACKAGE = "src/pluglearn"
TARGET = 0.90  # the kill rate every module should reach

# Module (under src/pluglearn) -> the test files that cover it (tests/test_tools.py checks that
# every one exists; a path that does not, say in an older commit's --ref tree, is skipped).
MODULES: dict[str, list[str]] = {
    "data/safe_pickle.py": ["tests/data/test_mnist.py", "tests/data/test_safe_pickle.py"],
    "data/download.py": [
        "tests/data/test_mnist.py",
        "tests/data/test_download_limits.py",
        "tests/data/test_download.py",
    ],
    "data/idx.py": [
        "tests/data/test_mnist.py",
        "tests/data/test_download_limits.py",
        "tests/data/test_idx.py",
    ],
    "data/mnist_format.py": [
        "tests/data/test_mnist.py",
        "tests/data/test_download_limits.py",
        "tests/data/test_safe_pickle.py",
        "tests/data/test_mnist_format.py",
    ],
    "checkpoint/files.py": [
        "tests/checkpoint/test_files.py",
        "tests/checkpoint/test_files_loading.py",
        "tests/checkpoint/test_atomic_write.py",
        "tests/checkpoint/test_atomic_write_failures.py",
    ],
    "checkpoint/atomic_write.py": [
        "tests/checkpoint/test_atomic_write.py",
        "tests/checkpoint/test_atomic_write_failures.py",
        "tests/checkpoint/test_files.py",
    ],
    "checkpoint/resume.py": [
        "tests/checkpoint/test_resume.py",
        "tests/checkpoint/test_resume_loader_generators.py",
        "tests/checkpoint/test_resume_recipes.py",
        "tests/checkpoint/test_resume_records.py",
        "tests/checkpoint/test_compatibility.py",
        "tests/checkpoint/test_compatibility_ranks.py",
        "tests/checkpoint/test_files_loading.py",
        "tests/checkpoint/test_plugin_runs.py",
        "tests/run/test_replay_in_process.py",
        "tests/run/test_replay_refusals.py",
        "tests/run/test_rng.py",
        "tests/plugins/test_accumulate.py",
        "tests/plugins/test_scheduler_one_cycle.py",
        "tests/plugins/test_multiprocess_loader.py",
    ],
    "checkpoint/compatibility.py": [
        "tests/checkpoint/test_compatibility.py",
        "tests/checkpoint/test_compatibility_ranks.py",
        "tests/checkpoint/test_resume.py",
        "tests/diagnostics/test_input_checks.py",
    ],
    "checkpoint/weights.py": [
        "tests/checkpoint/test_weights.py",
        "tests/checkpoint/test_weights_refusals.py",
        "tests/checkpoint/test_resume_keys.py",
        "tests/inference/test_predict.py",
    ],
    "run/state.py": [
        "tests/run/test_state.py",
        "tests/run/test_parts.py",
        "tests/run/test_state_reentrancy.py",
        "tests/plugins/test_lr_find.py",
        "tests/checkpoint/test_resume.py",
        "tests/checkpoint/test_compatibility.py",
    ],
    "run/parts.py": [
        "tests/run/test_parts.py",
        "tests/run/test_state.py",
        "tests/run/test_state_reentrancy.py",
        "tests/plugins/test_lr_find.py",
        "tests/checkpoint/test_resume.py",
        "tests/checkpoint/test_compatibility.py",
    ],
    "run/replay.py": [
        "tests/run/test_replay_refusals.py",
        "tests/run/test_replay_in_process.py",
        "tests/plugins/test_lr_find.py",
        "tests/checkpoint/test_resume.py",
    ],
    "run/metrics.py": [
        "tests/run/test_metrics_take_back.py",
        "tests/run/test_metrics_get_preds.py",
        "tests/plugins/test_metrics.py",
        "tests/plugins/test_metric_adapter.py",
        "tests/test_learner.py",
    ],
    "plugins/metrics.py": [
        "tests/plugins/test_metrics.py",
        "tests/run/test_metrics_take_back.py",
        "tests/plugins/test_metrics_logger.py",
        "tests/test_learner.py",
    ],
    "plugins/metric_adapter.py": [
        "tests/plugins/test_metric_adapter.py",
        "tests/plugins/test_metric_adapter_state.py",
        "tests/run/test_metrics_take_back.py",
        "tests/plugins/test_metrics_logger.py",
        # its code that runs under DDP only (rank-local compute, a rank that counted nothing)
        "tests/distributed/test_ranks_local_calls.py",
        "tests/distributed/test_ddp_metrics.py",
    ],
    "plugins/lr_find.py": [
        "tests/plugins/test_lr_find.py",
        "tests/plugins/test_lr_find_oracle.py",
    ],
    "plugins/budget.py": [
        "tests/plugins/test_budget.py",
        "tests/plugins/test_budget_edges.py",
    ],
    "data/batch_ops.py": [
        "tests/data/test_batch_ops.py",
        "tests/data/test_batch_ops_refusals.py",
        "tests/data/test_batch_rules.py",
        "tests/data/test_batch_tree.py",
    ],
    "data/batch_tree.py": [
        "tests/data/test_batch_tree.py",
        "tests/data/test_batch_tree_paths.py",
        "tests/data/test_batch_ops.py",
    ],
    "data/batch_rules.py": [
        "tests/data/test_batch_rules.py",
        "tests/data/test_batch_ops.py",
    ],
    "checkpoint/plugin.py": [
        "tests/checkpoint/test_plugin.py",
        "tests/checkpoint/test_plugin_runs.py",
        "tests/checkpoint/test_plugin_ctrl_c.py",
        "tests/checkpoint/test_plugin_ranks.py",
    ],
    "plugins/gradcheck.py": [
        "tests/plugins/test_gradcheck.py",
        "tests/plugins/test_gradcheck_nonfinite.py",
        "tests/plugins/test_gradcheck_numeric.py",
        "tests/plugins/test_gradcheck_manual.py",
    ],
    "plugins/gradcheck_report.py": [
        "tests/plugins/test_gradcheck.py",
        "tests/plugins/test_gradcheck_nonfinite.py",
        "tests/plugins/test_gradcheck_report.py",
    ],
    "data/loaders.py": [
        "tests/data/test_loaders.py",
        "tests/data/test_loaders_tensor_batch_loader.py",
        "tests/data/test_loaders_dataloaders.py",
        "tests/distributed/test_ranks_shards.py",
        "tests/test_learner.py",
    ],
    "data/epochs.py": [
        "tests/data/test_epochs.py",
        "tests/data/test_epochs_positions.py",
        "tests/data/test_loaders_tensor_batch_loader.py",
        "tests/distributed/test_ranks_shards.py",
        "tests/run/test_replay_in_process.py",
    ],
    "data/multiprocess.py": [
        "tests/data/test_multiprocess.py",
        "tests/plugins/test_multiprocess_loader.py",
        "tests/plugins/test_multiprocess_loader_seeding.py",
    ],
    "data/worker_pool.py": [
        "tests/data/test_multiprocess.py",
        "tests/plugins/test_multiprocess_loader_seeding.py",
    ],
    "plugins/multiprocess_loader.py": [
        "tests/plugins/test_multiprocess_loader.py",
        "tests/plugins/test_multiprocess_loader_seeding.py",
    ],
    "hooks/dispatch.py": [
        "tests/hooks/test_dispatch.py",
        "tests/hooks/test_dispatch_call.py",
        "tests/hooks/test_dispatch_error_tags.py",
        "tests/hooks/test_registry_wrap_hook_calls.py",
        "tests/hooks/test_guards.py",
        "tests/hooks/test_registry.py",
        "tests/hooks/test_specs.py",
        "tests/test_learner.py",
        "tests/test_loop_contract_fuzz.py",
    ],
    "plugins/accumulate.py": [
        "tests/plugins/test_accumulate.py",
        "tests/plugins/test_accumulate_losses.py",
        "tests/plugins/test_accumulate_refusals.py",
    ],
    "plugins/scheduler.py": [
        "tests/plugins/test_scheduler.py",
        "tests/plugins/test_scheduler_one_cycle.py",
        "tests/checkpoint/test_kill_and_resume.py",
    ],
    # the two-rank tests (slow, xdist group "ranks") run the mutants in their warm jobs: with
    # --recheck --pytest-arg="-m not slow or xdist_group". A mutant that survives runs every
    # test listed, so the slowest jobs that kill nothing of their own are left out (DDP with
    # every other feature, tests/test_seams.py: 25 s; the trackers on two ranks: 23 s)
    "distributed/fit_agreement.py": [
        "tests/distributed/test_fit_agreement.py",
        "tests/distributed/test_fit_agreement_ranks.py",
    ],
    "distributed/cancel_agreement.py": [
        "tests/distributed/test_cancel_agreement.py",
        "tests/distributed/test_ddp.py",
        "tests/distributed/test_ddp_metrics.py",
    ],
    "distributed/ddp.py": [
        "tests/distributed/test_ddp.py",
        "tests/distributed/test_fsdp.py",  # FSDP is a DDP: its _prepare is called from here
        "tests/distributed/test_cancel_agreement.py",
        "tests/distributed/test_ddp_sum_loss.py",
        "tests/distributed/test_ddp_hf.py",
        "tests/distributed/test_ranks_local_calls.py",
        "tests/distributed/test_fit_agreement_ranks.py",
    ],
    "distributed/fsdp.py": [
        "tests/distributed/test_fsdp.py",
        "tests/distributed/test_fsdp_refusals.py",
        "tests/distributed/test_ranks_local_calls.py",
        "tests/distributed/test_ddp_sum_loss.py",
        "tests/distributed/test_ddp_hf.py",
    ],
    "distributed/ranks.py": [
        "tests/distributed/test_ranks_in_process.py",
        "tests/distributed/test_ranks_rendezvous.py",
        "tests/distributed/test_ranks.py",
        "tests/distributed/test_fsdp_refusals.py",
        "tests/distributed/test_ranks_local_calls.py",
        "tests/distributed/test_ranks_shards.py",
        "tests/distributed/test_ddp.py",
        "tests/distributed/test_ddp_elastic.py",
        "tests/distributed/test_fsdp.py",
        "tests/checkpoint/test_plugin_ranks.py",
    ],
}
KILLED = {"killed", "timeout", "segfault", "caught by type check", "killed (recheck)"}


def copy_tree(dest: Path, ref: str | None) -> None:
    """The working tree as git sees it (tracked and untracked, ignored files left out), or the
    commit ``ref`` (when others edit the working tree, a commit is a stable thing to test)."""
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


# Appended to the copy's tests/conftest.py: a property test that fails on a mutant has killed it,
# so hypothesis need not shrink the failing example (minutes, and a timeout, on two cores).
HYPOTHESIS_PROFILE = """

# tools/mutation.py: a failing example kills the mutant; do not shrink it
from hypothesis import Phase as _Phase
from hypothesis import settings as _settings

_settings.register_profile("mutation", phases=[_Phase.explicit, _Phase.reuse, _Phase.generate])
"""


def configure(
    tree: Path, modules: list[str], tests: list[str], extra: list[str], slack: float
) -> None:
    """Append mutmut's settings to the copy's pyproject.toml (mutmut reads them from there).

    A mutant's tests may use ``2 * slack * (t + 2 s)`` CPU seconds, ``t`` their time on the
    unmutated code (mutmut's default slack, 15, lets one looping mutant hold a core a minute)."""
    as_list = ", ".join

    def quoted(items: list[str]) -> str:
        return "[" + as_list(f'"{i}"' for i in items) + "]"

    conftest = tree / "tests" / "conftest.py"
    if conftest.is_file():
        with conftest.open("a") as f:
            f.write(HYPOTHESIS_PROFILE)
        extra = ["--hypothesis-profile=mutation", *extra]

    settings = [
        "",
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {quoted([f'{PACKAGE}/{m}' for m in modules])}",
        f"pytest_add_cli_args_test_selection = {quoted(tests)}",
        f"pytest_add_cli_args = {quoted(['-p', 'no:cacheprovider', *extra])}",
        f"timeout_multiplier = {float(slack)}",
        "timeout_constant = 2.0",
    ]
    with (tree / "pyproject.toml").open("a") as f:
        f.write("\n".join(settings) + "\n")


def mutmut(tree: Path, *args: str, quiet: bool = False, may_fail: bool = False) -> str:
    # mutmut runs the tests once in its own process, then forks a child per mutant. A child that
    # inherits torch's OpenMP thread pool from that parent waits forever at the pool's barrier
    # (no CPU used, so the CPU-time limit never fires): one thread each keeps the forks sound.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=tree,
        env=env,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        check=False,
    )
    if done.returncode != 0 and not may_fail:
        sys.exit(f"mutmut {' '.join(args)} failed (exit {done.returncode}); see above.")
    return done.stdout or ""


def statuses(tree: Path) -> dict[str, str]:
    """``mutant name -> status`` for every mutant (``mutmut results --all true``)."""
    out = mutmut(tree, "results", "--all", "true", quiet=True)
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.MULTILINE))


def chosen(found: dict[str, str], only: list[str]) -> dict[str, str]:
    """The mutants of this run (``--only``'s globs, else all); one mutmut left unchecked (it
    stopped early: no test reached the module in its own process) as ``no tests``."""
    from fnmatch import fnmatchcase

    return {
        name: "no tests" if status == "not checked" else status
        for name, status in found.items()
        if not only or any(fnmatchcase(name, glob) for glob in only)
    }


def module_of(mutant: str) -> str:
    """``pluglearn.data.safe_pickle.x_find__mutmut_3`` -> ``data/safe_pickle.py``."""
    dotted = mutant.split(".x")[0] if ".x" in mutant else mutant.rpartition(".")[0]
    return dotted.removeprefix("pluglearn.").replace(".", "/") + ".py"


def where(tree: Path, mutant: str) -> tuple[str, str]:
    """``(file:line, change)`` of a mutant, from mutmut's diff of the mutated function."""
    diff = mutmut(tree, "show", mutant, quiet=True).splitlines()
    old = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    new = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    path = f"{PACKAGE}/{module_of(mutant)}"
    line = _line_of(tree / path, mutant, old[0] if old else "")
    change = " / ".join(o.strip() for o in old) + "  ->  " + " / ".join(n.strip() for n in new)
    return f"{path}:{line}", change


def _line_of(source: Path, mutant: str, text: str) -> int | str:
    """The line of ``text`` inside the function the mutant belongs to (``?`` if not found)."""
    # x_name (a function: name may start with "_" itself) or xǁClassǁname (a method)
    name = re.sub(r"__mutmut_\d+$", "", mutant.split(".x", 1)[-1])
    name = name.split("ǁ")[-1] if name.startswith("ǁ") else name.removeprefix("_")
    tree = ast.parse(source.read_text())
    spans = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
    ]
    lines = source.read_text().splitlines()
    for start, end in spans or [(1, len(lines))]:
        for i in range(start - 1, end):
            if lines[i].strip() == text.strip():
                return i + 1
    return spans[0][0] if spans else "?"


def recheck(
    tree: Path,
    results: dict[str, str],
    tests: list[str],
    extra: list[str],
    jobs: int,
    batched: bool = True,
) -> dict[str, str]:
    """Run each mutant mutmut did not kill against *all* the covering ``tests``.

    mutmut runs a mutant only against the tests that reached its function in its stats run. A
    function reached once per process (a type registered the first time it is seen, behind a
    cache) is credited to the first test that reached it, or to none, so its mutants "survive"
    tests that kill them; code reached only in the jobs a test starts (DDP's two ranks) reaches
    no test at all. Here each one runs in the copy with ``MUTANT_UNDER_TEST`` set (what
    mutmut's trampolines read at every call); a failing test kills it (``killed (recheck)``).
    ``batched``: many mutants per pytest process (``mutation_batch.py``), one process per job;
    else a pytest process per mutant.
    """
    todo = [m for m, status in results.items() if status not in KILLED]
    for entry in tree.iterdir():  # mutmut copies src/ and tests/; the examples, docs... too
        if not (tree / "mutants" / entry.name).exists() and entry.name != "mutants":
            (tree / "mutants" / entry.name).symlink_to(entry)
    source = str(tree / "mutants" / "src")  # the copy's src/ ahead of this checkout's
    path = os.pathsep.join(filter(None, [source, str(TOOLS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    if (tree / "tests" / "conftest.py").is_file():
        command.append("--hypothesis-profile=mutation")
    run = _recheck_batched if batched else _recheck_each
    killed = run(tree, todo, [*command, *tests], env, max(1, jobs))
    return {m: "killed (recheck)" if m in killed else s for m, s in results.items()}


def _recheck_each(
    tree: Path, todo: list[str], command: list[str], env: dict[str, str], jobs: int
) -> set[str]:
    from concurrent.futures import ThreadPoolExecutor

    def killed(mutant: str) -> bool:
        try:
            done = subprocess.run(
                [*command, "-x"], cwd=tree / "mutants", env={**env, "MUTANT_UNDER_TEST": mutant},
                capture_output=True, timeout=600, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return True  # as mutmut counts a timeout
        return done.returncode not in (0, 5)  # 5: no test collected

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return {m for m, k in zip(todo, pool.map(killed, todo), strict=True) if k}


def _recheck_batched(
    tree: Path, todo: list[str], command: list[str], env: dict[str, str], jobs: int
) -> set[str]:
    """``jobs`` pytest processes, each running its share of the mutants. A process that dies
    mid-mutant (the mutant crashed it) counts that mutant killed, as mutmut counts a segfault,
    and the rest of its share runs in a new process."""
    from concurrent.futures import ThreadPoolExecutor

    from mutation_batch import CONTROL, CONTROL_PASSED
    from mutation_switch import HOOK, VARIABLE, choose

    with (tree / "mutants" / PACKAGE / "__init__.py").open("a") as f:
        f.write(HOOK)

    def share(index: int, mutants: list[str]) -> dict[str, str]:
        verdicts: dict[str, str] = {}
        listed, out = tree / f"mutants-{index}.txt", tree / f"verdicts-{index}.txt"
        env_here = {**env, VARIABLE: str(tree / f"mutant-{index}")}
        choose(env_here[VARIABLE], CONTROL)
        while left := [m for m in mutants if m not in verdicts]:
            listed.write_text("\n".join(left) + "\n")
            out.write_text("")
            done = subprocess.run(
                [*command, "-p", "mutation_batch", f"--mutants={listed}", f"--verdicts={out}"],
                cwd=tree / "mutants", env=env_here, capture_output=True, text=True, check=False,
            )  # fmt: skip
            lines = out.read_text().splitlines()
            if not lines or lines[0] != CONTROL_PASSED:  # collection, or the unmutated tests
                told = done.stdout + out.read_text()
                sys.exit(f"--recheck: the tests fail unmutated:\n{told[-5000:]}")
            if any(line.startswith("# ") for line in lines[1:]):  # the control, at the end
                sys.exit(f"--recheck: {out.read_text()[-5000:]}\nthe kills are suspect")
            for line in lines[1:]:
                name, verdict, *_ = line.split()
                verdicts[name] = verdict
                print(f"  recheck {line}", flush=True)
            if done.returncode != 0 and (crashed := [m for m in left if m not in verdicts]):
                verdicts[crashed[0]] = "killed"  # it ended the process, as a segfault would
                print(f"  recheck {crashed[0]} killed (pytest ended: {done.returncode})")
        return verdicts

    shares = [todo[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        found = pool.map(share, range(jobs), shares)
    return {m for verdicts in found for m, v in verdicts.items() if v == "killed"}


def report(tree: Path, results: dict[str, str], modules: list[str]) -> bool:
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[tuple[str, str, str]] = []
    for mutant, status in sorted(results.items()):
        module = module_of(mutant)
        by_module[module][status] += 1
        if status not in KILLED:
            survivors.append((mutant, status, module))
    print(f"\n{'module':<36}{'mutants':>8}{'killed':>8}{'rate':>8}  other")
    ok = True
    for module in modules:
        counts = by_module.get(module, Counter())
        total, killed = sum(counts.values()), sum(counts[s] for s in KILLED)
        rate = killed / total if total else 1.0
        ok &= rate >= TARGET
        other = ", ".join(f"{n} {s}" for s, n in counts.items() if s not in KILLED)
        if counts["killed (recheck)"]:
            other = ", ".join(
                filter(None, [f"{counts['killed (recheck)']} killed by --recheck", other])
            )
        print(f"{module:<36}{total:>8}{killed:>8}{rate:>8.1%}  {other}")
    if survivors:
        print("\nsurvivors (file:line  status  mutant: change):")
    for mutant, status, _ in survivors:
        place, change = where(tree, mutant)
        print(f"  {place}  {status}  {mutant.rpartition('.')[2]}: {change}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", action="append", help="a module under src/pluglearn")
    parser.add_argument("--tests", action="append", help="test files for --module (default: table)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--pytest-arg", action="append", default=[], help="e.g. -m 'not slow'")
    parser.add_argument("--only", action="append", default=[], help="mutant names (globs)")
    parser.add_argument("--slack", type=float, default=5.0, help="time limit factor (above)")
    parser.add_argument("--ref", help="test this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--keep", action="store_true", help="keep the copy (to mutmut browse)")
    parser.add_argument("--list", action="store_true", help="print the module table and exit")
    parser.add_argument(
        "--no-hooks", action="store_true", help="leave @hookimpl methods unmutated (mutmut's way)"
    )
    parser.add_argument(
        "--recheck", action="store_true", help="run each survivor against all the tests (above)"
    )
    parser.add_argument(
        "--recheck-tests", action="append", default=[],
        help="more test files or node ids (path::test) for --recheck only (e.g. the two-rank "
        "tests: their jobs, forked warm from the copy's src/ with this environment, run the "
        "mutant too)",
    )  # fmt: skip
    parser.add_argument(
        "--recheck-each",
        action="store_true",
        help="--recheck with a pytest process per mutant, not many per process",
    )
    parser.add_argument(
        "--recheck-arg",
        action="append",
        help="pytest arguments of --recheck (default: --pytest-arg)",
    )
    args = parser.parse_args()
    if args.list:
        for module, tests in MODULES.items():
            print(f"{module}: {' '.join(tests)}")
        return
    modules = [m.removeprefix(f"{PACKAGE}/") for m in args.module or MODULES]
    tree = Path(tempfile.mkdtemp(prefix="pluglearn-mutation-"))
    ok = False
    try:
        copy_tree(tree, args.ref)
        present = [m for m in modules if (tree / PACKAGE / m).is_file()]
        for m in sorted(set(modules) - set(present)):
            print(f"note: {PACKAGE}/{m} is not in this tree; skipped")
        tests = args.tests or sorted({t for m in present for t in MODULES.get(m, [])})
        tests = [t for t in tests if (tree / t).is_file()]
        if not present or not tests:
            sys.exit("nothing to run: no module or no test file found (see --list)")
        if not args.no_hooks:
            for m in present:
                hooks = expose_hooks_in(tree / PACKAGE / m)
                print(f"{m}: {len(hooks)} @hookimpl methods brought under mutation", flush=True)
        configure(tree, present, tests, args.pytest_arg, args.slack)
        print(f"mutating {', '.join(present)}\n  tests {' '.join(tests)}\n  in {tree}", flush=True)
        # mutmut stops early when no test reached the module in its own process (code run only
        # in the jobs the tests start): --recheck then runs every mutant
        mutmut(tree, "run", "--max-children", str(args.jobs), *args.only, may_fail=args.recheck)
        results = chosen(statuses(tree), args.only)
        if args.recheck:
            extra = args.pytest_arg if args.recheck_arg is None else args.recheck_arg
            more = [t for t in args.recheck_tests if (tree / t.split("::")[0]).is_file()]
            results = recheck(
                tree, results, [*tests, *more], extra, args.jobs, not args.recheck_each
            )
        ok = report(tree, results, present)
    finally:
        if args.keep:
            print(f"\nkept {tree} (cd there and run: {sys.executable} -m mutmut browse)")
        else:
            shutil.rmtree(tree, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
