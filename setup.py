"""Builds the optional compiled extensions: capture framing (``portwatch.capture.files._core``),
decoding (``portwatch.decode._decode``) and the flow table core (``portwatch.analysis._flowcore``).

Everything else is declared in pyproject.toml. The extension is optional: with
no C compiler (or no Cython) the install still succeeds and portwatch frames
captures with numpy, as ``PORTWATCH_VERBOSE=1`` then says.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "src/portwatch/capture/files/_core.pyx"
DECODE_SOURCE = "src/portwatch/decode/_decode.pyx"
FLOWCORE_SOURCE = "src/portwatch/analysis/_flowcore.pyx"


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, never a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure leaves the numpy path
            print(f"warning: compiled capture framing not built ({exc})", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: {ext.name} not built ({exc})", file=sys.stderr)


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is missing: compiled capture framing not built", file=sys.stderr)
        return []
    ext = Extension(
        "portwatch.capture.files._core",
        [SOURCE],
        extra_compile_args=["-O3", "-g0"],
        optional=True,
    )
    flowcore = Extension(
        "portwatch.analysis._flowcore",
        [FLOWCORE_SOURCE],
        extra_compile_args=["-O3", "-g0"],
        optional=True,
    )
    decode = Extension(
        "portwatch.decode._decode",
        [DECODE_SOURCE],
        extra_compile_args=["-O3", "-g0"],
        optional=True,
    )
    built = []
    for one in (ext, decode, flowcore):  # one that fails to translate leaves the others
        try:
            built.extend(cythonize([one], language_level=3, quiet=True))
        except Exception as exc:
            print(f"warning: {one.name} not built ({exc})", file=sys.stderr)
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
