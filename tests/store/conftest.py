# Until syncd/store.py becomes the syncd/store/ package, the modules already in that
# directory are importable only if the module also searches it. A no-op once it is a package.
from pathlib import Path

import syncd.store

if not hasattr(syncd.store, "__path__"):
    syncd.store.__path__ = [str(Path(syncd.store.__file__).with_suffix(""))]  # type: ignore[attr-defined]
