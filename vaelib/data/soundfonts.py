"""SoundFonts a run renders from: where a name points, the Debian package of a missing one, the source prefix.

``render.soundfont`` and ``analysis.transfer[].soundfont`` accept a path (relative to the project,
or absolute, ``$VARS`` expanded) or a bare file name. A bare name is looked up, in order: the project
folder; ``TimGM6mb.sf2``, the SoundFont shipped inside the pretty_midi wheel (the default source);
``vaelib_fm.sf2`` and ``vaelib_sub.sf2``, the project's own FM and subtractive synthesis banks
(``vaelib.data.fm_soundfont``, ``vaelib.data.subtractive_soundfont``), written into ``data/soundfonts/`` on
first use; the Debian location of a name in ``DEBIAN_SOUNDFONTS``. A missing
file is a ``ParameterError`` naming it, with the ``apt-get install`` that provides it when Debian
packages it.

With more than one source, every instrument name of a render starts with its source's prefix
(:func:`source_prefix`): the SoundFont's file name without its suffix, lower-cased, letters and
digits only (``FluidR3_GM.sf2`` -> ``fluidr3gm``). It depends on that file's name alone, so adding
or removing another source never renames the instruments of the others.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from vaelib.config import SOUNDFONT_SUFFIXES, Config, resolve_path, soundfont_list
from vaelib.data.generated_banks import GENERATED
from vaelib.exceptions import DataError, ParameterError

__all__ = ["BUNDLED_SOUNDFONT", "DEBIAN_SOUNDFONTS", "default_soundfont", "debian_package", "resolve_soundfont",
           "check_soundfont_file", "resolve_soundfonts", "source_names", "source_prefix", "check_soundfonts",
           "soundfont_digest", "present_soundfonts"]

BUNDLED_SOUNDFONT = "TimGM6mb.sf2"  # inside the pretty_midi wheel: the default source, found with pip alone

# GM SoundFonts Debian packages, by where the package installs them: `apt-get install <package>`.
DEBIAN_SOUNDFONTS: dict[str, str] = {
    "/usr/share/sounds/sf2/FluidR3_GM.sf2": "fluid-soundfont-gm",
    "/usr/share/sounds/sf2/FluidR3_GS.sf2": "fluid-soundfont-gs",
    "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3": "fluidr3mono-gm-soundfont",
    "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2": "opl3-soundfont",
    "/usr/share/sounds/sf2/sf_GMbank.sf2": "csound-soundfont",
    "/usr/share/sounds/sf2/TimGM6mb.sf2": "timgm6mb-soundfont",
    "/usr/share/sounds/sf3/MuseScore_General_Full.sf3": "musescore-general-soundfont",
    "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3": "musescore-general-soundfont-small",
}


def default_soundfont() -> Path:
    """``TimGM6mb.sf2``, the GM SoundFont shipped inside the pretty_midi wheel."""
    import pretty_midi

    path = Path(pretty_midi.__file__).parent / BUNDLED_SOUNDFONT
    if not path.is_file():
        raise DataError(f"{path}: {BUNDLED_SOUNDFONT} not found in the pretty_midi package; pass render.soundfont")
    return path


def _debian_path(name: str) -> Path | None:
    for path in DEBIAN_SOUNDFONTS:
        if Path(path).name == name:
            return Path(path)
    return None


def debian_package(path: str | Path) -> str | None:
    """The Debian package that installs a SoundFont of this file name, or None when Debian has none."""
    found = _debian_path(Path(path).name)
    return DEBIAN_SOUNDFONTS[str(found)] if found is not None else None


def resolve_soundfont(spec: str, *, where: str = "render.soundfont") -> Path:
    """The file a SoundFont parameter names (see the module docstring for the look-up of a bare name).

    Parameters
    ----------
    spec : a path or a bare file name ('' is the bundled default).
    where : the parameter, for the messages.

    Raises
    ------
    ParameterError
        Not a .sf2/.sf3, or no such file; the message names the file and, for a SoundFont Debian
        packages, the ``apt-get install`` that provides it.
    DataError
        The file is empty, not a SoundFont or truncated (:func:`check_soundfont_file`).
    """
    return check_soundfont_file(_locate_soundfont(spec, where), where=where)


def _locate_soundfont(spec: str, where: str, *, write_generated: bool = True) -> Path:
    """Where ``spec`` points (:func:`resolve_soundfont`), before its header is checked; a bank the project
    generates is written when it is missing, unless ``write_generated`` is false (then it is missing like any
    file)."""
    if not spec.strip():
        return default_soundfont()
    given = Path(spec)
    if given.suffix.lower() not in SOUNDFONT_SUFFIXES:
        raise ParameterError(f"{where} {spec}: expected a .sf2 or .sf3 file")
    path = resolve_path(spec)
    bare = len(given.parts) == 1
    if path.is_file():
        return path
    if bare and given.name == BUNDLED_SOUNDFONT:
        return default_soundfont()
    if bare and given.name in GENERATED:
        bank = GENERATED[given.name]
        if write_generated:
            return bank.ensure()
        if bank.path().is_file():
            return bank.path()
    debian = _debian_path(given.name) if bare else None
    if debian is not None and debian.is_file():
        return debian
    package = debian_package(given)
    shown = debian if debian is not None else path
    hint = ""
    if package:
        place = _debian_path(given.name)
        hint = (f" (Debian's package {package}: `apt-get install {package}` provides it)" if place == shown else
                f" (Debian's package {package}: `apt-get install {package}` installs it as {place})")
    raise ParameterError(f"{where} {shown}: file not found{hint}")


def check_soundfont_file(path: Path, *, where: str = "render.soundfont") -> Path:
    """``path`` when it begins as a SoundFont does (a RIFF ``sfbk`` header) and holds every byte its header
    announces; checked before anything is rendered, so a damaged or partly copied file is named at once.

    Raises
    ------
    DataError
        It cannot be read, is not a RIFF ``sfbk`` file, or is shorter than its header says (truncated).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise DataError(f"{where} {path}: cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise DataError(f"{where} {path}: the file is empty, not a SoundFont")
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise DataError(f"{where} {path}: not a SoundFont (a .sf2/.sf3 file begins with a RIFF 'sfbk' header; "
                        f"this one begins with {head[:12]!r})")
    announced = int.from_bytes(head[4:8], "little") + 8
    if size < announced:
        raise DataError(f"{where} {path}: truncated: its header announces {announced:,} bytes, the file holds "
                        f"{size:,} (an interrupted download or copy?)")
    return path


def resolve_soundfonts(spec: str | tuple[str, ...] | list[str], *, where: str = "render.soundfont") -> list[Path]:
    """Every source of ``render.soundfont`` (a string or a list; empty: the bundled default), resolved."""
    fonts = soundfont_list(spec)
    if not fonts:
        return [default_soundfont()]
    if len(fonts) == 1:
        return [resolve_soundfont(fonts[0], where=where)]
    return [resolve_soundfont(f, where=f"{where}[{i}]") for i, f in enumerate(fonts)]


def soundfont_digest(path: str | Path) -> str:
    """The SHA-256 of a SoundFont's bytes (hex). A render records it for each source, so a folder rendered
    from one file is told from a file of the same name edited or replaced since; a name alone cannot.
    Read whole every time (about 0.1-0.3 s for the 140 MB banks): no cache can tell every edit apart."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def present_soundfonts(spec: str | tuple[str, ...] | list[str]) -> list[Path | None]:
    """Where each source of ``render.soundfont`` is (as :func:`resolve_soundfonts` finds it), None for one
    that is not there; nothing is raised, and a bank the project generates is not written when it is missing."""
    found: list[Path | None] = []
    for font in soundfont_list(spec) or [BUNDLED_SOUNDFONT]:
        try:
            found.append(_locate_soundfont(font, "render.soundfont", write_generated=False))
        except (ParameterError, DataError):
            found.append(None)
    return found


def source_names(spec: str | tuple[str, ...] | list[str]) -> list[str]:
    """The file names of the sources of ``render.soundfont``, without looking for the files."""
    fonts = soundfont_list(spec)
    return [Path(f).name for f in fonts] if fonts else [BUNDLED_SOUNDFONT]


def source_prefix(name: str | Path) -> str:
    """The prefix of a source's instrument names in a multi-source render: ``FluidR3_GM.sf2`` -> ``fluidr3gm``.

    Raises
    ------
    ParameterError
        The file name holds no letter or digit before its suffix.
    """
    prefix = re.sub(r"[^a-z0-9]", "", Path(name).stem.lower())
    if not prefix:
        raise ParameterError(f"render.soundfont {name}: its file name holds no letter or digit to name its "
                             "instruments by; rename the file")
    return prefix


def check_soundfonts(cfg: Config) -> None:
    """Every SoundFont the run names exists: ``render.soundfont`` (when ``render.enabled``) and each
    ``analysis.transfer[].soundfont``; each ``analysis.transfer[].root`` without a SoundFont is a folder.
    Called before any work, so that a run does not train for an hour and then miss a file.

    Raises
    ------
    ParameterError
        A SoundFont is missing (with the ``apt-get install`` of a Debian one).
    DataError
        A transfer folder without a SoundFont to render it from does not exist, or a SoundFont is empty,
        not a SoundFont or truncated.
    """
    if cfg.render.enabled:
        resolve_soundfonts(cfg.render.soundfont)
    for i, t in enumerate(cfg.analysis.transfer):
        if t.soundfont:
            resolve_soundfont(t.soundfont, where=f"analysis.transfer[{i}].soundfont ({t.name})")
        elif not resolve_path(t.root).is_dir():
            raise DataError(f"analysis.transfer[{i}].root ({t.name}): {resolve_path(t.root)}: dataset folder not "
                            "found (give a soundfont to render it from, or the folder of an NSynth-layout dataset)")
