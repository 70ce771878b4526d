"""Runs a Python script as if TensorFlow, TFDS and clu were not installed (as on the GPU machine).

    python tests/_without_tensorflow.py main.py --config=... --workdir=W

`import tensorflow` (and tensorflow_datasets, clu, and their submodules) raises ImportError in
the script. At exit it prints one JSON line to stderr naming any such module that was imported.
"""

import atexit
import json
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")
for name in BLOCKED:
    sys.modules[name] = None  # `import name` now raises ImportError


def _report() -> None:
    imported = sorted(name for name, module in sys.modules.items()
                      if module is not None and name.split(".")[0] in BLOCKED)
    print(json.dumps({"blocked_modules_imported": imported}), file=sys.stderr, flush=True)


atexit.register(_report)
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path.insert(0, ".")
runpy.run_path(script, run_name="__main__")
