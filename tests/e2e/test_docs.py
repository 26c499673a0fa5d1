"""The commands and links of README.md and docs/*.md are real.

Every command in a fenced ``bash`` block, and every inline ``python ...`` command, is checked:
- ``python train.py ...`` / ``python evaluate.py ...``: Hydra composes ``conf/train.yaml`` (or
  ``conf/evaluate.yaml``) with its overrides, so a key, group or option that does not exist fails, and
  the entry point's value checks (``ddpm.runs.validate``, less those of the user's files) pass;
- ``python benchmarks/X.py`` / ``python -m ddpm.X``: the script or module exists and defines each
  ``--option`` the command gives;
- ``bash scripts/X.sh``, ``pip install``, ``python -m pytest``, ``export``: the files, extras, tests,
  markers and variables they name exist;
- a command marked ``# docs-check: run`` is run (in a temporary run directory).
Commands that need what a clone lacks (a GPU, MNIST, a user's checkpoint such as RUN/... or
outputs/train/<date>: placeholders for the user's values) are only composed. Every relative link resolves to a file, and an anchor to a heading of that file.
"""

import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.runs import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "docs-check: run"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
README_MAX_LINES = 200


@dataclass(frozen=True)
class Command:
    page: str  # path relative to the repo root
    line: int  # 1-based line of the command's start
    argv: tuple[str, ...]
    run: bool  # marked `# docs-check: run`

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_PYTHON = re.compile(r"`(python3? [^`]+)`")


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line of the block's first line, body) of every fenced block."""
    return [(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)]


def shell_commands(body: str, first_line: int) -> list[tuple[int, str]]:
    """(line, command) of a shell block's commands, continuation lines joined."""
    commands, pending, start = [], "", first_line
    for i, raw in enumerate(body.splitlines()):
        if not pending:
            start = first_line + i
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip() and not pending.strip().startswith("#"):
            commands.append((start, pending.strip()))
        pending = ""
    return commands


def page_commands(page: Path) -> list[Command]:
    text = page.read_text()
    rel = str(page.relative_to(ROOT))
    found = []
    for lang, first, body in fenced_blocks(text):
        if lang in SHELL_LANGS:
            for line, cmd in shell_commands(body, first):
                for part in cmd.split(" && "):  # `python3 -m venv .venv && . .venv/bin/activate && pip ...`
                    found.append(Command(rel, line, tuple(shlex.split(part, comments=True)), RUN_MARK in cmd))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for m in INLINE_PYTHON.finditer(prose):
        argv = tuple(shlex.split(" ".join(m.group(1).split())))
        found.append(Command(rel, prose.count("\n", 0, m.start()) + 1, argv, False))
    return found


COMMANDS = [c for page in PAGES for c in page_commands(page)]


def by_program(*programs: str) -> list[Command]:
    return [c for c in COMMANDS if entry(c) in programs]


def entry(c: Command) -> str:
    """What a command runs: train.py, evaluate.py, benchmarks/X.py, -m module, or the program."""
    argv = c.argv
    if argv[0] in ("python", "python3"):
        if argv[1] == "-m":
            return f"-m {argv[2]}"
        return argv[1]
    return argv[0]


# ---- train.py and evaluate.py: the overrides compose ---------------------------------------------

PLACEHOLDER = re.compile(r"<(\w+)>")
ENTRY_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info"}


def hydra_overrides(argv: tuple[str, ...]) -> list[str]:
    """The command line's overrides, without Hydra's flags and `...` (an elision in prose)."""
    args = [PLACEHOLDER.sub(r"\1", a) for a in argv[2:]]  # outputs/train/<date>: the user's run
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in ("--cfg", "-c", "--package", "-p"):
            skip = True
        elif a not in ENTRY_FLAGS and a != "...":
            out.append(a)
    return out


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """A -m sweep (`schedule=linear,cosine`) as one override list per value of each swept key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    points = [overrides]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            points = [p[:i] + [f"{o.get_key_element()}={v}"] + p[i + 1:] for p in points for v in values]
    return points


@pytest.fixture(scope="module")
def compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    composed = {}  # a command given on two pages is composed once

    def cached(name: str, overrides: list[str]):
        key = (name, tuple(overrides))
        if key not in composed:
            composed[key] = hydra_compose(name, overrides=overrides, return_hydra_config=True)
        return composed[key].copy()

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield cached


def config_name(c: Command) -> str:
    return {"train.py": "train", "evaluate.py": "evaluate"}[entry(c)]


# checks of files the user names (RUN/checkpoints/last.ckpt): placeholders here
USER_FILES = {"ckpt_path", "samples_path", "reference_path", "codec.autoencoder_ckpt", "module.perceptual_path"}


def value_checks(name: str):
    """The entry point's checks of types, ranges and cross-field rules (``ddpm.runs.validate``), less USER_FILES."""
    from ddpm.runs import validate

    spec = {"train": validate.TRAIN, "evaluate": validate.EVALUATE}[name]
    return tuple((key, check) for key, check in spec if key not in USER_FILES)


@pytest.mark.parametrize("command", by_program("train.py", "evaluate.py"), ids=str)
def test_every_train_and_evaluate_command_composes_and_passes_the_value_checks(command, compose):
    from ddpm.errors import ConfigError
    from ddpm.runs.validate import check_config

    name = config_name(command)
    for overrides in sweep_points(hydra_overrides(command.argv)):
        try:
            cfg = compose(name, overrides)
        except Exception as e:  # hydra's errors name the key or option
            pytest.fail(f"{command}\n  does not compose: {type(e).__name__}: {e}")
        try:
            check_config(cfg, value_checks(name))
        except ConfigError as e:
            pytest.fail(f"{command}\n  is refused by {name}.py: {e}")


def test_a_command_naming_a_key_or_option_that_does_not_exist_does_not_compose(compose):
    from hydra.errors import ConfigCompositionException

    for bad in (["schedule=no_such_schedule"], ["trainer.no_such_key=1"], ["experiment=nope"]):
        with pytest.raises(ConfigCompositionException):
            compose("train", bad)
    with pytest.raises(ConfigCompositionException):
        compose("evaluate", ["no_such_option=1"])


def test_a_command_with_a_value_out_of_range_is_refused(compose):
    from ddpm.errors import ConfigError
    from ddpm.runs.validate import check_config

    with pytest.raises(ConfigError, match="sampler.steps=2000"):
        check_config(compose("train", ["sampler=ddim", "sampler.steps=2000"]), value_checks("train"))
    with pytest.raises(ConfigError, match="num_samples=0"):
        check_config(compose("evaluate", ["num_samples=0"]), value_checks("evaluate"))


# ---- benchmarks, modules, scripts: they exist and define the options given -----------------------

def options(argv: tuple[str, ...]) -> list[str]:
    return [a.split("=")[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize("command", [c for c in COMMANDS if entry(c).startswith("benchmarks/")], ids=str)
def test_every_benchmark_command_names_a_script_and_its_options(command):
    script = ROOT / entry(command)
    assert script.is_file(), f"{command}: no {script.relative_to(ROOT)}"
    source = script.read_text()
    missing = [o for o in options(command.argv) if f'"{o}"' not in source]
    assert not missing, f"{command}: {script.name} defines no {missing}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if entry(c).startswith("-m ddpm")], ids=str)
def test_every_module_command_names_a_module_and_its_options(command):
    module = ROOT / "src" / Path(*entry(command)[3:].split("."))
    main = module / "__main__.py" if module.is_dir() else module.with_suffix(".py")
    assert main.is_file(), f"{command}: no {main.relative_to(ROOT)}"
    source = main.read_text()
    positional = [a for a in command.argv[3:] if not a.startswith("-")][:1]  # the sub-command
    missing = [o for o in options(command.argv) + positional if f'"{o}"' not in source]
    assert not missing, f"{command}: {main.relative_to(ROOT)} defines no {missing}"


@pytest.mark.parametrize("command", by_program("-m pytest"), ids=str)
def test_every_pytest_command_names_test_files_and_markers_that_exist(command):
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    names = {m.split(":")[0] for m in markers}
    argv = command.argv[3:]
    for i, a in enumerate(argv):
        if a.startswith("tests/"):
            assert (ROOT / a.split("::")[0]).is_file(), f"{command}: no {a}"
        if a == "-m" and i + 1 < len(argv):
            used = set(re.findall(r"\w+", argv[i + 1])) - {"not", "and", "or"}
            assert used <= names, f"{command}: unknown markers {sorted(used - names)}"
    assert argv[:1] != ("tests",) or (ROOT / "tests").is_dir()


@pytest.mark.parametrize("command", by_program("bash"), ids=str)
def test_every_script_command_names_a_script_and_its_action(command):
    script = ROOT / command.argv[1]
    assert script.is_file(), f"{command}: no {command.argv[1]}"
    for action in command.argv[2:]:
        assert re.search(rf"^\s*{re.escape(action)}\)", script.read_text(), re.M), f"{command}: {script.name} has no {action}"


def pip_requirements(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-r"]


@pytest.mark.parametrize("command", by_program("pip", "-m venv", "."), ids=str)
def test_every_setup_command_names_files_and_extras_that_exist(command):
    if command.argv[0] == ".":  # `. .venv/bin/activate` after `python3 -m venv .venv`
        assert command.argv[1] == ".venv/bin/activate", command
        return
    if command.argv[0] != "pip":
        assert command.argv[1:] == ("-m", "venv", ".venv"), command
        return
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for req in pip_requirements(command.argv):
        assert (ROOT / req).is_file(), f"{command}: no {req}"
    for target in command.argv[2:]:
        m = re.fullmatch(r"\.(?:\[(\w+)\])?", target)
        if m and m.group(1):
            assert m.group(1) in extras, f"{command}: pyproject has no extra {m.group(1)}"


@pytest.mark.parametrize("command", by_program("export"), ids=str)
def test_every_exported_variable_is_read_by_the_code(command):
    name = command.argv[1].split("=")[0]
    sources = [*ROOT.glob("conf/**/*.yaml"), *ROOT.glob("src/**/*.py")]
    assert any(name in p.read_text() for p in sources), f"{command}: nothing reads ${name}"


KNOWN = {"train.py", "evaluate.py", "-m pytest", "bash", "pip", "-m venv", "export", "."}


def test_every_command_is_one_this_check_knows():
    unknown = [str(c) for c in COMMANDS
               if entry(c) not in KNOWN and not entry(c).startswith(("benchmarks/", "-m ddpm"))]
    assert not unknown, "commands tests/e2e/test_docs.py does not check:\n" + "\n".join(unknown)
    assert len(by_program("train.py")) > 20 and len(by_program("evaluate.py")) > 10


# ---- the quick commands run -----------------------------------------------------------------------

@pytest.mark.parametrize("command", [c for c in COMMANDS if c.run], ids=str)
def test_the_quick_commands_run(command, tmp_path):
    assert entry(command) in ("train.py", "evaluate.py"), f"{command}: only train.py/evaluate.py runs are marked"
    argv = [sys.executable, *command.argv[1:], f"hydra.run.dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and list((tmp_path / "samples").glob("*.png"))


def test_some_command_is_marked_to_run():
    assert any(c.run for c in COMMANDS)


# ---- the README is the front door -----------------------------------------------------------------

def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_ci_runs_the_readmes_set_up_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = {" ".join(line.replace(" -q", "").split()) for line in ci.splitlines()}
    readme = [c for c in page_commands(ROOT / "README.md")]
    setup = [c for c in readme if c.argv[0] == "pip"]
    test = [c for c in readme if entry(c) == "-m pytest" and "-n" in c.argv]
    assert setup and test
    for c in [*setup, *test]:
        assert shlex.join(c.argv).replace("'", '"').replace(" -q", "") in ci_lines, f"{c} is not what .ci/run runs"


# ---- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def links() -> list[tuple[Path, str]]:
    return [(page, m.group(1)) for page in PAGES for m in LINK.finditer(FENCE.sub("", page.read_text()))
            if not re.match(r"[a-z]+:", m.group(1))]


@pytest.mark.parametrize("page,target", links(), ids=lambda x: str(x.relative_to(ROOT)) if isinstance(x, Path) else x)
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.is_file(), f"{page.relative_to(ROOT)}: {target} is not a file"
    if anchor:
        assert anchor in anchors(file), f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {file.name}"


def test_slugs_are_githubs():
    assert slug("Cluster runs (SLURM)") == "cluster-runs-slurm"
    assert slug("CPU quality metrics: FD and accuracy from the dataset's own classifier") == \
        "cpu-quality-metrics-fd-and-accuracy-from-the-datasets-own-classifier"
    assert slug("Text encoders (`text_encoder=small | clip`)") == "text-encoders-text_encodersmall--clip"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for p, t in links() if p.name == "README.md"}
    assert set(PAGES[1:]) <= linked, sorted(str(p.relative_to(ROOT)) for p in set(PAGES[1:]) - linked)
