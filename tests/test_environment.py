"""environment.yml: what conda makes (Python, pip) and the documented pip command that installs the lock.

conda is not needed: conda writes the ``pip:`` list to a requirements file beside environment.yml and runs
``python -m pip install -U -r <file>``, so the list is checked with pip's own requirements-file parser, and
the documented command with pip's own ``install`` option parser.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "environment.yml"
LOCK = ROOT / "requirements.lock"
PATH_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-e", "--editable")


def environment() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def conda_specs() -> list[str]:
    return [d for d in environment()["dependencies"] if isinstance(d, str)]


def pip_list() -> list[str]:
    lists = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(lists) <= 1, "environment.yml has more than one pip: list"
    return lists[0] if lists else []


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def makefile_pip_pin() -> str:
    m = re.search(r"pip install\b[^\n]*\bpip==([^\s#]+)", (ROOT / "Makefile").read_text())
    assert m, "the Makefile installs no pinned pip"
    return m.group(1)


def _from_env_dir(line: str) -> str:
    """A pip: line with its relative paths taken from environment.yml's folder, as conda's file has them."""
    tokens = shlex.split(line, comments=True)
    if tokens and tokens[0] in PATH_OPTIONS and len(tokens) == 2:
        target = 1
    elif len(tokens) == 1 and tokens[0].startswith("."):
        target = 0
    else:
        return line  # a requirement specifier (or an option without a path): no path to resolve
    if "://" not in tokens[target]:
        tokens[target] = str((ENV_FILE.parent / tokens[target]).resolve())
    return shlex.join(tokens)


def parse_as_pip_does(lines: list[str], tmp_path: Path) -> list:
    """Parse ``lines`` as one requirements file with pip's parser (what conda's pip run reads)."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    req_file = tmp_path / "condaenv.requirements.txt"
    req_file.write_text("\n".join(_from_env_dir(line) for line in lines) + "\n")
    return list(parse_requirements(str(req_file), session=PipSession()))


def documented_commands() -> list[list[str]]:
    """The commands in environment.yml's header comment (indented ``#   conda ...`` lines)."""
    out = []
    for line in ENV_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if line.startswith("#   ") and text.startswith("conda "):
            out.append(shlex.split(text))
    return out


def test_python_pin_matches_requires_python():
    (python,) = [s for s in conda_specs() if re.match(r"python\b", s)]
    m = re.fullmatch(r"python=(\d+)\.(\d+)", python.replace(" ", ""))
    assert m, f"environment.yml: {python!r} should pin one minor release, as python=X.Y"
    major, minor = map(int, m.groups())
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    # conda's python=X.Y means X.Y.*: it must be exactly the releases requires-python admits
    assert Version(f"{major}.{minor}.0") in requires and Version(f"{major}.{minor}.99") in requires
    assert Version(f"{major}.{minor - 1}.99") not in requires and Version(f"{major}.{minor + 1}.0") not in requires


def test_conda_installs_no_package_of_the_lock():
    """Everything but Python and pip comes from the lock, so that conda and pip never both own a package."""
    names = {canonicalize_name(re.split(r"[\s=<>!~\[]", s, maxsplit=1)[0]) for s in conda_specs()}
    assert "pip" in names, "conda must install pip for the pip: list and the documented command"
    assert not names & set(lock_pins()), f"conda installs packages the lock pins: {sorted(names & set(lock_pins()))}"


def test_pip_list_is_a_requirements_file_pip_accepts(tmp_path):
    for parsed in parse_as_pip_does(pip_list(), tmp_path):
        if parsed.is_editable or parsed.requirement.startswith("/"):
            assert Path(parsed.requirement).exists(), f"{parsed.requirement}: referenced by environment.yml, missing"


def test_no_deps_is_an_option_pip_rejects_in_a_requirements_file(tmp_path):
    """Why the lock is installed by the documented command: a ``--no-deps`` line in the pip: list fails the
    check above, as it fails conda's pip run."""
    from pip._internal.exceptions import RequirementsFileParseError

    with pytest.raises(RequirementsFileParseError, match="no-deps"):
        parse_as_pip_does(["--no-deps", "-r requirements.lock"], tmp_path)


def test_pip_list_leaves_the_lock_and_vaelib_to_the_documented_command(tmp_path):
    """conda's pip run resolves dependencies, so the lock (tinysoundfont -> pyaudio) and ``-e .`` (unpinned
    dependencies) cannot go in the pip: list; they belong to the --no-deps command."""
    for parsed in parse_as_pip_does(pip_list(), tmp_path):
        assert LOCK.name not in parsed.comes_from, f"the pip: list installs {LOCK.name}, which needs --no-deps"
        if parsed.is_editable or parsed.requirement.startswith("/"):
            assert Path(parsed.requirement).resolve() != ENV_FILE.parent.resolve(), \
                "the pip: list installs vaelib, which needs --no-deps"


def test_pip_list_pins_agree_with_the_lock(tmp_path):
    lock, seen = lock_pins(), set()
    for parsed in parse_as_pip_does(pip_list(), tmp_path):
        if parsed.is_editable or parsed.requirement.startswith("/"):
            continue
        req = Requirement(parsed.requirement)
        name = canonicalize_name(req.name)
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        assert len(pinned) == 1 and len(req.specifier) == 1, f"environment.yml: {parsed.requirement!r} is not a pin"
        # pip itself is not in the lock (pip freeze leaves it out); the Makefile pins it
        expected = makefile_pip_pin() if name == "pip" else lock.get(name)
        assert expected is not None, f"environment.yml pins {name}, which requirements.lock does not"
        assert pinned[0] == expected, f"environment.yml pins {name}=={pinned[0]}, the lock {expected}"
        seen.add(name)
    assert "pip" in seen, "environment.yml's pip: list should pin pip as the Makefile does"


def test_documented_command_installs_the_lock_without_deps():
    from pip._internal.commands import create_command

    cmds = documented_commands()
    assert len(cmds) == 2, f"environment.yml's comment should give two commands, gives {cmds}"
    create, install = cmds
    assert create == ["conda", "env", "create", "-f", ENV_FILE.name]
    assert install[:4] == ["conda", "run", "-n", environment()["name"]], install
    assert install[4:8] == ["python", "-m", "pip", "install"], install
    # isolated: pip config files and PIP_* variables of this machine must not fill in options
    options, args = create_command("install", isolated=True).parse_args(install[8:])
    assert options.ignore_dependencies, "the lock must be installed with --no-deps"
    assert options.requirements == [LOCK.name] and (ROOT / options.requirements[0]).is_file()
    assert options.editables == ["."] and (ROOT / "pyproject.toml").is_file()
    assert args == [], f"the documented command installs more than the lock and vaelib: {args}"


def test_lock_pins_torch_and_every_direct_dependency_as_pyproject():
    """With --no-deps nothing is resolved: every direct dependency of vaelib must be in the lock, within
    pyproject's specifier (torch's exact pin included)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = lock_pins()
    direct = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name}: a direct dependency that requirements.lock does not pin"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} vs {req}"
    (torch,) = [r for r in direct if r.name == "torch"]
    assert [s.version for s in torch.specifier] == [lock["torch"]]
