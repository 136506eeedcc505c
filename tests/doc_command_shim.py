"""`python` for the shell commands of the docs, under test.

tests/test_doc_snippets.py puts a `python` on `PATH` that runs this file
with the command's arguments. `python -m MODULE ...` gets the reducing
flags of `DOCS_REDUCED[MODULE]` appended: `(always, unless_given)`, the
second only where the command does not set that flag (absl keeps a flag's
last value). Anything else runs unchanged.
"""

import json
import os
import sys


def main():
    args = sys.argv[1:]
    if args[:1] == ["-m"] and len(args) > 1:
        reduced = json.loads(os.environ["DOCS_REDUCED"])
        always, unless_given = reduced.get(args[1], ([], []))
        given = {arg.split("=")[0] for arg in args}
        args += always
        args += [f for f in unless_given if f.split("=")[0] not in given]
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main()
