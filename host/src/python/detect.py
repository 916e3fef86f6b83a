# Run once per interpreter by pitboss (host/src/python): prints one JSON object
# describing the interpreter and its installed distributions. Standard library
# only, and valid on every Python from 2.7 on, so that even an interpreter too
# old for pitboss can say what it is.
import json
import os
import platform
import sys
import sysconfig


def distributions():
    try:
        from importlib import metadata
    except ImportError:
        return None
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = name.lower().replace("_", "-").replace(".", "-")
        # The first one on sys.path is the one an import gets.
        found.setdefault(key, {"name": name, "version": dist.version})
    return sorted(found.values(), key=lambda d: d["name"].lower())


def version():
    v = sys.version_info
    text = "%d.%d.%d" % (v[0], v[1], v[2])
    level = {"alpha": "a", "beta": "b", "candidate": "rc"}.get(v[3])
    return text + ("%s%d" % (level, v[4]) if level else "")


is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
listed = distributions()
print(json.dumps({
    "version": version(),
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "gil_enabled": is_gil_enabled() if is_gil_enabled else True,
    "implementation": platform.python_implementation().lower(),
    "platform": sysconfig.get_platform(),
    "paths": [p for p in sys.path if p and os.path.isdir(p)],
    "inventory": listed is not None,
    "distributions": listed or [],
}))
