"""Readers open a store read-only: an older store (columns added since it was written) is read
with those columns as NULL and stays byte for byte as committed, with no side files."""

import hashlib
import shutil
from pathlib import Path

import pytest

from robench.core.errors import RobenchError
from robench.engine.store import ADDED_RESULT_COLUMNS, Store

OLD = Path(__file__).parents[1] / "reports/protocols/results.sqlite"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.skipif(not OLD.exists(), reason="committed store not present")
def test_readonly_open_of_an_older_store_changes_nothing(tmp_path):
    path = tmp_path / "old store.sqlite"  # a space: the URI is quoted
    shutil.copy(OLD, path)
    before = _sha(path)
    with Store(path, readonly=True) as st:
        missing = st._missing["results"]
        res = st.results()
        cells = st.cells()
        assert not st.has_images(cells["key"].iloc[0]) or "image" not in missing
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no -wal / -shm left
    assert set(ADDED_RESULT_COLUMNS) <= set(res.columns)
    assert missing, "the committed store was expected to predate a column (else pick an older one)"
    assert res[missing[0]].isna().all()
    # the writer's open adds the columns: the same reads, now from real (NULL) columns
    with Store(path) as st:
        assert list(st.results().columns) == list(res.columns)
    assert _sha(path) != before


def test_readonly_open_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(RobenchError, match="no store there"):
        Store(tmp_path / "absent.sqlite", readonly=True)
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RobenchError, match="not a robench store"):
        Store(bad, readonly=True)
