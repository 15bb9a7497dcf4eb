"""`microtask validate`: exit codes, problem lines, and hostile input handled in seconds."""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from microtask_operator.api import limits
from microtask_operator.api.loading import load_text
from microtask_operator.commands import validate as validate_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Each file, however hostile, must be judged within this many seconds: a guard against input
# that would never finish (an alias bomb, a quadratic blow-up), not a speed test, so it is far
# above what a busy machine takes (a file just under the limits takes about a second alone).
BUDGET_SECONDS = 60.0

GOOD = """\
apiVersion: microtask.dev/v1alpha1
kind: MicrotaskJob
metadata:
  name: squares
spec:
  items:
    range: {start: 0, end: 100}
  microtasksPerShard: 10
  template:
    spec:
      containers:
      - name: worker
        image: python:3.12-slim
        command: [python3, -c, "print($(MICROTASK_ITEM) ** 2)"]
"""

LINE = re.compile(r"^(?P<file>[^:]+): (doc (?P<doc>\d+)( \((?P<name>[^)]+)\))?: )?(?P<rest>.+)$")


def run_streams(*files: str | Path, quiet: bool = False) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `microtask validate FILES`, timed against the budget."""
    parser = argparse.ArgumentParser()
    validate_command.configure(parser)
    argv = [str(f) for f in files] + (["--quiet"] if quiet else [])
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = validate_command.execute(parser.parse_args(argv))
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_SECONDS * max(1, len(files)), f"took {elapsed:.1f}s"
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


def run(*files: str | Path, quiet: bool = False) -> tuple[int, list[str]]:
    """Exit code and output lines (stdout and stderr, in order) of `microtask validate FILES`."""
    parser = argparse.ArgumentParser()
    validate_command.configure(parser)
    argv = [str(f) for f in files] + (["--quiet"] if quiet else [])
    both = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        code = validate_command.execute(parser.parse_args(argv))
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_SECONDS * max(1, len(files)), f"took {elapsed:.1f}s"
    lines = both.getvalue().splitlines()
    assert "Traceback" not in both.getvalue()
    return code, lines


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- valid input ----------------------------------------------------------------------------------


def test_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, "good.yaml", GOOD)
    assert run(path) == (0, [f"{path}: ok (1 MicrotaskJob)"])
    assert run(path, quiet=True) == (0, [])


@pytest.mark.skipif(not EXAMPLES, reason="no examples yet")
def test_every_example_is_valid() -> None:
    code, lines = run(*EXAMPLES)
    assert code == 0, "\n".join(lines)
    assert len(lines) == len(EXAMPLES)


def test_multi_document_file_with_a_config_map(tmp_path: Path) -> None:
    content = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: words}
data:
  words.txt: |
    alpha
    beta
---
apiVersion: microtask.dev/v1alpha1
kind: MicrotaskJob
metadata: {name: words}
spec:
  items: {configMapRef: {name: words, key: words.txt}}
  template:
    spec:
      containers: [{name: w, image: x, command: [echo, "$(MICROTASK_ITEM)"]}]
---
"""
    path = write(tmp_path, "cm.yaml", content)
    assert run(path) == (0, [f"{path}: ok (1 MicrotaskJob, 1 ConfigMap)"])
    result = load_text(content)
    assert result.ok
    assert result.config_map_data(result.jobs[0]) == {"words.txt": "alpha\nbeta\n"}


def test_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(GOOD.encode())

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert run("-") == (0, ["<stdin>: ok (1 MicrotaskJob)"])


# --- problems in valid YAML -----------------------------------------------------------------------


def test_problem_lines_name_file_document_name_and_field(tmp_path: Path) -> None:
    bad = GOOD.replace("microtasksPerShard: 10", "microtasksPerShard: 0\n  paralelism: 3")
    path = write(tmp_path, "bad.yaml", GOOD + "---\n" + bad.replace("squares", "cubes"))
    code, lines = run(path)
    assert code == 2
    assert lines == [
        f"{path}: doc 2 (cubes): spec.microtasksPerShard: must be at least 1, not 0",
        f"{path}: doc 2 (cubes): spec.paralelism: unknown field (did you mean 'parallelism'?)",
    ]
    for line in lines:
        match = LINE.match(line)
        assert match and match["doc"] == "2" and match["name"] == "cubes"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("end: 100", "end: '100'", "spec.items.range.end: must be an integer, not a string"),
        (
            "microtasksPerShard: 10",
            "microtasksPerShard: yes",
            "must be a whole number or auto, not a boolean",
        ),
        (
            "        image: python:3.12-slim\n",
            "",
            "spec.template.spec.containers[0].image: required",
        ),
        ("  items:\n    range: {start: 0, end: 100}\n", "", "spec.items: required field"),
        ("name: squares", "name: Squares", "metadata.name: a MicrotaskJob name 'Squares'"),
        ("kind: MicrotaskJob", "kind: Job", "kind: 'Job' ('microtask.dev/v1alpha1') is not a"),
        ("v1alpha1", "v1", "apiVersion: unsupported version 'microtask.dev/v1'"),
        ("  template:", "  template: 3\n  x:", "spec.template: must be a mapping, not an integer"),
        ("end: 100", "end: .inf", "spec.items.range.end: inf is not a JSON number"),
        ("end: 100", "end: !!binary aGVsbG8=", "spec.items.range.end: a bytes value is not JSON"),
    ],
)
def test_field_problems(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = write(tmp_path, "f.yaml", GOOD.replace(old, new))
    code, lines = run(path)
    assert code == 2
    assert any(expected in line for line in lines), lines


def test_duplicate_names_and_dependency_cycles(tmp_path: Path) -> None:
    def job(name: str, depends: list[str]) -> str:
        return GOOD.replace("squares", name).replace(
            "  microtasksPerShard: 10", f"  microtasksPerShard: 10\n  dependsOn: {depends}"
        )

    content = "---\n".join([job("a", ["b"]), job("b", ["c"]), job("c", ["a"]), job("a", [])])
    code, lines = run(write(tmp_path, "deps.yaml", content))
    assert code == 2
    text = "\n".join(lines)
    assert "doc 4 (a): metadata.name: the MicrotaskJob of doc 1 has this name" in text
    assert "spec.dependsOn: dependency cycle: a -> b -> c -> a" in text
    assert text.count("dependency cycle") == 1
    # Dependencies outside the file are fine (they may exist in the cluster).
    assert run(write(tmp_path, "ok.yaml", job("x", ["elsewhere"])))[0] == 0


def test_config_map_in_the_file_is_checked(tmp_path: Path) -> None:
    content = GOOD.replace(
        "range: {start: 0, end: 100}", "configMapRef: {name: cm, key: items.json, format: json}"
    )
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {other: x}\n"
    code, lines = run(write(tmp_path, "cm.yaml", content + "---\n" + config_map))
    assert code == 2
    assert "spec.items.configMapRef: ConfigMap 'cm' has no key 'items.json'" in lines[0]
    broken = config_map.replace("{other: x}", "{items.json: '[1,'}")
    code, lines = run(write(tmp_path, "cm2.yaml", content + "---\n" + broken))
    assert code == 2 and "not valid JSON" in lines[0]
    numbers = config_map.replace("{other: x}", "{items.json: 3}")
    code, lines = run(write(tmp_path, "cm3.yaml", content + "---\n" + numbers))
    assert code == 2 and "data['items.json']: must be a string" in lines[0]
    # Without the ConfigMap in the file, the file cannot run as is: `run` refuses it, so
    # `validate` says so too, naming the field and the ConfigMap.
    path = write(tmp_path, "cm4.yaml", content)
    code, out, err = run_streams(path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{path}: doc 1 (squares): spec.items.configMapRef: ConfigMap 'cm' is not in this file; "
        "`microtask run` and `microtask simulate` read it from the same file (add it as another "
        "YAML document)"
    ]


def test_problems_go_to_stderr_and_ok_lines_to_stdout(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    bad = write(tmp_path, "bad.yaml", GOOD.replace("microtasksPerShard: 10", "paralelism: 3"))
    code, out, err = run_streams(good, bad)
    assert code == 2
    assert out == f"{good}: ok (1 MicrotaskJob)\n"
    assert err.startswith(f"{bad}: doc 1 (squares): spec.paralelism: unknown field")
    # Plain text, one problem a line, however long: no markup, no wrapping at 80 columns.
    assert "[red]" not in err and len(err.splitlines()) == 1


def test_config_map_without_namespace_serves_a_namespaced_job() -> None:
    job = GOOD.replace("name: squares", "name: squares\n  namespace: team-a").replace(
        "range: {start: 0, end: 100}", "configMapRef: {name: cm, key: k}"
    )
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {k: 'a'}\n"
    result = load_text(job + "---\n" + config_map)
    assert result.ok and result.config_map_data(result.jobs[0]) == {"k": "a"}


def test_names_with_control_characters_stay_on_one_line(tmp_path: Path) -> None:
    content = GOOD.replace("name: squares", 'name: "bad\\nname"')
    code, lines = run(write(tmp_path, "ctl.yaml", content))
    assert code == 2
    assert len(lines) == 1 and "(" + repr("bad\nname") + ")" in lines[0]


def test_other_kinds_are_reported(tmp_path: Path) -> None:
    content = GOOD + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    code, lines = run(write(tmp_path, "mixed.yaml", content))
    assert code == 2
    assert lines == [
        f"{tmp_path / 'mixed.yaml'}: doc 2 (web): kind: 'Deployment' ('apps/v1') is not a "
        "MicrotaskJob; files hold MicrotaskJobs (microtask.dev/v1alpha1) and the ConfigMaps "
        "(v1) they use"
    ]


def test_many_problems_are_capped_per_document(tmp_path: Path) -> None:
    content = GOOD.replace("range: {start: 0, end: 100}", "list: [" + "null, " * 3 + "1]")
    content += "---\n" + GOOD.replace("squares", "many").replace(
        "  microtasksPerShard: 10",
        "\n".join(f"  unknown{i}: 1" for i in range(200)),
    )
    code, lines = run(write(tmp_path, "many.yaml", content))
    assert code == 2
    many = [line for line in lines if "(many)" in line]
    assert len(many) == limits.MAX_PROBLEMS_PER_DOCUMENT + 1
    assert many[-1].endswith("... and 150 more problems")


def test_several_files_report_each(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    empty = write(tmp_path, "empty.yaml", "")
    code, lines = run(good, empty, tmp_path / "missing.yaml")
    assert code == 2
    assert lines == [
        f"{good}: ok (1 MicrotaskJob)",
        f"{empty}: no YAML documents (the file is empty)",
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory",
    ]


# --- hostile input --------------------------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

HOSTILE: list[tuple[str, bytes, str]] = [
    ("garbage", random.Random(7).randbytes(64 * 1024), "binary data, not YAML text"),
    ("empty", b"", "no YAML documents (the file is empty)"),
    ("whitespace", b"  \n\n# just a comment\n", "no YAML documents"),
    ("only-separators", b"---\n---\n", "no YAML documents"),
    ("top-level-list", b"- a\n- b\n", "doc 1: the document is a list, not a mapping"),
    ("top-level-scalar", b"hello\n", "doc 1: the document is a string, not a mapping"),
    ("billion-laughs", BILLION_LAUGHS.encode(), "alias bomb"),
    (
        "billion-laughs-in-a-job",
        (
            GOOD + "  bomb:\n" + "".join(f"    {line}\n" for line in BILLION_LAUGHS.splitlines())
        ).encode(),
        "alias bomb",
    ),
    ("recursive-alias", b"a: &a [1, *a]\n", "recursive YAML alias *a"),
    ("undefined-alias", b"a: *nowhere\n", "YAML alias *nowhere has no anchor"),
    ("deep-flow", b"[" * 200_000, "nested more than 64 levels deep"),
    ("deep-block", b"- " * 200_000 + b"x\n", "nested more than 64 levels deep"),
    ("deep-mapping", b"".join(b" " * i + b"a:\n" for i in range(500)), "nested more than 64"),
    ("many-documents", b"a: 1\n---\n" * 5000, "more than 1000 YAML documents"),
    ("many-nodes", b"[" + b"1," * 1_000_000 + b"1]", "more than 200,000 YAML nodes"),
    ("latin-1", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9)"),
    ("utf-16", "a: 1\n".encode("utf-16"), "UTF-16"),
    ("nul-in-text", b"a: b\x00c\n", "NUL byte at offset 4"),
    ("control-character", b"a: \x07\n", "invalid YAML"),
    ("tab-indent", b"a:\n\tb: 1\n", "a tab: YAML is indented with spaces"),
    ("duplicate-key", b"a: 1\nb: 2\na: 3\n", "line 3, column 1: duplicate key 'a'"),
    ("non-string-key", b"1: a\n", "mapping keys must be strings, not an integer"),
    ("list-key", b"? [a]\n: b\n", "mapping keys must be strings, not a list"),
    ("huge-integer", b"a: " + b"9" * 100_000 + b"\n", "thousands of digits"),
    ("unclosed-quote", b'a: "abc\n', "invalid YAML"),
    ("python-tag", b"a: !!python/object:os.system ls\n", "invalid YAML"),
    ("set-tag", b"apiVersion: microtask.dev/v1alpha1\nkind: MicrotaskJob\nx: !!set {a}\n", "set"),
    ("long-line", b"a: " + b"x" * (3 * 1024 * 1024) + b"\n", "not a Kubernetes object"),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(content, expected) for _, content, expected in HOSTILE],
    ids=[name for name, _, _ in HOSTILE],
)
def test_hostile_input_gives_a_problem_not_a_traceback(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = write(tmp_path, "hostile.yaml", content)
    code, lines = run(path)
    assert code == 2
    assert lines, "no problem printed"
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any(expected in line for line in lines), lines
    assert len("\n".join(lines)) < 20_000  # bounded output, whatever the input


def test_a_50_megabyte_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.write(GOOD.encode())
        f.seek(50 * 1024 * 1024)
        f.write(b"\n")
    code, lines = run(path)
    assert code == 2
    assert lines == [f"{path}: the file is too large (50.0 MiB): at most 4 MiB"]


def test_a_50_megabyte_stream_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(b"a: " + b"x" * (50 * 1024 * 1024))

    monkeypatch.setattr(sys, "stdin", Stdin)
    code, lines = run("-")
    assert code == 2
    assert lines == ["<stdin>: the file is larger than the 4 MiB limit"]


def test_a_directory_and_a_device(tmp_path: Path) -> None:
    code, lines = run(tmp_path)
    assert (code, lines) == (2, [f"{tmp_path}: is a directory"])
    if Path("/dev/zero").exists():
        code, lines = run("/dev/zero")
        assert (code, lines) == (2, ["/dev/zero: the file is larger than the 4 MiB limit"])


def test_files_just_under_the_limits_are_judged_in_time(tmp_path: Path) -> None:
    # Nearly the most YAML nodes allowed: many ConfigMaps full of small entries.
    document = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d}\ndata: {%s}\n"
    entries = ", ".join(f"k{i}: v" for i in range(180))
    content = "---\n".join(document % (i, entries) for i in range(500))
    path = write(tmp_path, "nodes.yaml", content)
    assert run(path) == (0, [f"{path}: ok (0 MicrotaskJobs, 500 ConfigMaps)"])
    # Nearly the largest file allowed: a job whose ConfigMap holds almost 4 MiB of lines.
    lines = "".join(f"    https://example.com/{i:08d}\n" for i in range(120_000))
    config_map = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata:\n  k: |\n{lines}"
    job = GOOD.replace("range: {start: 0, end: 100}", "configMapRef: {name: cm, key: k}")
    content = config_map + "---\n" + job
    assert limits.MAX_FILE_BYTES * 0.9 < len(content) < limits.MAX_FILE_BYTES
    path = write(tmp_path, "size.yaml", content)
    assert run(path) == (0, [f"{path}: ok (1 MicrotaskJob, 1 ConfigMap)"])


def test_the_command_line_never_shows_a_traceback(tmp_path: Path) -> None:
    """The real process: hostile files, exit code 2, problems on stderr, nothing on stdout."""
    files = [write(tmp_path, f"{name}.yaml", content) for name, content, _ in HOSTILE[:8]]
    script = (
        "import argparse, sys\n"
        "from microtask_operator.commands import validate\n"
        "parser = argparse.ArgumentParser()\n"
        "validate.configure(parser)\n"
        "sys.exit(validate.execute(parser.parse_args(sys.argv[1:])))\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < BUDGET_SECONDS * 2
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) >= len(files)


def test_yaml_dates_stay_strings() -> None:
    content = GOOD.replace(
        "    spec:\n      containers",
        "    metadata:\n      annotations: {built: 2024-05-01}\n    spec:\n      containers",
    )
    result = load_text(content)
    assert result.ok, result.problems
    template = result.jobs[0].job.spec.template
    assert template.metadata is not None
    assert template.metadata.annotations == {"built": "2024-05-01"}
    assert yaml.safe_load(content)  # PyYAML alone would have made it a date


def test_merge_keys_are_not_duplicates() -> None:
    content = "base: &base {a: 1, b: 2}\nderived:\n  <<: *base\n  a: 3\n"
    result = load_text(content)
    assert result.documents[0].body["derived"] == {"a": 3, "b": 2}
