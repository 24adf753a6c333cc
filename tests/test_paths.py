"""One path check for every file named inside a data file (issue 13)."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthex.errors import DataSourceError, OutsidePathError
from synthex.paths import member_path


@pytest.mark.parametrize("name, expected", [
    ("a.png", "a.png"), ("images/b.png", "images/b.png"), ("./c.png", "c.png"), ("images\\d.png", "images/d.png"),
])
def test_relative_names_stay_inside(name, expected):
    assert member_path(Path("/data"), name) == Path("/data") / expected


@pytest.mark.parametrize("name, why", [
    ("../x.png", "climbs out"), ("a/../../b.png", "climbs out"), ("..\\..\\etc\\passwd", "climbs out"),
    ("/etc/passwd", "absolute"), ("C:\\Windows\\x.png", "absolute"), ("\\\\server\\share\\x.png", "absolute"),
    ("", "empty"), ("   ", "empty"), (None, "empty"),
])
def test_names_reaching_outside_are_refused_with_the_reason(name, why):
    with pytest.raises(OutsidePathError, match=why) as info:
        member_path(Path("/data"), name)
    assert isinstance(info.value, DataSourceError) and "/data" in str(info.value)
