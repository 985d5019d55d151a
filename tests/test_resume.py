"""`resume --help`. A driver killed with SIGKILL mid-search and then resumed is tests/test_search_algorithms.py's:
its random and Optuna searches are the ones killed and resumed."""

import pytest


def test_resume_help_says_only_trusted_folders(capsys):
    """Tune's restore un-pickles the folder's state: `resume --help` says to resume trusted folders only."""
    from quickdraw.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["resume", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Resume only experiment folders you trust" in text and "un-pickles" in text
