"""Expected failures, each carrying the exit code the CLI gives it.

Anything raised from here reaches the user as one clear message, never as a traceback.
"""


class PibuildError(Exception):
    """An expected failure of an operation: exit 1."""

    exit_code = 1


class UsageError(PibuildError):
    """Bad usage of the command line: exit 2."""

    exit_code = 2


class ConfigError(PibuildError):
    """cluster.yaml has one or more problems: exit 2, listing every one."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s):"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class MissingTool(PibuildError):
    """A host tool is not installed: name it and the Debian package that provides it."""

    def __init__(self, tool: str, package: str):
        self.tool = tool
        self.package = package
        super().__init__(f"'{tool}' is not installed: run `apt-get install {package}`")


class NeedsRoot(PibuildError):
    def __init__(self, what: str):
        super().__init__(f"{what} needs root (loop devices, mounts, chroot): run it with sudo")
