"""Which mutant runs, read from a file: ``mutation_batch.py`` changes it between mutants.

mutmut's trampolines ask ``get_mutant_under_test()`` at every call, which reads
``MUTANT_UNDER_TEST`` from the environment. A pytest process that runs many mutants can change
its own environment, but the tests copy it into the jobs they start when they are imported
(``tests/jobs/launch.py``'s ``ENV``), so a job would run the first mutant for ever. With
``PLUGLEARN_MUTANT_FILE`` set, every process that imports the copy's ``pluglearn`` (the pytest
process, the warm-start server and the jobs it forks, torchrun's workers) answers from that file
instead, read again whenever it changes: the copy's ``pluglearn/__init__.py`` calls
:func:`install` (``tools/mutation.py`` appends the call there).
"""

from __future__ import annotations

import os

VARIABLE = "PLUGLEARN_MUTANT_FILE"


def install() -> None:
    import mutmut.mutation.trampoline as trampoline

    path = os.environ[VARIABLE]
    seen: list[object] = [None, ""]  # (the file's mtime and inode, its mutant)

    def mutant_under_test() -> str:
        try:
            stat = os.stat(path)  # a rename gives a new inode: each mutant is seen
        except FileNotFoundError:
            return ""  # none chosen yet: the code unmutated
        key = (stat.st_mtime_ns, stat.st_ino)
        if key != seen[0]:
            with open(path) as f:
                seen[:] = [key, f.read().strip()]
        return str(seen[1])

    trampoline.get_mutant_under_test = mutant_under_test


def choose(path: str, mutant: str) -> None:
    """Make ``mutant`` the one every process runs from its next trampoline call on."""
    fresh = f"{path}.{os.getpid()}"
    with open(fresh, "w") as f:
        f.write(mutant)
    os.replace(fresh, path)


HOOK = f"""

# tools/mutation.py: the mutant under test read from a file (tools/mutation_switch.py)
import os as _os

if _os.environ.get("{VARIABLE}"):
    import mutation_switch as _switch

    _switch.install()
"""
