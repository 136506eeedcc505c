"""The docs name what the code holds: modules, binaries, private names and
the targets of their links."""

import glob
import os
import re

import pytest

import benchmarks.experiments
import examples.lib
import keras_sft
from tests import doc_pages

REPO = doc_pages.REPO
DESIGN = os.path.join("docs", "design.md")
# The private names that `_keras_compat.py` is meant to hold; a module that
# uses one elsewhere is listed in design.md.
_PRIVATE = re.compile(
    r"keras\.src\b|tf\.__internal__|\b(_compile_loss|_loss_tracker"
    r"|_maybe_symbolic_build|_distribute_strategy|_keras_mask"
    r"|_as_serialized_graph)\b"
)


def _modules(folder):
    """The module names of `folder`'s Python files, `__init__` included."""
    return {
        os.path.splitext(os.path.basename(path))[0]
        for path in glob.glob(os.path.join(REPO, folder, "*.py"))
    }


def _fenced(text):
    """The first fenced block of `text`."""
    match = re.search(r"^```[\w-]*\n(.*?)^```", text, re.S | re.M)
    assert match, "no fenced block"
    return match.group(1)


def _layout():
    """The library modules that design.md's layout lists, one bullet each
    (`` - `name.py`: what it holds ``), as paths."""
    section = doc_pages.section(DESIGN, "Layout")
    return [
        f"keras_sft/{name}"
        for name in re.findall(r"^- `(\w+\.py)`:", section, re.M)
    ]


def test_design_layout_names_exactly_the_library_modules():
    named = [
        re.fullmatch(r"keras_sft/(\w+)\.py", path).group(1)
        for path in _layout()
        if path.startswith("keras_sft/")
    ]
    assert len(named) == len(set(named)), "a module is named twice"
    modules = _modules("keras_sft")
    assert sorted(modules - set(named)) == [], "missing from the layout"
    assert sorted(set(named) - modules) == [], "named but not a file"


def test_design_layout_paths_exist():
    for path in _layout():
        assert glob.glob(os.path.join(REPO, path)), path


def test_design_lists_the_modules_that_use_private_names():
    using = set()
    for path in glob.glob(os.path.join(REPO, "keras_sft", "*.py")) + glob.glob(
        os.path.join(REPO, "examples", "**", "*.py"), recursive=True
    ):
        relative = os.path.relpath(path, REPO)
        with open(path) as file:
            if relative != os.path.join(
                "keras_sft", "_keras_compat.py"
            ) and _PRIVATE.search(file.read()):
                using.add(relative)
    listed = doc_pages.section(DESIGN, "Private Keras and TensorFlow names")
    named = {
        name if "/" in name else os.path.join("keras_sft", name)
        for name in re.findall(r"^- `([\w/]+\.py)`", listed, re.M)
    }
    assert sorted(using - named) == [], "uses private names, not listed"
    assert sorted(named - using) == [], "listed, uses none"


def _binaries():
    """The modules of examples/ that run as `python -m examples.NAME`."""
    found = set()
    for path in glob.glob(os.path.join(REPO, "examples", "*.py")):
        with open(path) as file:
            source = file.read()
        if re.search(r"^def main\(", source, re.M) and (
            'if __name__ == "__main__":' in source
        ):
            found.add(os.path.splitext(os.path.basename(path))[0])
    return found


def test_examples_readme_table_names_every_binary():
    command_line = doc_pages.section(
        os.path.join("examples", "README.md"), "Command line"
    )
    named = re.findall(r"^\| `examples\.(\w+)` \|", command_line, re.M)
    assert len(named) == len(set(named)), "a binary is named twice"
    assert sorted(set(named)) == sorted(_binaries())


@pytest.mark.parametrize(
    "package", [examples.lib, benchmarks.experiments], ids=lambda p: p.__name__
)
def test_package_docstring_names_every_module(package):
    named = re.findall(r"`(\w+)`", package.__doc__)
    assert len(named) == len(set(named)), "a module is named twice"
    folder = package.__name__.replace(".", "/")
    assert sorted(named) == sorted(_modules(folder) - {"__init__"})


def test_user_guide_lists_the_public_api():
    guide = doc_pages.read(os.path.join("docs", "user_guide.md"))
    listed = re.search(r"`keras_sft\.__all__`:(.*?)\.\n\n", guide, re.S)
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == sorted(
        keras_sft.__all__
    )


def _split(target):
    path, _, anchor = target.partition("#")
    return path, anchor


@pytest.mark.parametrize("page", doc_pages.PAGES)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for line, target in doc_pages.links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, anchor = _split(target)
        resolved = (
            os.path.normpath(os.path.join(os.path.dirname(page), path))
            if path
            else page
        )
        if not os.path.exists(os.path.join(REPO, resolved)):
            broken.append(f"{page}:{line}: {target} (no such file)")
        elif anchor and anchor not in doc_pages.anchors(resolved):
            broken.append(f"{page}:{line}: {target} (no such heading)")
    assert broken == []


# Flags absl defines for every binary.
_ABSL_FLAGS = {
    "help",
    "helpshort",
    "helpfull",
    "flagfile",
    "undefok",
    "log_dir",
    "logtostderr",
    "alsologtostderr",
    "verbosity",
    "v",
}


def _commands():
    """`(page, module, arguments)` of each `python -m MODULE ...` that the
    pages show, in shell blocks or inline, continuation lines joined."""
    found = []
    for page in doc_pages.PAGES:
        texts = [
            fence.code
            for fence in doc_pages.fences(page)
            if fence.language == "sh"
        ]
        texts += doc_pages.inline_commands(page)
        for text in texts:
            text = re.sub(r"\\\n", " ", text)
            for match in re.finditer(r"python -m ([\w.]+)([^\n#&;]*)", text):
                found.append((page, match.group(1), match.group(2)))
    return found


def _defined_flags(package):
    """The flag names that `package`'s modules define."""
    names = set(_ABSL_FLAGS)
    for path in glob.glob(os.path.join(REPO, package, "*.py")):
        with open(path) as file:
            names.update(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", file.read()))
    return names


def test_commands_name_existing_binaries_and_flags():
    unknown = []
    for page, module, arguments in _commands():
        if module != module.lower():  # a placeholder: examples.NAME
            continue
        package, _, name = module.partition(".")
        if not os.path.isfile(os.path.join(REPO, package, f"{name}.py")):
            unknown.append(f"{page}: {module} (no such module)")
            continue
        defined = _defined_flags(package)
        for flag in re.findall(r"(?<!\S)--(\w+)", arguments):
            if flag not in defined and flag.removeprefix("no") not in defined:
                unknown.append(f"{page}: {module} --{flag}")
    assert unknown == []
