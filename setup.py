"""Build script: CMake builds the pybind11 extension ``retailsim._native`` from ``kernels/``.

If the extension cannot be built (no compiler, no CMake), the package still installs and runs on its
NumPy/PyTorch paths; ``retailsim.native`` warns once at import. Set ``RETAILSIM_REQUIRE_NATIVE=1`` to make a
failed build an error instead (``make test`` does, so CI notices a broken kernel).
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any build failure falls back to the pure paths
            if os.environ.get("RETAILSIM_REQUIRE_NATIVE") == "1":
                raise
            sys.stderr.write(
                f"WARNING: retailsim._native could not be built ({error}); "
                "installing without it, the NumPy/PyTorch paths will be used.\n"
            )

    def build_extension(self, ext: CMakeExtension):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = ROOT / "build" / f"cmake-{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake", str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={config}",
            # A source build is tuned for the machine it runs on; RETAILSIM_NATIVE_ARCH="" keeps it portable.
            f"-DRETAILSIM_NATIVE_ARCH={os.environ.get('RETAILSIM_NATIVE_ARCH', 'native')}",
        ]
        jobs = str(max(1, os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", config, "-j", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("retailsim._native")], cmdclass={"build_ext": CMakeBuild})
