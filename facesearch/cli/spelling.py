"""How the CLI spells what the library says in its own terms (``facesearch.errors``): a parameter as the option of
the command that ran (``conv_width`` -> ``--conv-width``), a remedy's operation as the ``facesearch`` command line
that runs it (``reembed`` with ``checkpoint=NEW`` -> ```facesearch gallery reembed --checkpoint NEW```).

``ACTIONS`` is the one table from the library's operations to the commands; the options are read from the commands
themselves, so a renamed option is spelled right without a change here.
"""

from __future__ import annotations

from typing import Any, Callable

from facesearch.errors import Remedy

# Each library operation a remedy can name (``facesearch.errors.Action``) -> the words of its command.
ACTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",),
    "train": ("train",),
    "enroll": ("enroll",),
    "reembed": ("gallery", "reembed"),
    "check": ("gallery", "check"),
    "rebuild": ("gallery", "rebuild"),
    "use_store": ("gallery", "store"),
    "calibrate": ("calibrate",),
    "cluster": ("cluster",),
    "identities.rename": ("identities", "rename"),
    "identities.merge": ("identities", "merge"),
    "identities.remove": ("identities", "remove"),
    "db.upgrade": ("db", "upgrade"),
    "db.stamp": ("db", "stamp"),
    "keys.create": ("keys", "create"),
}

# Library parameter names a command spells with another name (the Gallery's ``url`` is the commands' ``--db``).
ALIASES = {"url": "db", "folder": "gallery", "items": "paths", "raw_dir": "folders", "out_dir": "folders"}


# Commands and parameters are click's (the copy typer ships): typed ``Command`` and ``Param`` here.
Command = Param = Any


def command_of(root: Command, words: list[str]) -> Command:
    """The (sub-)command that the arguments ``words`` given to ``root`` run (``root`` itself if none)."""
    command = root
    while hasattr(command, "get_command"):  # a group
        name = next((w for w in words if not w.startswith("-")), None)
        sub = command.get_command(None, name) if name is not None else None
        if sub is None:
            break
        command, words = sub, words[words.index(name) + 1:]
    return command


def _param(command: Command, name: str) -> Param | None:
    by_name = {p.name: p for p in command.params}
    return by_name.get(name) or by_name.get(ALIASES.get(name, ""))


def _flag(param: Param) -> str:
    """An option's long flag (``--conv-width``), an argument's name in capitals (``PHOTOS``)."""
    if param.param_type_name != "option":
        return (param.name or "").upper()
    return next((o for o in param.opts if o.startswith("--")), param.opts[0])


def flag_speller(command: Command) -> Callable[[str], str]:
    """How ``command`` spells a library parameter: its option's flag or its argument's name; a parameter it does
    not take keeps its library name."""
    return lambda name: _flag(p) if (p := _param(command, name)) is not None else name


def remedy_speller(root: Command, command: Command) -> Callable[[Remedy], str]:
    """How the CLI spells a remedy: an operation as its command line in backquotes, with the arguments given;
    parameters to give as ``command``'s options (with the environment variable that also sets one)."""

    def spell(remedy: Remedy) -> str:
        if remedy.action is None:
            return ", ".join(_given(command, name, value) for name, value in remedy.args)
        words = ACTIONS[remedy.action]
        target = command_of(root, list(words))
        args = [(_param(target, name), name, value) for name, value in remedy.args]
        positional = [value or name.upper() for p, name, value in args if _is_argument(p)]
        options = [_option(p, name, value) for p, name, value in args if not _is_argument(p)]
        options = [o for o in options if o]  # (a flag left off)
        return "`" + " ".join(["facesearch", *words, *positional, *options]) + "`"

    return spell


def _is_argument(param: Param | None) -> bool:
    return param is not None and param.param_type_name != "option"


def _option(param: Param | None, name: str, value: str | None) -> str:
    """``--margin 0.2``; a flag alone (``--align``), its off form (``--no-align``) or, where it has none, nothing."""
    flag = _flag(param) if param is not None else name
    if getattr(param, "is_flag", False) and value == "False":
        return next(iter(getattr(param, "secondary_opts", None) or []), "")
    return flag if value is None or getattr(param, "is_flag", False) else f"{flag} {value}"


def _given(command: Command, name: str, value: str | None) -> str:
    """A parameter to give the command that failed: its option (and value), or the environment variable too."""
    param = _param(command, name)
    spelled = _option(param, name, value)
    envvar = getattr(param, "envvar", None)
    return f"{spelled} or ${envvar}" if value is None and isinstance(envvar, str) else spelled
