"""Ships the top-level conf/ inside the wheel as robprune/conf, so `pip install .` works as well as `pip install -e .`."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        src = Path(__file__).parent / "conf"
        dst = Path(self.build_lib) / "robprune" / "conf"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)


setup(cmdclass={"build_py": BuildPyWithConf})
