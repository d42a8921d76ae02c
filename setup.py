"""Install TinyTorch, reading name, version and requirements from settings.ini.

nbdev's template setup.py lists Python versions without 3.11 and fails with
"'3.11' is not in list" when min_python = 3.11, so this one is written by hand.
"""
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in ("lib_name", "version", "description", "min_python", "license", "author", "author_email"):
    if key not in cfg:
        raise SystemExit(f"setup.py: settings.ini has no '{key}' in [DEFAULT]")

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()

setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg.get("git_url", ""),
    python_requires=f">={cfg['min_python']}",
    packages=find_packages(include=["tinytorch", "tinytorch.*", "tito", "tito.*"]),
    include_package_data=True,
    package_data={"tinytorch": ["data/*.npz", "data/*.gz", "data/*.txt"]},
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: Apache Software License",
        "Intended Audience :: Education",
    ],
    zip_safe=False,
)
