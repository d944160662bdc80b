"""Build script: compiles the rdsproxy._codec Cython twins unless RDSPROXY_NO_EXTENSIONS=1."""

import os
import sys

from setuptools import Extension, setup

CODEC_MODULES = ["pgframe_c", "classify_c", "myframe_c", "latency_c", "lane_c", "scram_c"]
if sys.platform.startswith("linux"):
    CODEC_MODULES.append("relay_c")  # epoll: elsewhere asyncio's own transports serve the data path

ext_modules = []
if not os.environ.get("RDSPROXY_NO_EXTENSIONS"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension(f"rdsproxy._codec.{name}", [f"rdsproxy/_codec/{name}.pyx"]) for name in CODEC_MODULES],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        build_dir="build/cython",  # generated .c stays out of the package and the wheel
    )

setup(ext_modules=ext_modules)
