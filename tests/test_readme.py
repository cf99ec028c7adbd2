"""The README starts where a newcomer starts: the two commands first, short, every link working."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_two_commands_come_first_and_ci_runs_the_test_command():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert README.index("```bash") < README.index("\n## ")
    assert block[0].endswith("pip install -e . && gradbench run")
    assert block[1].endswith('pip install -e ".[test]" && python -m pytest -q')
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_it_is_short():
    assert len(README.splitlines()) <= 120


def test_every_relative_link_resolves():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
